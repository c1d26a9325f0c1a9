"""DeepLIFT through transformer ops: each new rule against a float64 numpy reference on a tiny
graph, fused Softmax/LayerNormalization against their decomposition through the other rules, and
summation-to-delta on a Keras ViT and a PyTorch ViT (fused LayerNormalization)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

import onnxsight
from onnxsight.cli.app import app
from onnxsight.errors import UnsupportedOp
from onnxsight.kernels.colors import normalize_each
from onnxsight.methods.deeplift import deeplift, deeplift_gap, deeplift_shap, deeplift_shap_gap
from tests.test_deeplift import EPS, RTOL, onnx_mlp, ours_target, reference_mlp, relative_error, sigmoid
from tests.vit_models import vit

# Summation-to-delta: float32 rounds each op's Δy by ~6e-8 of its magnitude; ~100 ops lie on a ViT's
# path, so the gap stays below 1e-5 of Σ|attributions| (measured: ~1e-8 of it).
GAP = 1e-5


def gap_bound(maps: np.ndarray) -> np.ndarray:
    return GAP * np.abs(maps).reshape(len(maps), -1).sum(axis=1)


def softplus(v):
    return np.logaddexp(0.0, v)


def chain(*steps):
    """An activation builder applying ``steps`` (op, attributes, constant second input or None) in turn."""
    def build(i, t):
        nodes, inits = [], []
        for k, (op, attrs, constant) in enumerate(steps):
            inputs, out = [t], f"{op}{i}_{k}"
            if constant is not None:
                inits.append(numpy_helper.from_array(np.asarray(constant, np.float32), f"c{i}_{k}"))
                inputs.append(f"c{i}_{k}")
            nodes.append(helper.make_node(op, inputs, [out], name=f"{op.lower()}{i}_{k}", **attrs))
            t = out
        return nodes, inits, t
    return build


SQUARE = lambda i, t: ([helper.make_node("Mul", [t, t], [f"sq{i}"], name=f"square{i}")], [], f"sq{i}")  # noqa: E731

# A chain of univariate rescales is the rescale of their composition (Δf/Δg · Δg/Δz = Δf/Δz), so each
# row is one function f with its derivative; the Softplus in front keeps Log, Sqrt and fractional Pow
# on positive inputs.
UNIVARIATE = {
    "Exp": (chain(("Exp", {}, None)), np.exp, np.exp),
    "Log": (chain(("Softplus", {}, None), ("Log", {}, None)), lambda v: np.log(softplus(v)),
            lambda v: sigmoid(v) / softplus(v)),
    "Abs": (chain(("Abs", {}, None)), np.abs, np.sign),
    "Pow": (chain(("Pow", {}, 3.0)), lambda v: v ** 3, lambda v: 3 * v ** 2),
    "Pow-fractional": (chain(("Softplus", {}, None), ("Pow", {}, 1.5)), lambda v: softplus(v) ** 1.5,
                       lambda v: 1.5 * softplus(v) ** 0.5 * sigmoid(v)),
    "Sqrt": (chain(("Softplus", {}, None), ("Sqrt", {}, None)), lambda v: np.sqrt(softplus(v)),
             lambda v: sigmoid(v) / (2 * np.sqrt(softplus(v)))),
    "Reciprocal": (chain(("Softplus", {}, None), ("Add", {}, 0.5), ("Reciprocal", {}, None)),
                   lambda v: 1 / (softplus(v) + 0.5), lambda v: -sigmoid(v) / (softplus(v) + 0.5) ** 2),
    "Square": (SQUARE, np.square, lambda v: 2 * v),  # x·x: the product's split is (x + x₀)·Δx = Δ(x²)
}


def pairs(rows=16, width=6, seed=1):
    """Images and references; row 0 equal (Δ = 0: every rule's gradient branch), row 1 in part."""
    rng = np.random.default_rng(seed)
    x, x0 = rng.normal(0, 1, (rows, width)).astype(np.float32), rng.normal(0, 1, (rows, width)).astype(np.float32)
    x0[0] = x[0]
    x0[1, :3] = x[1, :3]
    return x, x0


@pytest.mark.parametrize("name", sorted(UNIVARIATE))
def test_univariate_rules_are_the_float64_rescale(tmp_path, name):
    build, fn, derivative = UNIVARIATE[name]
    model, weights = onnx_mlp(tmp_path / "mlp.onnx", [(8, build), (5, None)])
    x, x0 = pairs()
    target = ours_target(model, x)
    ours = deeplift(model, x, target, baseline=x0)
    expected = reference_mlp(weights, [(fn, derivative), None], x, x0, target)
    assert relative_error(ours, expected) < RTOL, name
    assert (deeplift_gap(model, x, ours, target, baseline=x0) <= gap_bound(expected)).all(), name


# -- multivariate ops on tiny graphs: x (N, 6) → Gemm → op → Gemm → logits (N, 5) ---------------------
def dense(rng, name, width_in, width_out, scale=0.8):
    w = rng.normal(0, scale, (width_in, width_out)).astype(np.float32)
    b = rng.normal(0, 0.3, width_out).astype(np.float32)
    return (w, b), [numpy_helper.from_array(w, f"{name}_w"), numpy_helper.from_array(b, f"{name}_b")]


def gemm(name, x):
    return helper.make_node("Gemm", [x, f"{name}_w", f"{name}_b"], [name], name=name)


def save(path, nodes, inits, width=6, opset=17):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), path)
    return onnxsight.load(path, device="cpu")


