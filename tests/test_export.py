"""Explainer models: one plain ONNX graph per method whose outputs equal the library's, in
onnxruntime and in onnx.reference; Triton repository entries; the ``export`` command."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto
from onnx.reference import ReferenceEvaluator
from typer.testing import CliRunner

import onnxsight
from onnxsight.cli.app import app
from onnxsight.errors import InvalidArgument
from onnxsight.kernels.colors import normalize_each
from onnxsight.serving.explainer import ALL_METHODS, EXPLAINER, RELEVANCE_METHODS, export_explainer
from onnxsight.serving.triton import config_pbtxt, write_triton_entry
from tests.foreign_models import nchw_cnn

# Heatmaps are min-max scaled to [0, 1]; graph and library compute the same float32 gradients, the library
# then combines them in float64 (CAM weights, IG's quadrature, occlusion's averages) where the graph stays in
# float32: a few float32 ulps of 1 (seen: below 1e-6), so 1e-5 absolute.
TOLERANCE = 1e-5
SMOOTH = dict(samples=4, noise=0.2, seed=3)
IG = dict(steps=8)
OCCLUSION = dict(window=7, stride=4)


def _cam(variant):
    return lambda m, x, t: onnxsight.gradcam(m, x, target=t, variant=variant)


# method -> (export options, the library's computation of the same maps)
CASES = {
    "saliency": ({}, lambda m, x, t: onnxsight.saliency(m, x, target=t, normalize=True)),
    "guided": ({}, lambda m, x, t: onnxsight.saliency(m, x, target=t, modifier="guided", normalize=True)),
    "gradient-x-input": ({}, lambda m, x, t: normalize_each(
        onnxsight.saliency(m, x, target=t, times_input=True, absolute=False, reduce="sum"))),
    "gradcam": ({}, _cam("gradcam")),
    "gradcam++": ({}, _cam("gradcam++")),
    "xgradcam": ({}, _cam("xgradcam")),
    "layercam": ({}, _cam("layercam")),
    "hirescam": ({}, _cam("hirescam")),
    "guided-gradcam": ({}, lambda m, x, t: onnxsight.gradcam(m, x, target=t, guided=True)),
    "smoothgrad": (SMOOTH, lambda m, x, t: onnxsight.saliency(
        m, x, target=t, normalize=True, smooth_samples=SMOOTH["samples"], smooth_noise=SMOOTH["noise"], seed=SMOOTH["seed"])),
    "ig": (IG, lambda m, x, t: normalize_each(onnxsight.integrated_gradients(m, x, target=t, reduce="sum", **IG))),
    "occlusion": (OCCLUSION, lambda m, x, t: normalize_each(onnxsight.occlusion(m, x, target=t, **OCCLUSION))),
    "deeplift": ({}, lambda m, x, t: normalize_each(onnxsight.deeplift(m, x, target=t, reduce="sum"))),
}
EXPLAINED = tuple(CASES)  # the LRP rules: tests/test_cli_relevance.py


def test_every_method_has_a_case():
    missing = set(ALL_METHODS) - set(RELEVANCE_METHODS) - set(CASES)
    assert not missing, f"add a case for: {missing}"


@pytest.fixture(scope="module")
def x(digits_data):
    return digits_data.x_test[:5]


@pytest.fixture(scope="module")
def explainers(model):
    return {method: export_explainer(model, method, **options) for method, (options, _) in CASES.items()}


def session(proto: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # an input with a default value (target) is reported as a warning
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("method", EXPLAINED)
def test_explainer_equals_the_library_in_onnxruntime(model, explainers, x, method):
    run = session(explainers[method]).run
    library = CASES[method][1]
    probabilities, target, heatmap = run(None, {"image": x})
    np.testing.assert_allclose(probabilities, model.predict(x), atol=1e-6)
    np.testing.assert_array_equal(target, model.predict(x).argmax(axis=1))
    np.testing.assert_allclose(heatmap, library(model, x, "predicted"), atol=TOLERANCE, err_msg=f"{method}, predicted")
    assert heatmap.shape == (len(x), 28, 28) and heatmap.min() == 0 and heatmap.max() == pytest.approx(1)

    chosen = np.array([3, 1, 4, 1, 5])
    _, target, heatmap = run(None, {"image": x, "target": chosen})
    np.testing.assert_array_equal(target, chosen)
    np.testing.assert_allclose(heatmap, library(model, x, chosen), atol=TOLERANCE, err_msg=f"{method}, targets 3,1,4,1,5")

    _, target, heatmap = run(None, {"image": x, "target": np.array([7])})  # one target for the whole batch
    np.testing.assert_array_equal(target, [7] * len(x))
    np.testing.assert_allclose(heatmap, library(model, x, 7), atol=TOLERANCE, err_msg=f"{method}, target 7")


@pytest.mark.parametrize("method", EXPLAINED)
def test_explainer_runs_unchanged_in_onnx_reference(explainers, x, method):
    expected = session(explainers[method]).run(None, {"image": x[:2]})
    reference = ReferenceEvaluator(explainers[method])  # the stock evaluator, no onnxsight op fixes
    for got, want in zip(reference.run(None, {"image": x[:2]}), expected):  # target omitted: its default
        np.testing.assert_allclose(got, want, atol=TOLERANCE, err_msg=method)
    chosen = np.array([2, 9])
    for got, want in zip(reference.run(None, {"image": x[:2], "target": chosen}),
                         session(explainers[method]).run(None, {"image": x[:2], "target": chosen})):
        np.testing.assert_allclose(got, want, atol=TOLERANCE, err_msg=method)


@pytest.mark.parametrize("layer", ["conv2d_1", "max_pooling2d_1", "conv2d_2", "max_pooling2d_2"])
def test_gradcam_resize_matches_opencv_bilinear_at_every_layer_size(model, x, layer):
    """26x26, 13x13, 9x9 and 4x4 maps upsampled to 28x28: ONNX Resize (linear, half_pixel) = cv2.INTER_LINEAR."""
    heatmap = session(export_explainer(model, "gradcam", layer=layer)).run(["heatmap"], {"image": x})[0]
    np.testing.assert_allclose(heatmap, onnxsight.gradcam(model, x, layer=layer), atol=TOLERANCE, err_msg=layer)


@pytest.mark.parametrize("method", EXPLAINED)
def test_explainer_of_an_nchw_colour_model_with_weights_listed_as_inputs(method):
    """PyTorch layout, three channels (the channel max matters), initializers also listed as graph inputs."""
    m = onnxsight.load(nchw_cnn(weights_as_inputs=True), device="cpu")
    images = np.random.default_rng(1).uniform(0, 1, (3, 3, 8, 8)).astype(np.float32)
    options, library = CASES[method]
    proto = export_explainer(m, method, **options)
    assert [v.name for v in proto.graph.input] == ["image", "target"]
    probabilities, _, heatmap = session(proto).run(None, {"image": images})
    np.testing.assert_allclose(probabilities, m.predict(images), atol=1e-6)
    np.testing.assert_allclose(heatmap, library(m, images, "predicted"), atol=TOLERANCE, err_msg=method)
    assert heatmap.shape == (3, 8, 8)


def test_explainer_graph_has_the_documented_interface(model, explainers):
    proto = explainers["gradcam"]
    onnx.checker.check_model(proto, full_check=True)
    graph = proto.graph
    inputs = {v.name: v.type.tensor_type for v in graph.input}
    outputs = {v.name: v.type.tensor_type for v in graph.output}
    assert list(inputs) == ["image", "target"] and list(outputs) == ["probabilities", "target_class", "heatmap"]
    dims = lambda t: [d.dim_param or d.dim_value for d in t.shape.dim]  # noqa: E731
    assert dims(inputs["image"]) == ["N", 28, 28, 1] and inputs["image"].elem_type == TensorProto.FLOAT
    assert inputs["target"].elem_type == TensorProto.INT64
    assert dims(outputs["heatmap"]) == ["N", 28, 28] and dims(outputs["probabilities"]) == ["N", 10]
    default = next(t for t in graph.initializer if t.name == "target")
    assert onnx.numpy_helper.to_array(default).tolist() == [-1]
    props = {p.key: p.value for p in proto.metadata_props}
    description = json.loads(props[EXPLAINER])
    assert description["method"] == "gradcam" and description["layer"] == "max_pooling2d_2" and description["classes"] == 10
    assert "onnxsight.augmented" not in props  # the cotangent input is wired inside the graph
    assert proto.ir_version >= 4


def test_explainer_of_a_model_already_using_the_public_names(model, x):
    """A model whose own tensors are called image/probabilities gets them renamed, with the same numbers."""
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    renames = {model.input_name: "image", model.output_names[0]: "probabilities"}
    for value in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
        value.name = renames.get(value.name, value.name)
    for node in proto.graph.node:
        node.input[:] = [renames.get(i, i) for i in node.input]
        node.output[:] = [renames.get(o, o) for o in node.output]
    props = {p.key: p.value for p in proto.metadata_props}
    del proto.metadata_props[:]  # a foreign file: no layer map
    proto.metadata_props.add(key="onnxsight.input_layout", value=props["onnxsight.input_layout"])
    foreign = onnxsight.load(proto, device="cpu")
    probabilities, _, heatmap = session(export_explainer(foreign, "saliency")).run(None, {"image": x})
    np.testing.assert_allclose(probabilities, model.predict(x), atol=1e-6)
    np.testing.assert_allclose(heatmap, onnxsight.saliency(model, x, normalize=True), atol=TOLERANCE)


@pytest.mark.parametrize(
    ("method", "options", "message"),
    [
        ("lime", {}, "unknown explainer method 'lime'"),
        ("saliency", {"layer": "conv2d_2"}, "--layer applies to gradcam, gradcam\\+\\+"),
        ("gradcam", {"layer": "dense_1"}, "has no spatial output"),
        ("gradcam", {"layer": "conv2d_9"}, "unknown layer 'conv2d_9'"),
        ("smoothgrad", {"samples": 0}, "samples must be an integer >= 1"),
        ("smoothgrad", {"noise": -1.0}, "smooth_noise must be a finite number >= 0"),
    ],
)
def test_bad_export_options_are_named(model, method, options, message):
    with pytest.raises(InvalidArgument, match=message):
        export_explainer(model, method, **options)


@pytest.mark.parametrize("method", ["saliency", "gradcam"])
def test_a_fixed_batch_model_explains_any_batch(method):
    """Old zoo files: input batch 1 and a Reshape to the constant [1, 64]; the explainer's batch is dynamic."""
    images = np.random.default_rng(2).uniform(0, 1, (3, 3, 8, 8)).astype(np.float32)
    fixed, dynamic = (export_explainer(onnxsight.load(nchw_cnn(batch), device="cpu"), method) for batch in (1, "N"))
    for got, want in zip(session(fixed).run(None, {"image": images}), session(dynamic).run(None, {"image": images})):
        np.testing.assert_allclose(got, want, atol=1e-6, err_msg=method)


