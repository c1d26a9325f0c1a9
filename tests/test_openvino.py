"""OpenVINO as a device: every method, the explainer files and the gradient check give onnxruntime's
numbers on the seed CNN, and gradient methods on a Keras and a PyTorch ViT (whose square weights OpenVINO
2026.4 multiplies the wrong way round when a MatMul and its gradient share them); a model with an op OpenVINO
lacks, and a missing openvino package, fail in one line.

Tolerance: both runtimes compute in float32 (OpenVINO with INFERENCE_PRECISION_HINT=f32) with different
kernels and accumulation orders, so maps differ by float32 rounding amplified through the network:
measured about 1e-6 of the map's max here; ``RTOL`` = 1e-4 of the map's max leaves room for other CPUs
while OpenVINO's bfloat16 default (about 1e-2 on CPUs with AMX/AVX-512 BF16) would fail it.
"""

from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnxsight
from onnxsight.errors import MissingDependency, ModelFileError

pytest.importorskip("openvino", reason="openvino is not installed (pip install 'onnxsight[openvino]')")

RTOL = 1e-4  # of the map's max; see the module docstring


@pytest.fixture(scope="module")
def ov_model(mnist_onnx):
    return onnxsight.load(mnist_onnx, device="openvino")


@pytest.fixture(scope="module")
def images(digits_data):
    return digits_data.x_test[:6]


def assert_close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape, f"{what}: {got.dtype}{got.shape} vs {want.dtype}{want.shape}"
    scale = float(np.abs(want).max())
    assert scale > 0, f"{what}: the onnxruntime map is all zeros; the comparison would prove nothing"
    error = float(np.abs(got.astype(np.float64) - want).max()) / scale
    assert error <= RTOL, f"{what}: OpenVINO differs from onnxruntime by {error:.2e} of the map's max (limit {RTOL})"


METHODS = {
    "forward": lambda m, x: m.predict(x),
    "saliency": lambda m, x: onnxsight.saliency(m, x),
    "guided": lambda m, x: onnxsight.saliency(m, x, modifier="guided"),
    "deconv": lambda m, x: onnxsight.saliency(m, x, modifier="deconv"),
    "smoothgrad": lambda m, x: onnxsight.saliency(m, x, smooth_samples=4, seed=1),  # seed 0: a near-tie, see below
    "gradient-x-input": lambda m, x: onnxsight.saliency(m, x, times_input=True, absolute=False, reduce=None),
    "ig": lambda m, x: onnxsight.integrated_gradients(m, x, steps=8),
    "deeplift": lambda m, x: onnxsight.deeplift(m, x),
    "lrp-epsilon": lambda m, x: onnxsight.lrp(m, x),
    "lrp-epsilon-plus": lambda m, x: onnxsight.lrp(m, x, rule="epsilon-plus"),
    "occlusion": lambda m, x: onnxsight.occlusion(m, x, window=7, stride=7),
    **{f"gradcam-{v}": (lambda v: lambda m, x: onnxsight.gradcam(m, x, variant=v, normalize=False))(v)
       for v in ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "scorecam", "ablationcam", "eigengradcam")},
    "guided-gradcam": lambda m, x: onnxsight.gradcam(m, x, guided=True),
}


@pytest.mark.parametrize("method", METHODS)
def test_every_method_gives_onnxruntimes_numbers(method, model, ov_model, images):
    assert ov_model.device == "openvino" and model.device == "cpu"
    assert_close(METHODS[method](ov_model, images), METHODS[method](model, images), method)