def forward(weights, v):
    w, b = weights
    return np.asarray(v, np.float64) @ w + b


def quotient(f, derivative, v, v0):
    """Δf/Δv, and f'(v) where |Δv| < eps (the input half's gradient)."""
    small = np.abs(v - v0) < EPS
    return np.where(small, derivative(v), (f(v) - f(v0)) / np.where(small, 1.0, v - v0))


def one_hot_rows(weights, target):
    return weights[0].astype(np.float64)[:, target].T


@pytest.mark.parametrize("width", [8, 1])
def test_a_data_dependent_denominator_is_the_product_with_the_reciprocal(tmp_path, width):
    """a / (softplus(zb) + 0.5), b (N, width) broadcast when 1: Δ(a/b) = mean(1/b)·Δa − mean(a)·Δb/(b·b₀)."""
    rng = np.random.default_rng(2)
    wa, ia = dense(rng, "a", 6, 8)
    wb, ib = dense(rng, "zb", 6, width)
    wo, io = dense(rng, "out", 8, 5)
    half = numpy_helper.from_array(np.float32(0.5), "half")
    nodes = [gemm("a", "x"), gemm("zb", "x"), helper.make_node("Softplus", ["zb"], ["sb"], name="softplus"),
             helper.make_node("Add", ["sb", "half"], ["b"], name="plus"),
             helper.make_node("Div", ["a", "b"], ["q"], name="div"),
             gemm("out", "q"), helper.make_node("Identity", ["out"], ["logits"], name="logits")]
    model = save(tmp_path / "div.onnx", nodes, ia + ib + io + [half])
    x, x0 = pairs()
    target = ours_target(model, x)
    a, a0, zb, zb0 = forward(wa, x), forward(wa, x0), forward(wb, x), forward(wb, x0)
    b, b0 = softplus(zb) + 0.5, softplus(zb0) + 0.5
    top = one_hot_rows(wo, target)
    grad_a = top * (1 / b + 1 / b0) / 2
    through_inverse = top * (a + a0) / 2
    grad_b = -(through_inverse.sum(axis=1, keepdims=True) if width == 1 else through_inverse) / (b * b0)
    grad_zb = grad_b * quotient(softplus, sigmoid, zb, zb0)
    expected = (x - np.asarray(x0, np.float64)) * (grad_a @ wa[0].T + grad_zb @ wb[0].T)
    ours = deeplift(model, x, target, baseline=x0)
    assert relative_error(ours, expected) < RTOL
    assert (deeplift_gap(model, x, ours, target, baseline=x0) <= gap_bound(expected)).all()