def test_explainer_of_n_c_1_1_class_scores():
    """A fully convolutional classifier: probabilities (N, C), the predicted class and its gradient."""
    from tests.test_class_scores import fully_convolutional

    m = onnxsight.load(fully_convolutional(), device="cpu")
    images = np.random.default_rng(2).uniform(0, 1, (3, 3, 8, 8)).astype(np.float32)
    probabilities, target, heatmap = session(export_explainer(m, "saliency")).run(None, {"image": images})
    scores = m.predict(images).reshape(3, -1)
    np.testing.assert_allclose(probabilities, scores, atol=1e-6)
    np.testing.assert_array_equal(target, scores.argmax(axis=1))
    np.testing.assert_allclose(heatmap, onnxsight.saliency(m, images, target="predicted", normalize=True), atol=TOLERANCE)


TRITON_CONFIG = '''name: "digits.gradcam"
platform: "onnxruntime_onnx"
max_batch_size: 0
input [
  {
    name: "image"
    data_type: TYPE_FP32
    dims: [ -1, 28, 28, 1 ]
  },
  {
    name: "target"
    data_type: TYPE_INT64
    dims: [ -1 ]
    optional: true
  }
]
output [
  {
    name: "probabilities"
    data_type: TYPE_FP32
    dims: [ -1, 10 ]
  },
  {
    name: "target_class"
    data_type: TYPE_INT64
    dims: [ -1 ]
  },
  {
    name: "heatmap"
    data_type: TYPE_FP32
    dims: [ -1, 28, 28 ]
  }
]
'''