def test_sessions_are_float32_with_the_thread_count_and_compiled_once(mnist_onnx, images):
    m = onnxsight.load(mnist_onnx, device="openvino", threads=1)
    m.predict(images)
    m.predict(images[:2])
    (session,) = m._sessions.values()  # one compiled graph, reused for another batch size
    compiled = session._compiled
    assert str(compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"
    assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == 1


def test_explainer_files_give_the_same_outputs_on_openvino(model, images, tmp_path):
    from onnxsight.serving.repository import load_models

    methods = ("saliency", "gradcam", "smoothgrad", "deeplift")
    for method in methods:
        onnx.save(onnxsight.export_explainer(model, method, samples=4), tmp_path / f"mnist_{method}.onnx")
    on_cpu = load_models(tmp_path, methods=(), device="cpu")
    on_openvino = load_models(tmp_path, methods=(), device="openvino")
    assert sorted(on_openvino) == sorted(on_cpu) and len(on_cpu) == len(methods)
    for name, served in on_cpu.items():
        other = on_openvino[name]
        assert [s.metadata() for s in other.inputs] == [s.metadata() for s in served.inputs]  # with the optional target
        assert [s.metadata() for s in other.outputs] == [s.metadata() for s in served.outputs]
        outputs = [s.name for s in served.outputs]
        image = {served.inputs[0].name: images}
        for feeds in (image, {**image, "target": np.array([3, 1, 4, 1, 5, 9], np.int64)}):
            want, got = served.run(feeds, outputs), other.run(feeds, outputs)
            for output in outputs:
                assert_close(got[output], want[output], f"{name} {output} ({sorted(feeds)})")


def test_gradcheck_passes_on_openvino(ov_model, images):
    single = onnxsight.gradcheck(ov_model, images[:2], precision="float32", wrt=["input", ov_model.layers[1].name])
    assert single.runtime == "openvino" and single.passed, single
    from onnxsight.engine.gradcheck import runner

    _, runtime = runner(ov_model.proto, [ov_model.logits], "float64", ov_model)
    assert runtime == "onnx.reference"  # OpenVINO computes float64 in float32; onnxruntime lacks a float64 Conv


def _determinant_model() -> onnx.ModelProto:
    """(N, 3, 3) -> the determinant and its square: Det runs in onnxruntime, OpenVINO has no conversion for it."""
    graph = helper.make_graph(
        [helper.make_node("Det", ["x"], ["det"]), helper.make_node("Mul", ["det", "det"], ["y"])], "det",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_an_op_openvino_lacks_fails_in_one_line():
    x = np.random.default_rng(0).standard_normal((2, 3, 3)).astype(np.float32)
    assert np.allclose(onnxsight.load(_determinant_model(), device="cpu").run(x, ["y"])[0], np.linalg.det(x) ** 2, rtol=1e-4)
    with pytest.raises(ModelFileError) as raised:
        onnxsight.load(_determinant_model(), device="openvino").run(x, ["y"])
    message = str(raised.value)
    assert message.startswith("openvino cannot run <in-memory model>: ") and "Det" in message and "\n" not in message, message


def test_a_missing_openvino_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    with pytest.raises(MissingDependency, match=r"pip install 'onnxsight\[openvino\]'"):
        onnxsight.load(_determinant_model(), device="openvino")


def test_cli_predict_on_openvino(mnist_onnx, images, tmp_path):
    import json

    from typer.testing import CliRunner

    from onnxsight.cli.app import app

    np.save(tmp_path / "x.npy", images)
    results = {}
    for device in ("cpu", "openvino"):
        result = CliRunner().invoke(app, ["predict", str(mnist_onnx), str(tmp_path / "x.npy"), "--device", device, "--json"])
        assert result.exit_code == 0, result.output
        results[device] = json.loads(result.stdout)
    scores = {d: np.array([[c["score"] for c in image["top"]] for image in r]) for d, r in results.items()}
    assert [[c["class"] for c in i["top"]] for i in results["openvino"]] == [[c["class"] for c in i["top"]] for i in results["cpu"]]
    assert_close(scores["openvino"], scores["cpu"], "predict --json scores")
    bad = CliRunner().invoke(app, ["predict", str(mnist_onnx), str(tmp_path / "x.npy"), "--device", "tpu"])
    assert bad.exit_code != 0 and "unknown device 'tpu'" in bad.output


@pytest.mark.parametrize("kernel, pads, size, output_shape", [
    (2, 0, 6, False),  # the MaxPool gradient's tiling case
    (2, 0, 5, True),  # an odd input: the unpooled size given as output_shape
    (3, 1, 7, False),  # padded windows: (in - 1)·strides + kernel - pads
])
def test_max_unpool_is_lowered_to_what_onnxruntime_computes(kernel, pads, size, output_shape):
    """OpenVINO has no MaxUnpool; its ScatterElements lowering equals onnxruntime's MaxUnpool exactly."""
    attrs = dict(kernel_shape=[kernel] * 2, strides=[kernel] * 2, pads=[pads] * 4)
    nodes = [helper.make_node("MaxPool", ["x"], ["y", "i"], **attrs),
             helper.make_node("MaxUnpool", ["y", "i", *(["s"] if output_shape else [])], ["z"], **attrs)]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, size, size])]
    initializers = [helper.make_tensor("s", TensorProto.INT64, [4], [2, 3, size, size])] if output_shape else []
    graph = helper.make_graph(nodes, "unpool", inputs, [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
                              initializer=initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
    want = onnxsight.load(proto, device="cpu").run(x, ["z"])[0]
    got = onnxsight.load(proto, device="openvino").run(x, ["z"])[0]
    assert want.shape == got.shape and np.count_nonzero(want) == 2 * 3 * (size // kernel if not pads else 3) ** 2
    np.testing.assert_array_equal(got, want)


def test_only_the_session_layer_knows_a_runtime():
    """Above engine/session.py (and the OpenVINO module it imports) no code opens runtime sessions or
    compares provider lists; the Keras converter checks its conversion with onnxruntime itself."""
    from pathlib import Path

    package = Path(onnxsight.__file__).parent
    allowed = {"engine/session.py", "engine/openvino_session.py", "converters/keras.py"}
    markers = ("InferenceSession", "ExecutionProvider", "import onnxruntime", "import openvino", "from openvino")
    knowing = [str(path.relative_to(package)) for path in package.rglob("*.py")
               if str(path.relative_to(package)) not in allowed and any(m in path.read_text() for m in markers)]
    assert not knowing, f"runtime-specific code outside engine/session.py: {knowing}"


@pytest.mark.parametrize(("wide", "narrow", "sizes", "matched"), [
    (["N", 37, 32], ["N", 37, 1], ((3, 37, 32), (3, 37, 1)), 0),  # a layer norm's moments
    (["N", 4, 4, 3], ["M", 1, 1, 3], ((2, 4, 4, 3), (2, 1, 1, 3)), 0),  # a squeeze-excite scale
    (["N", 2, 4, 3], ["M", 4, 3], ((5, 2, 4, 3), (2, 4, 3)), 0),  # a batched MatMul's broadcast operand
    (["N", 37, 32], ["M", 37, 32], ((3, 37, 32), (3, 37, 32)), 0),  # a residual Add in a ViT: nothing to sum
    (["N", 6, 5], ["M", 1, 5], ((4, 6, 5), (1, 1, 5)), 0),  # the batch broadcast too
    (["N", 4, 3], [2, 4, 3], ((2, 4, 3), (2, 4, 3)), 0),  # every size known on one side
    (["N", "B", "P", "Q"], ["M", "C", "R", "S"], ((2, 3, 4, 5), (2, 1, 4, 5)), 2),  # a MatMul's operands, shapes unknown
    (["N", "B", "P", "Q"], ["M", "R", "S"], ((2, 3, 4, 5), (3, 4, 5)), 2),  # ... one with fewer batch axes
])
def test_gradients_summed_over_symbolic_broadcast_axes_run_on_openvino(wide, narrow, sizes, matched):
    """Where shape inference cannot tell whether an axis was broadcast, the gradient is summed with static
    axes (OpenVINO refuses a ReduceSum whose axes have unknown length), splitting only those axes (not the
    ``matched`` ones a MatMul knows): equal to numpy on both runtimes."""
    from onnxsight.engine.autodiff.builder import GraphBuilder
    from onnxsight.engine.session import open_session, resolve

    infos = {"g": helper.make_tensor_value_info("g", TensorProto.FLOAT, wide),
             "x": helper.make_tensor_value_info("x", TensorProto.FLOAT, narrow)}
    builder = GraphBuilder(infos, 17, "t/")
    summed = builder.unbroadcast("fresh", "x", rank=len(wide), matched=matched)  # "fresh": shape inference never saw it
    graph = helper.make_graph([helper.make_node("Identity", ["g"], ["fresh"]), *builder.nodes], "unbroadcast",
                              list(infos.values()), [helper.make_tensor_value_info(summed, TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    assert not any(node.op_type == "NonZero" for node in model.graph.node)
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in inferred.graph.value_info}
    symbolic = sum(not isinstance(size, int) for size in narrow[:len(narrow) - matched])
    assert all(ranks[node.input[0]] <= len(wide) + symbolic for node in model.graph.node if node.op_type == "ReduceSum"), \
        "only the axes shape inference cannot decide are split (OpenVINO runs a ReduceSum of rank > 5 slowly)"
    g = np.random.default_rng(0).normal(size=sizes[0]).astype(np.float32)
    x = np.zeros(sizes[1], np.float32)
    extra = g.ndim - x.ndim
    axes = tuple(range(extra)) + tuple(a for a in range(extra, g.ndim) if x.shape[a - extra] == 1 < g.shape[a])
    want = g.astype(np.float64).sum(axis=axes).reshape(x.shape)
    for device in ("cpu", "openvino"):
        got = open_session(model, resolve(device), "unbroadcast").run([summed], {"g": g, "x": x})[0]
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=device)  # float32 sums of ≤ 32 normal values


def _shared_weights_model(second: str) -> tuple[onnx.ModelProto, np.ndarray]:
    """(N, 6) a, g -> a·W and g·Wᵀ with one square constant W; ``second`` says how g·Wᵀ is written: a MatMul of
    Transpose(W) (the MatMul gradient rule), a Gemm with transB, or Transpose(Transpose(W)) under a forward Gemm."""
    w = np.random.default_rng(1).standard_normal((6, 6)).astype(np.float32)
    nodes = {
        "transpose": [helper.make_node("MatMul", ["a", "w"], ["forward"]),
                      helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]), helper.make_node("MatMul", ["g", "wt"], ["backward"])],
        "gemm": [helper.make_node("MatMul", ["a", "w"], ["forward"]), helper.make_node("Gemm", ["g", "w"], ["backward"], transB=1)],
        "gemm-forward": [helper.make_node("Gemm", ["a", "wt0"], ["forward"], transB=1),
                         helper.make_node("Transpose", ["wt0"], ["w1"], perm=[1, 0]),
                         helper.make_node("Transpose", ["w1"], ["wt"], perm=[1, 0]), helper.make_node("MatMul", ["g", "wt"], ["backward"])],
    }[second]
    weights = helper.make_tensor("wt0" if second == "gemm-forward" else "w", TensorProto.FLOAT, [6, 6],
                                 (w.T if second == "gemm-forward" else w).ravel())
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 6]) for name in ("a", "g")]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 6]) for name in ("forward", "backward")]
    graph = helper.make_graph(nodes, "shared_weights", inputs, outputs, initializer=[weights])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), w


