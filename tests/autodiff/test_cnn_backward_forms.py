"""The backward forms of issue 18's CNNs: activation masks without Where, squeeze-and-excitation
broadcasts summed without a split of every axis, and cotangents whose batch shape inference keeps.

Each is checked against TensorFlow's autograd (float64 from the same float32 inputs), against
central differences in float64 (onnx's ReferenceEvaluator) away from kinks, and by the op
structure that makes it fast.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, shape_inference

from onnxsight.engine.autodiff import build_vjp

from .helpers import ort_run, ref_run, relative_error, tf_gradient
from .test_backward import gradients, make_model

D = TensorProto.DOUBLE
# float32 onnxruntime against float64 TensorFlow: each element is a product of a few float32
# roundings (unit roundoff 6e-8); 1e-6 leaves room for the float32 inputs' own slope roundings
FLOAT32_TOLERANCE = 1e-6
# float64 central differences with step 1e-6 on smooth pieces: truncation ~1e-12 · f''' , rounding ~1e-10
FINITE_DIFFERENCE_TOLERANCE = 1e-7


@pytest.fixture(scope="module")
def tf():
    import tensorflow

    return tensorflow


def _directional(model, x: np.ndarray, cot: np.ndarray, v: np.ndarray, step: float = 1e-6) -> float:
    """d/dt sum(cot · f(x + t v)) at 0 by central differences in the ReferenceEvaluator (float64)."""
    f = lambda t: ref_run(model, {"x": t})[0]  # noqa: E731
    return float(np.sum(cot * (f(x + step * v) - f(x - step * v))) / (2 * step))


# exact zeros (the kinks), values one float32 step either side, and ordinary values
KINKS = np.array([-3.0, -1.0, -1e-30, -0.0, 0.0, 1e-45, 1e-30, 0.5, 2.0], np.float32)
SLOPE = np.array([0.25, -0.5, 1.5], np.float32)  # PRelu's, one per channel

ACTIVATIONS = {
    # name: (node attrs, extra initializers, TensorFlow function of (tf, x), op type)
    "leaky-relu-0.2": ("LeakyRelu", {"alpha": 0.2}, lambda tf, t: tf.nn.leaky_relu(t, 0.2)),
    "leaky-relu-1.5": ("LeakyRelu", {"alpha": 1.5}, lambda tf, t: tf.nn.leaky_relu(t, 1.5)),
    "leaky-relu-negative": ("LeakyRelu", {"alpha": -0.5}, lambda tf, t: tf.nn.leaky_relu(t, -0.5)),
    "prelu": ("PRelu", {}, lambda tf, t: tf.where(t < 0, SLOPE.reshape(3, 1).astype(np.float64) * t, t)),
    "elu": ("Elu", {}, lambda tf, t: tf.nn.elu(t)),
    # Keras's elu with alpha (keras.activations.elu on TensorFlow): where(x > 0, elu, alpha·elu)
    "elu-0.7": ("Elu", {"alpha": 0.7}, lambda tf, t: tf.where(t > 0, tf.nn.elu(t), 0.7 * tf.nn.elu(t))),
    "selu": ("Selu", {}, lambda tf, t: tf.nn.selu(t)),
}


def _activation_model(name: str, batch, dtype=TensorProto.FLOAT):
    op, attrs, _ = ACTIVATIONS[name]
    inputs, weights = ["x"], {}
    if op == "PRelu":
        inputs, weights = ["x", "slope"], {"slope": SLOPE.reshape(3, 1).astype(np.float64 if dtype == D else np.float32)}
    return make_model([("act", op, inputs, ["y"], attrs)], {"x": [batch, 3, 9]}, {"y": [batch, 3, 9]}, weights, dtype=dtype)


@pytest.mark.parametrize("batch", ["N", 2], ids=["dynamic-batch", "static-batch"])
@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_gradients_are_where_free_and_equal_tensorflow_at_their_kinks(name, batch, tf):
    model = _activation_model(name, batch)
    vjp = build_vjp(model, "y", ["x"])
    if name != "prelu":  # PRelu keeps its Where (an exact pick of any slope measured slower)
        assert "Where" not in {n.op_type for n in vjp.model.graph.node}, name
    x = np.broadcast_to(KINKS, (2, 3, 9)).copy()
    cot = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    got = gradients(vjp, {"x": x}, cot)["x"]
    want = tf_gradient(tf, lambda t: ACTIVATIONS[name][2](tf, t), x, cot)
    np.testing.assert_allclose(got, want, rtol=FLOAT32_TOLERANCE, atol=FLOAT32_TOLERANCE, err_msg=name)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_gradients_match_finite_differences_in_float64(name):
    model = _activation_model(name, "N", dtype=D)
    vjp = build_vjp(model, "y", ["x"])
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 9))
    x[np.abs(x) < 1e-3] = 0.5  # off the kink: central differences straddle it otherwise
    cot, v = rng.standard_normal(x.shape), rng.standard_normal(x.shape)
    grad = gradients(vjp, {"x": x}, cot, ref_run)["x"]
    numeric = _directional(model, x, cot, v)
    assert abs(numeric - np.sum(grad * v)) < FINITE_DIFFERENCE_TOLERANCE * max(1.0, abs(numeric)), name


def test_prelu_slope_gradient_is_the_negative_part_summed_per_channel(tf):
    model = make_model([("act", "PRelu", ["x", "slope"], ["y"], {})], {"x": ["N", 3, 9], "slope": [3, 1]}, {"y": ["N", 3, 9]})
    vjp = build_vjp(model, "y", ["x", "slope"])
    x = np.broadcast_to(KINKS, (2, 3, 9)).copy()
    cot = np.random.default_rng(3).standard_normal(x.shape).astype(np.float32)
    slope = SLOPE.reshape(3, 1)
    feeds = {"x": x, "slope": slope, vjp.cotangent: cot}
    got = dict(zip(["x", "slope"], ort_run(vjp.model, feeds, list(vjp.gradients.values()))))
    tx, ts = tf.constant(x.astype(np.float64)), tf.constant(slope.astype(np.float64))
    with tf.GradientTape() as tape:
        tape.watch([tx, ts])
        loss = tf.reduce_sum(tf.where(tx < 0, ts * tx, tx) * cot.astype(np.float64))
    want_x, want_slope = tape.gradient(loss, [tx, ts])
    np.testing.assert_allclose(got["x"], want_x.numpy(), rtol=FLOAT32_TOLERANCE, atol=FLOAT32_TOLERANCE)
    # sums of 18 float32 products per channel
    np.testing.assert_allclose(got["slope"], want_slope.numpy(), rtol=1e-5, atol=1e-5)


def _excitation(batch_x, batch_s, dtype=TensorProto.FLOAT):
    """A squeeze-and-excitation product y = x · s, s of shape (batch, C, 1, 1): its batch symbol
    differs from x's, as tf2onnx's Reshape(-1, ...) leaves it."""
    nodes = [("excite", "Mul", ["x", "s"], ["m"], {}), ("out", "Relu", ["m"], ["y"], {})]
    return make_model(nodes, {"x": [batch_x, 3, 4, 5], "s": [batch_s, 3, 1, 1]}, {"y": [batch_x, 3, 4, 5]}, dtype=dtype)


@pytest.mark.parametrize("rows_s", [2, 1], ids=["same-batch", "s-broadcast-over-batch"])
def test_excitation_gradients_sum_statically_then_split_only_the_batch(rows_s, tf):
    model = _excitation("N", "M")
    vjp = build_vjp(model, "y", ["x", "s"])
    constants = {n.output[0]: n for n in vjp.model.graph.node if n.op_type == "Constant"}
    for node in vjp.model.graph.node:
        if node.op_type == "ReduceSum":  # the old form split all four axes: axes (1, 3, 5, 7)
            axes = constants[node.input[1]].attribute[0].t
            assert len(axes.int64_data or np.frombuffer(axes.raw_data, np.int64)) <= 2, node.name
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    s = rng.uniform(0.1, 1, (rows_s, 3, 1, 1)).astype(np.float32)
    cot = rng.standard_normal(x.shape).astype(np.float32)
    got = dict(zip(["x", "s"], ort_run(vjp.model, {"x": x, "s": s, vjp.cotangent: cot}, list(vjp.gradients.values()))))
    tx, ts = tf.constant(x.astype(np.float64)), tf.constant(s.astype(np.float64))
    with tf.GradientTape() as tape:
        tape.watch([tx, ts])
        loss = tf.reduce_sum(tf.nn.relu(tx * ts) * cot.astype(np.float64))
    want_x, want_s = tape.gradient(loss, [tx, ts])
    # sums of at most 40 float32 products per element
    assert relative_error(got["x"], want_x.numpy()) < FLOAT32_TOLERANCE
    assert relative_error(got["s"], want_s.numpy()) < 1e-5


@pytest.mark.parametrize("batches", [("N", "M"), (2, 2), ("N", 1)], ids=["symbols", "static", "static-one"])
def test_excitation_gradients_match_finite_differences_in_float64(batches):
    model = _excitation(*batches, dtype=D)
    vjp = build_vjp(model, "y", ["x", "s"])
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 4, 5))
    s = rng.uniform(0.1, 1, (1 if batches[1] == 1 else 2, 3, 1, 1))
    cot = rng.standard_normal(x.shape)
    got = dict(zip(["x", "s"], ref_run(vjp.model, {"x": x, "s": s, vjp.cotangent: cot}, list(vjp.gradients.values()))))
    f = lambda a, b: ref_run(model, {"x": a, "s": b})[0]  # noqa: E731
    step, vx, vs = 1e-6, rng.standard_normal(x.shape), rng.standard_normal(s.shape)
    numeric = np.sum(cot * (f(x + step * vx, s + step * vs) - f(x - step * vx, s - step * vs))) / (2 * step)
    assert abs(numeric - np.sum(got["x"] * vx) - np.sum(got["s"] * vs)) < FINITE_DIFFERENCE_TOLERANCE * abs(numeric)


def test_pooled_and_flattened_cotangents_keep_the_batch_symbol(tf):
    """GlobalAveragePool → Flatten → MatMul: shape inference gives the input gradient the input's
    batch symbol (onnxruntime keeps only provably equal shapes in its blocked layout)."""
    rng = np.random.default_rng(6)
    w = rng.standard_normal((16, 5)).astype(np.float32)
    nodes = [("pool", "GlobalAveragePool", ["x"], ["p"], {}), ("flat", "Flatten", ["p"], ["f"], {}),
             ("fc", "MatMul", ["f", "w"], ["y"], {})]
    model = make_model(nodes, {"x": ["N", 16, 3, 4]}, {"y": ["N", 5]}, {"w": w})
    vjp = build_vjp(model, "y", ["x"])
    inferred = shape_inference.infer_shapes(vjp.model)
    gradient = next(o for o in inferred.graph.output if o.name == vjp.gradients["x"])
    dims = gradient.type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["N", 16, 3, 4]
    x = rng.standard_normal((2, 16, 3, 4)).astype(np.float32)
    cot = rng.standard_normal((2, 5)).astype(np.float32)
    want = tf_gradient(tf, lambda t: tf.reshape(tf.reduce_mean(t, [2, 3]), [-1, 16]) @ w.astype(np.float64), x, cot)
    assert relative_error(gradients(vjp, {"x": x}, cot)["x"], want) < FLOAT32_TOLERANCE


def test_constant_clip_bounds_are_not_cast_at_run_time():
    model = make_model([("clip", "Clip", ["x", "lo", "hi"], ["y"], {})], {"x": ["N", 9]}, {"y": ["N", 9]},
                       {"lo": np.float32(0), "hi": np.float32(6)})
    vjp = build_vjp(model, "y", ["x"])
    clip_nodes = [n.op_type for n in vjp.model.graph.node if n.name.startswith("onnxsight/vjp/clip/")]
    assert "CastLike" not in clip_nodes and clip_nodes.count("Cast") == 1, f"only the mask is cast: {clip_nodes}"


@pytest.mark.parametrize("pads", [[0, 0, 1, 1], [1, 2, 1, 0]], ids=["end-pad", "both-sides"])
@pytest.mark.parametrize("batch", ["N", 2], ids=["dynamic-batch", "static-batch"])
def test_a_pad_before_a_strided_conv_crops_its_conv_transpose_instead_of_slicing(pads, batch, tf):
    """ZeroPadding2D then a stride-2 depthwise Conv (MobileNetV2's downsampling): the Pad's
    gradient is the ConvTranspose with the pads added to its own (no Slice of a larger output)."""
    rng = np.random.default_rng(7)
    w = rng.standard_normal((16, 1, 3, 3))
    nodes = [("pad", "Pad", ["x", "pads"], ["p"], {"mode": "constant"}),
             ("dw", "Conv", ["p", "w"], ["c"], {"group": 16, "strides": [2, 2], "kernel_shape": [3, 3]}),
             ("relu", "Relu", ["c"], ["y"], {})]
    pad_list = np.array([0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]], np.int64)
    out = [(9 + pads[0] + pads[2] - 3) // 2 + 1, (8 + pads[1] + pads[3] - 3) // 2 + 1]
    x = 3 * rng.standard_normal((2, 16, 9, 8))
    cot = rng.standard_normal((2, 16, *out))
    for dtype in (TensorProto.FLOAT, D):
        np_dtype = np.float32 if dtype == TensorProto.FLOAT else np.float64
        weights = {"pads": pad_list, "w": w.astype(np_dtype)}
        model = make_model(nodes, {"x": [batch, 16, 9, 8]}, {"y": [batch, 16, *out]}, weights, dtype=dtype)
        vjp = build_vjp(model, "y", ["x"])
        assert not {"Slice", "ScatterElements"} & {n.op_type for n in vjp.model.graph.node}
        if dtype == TensorProto.FLOAT:
            got = gradients(vjp, {"x": x.astype(np.float32)}, cot.astype(np.float32))["x"]
            kernel = np.transpose(w, (2, 3, 0, 1))  # (C, 1, k, k) -> (k, k, C, 1)

            def block(t):
                t = tf.pad(tf.transpose(t, [0, 2, 3, 1]), [[0, 0], [pads[0], pads[2]], [pads[1], pads[3]], [0, 0]])
                return tf.transpose(tf.nn.relu(tf.nn.depthwise_conv2d(t, kernel, [1, 2, 2, 1], "VALID")), [0, 3, 1, 2])
            want = tf_gradient(tf, block, x.astype(np.float32), cot.astype(np.float32))
            assert relative_error(got, want) < 1e-5  # float32 sums of 9 products per element
        else:
            grad = gradients(vjp, {"x": x}, cot, ref_run)["x"]
            v = rng.standard_normal(x.shape)
            numeric = _directional(model, x, cot, v)
            assert abs(numeric - np.sum(grad * v)) < FINITE_DIFFERENCE_TOLERANCE * abs(numeric)


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, D], ids=["float32", "float64"])
def test_selu_slope_is_exactly_gamma_where_y_is_not_negative(dtype):
    """The Where-free Selu slope subtracts alpha·gamma - gamma from alpha·gamma: exact, so a
    positive input's gradient is the cotangent times gamma, bit for bit."""
    np_dtype = np.float32 if dtype == TensorProto.FLOAT else np.float64
    vjp = build_vjp(_activation_model("selu", "N", dtype=dtype), "y", ["x"])
    x = np.broadcast_to(KINKS, (2, 3, 9)).astype(np_dtype)
    cot = np.random.default_rng(8).standard_normal(x.shape).astype(np_dtype)
    got = gradients(vjp, {"x": x}, cot, ort_run if dtype == TensorProto.FLOAT else ref_run)["x"]
    gamma = np.asarray(1.05070102214813232421875, np_dtype)
    kept = x >= 0
    np.testing.assert_array_equal(got[kept], cot[kept] * gamma)