def reference_softmax(top, z, z0, log=False):
    """The multipliers of z for Softmax (LogSoftmax) along axis 1 in float64, decomposed without a shift:
    u = z − log S, S = Σ exp(z); y = exp(u) (y = u)."""
    e, e0 = np.exp(z), np.exp(z0)
    total, total0 = e.sum(axis=1, keepdims=True), e0.sum(axis=1, keepdims=True)
    u, u0 = z - np.log(total), z0 - np.log(total0)
    grad_u = top if log else top * quotient(np.exp, np.exp, u, u0)
    per_total = quotient(np.log, lambda s: 1 / s, total, total0)
    return grad_u - grad_u.sum(axis=1, keepdims=True) * per_total * quotient(np.exp, np.exp, z, z0)


def softmax_model(path, op, scale, decomposed=False):
    rng = np.random.default_rng(3)
    wz, iz = dense(rng, "z", 6, 8, scale)
    wo, io = dense(rng, "out", 8, 5)
    if decomposed:  # z → Exp → ReduceSum → Log → Sub → (Exp): the same decomposition through the other rules
        inits = [numpy_helper.from_array(np.array([1], np.int64), "axis")]
        body = [helper.make_node("Exp", ["z"], ["e"], name="exp"),
                helper.make_node("ReduceSum", ["e", "axis"], ["s"], name="sum", keepdims=1),
                helper.make_node("Log", ["s"], ["l"], name="log"),
                helper.make_node("Sub", ["z", "l"], ["u" if op == "Softmax" else "y"], name="sub")]
        body += [helper.make_node("Exp", ["u"], ["y"], name="exp_u")] if op == "Softmax" else []
    else:
        inits, body = [], [helper.make_node(op, ["z"], ["y"], name=op.lower(), axis=1)]
    nodes = [gemm("z", "x"), *body, gemm("out", "y"), helper.make_node("Identity", ["out"], ["logits"], name="logits")]
    return save(path, nodes, iz + io + inits), wz, wo


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("scale", [0.8, 40.0])
def test_an_inner_softmax_is_decomposed_exactly(tmp_path, op, scale):
    """Scale 40 puts logits hundreds apart: exp(z) overflows float32 and, with the shared shift, one half's
    Σexp(z − c) underflows to 0 where the halves' maxima differ by more than 104."""
    model, wz, wo = softmax_model(tmp_path / "softmax.onnx", op, scale)
    x, x0 = pairs()
    target = ours_target(model, x)
    z, z0 = forward(wz, x), forward(wz, x0)
    assert scale < 1 or (np.abs(z).max() > 89 and np.abs(z.max(axis=1) - z0.max(axis=1)).max() > 110)
    multipliers = reference_softmax(one_hot_rows(wo, target), z, z0, log=op == "LogSoftmax") @ wz[0].T
    expected = (x - np.asarray(x0, np.float64)) * multipliers
    ours = deeplift(model, x, target, baseline=x0)
    assert relative_error(ours, expected) < RTOL
    assert (deeplift_gap(model, x, ours, target, baseline=x0) <= gap_bound(expected)).all()
    if scale < 1:  # the graph decomposed by hand (no shift) gives the same multipliers through Exp, Log, Sub rules
        decomposed, _, _ = softmax_model(tmp_path / "decomposed.onnx", op, scale, decomposed=True)
        assert relative_error(deeplift(decomposed, x, target, baseline=x0), ours) < RTOL