def test_triton_entry_names_every_tensor(explainers, tmp_path):
    proto = explainers["gradcam"]
    assert config_pbtxt(proto, "digits.gradcam", optional=["target"]) == TRITON_CONFIG
    assert "optional" not in config_pbtxt(proto, "digits.gradcam")  # a plain input list without defaults
    folder = write_triton_entry(proto, tmp_path, "digits.gradcam", optional=["target"])
    assert (folder / "config.pbtxt").read_text() == TRITON_CONFIG
    assert onnx.load(str(folder / "1" / "model.onnx")) == proto
    with pytest.raises(InvalidArgument, match="already exists"):
        write_triton_entry(proto, tmp_path, "digits.gradcam", optional=["target"])
    with pytest.raises(InvalidArgument, match="plain file name"):
        write_triton_entry(proto, tmp_path, "../escape")


def test_export_command_writes_the_explainer_and_a_triton_entry(mnist_onnx, model, x, tmp_path):
    runner = CliRunner()
    output, repository = tmp_path / "out" / "explain.onnx", tmp_path / "repository"
    result = runner.invoke(app, ["export", str(mnist_onnx), "--method", "guided-gradcam", "--layer", "conv2d_2",
                                 "-o", str(output), "--triton", str(repository)])
    assert result.exit_code == 0, result.output
    assert "target_class" in result.stdout and "heatmap" in result.stdout
    heatmap = session(onnx.load(str(output))).run(["heatmap"], {"image": x})[0]
    np.testing.assert_allclose(heatmap, onnxsight.gradcam(model, x, layer="conv2d_2", guided=True), atol=TOLERANCE)
    assert 'name: "explain"' in (repository / "explain" / "config.pbtxt").read_text()
    assert (repository / "explain" / "1" / "model.onnx").read_bytes() == output.read_bytes()

    again = runner.invoke(app, ["export", str(mnist_onnx), "-o", str(output)])
    assert again.exit_code == 1 and "already exists" in again.output and "Traceback" not in again.output
    unknown = runner.invoke(app, ["export", str(mnist_onnx), "-o", str(tmp_path / "e.onnx"), "--method", "lime"])
    assert unknown.exit_code == 1 and "unknown explainer method" in unknown.output