@pytest.mark.parametrize("second", ["transpose", "gemm", "gemm-forward"])
def test_a_square_weight_used_both_ways_gives_both_products(second):
    """OpenVINO 2026.4's CPU plugin computes g·Wᵀ as g·W when another MatMul uses the same square constant W
    untransposed (a Dense layer beside its gradient); the session gives each product its own constant."""
    from onnxsight.engine.openvino_session import with_own_weights

    proto, w = _shared_weights_model(second)
    rng = np.random.default_rng(0)
    a, g = (rng.standard_normal((4, 6)).astype(np.float32) for _ in range(2))
    lowered = with_own_weights(proto)
    weights = [node.input[1] for node in lowered.graph.node if node.op_type in ("MatMul", "Gemm")]
    uses = [i for node in lowered.graph.node for i in node.input]
    assert len(set(weights)) == 2 and all(uses.count(name) == 1 for name in weights), weights
    assert {t.name for t in lowered.graph.initializer} == set(weights)
    for device in ("cpu", "openvino"):
        forward, backward = onnxsight.load(proto, device=device).run({"a": a, "g": g}, ["forward", "backward"])
        # float32 dot products of 6 normal terms: errors about 1e-6, far below the 1e0 of the W-for-Wᵀ mistake
        np.testing.assert_allclose(forward, a.astype(np.float64) @ w, atol=1e-5, err_msg=device)
        np.testing.assert_allclose(backward, g.astype(np.float64) @ w.T, atol=1e-5, err_msg=device)