def layer_norm_model(path, decomposed=False):
    """x → Gemm → LayerNormalization (scale, bias) → Gemm, fused or as tf2onnx writes Keras' (mean, centred,
    c·c, mean, + ε, Sqrt, Reciprocal, products)."""
    rng = np.random.default_rng(4)
    wz, iz = dense(rng, "z", 6, 8)
    wo, io = dense(rng, "out", 8, 5)
    scale, bias = rng.normal(1, 0.5, 8).astype(np.float32), rng.normal(0, 0.5, 8).astype(np.float32)
    inits = [numpy_helper.from_array(scale, "scale"), numpy_helper.from_array(bias, "bias"),
             numpy_helper.from_array(np.array([1], np.int64), "axis"), numpy_helper.from_array(np.float32(1e-3), "eps")]
    if decomposed:
        body = [helper.make_node("ReduceMean", ["z"], ["m"], name="mean", axes=[1]),
                helper.make_node("Sub", ["z", "m"], ["c"], name="centre"),
                helper.make_node("Mul", ["c", "c"], ["c2"], name="square"),
                helper.make_node("ReduceMean", ["c2"], ["v"], name="variance", axes=[1]),
                helper.make_node("Add", ["v", "eps"], ["s"], name="plus"),
                helper.make_node("Sqrt", ["s"], ["r"], name="sqrt"),
                helper.make_node("Reciprocal", ["r"], ["ir"], name="reciprocal"),
                helper.make_node("Mul", ["c", "ir"], ["n"], name="normalise"),
                helper.make_node("Mul", ["n", "scale"], ["ns"], name="scale"),
                helper.make_node("Add", ["ns", "bias"], ["y"], name="bias")]
    else:
        body = [helper.make_node("LayerNormalization", ["z", "scale", "bias"], ["y"], name="norm", epsilon=1e-3)]
    nodes = [gemm("z", "x"), *body, gemm("out", "y"), helper.make_node("Identity", ["out"], ["logits"], name="logits")]
    return save(path, nodes, iz + io + inits), wz, wo, scale


def test_a_fused_layer_norm_is_its_decomposition(tmp_path):
    model, wz, wo, scale = layer_norm_model(tmp_path / "fused.onnx")
    x, x0 = pairs()
    target = ours_target(model, x)
    z, z0 = forward(wz, x), forward(wz, x0)
    c, c0 = z - z.mean(1, keepdims=True), z0 - z0.mean(1, keepdims=True)
    s, s0 = (c ** 2).mean(1, keepdims=True) + 1e-3, (c0 ** 2).mean(1, keepdims=True) + 1e-3
    r, r0 = 1 / np.sqrt(s), 1 / np.sqrt(s0)
    grad_n = one_hot_rows(wo, target) * scale
    grad_r = (grad_n * (c + c0) / 2).sum(1, keepdims=True)
    grad_s = grad_r * quotient(lambda v: v ** -0.5, lambda v: -0.5 * v ** -1.5, s, s0)
    grad_c = grad_n * (r + r0) / 2 + grad_s / 8 * (c + c0)  # Δ(c·c) = (c + c₀)·Δc; the mean's 1/8
    grad_z = grad_c - grad_c.mean(1, keepdims=True)
    expected = (x - np.asarray(x0, np.float64)) * (grad_z @ wz[0].T)
    ours = deeplift(model, x, target, baseline=x0)
    assert relative_error(ours, expected) < RTOL
    assert (deeplift_gap(model, x, ours, target, baseline=x0) <= gap_bound(expected)).all()
    decomposed, _, _, _ = layer_norm_model(tmp_path / "decomposed.onnx", decomposed=True)
    assert relative_error(deeplift(decomposed, x, target, baseline=x0), ours) < RTOL


# -- a Keras ViT (decomposed LayerNorm, attention Softmax, Q·Kᵀ and A·V, GELU) ------------------------
@pytest.fixture(scope="module")
def keras_vit(tmp_path_factory):
    path = tmp_path_factory.mktemp("vit") / "vit.onnx"
    onnxsight.convert_keras(vit(image=48, patch=8, width=32, depth=2), path)
    return path, onnxsight.load(path, device="cpu")


@pytest.fixture(scope="module")
def vit_images():
    rng = np.random.default_rng(5)
    return rng.uniform(0, 1, (4, 48, 48, 3)).astype(np.float32), rng.uniform(0, 1, (4, 48, 48, 3)).astype(np.float32)


