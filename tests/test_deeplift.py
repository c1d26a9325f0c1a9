"""DeepLIFT (rescale) and DeepLiftShap against float64 numpy references written here from the
DeepLIFT paper and Captum's documented rules; summation-to-delta; the strict modifier's errors."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from onnx import TensorProto, helper, numpy_helper

import onnxsight
from onnxsight.errors import InvalidArgument, UnsupportedOp
from onnxsight.methods.common import target_scores
from onnxsight.methods.deeplift import deeplift, deeplift_gap, deeplift_shap, deeplift_shap_gap

EPS = 1e-10
RTOL = 1e-4  # of the map's largest magnitude: float32 forward and backward against float64


def relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


# -- the float64 reference: both halves of Captum's batch, layer by layer --------------------------
def rescale(grads, x, x0, y, y0, derivative):
    """Rescale rule: g·Δy/Δx in both halves; each half's own gradient where |Δx| < eps."""
    dx = x - x0
    small = np.abs(dx) < EPS
    ratio = np.where(small, 0.0, (y - y0) / np.where(small, 1.0, dx))
    ga, gb = grads
    return np.where(small, ga * derivative(x), ga * ratio), np.where(small, gb * derivative(x0), gb * ratio)


def pool_windows(x):
    """(N, H/2, W/2, C, 4) windows of a 2×2 stride-2 NHWC max pool (floor mode)."""
    n, h, w, c = x.shape
    h, w = h // 2 * 2, w // 2 * 2
    return x[:, :h, :w].reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4).reshape(n, h // 2, w // 2, c, 4)


def unpool(values, first, shape):
    """Each pooled value placed on its window's first maximum (row-major), zeros elsewhere."""
    n, ph, pw, c = values.shape
    out = np.zeros((n, ph, pw, c, 4))
    np.put_along_axis(out, first[..., None], values[..., None], axis=-1)
    full = np.zeros(shape)
    full[:, :2 * ph, :2 * pw] = out.reshape(n, ph, pw, c, 2, 2).transpose(0, 1, 4, 2, 5, 3).reshape(n, 2 * ph, 2 * pw, c)
    return full


def maxpool_rule(grads, x, x0):
    """Captum's maxpool rule: with c = max(y, y₀), place g·(c − y₀) at x's maxima and g·(y − c) at
    x₀'s, sum, divide by Δx; each half's plain gradient where |Δx| < eps."""
    ga, gb = grads
    wa, wb = pool_windows(x), pool_windows(x0)
    ia, ib = wa.argmax(-1), wb.argmax(-1)
    y, y0 = wa.max(-1), wb.max(-1)
    top = np.maximum(y, y0)
    summed = unpool(ga * (top - y0), ia, x.shape) + unpool(gb * (y - top), ib, x.shape)
    dx = x - x0
    small = np.abs(dx) < EPS
    m = summed / np.where(small, 1.0, dx)
    return np.where(small, unpool(ga, ia, x.shape), m), np.where(small, unpool(gb, ib, x.shape), m)


def conv(x, kernel, bias):
    """Valid NHWC convolution, stride 1."""
    windows = sliding_window_view(x, kernel.shape[:2], axis=(1, 2))  # N, H', W', C, kh, kw
    return np.einsum("nhwcij,ijcd->nhwd", windows, kernel) + bias


def conv_transpose(g, kernel, shape):
    """The gradient of ``conv`` with respect to its input."""
    kh, kw = kernel.shape[:2]
    out = np.zeros(shape)
    for i in range(kh):
        for j in range(kw):
            out[:, i:i + g.shape[1], j:j + g.shape[2]] += np.einsum("nhwd,cd->nhwc", g, kernel[i, j])
    return out


def relu(x):
    return np.maximum(x, 0.0)


def reference_seed_cnn(weights, x, x0, target):
    """DeepLIFT of the seed-000 CNN (Conv-Relu-MaxPool-Conv-Relu-MaxPool-Flatten-Dense-Relu-Dense)."""
    k1, b1, k2, b2, w3, b3, w4, b4 = (np.asarray(w, np.float64) for w in weights)
    a = [np.asarray(v, np.float64) for v in (x, x0)]
    c1 = [conv(v, k1, b1) for v in a]
    r1 = [relu(v) for v in c1]
    p1 = [pool_windows(v).max(-1) for v in r1]
    c2 = [conv(v, k2, b2) for v in p1]
    r2 = [relu(v) for v in c2]
    p2 = [pool_windows(v).max(-1) for v in r2]
    f = [v.reshape(len(v), -1) for v in p2]
    d3 = [v @ w3 + b3 for v in f]
    r3 = [relu(v) for v in d3]
    top = np.eye(w4.shape[1])[target] @ w4.T
    grads = (top, top)
    grads = rescale(grads, *d3, *r3, lambda v: (v > 0).astype(float))
    grads = tuple(g @ w3.T for g in grads)
    grads = tuple(g.reshape(p2[0].shape) for g in grads)
    grads = maxpool_rule(grads, *r2)
    grads = rescale(grads, *c2, *r2, lambda v: (v > 0).astype(float))
    grads = tuple(conv_transpose(g, k2, p1[0].shape) for g in grads)
    grads = maxpool_rule(grads, *r1)
    grads = rescale(grads, *c1, *r1, lambda v: (v > 0).astype(float))
    multipliers = conv_transpose(grads[0], k1, x.shape)
    return (a[0] - a[1]) * multipliers


@pytest.fixture(scope="module")
def images(digits_data):
    return digits_data.x_test[:6]


@pytest.fixture(scope="module")
def predicted(model, images):
    return model.run(images, [model.tensor("logits")])[0].argmax(axis=1)


@pytest.mark.parametrize("reference", ["black", "shifted"])
def test_seed_cnn_matches_the_float64_reference(mnist_keras, model, images, predicted, reference):
    x0 = np.zeros_like(images) if reference == "black" else np.roll(images, 3, axis=2) * 0.5 + 0.1
    ours = deeplift(model, images, baseline=x0)
    expected = reference_seed_cnn(mnist_keras.get_weights(), images, x0, predicted)
    assert relative_error(ours, expected) < RTOL
    gap = deeplift_gap(model, images, ours, predicted, baseline=x0)
    assert gap.max() < 1e-5 * np.abs(ours).sum(axis=(1, 2, 3)).max()


def test_batch_size_does_not_change_the_result(model, images):
    everything = deeplift(model, images, baseline="blur")
    assert np.array_equal(everything.shape, images.shape)
    pairs = deeplift(model, images, baseline="blur", batch_size=2)
    np.testing.assert_allclose(pairs, everything, rtol=0, atol=1e-6 * np.abs(everything).max())


def test_multipliers_and_channel_reduction(model, images):
    attributions = deeplift(model, images)
    multipliers = deeplift(model, images, multiply_by_inputs=False)
    np.testing.assert_allclose(multipliers * images, attributions, rtol=0, atol=1e-7 * np.abs(attributions).max())
    np.testing.assert_allclose(deeplift(model, images, reduce="sum"), attributions[..., 0], rtol=1e-6)


def test_summation_to_delta_on_the_residual_cnn(tmp_path):
    import keras

    from onnxsight.demo.architectures import residual_cnn

    keras.utils.set_random_seed(0)
    model = onnxsight.load(onnxsight.convert_keras(residual_cnn(), tmp_path / "residual.onnx"), device="cpu")
    rng = np.random.default_rng(0)
    x = rng.random((4, 32, 32, 3), dtype=np.float32)
    x0 = rng.random((4, 32, 32, 3), dtype=np.float32)
    ours = deeplift(model, x, baseline=x0)
    expected = target_scores(model, x, "predicted") - target_scores(model, x0, ours_target(model, x))
    sums = ours.reshape(4, -1).astype(np.float64).sum(axis=1)
    np.testing.assert_allclose(sums, expected, rtol=0, atol=1e-5 * np.abs(ours).reshape(4, -1).sum(axis=1).max())
    gradient = model.gradient(x, target="predicted", wrt=[model.input_name])[model.input_name]
    assert relative_error(ours, (x - x0) * gradient) > 1e-2  # not gradient × Δx: the rules did something


def ours_target(model, x):
    return model.run(x, [model.tensor("logits")])[0].argmax(axis=1)


# -- small ONNX models built here ------------------------------------------------------------------
def onnx_mlp(path, layers, inputs=6, seed=0):
    """x (N, inputs) → [Gemm → activation]* → Gemm; ``layers`` lists (width, activation builder)."""
    rng = np.random.default_rng(seed)
    nodes, inits, weights, width, tensor = [], [], [], inputs, "x"
    for i, (out, activation) in enumerate(layers):
        w, b = rng.normal(0, 0.8, (width, out)).astype(np.float32), rng.normal(0, 0.3, out).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        weights.append((w, b))
        nodes.append(helper.make_node("Gemm", [tensor, f"w{i}", f"b{i}"], [f"z{i}"], name=f"dense{i}"))
        tensor = f"z{i}"
        if activation is not None:
            new, extra, more = activation(i, tensor)
            nodes += new
            inits += extra
            tensor = more
        width = out
    nodes.append(helper.make_node("Identity", [tensor], ["logits"], name="out"))
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", inputs])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return onnxsight.load(path, device="cpu"), weights


def unary(op, **attrs):
    return lambda i, t: ([helper.make_node(op, [t], [f"{op}{i}"], name=f"{op.lower()}{i}", **attrs)], [], f"{op}{i}")


def swish(i, t):
    return ([helper.make_node("Sigmoid", [t], [f"s{i}"], name=f"sigmoid{i}"),
             helper.make_node("Mul", [t, f"s{i}"], [f"swish{i}"], name=f"swish{i}")], [], f"swish{i}")


def relu6(i, t):
    lo, hi = numpy_helper.from_array(np.float32(0), f"lo{i}"), numpy_helper.from_array(np.float32(1.5), f"hi{i}")
    return [helper.make_node("Clip", [t, f"lo{i}", f"hi{i}"], [f"clip{i}"], name=f"clip{i}")], [lo, hi], f"clip{i}"


def sigmoid(v):
    return 1 / (1 + np.exp(-v))


FUNCTIONS = {  # activation builder -> (f, f') in float64
    "Sigmoid": (unary("Sigmoid"), sigmoid, lambda v: sigmoid(v) * (1 - sigmoid(v))),
    "Tanh": (unary("Tanh"), np.tanh, lambda v: 1 - np.tanh(v) ** 2),
    "Elu": (unary("Elu", alpha=1.0), lambda v: np.where(v > 0, v, np.expm1(np.minimum(v, 0))),
            lambda v: np.where(v > 0, 1.0, np.exp(np.minimum(v, 0)))),
    "LeakyRelu": (unary("LeakyRelu", alpha=0.1), lambda v: np.where(v > 0, v, 0.1 * v), lambda v: np.where(v > 0, 1.0, 0.1)),
    "Softplus": (unary("Softplus"), lambda v: np.log1p(np.exp(v)), sigmoid),
    "Clip": (relu6, lambda v: np.clip(v, 0, 1.5), lambda v: ((v >= 0) & (v <= 1.5)).astype(float)),
    "Swish": (swish, lambda v: v * sigmoid(v), lambda v: sigmoid(v) * (1 + v * (1 - sigmoid(v)))),
}


def reference_mlp(weights, functions, x, x0, target):
    """DeepLIFT of Gemm/activation stacks: the rescale multiplier at every activation."""
    acts = [np.asarray(x, np.float64), np.asarray(x0, np.float64)]
    saved = []
    for (w, b), fn in zip(weights, functions):
        z = [a @ w.astype(np.float64) + b for a in acts]
        if fn is not None:
            acts = [fn[0](v) for v in z]
            saved.append((z, acts, fn[1]))
        else:
            acts = z
    top = np.eye(weights[-1][0].shape[1])[target]
    grads = (top, top)
    for (w, _), fn in zip(reversed(weights), reversed(functions)):
        if fn is not None:
            z, y, derivative = saved.pop()
            grads = rescale(grads, *z, *y, derivative)
        grads = tuple(g @ w.T.astype(np.float64) for g in grads)
    return (np.asarray(x, np.float64) - x0) * grads[0]


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_activation_mlps_match_the_float64_reference(tmp_path, name):
    build, fn, derivative = FUNCTIONS[name]
    model, weights = onnx_mlp(tmp_path / "mlp.onnx", [(8, build), (7, build), (5, None)])
    rng = np.random.default_rng(1)
    x, x0 = rng.normal(0, 1, (16, 6)).astype(np.float32), rng.normal(0, 1, (16, 6)).astype(np.float32)
    x0[0] = x[0]  # a zero Δ everywhere: the gradient branch
    x0[1, :3] = x[1, :3]
    target = ours_target(model, x)
    ours = deeplift(model, x, target, baseline=x0)
    expected = reference_mlp(weights, [(fn, derivative), (fn, derivative), None], x, x0, target)
    assert relative_error(ours, expected) < RTOL
    assert deeplift_gap(model, x, ours, target, baseline=x0).max() < 1e-5 * np.abs(expected).sum(axis=1).max()


def test_linear_model_gives_gradient_times_delta(tmp_path):
    model, weights = onnx_mlp(tmp_path / "linear.onnx", [(8, None), (5, None)])
    x = np.random.default_rng(2).normal(0, 1, (4, 6)).astype(np.float32)
    x0 = np.float32(0.25)
    target = np.array([0, 1, 2, 4])
    matrix = weights[0][0].astype(np.float64) @ weights[1][0]
    expected = (x - x0) * matrix[:, target].T
    assert relative_error(deeplift(model, x, target, baseline=x0), expected) < 1e-6


def test_squeeze_excitation_gate_keeps_summation_to_delta(tmp_path):
    """x·σ(Wx) (two data-dependent factors): the Shapley split of the product keeps the sum."""
    def gate(i, t):
        w = numpy_helper.from_array(np.random.default_rng(3).normal(0, 1, (8, 8)).astype(np.float32), f"g{i}")
        return ([helper.make_node("MatMul", [t, f"g{i}"], [f"gz{i}"], name=f"gate{i}"),
                 helper.make_node("Sigmoid", [f"gz{i}"], [f"gs{i}"], name=f"gsig{i}"),
                 helper.make_node("Mul", [t, f"gs{i}"], [f"gated{i}"], name=f"gmul{i}")], [w], f"gated{i}")

    model, _ = onnx_mlp(tmp_path / "se.onnx", [(8, gate), (5, None)])
    rng = np.random.default_rng(4)
    x, x0 = rng.normal(0, 1, (8, 6)).astype(np.float32), rng.normal(0, 1, (8, 6)).astype(np.float32)
    ours = deeplift(model, x, baseline=x0)
    assert deeplift_gap(model, x, ours, "predicted", baseline=x0).max() < 1e-5 * np.abs(ours).sum(axis=1).max()


def test_deeplift_shap_is_the_mean_over_baselines(model, images, predicted):
    baselines = np.stack([np.zeros_like(images[0]), images[-1] * 0.5, np.full_like(images[0], 0.3)])
    shap = deeplift_shap(model, images, baselines=baselines, batch_size=4)
    each = np.mean([deeplift(model, images, predicted, baseline=b) for b in baselines], axis=0)
    np.testing.assert_allclose(shap, each, rtol=0, atol=1e-6 * np.abs(each).max())
    gap = deeplift_shap_gap(model, images, shap, predicted, baselines=baselines)
    assert gap.max() < 1e-5 * np.abs(shap).sum(axis=(1, 2, 3)).max()


def test_unsupported_op_is_named(tmp_path):
    model, _ = onnx_mlp(tmp_path / "l2.onnx", [(8, unary("LpNormalization")), (5, None)])  # not univariate
    with pytest.raises(UnsupportedOp, match=r"no deeplift rule for op LpNormalization \(node 'lpnormalization0'\)"):
        deeplift(model, np.ones((2, 6), np.float32))


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_a_softmax_on_the_scored_output_is_refused_with_the_logits_hint(tmp_path, op):
    model, _ = onnx_mlp(tmp_path / "softmax.onnx", [(8, None), (5, unary(op, axis=1))])
    with pytest.raises(UnsupportedOp, match=f"no deeplift rule for op {op} on the scored output.*of='logits'"):
        deeplift(model, np.ones((2, 6), np.float32), of="output")


@pytest.mark.parametrize("options, message", [
    (dict(batch_size=1), "batch_size must be an integer >= 2"),
    (dict(reduce="median"), "reduce"),
    (dict(baseline="purple"), "baseline must be one of"),
])
def test_bad_options_are_invalid_arguments(model, images, options, message):
    with pytest.raises(InvalidArgument, match=message):
        deeplift(model, images, **options)


def test_bad_shap_baselines_are_invalid_arguments(model, images):
    with pytest.raises(InvalidArgument, match=r"baselines for .* must have shape \(K, 28, 28, 1\)"):
        deeplift_shap(model, images, baselines=np.zeros((28, 28, 1), np.float32))


def test_two_inputs_get_one_map_each_and_share_the_delta(tmp_path):
    """a (N, 4) and b (N, 3) → Tanh(a·Wa + b·Wb) → Gemm: a dict per input, the sum over both is the delta."""
    rng = np.random.default_rng(5)
    wa, wb, w = (rng.normal(0, 1, s).astype(np.float32) for s in ((4, 6), (3, 6), (6, 3)))
    nodes = [helper.make_node("MatMul", ["a", "wa"], ["za"], name="ma"),
             helper.make_node("MatMul", ["b", "wb"], ["zb"], name="mb"),
             helper.make_node("Add", ["za", "zb"], ["z"], name="add"), helper.make_node("Tanh", ["z"], ["h"], name="tanh"),
             helper.make_node("MatMul", ["h", "w"], ["logits"], name="out")]
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 4]),
                                             helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
                              [numpy_helper.from_array(v, n) for v, n in ((wa, "wa"), (wb, "wb"), (w, "w"))])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "two.onnx")
    model = onnxsight.load(tmp_path / "two.onnx", device="cpu")
    x = {"a": rng.normal(0, 1, (5, 4)).astype(np.float32), "b": rng.normal(0, 1, (5, 3)).astype(np.float32)}
    maps = deeplift(model, x, 1, baseline={"a": 0.5})
    a, b, a0 = (np.asarray(v, np.float64) for v in (x["a"], x["b"], np.full((5, 4), 0.5)))
    z, z0 = a @ wa + b @ wb, a0 @ wa + np.zeros_like(b) @ wb  # b's reference is "black" too
    m = (np.tanh(z) - np.tanh(z0)) / (z - z0) * w[:, 1]
    assert relative_error(maps["a"], (a - a0) * (m @ wa.T)) < RTOL
    assert relative_error(maps["b"], b * (m @ wb.T)) < RTOL
    gap = deeplift_gap(model, x, maps, 1, baseline={"a": 0.5})
    assert gap.max() < 1e-5 * sum(np.abs(v).sum(axis=1) for v in maps.values()).max()