VIT_METHODS = {
    "input gradient": lambda m, x: m.gradient(x, of="logits", target=1, wrt=["input"])["input"],
    "saliency": lambda m, x: onnxsight.saliency(m, x, target=1),
    "ig": lambda m, x: onnxsight.integrated_gradients(m, x, target=1, steps=8),
    "gradcam": lambda m, x: onnxsight.gradcam(m, x, target=1, normalize=False),
}


@pytest.fixture(scope="module")
def keras_vit(tmp_path_factory):
    """A small Keras ViT (48² images, 8² patches, width 32, two blocks) on onnxruntime and OpenVINO, and a batch."""
    pytest.importorskip("tensorflow")
    from tests.vit_models import vit

    path = onnxsight.convert_keras(vit(image=48, patch=8, width=32, depth=2, heads=2, classes=10),
                                   tmp_path_factory.mktemp("vit") / "vit.onnx")
    x = np.random.default_rng(0).uniform(0, 1, (3, 48, 48, 3)).astype(np.float32)
    return onnxsight.load(path, device="cpu"), onnxsight.load(path, device="openvino"), x


@pytest.fixture(scope="module")
def torch_vit(tmp_path_factory):
    """tests/torch_models.py's ViT (torchvision's layout: Gemm heads, in-projection MatMuls), exported by TorchScript."""
    torch = pytest.importorskip("torch")
    from tests import torch_models

    x = np.random.default_rng(4).standard_normal((2, 3, 32, 32)).astype(np.float32)
    path = tmp_path_factory.mktemp("torch-vit") / "vit.onnx"
    torch_models.export(torch_models.build("vit"), torch.from_numpy(x), path, "torchscript")
    return onnxsight.load(path, device="cpu"), onnxsight.load(path, device="openvino"), x


@pytest.mark.parametrize("method", VIT_METHODS)
@pytest.mark.parametrize("vit", ["keras_vit", "torch_vit"])
def test_vit_gradients_on_openvino_equal_onnxruntimes(vit, method, request):
    """The ViTs' square attention projections are the shared-weight case above (before the fix: 0.6-1.1 off)."""
    on_cpu, on_openvino, x = request.getfixturevalue(vit)
    assert_close(VIT_METHODS[method](on_openvino, x), VIT_METHODS[method](on_cpu, x), f"{vit} {method}")