def test_a_vit_keeps_summation_to_delta_per_image_and_target(keras_vit, vit_images):
    _, model = keras_vit
    x, x0 = vit_images
    target = np.array([0, 3, 1, 4])
    ours = deeplift(model, x, target, baseline=x0, batch_size=4)  # two runs of two pairs
    assert np.isfinite(ours).all()
    assert (deeplift_gap(model, x, ours, target, baseline=x0) <= gap_bound(ours)).all()
    black = deeplift(model, x, target)
    assert (deeplift_gap(model, x, black, target) <= gap_bound(black)).all()
    gradient = model.gradient(x, target=target, wrt=[model.input_name])[model.input_name]
    assert relative_error(ours, (x - x0) * gradient) > 0.1  # not gradient × Δx: the rules did something


def test_a_vit_scored_on_its_probabilities_is_refused(keras_vit, vit_images):
    """The attention softmaxes are decomposed; the classifier's own softmax, when scored, is not."""
    _, model = keras_vit
    with pytest.raises(UnsupportedOp, match="op Softmax on the scored output.*of='logits'"):
        deeplift(model, vit_images[0][:2], of="output")


def test_a_vit_reference_equal_to_the_image_gives_the_gradient(keras_vit, vit_images):
    """Δ = 0 at every op: the rescale, quotient, product, softmax and layer norm rules all reduce to the gradient."""
    _, model = keras_vit
    x, _ = vit_images
    target = np.array([2, 2, 0, 1])
    multipliers = deeplift(model, x, target, baseline=x, multiply_by_inputs=False)
    gradient = model.gradient(x, target=target, wrt=[model.input_name])[model.input_name]
    assert relative_error(multipliers, gradient) < 1e-5  # float32 rounding of one backward pass (~1e-7)


def test_deeplift_shap_and_the_explainer_work_on_a_vit(keras_vit, vit_images):
    import onnxruntime as ort

    from onnxsight.serving.explainer import export_explainer

    _, model = keras_vit
    x, x0 = vit_images
    baselines = np.stack([x0[0], x0[1] * 0.5])
    shap = deeplift_shap(model, x[:2], [1, 3], baselines=baselines)
    assert (deeplift_shap_gap(model, x[:2], shap, [1, 3], baselines=baselines) <= gap_bound(shap)).all()
    explainer = export_explainer(model, "deeplift").SerializeToString()
    session = ort.InferenceSession(explainer, providers=["CPUExecutionProvider"])
    _, _, heatmap = session.run(None, {"image": x[:2], "target": np.array([1, 3])})
    np.testing.assert_allclose(heatmap, normalize_each(deeplift(model, x[:2], [1, 3], reduce="sum")), rtol=0, atol=1e-5)


def test_the_cli_explains_a_vit(keras_vit, vit_images, tmp_path):
    path, _ = keras_vit
    np.save(tmp_path / "x.npy", vit_images[0][:2])
    result = CliRunner().invoke(app, ["deeplift", str(path), str(tmp_path / "x.npy"), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    heatmaps = np.load(tmp_path / "out" / "deeplift.npy")
    assert heatmaps.shape == (2, 48, 48) and np.isfinite(heatmaps).all()
    gap = json.loads((tmp_path / "out" / "deeplift.json").read_text())["options"]["summation_gap"]
    assert max(gap) < GAP * np.abs(heatmaps).sum(axis=(1, 2)).max()


# -- a PyTorch ViT: fused LayerNormalization, Div by the attention scale --------------------------------
def test_a_torch_vit_keeps_summation_to_delta(tmp_path):
    torch = pytest.importorskip("torch")  # the dev extra installs it
    from tests import torch_models as tm

    rng = np.random.default_rng(6)
    x, x0 = (rng.standard_normal((3, 3, 32, 32)).astype(np.float32) for _ in range(2))
    tm.export(tm.build("vit"), torch.from_numpy(x), tmp_path / "vit.onnx", "torchscript")
    model = onnxsight.load(tmp_path / "vit.onnx", device="cpu")
    assert "LayerNormalization" in {n.op_type for n in model.proto.graph.node}
    ours = deeplift(model, x, [0, 1, 2], baseline=x0)
    assert (deeplift_gap(model, x, ours, [0, 1, 2], baseline=x0) <= gap_bound(ours)).all()
