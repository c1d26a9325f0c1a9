"""The cheap forms of common gradients: the graphs onnxruntime runs fast, and the numbers they give.

Activation masks, Pad and Slice gradients without ScatterElements or Where, and the swish rule,
checked against TensorFlow in float64, finite differences, and the op structure of the graph.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto

from onnxsight.engine.autodiff import build_vjp

from .helpers import ort_run, ref_run, relative_error, tf_gradient
from .test_backward import gradients, make_model

D = TensorProto.DOUBLE
# float32 onnxruntime against float64 TensorFlow: a few roundings of unit roundoff 6e-8 per element
FLOAT32_TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def tf():
    import tensorflow

    return tensorflow


def _swish(first: str, second: str, extra: bool):
    """y = x·Sigmoid(x) (operands in either order); with ``extra`` the Sigmoid also feeds y directly."""
    nodes = [("sigmoid", "Sigmoid", ["x"], ["s"], {}), ("swish", "Mul", [first, second], ["m"], {})]
    nodes.append(("plus", "Add", ["m", "s"], ["y"], {}) if extra else ("out", "Identity", ["m"], ["y"], {}))
    return nodes


@pytest.mark.parametrize("first, second, extra", [("x", "s", False), ("s", "x", False), ("x", "s", True)])
def test_swish_rule_matches_tensorflow_and_finite_differences(first, second, extra, tf):
    rng = np.random.default_rng(0)
    x = 3 * rng.standard_normal((2, 3, 4, 4))
    cot = rng.standard_normal(x.shape)
    model64 = make_model(_swish(first, second, extra), {"x": ["N", 3, 4, 4]}, {"y": ["N", 3, 4, 4]}, dtype=D)
    vjp64 = build_vjp(model64, "y", ["x"])
    through_sigmoid = [n.name for n in vjp64.model.graph.node if n.name.startswith("onnxsight/vjp/sigmoid/")]
    assert bool(through_sigmoid) == extra, "the swish rule differentiates the Sigmoid branch itself"
    grad = gradients(vjp64, {"x": x}, cot, ref_run)["x"]
    step, v = 1e-6, rng.standard_normal(x.shape)
    f = lambda t: ref_run(model64, {"x": t})[0]  # noqa: E731
    numeric = np.sum(cot * (f(x + step * v) - f(x - step * v))) / (2 * step)
    assert abs(numeric - np.sum(grad * v)) < 1e-6 * abs(numeric)

    model32 = make_model(_swish(first, second, extra), {"x": ["N", 3, 4, 4]}, {"y": ["N", 3, 4, 4]})
    vjp32 = build_vjp(model32, "y", ["x"])
    got = gradients(vjp32, {"x": x.astype(np.float32)}, cot.astype(np.float32))["x"]
    want = tf_gradient(tf, lambda t: t * tf.sigmoid(t) + (tf.sigmoid(t) if extra else 0), x.astype(np.float32), cot.astype(np.float32))
    assert relative_error(got, want) < FLOAT32_TOLERANCE


# inputs on, inside and beyond the kinks: the subgradient there is TensorFlow's (0 at relu6's bounds)
KINKS = np.array([[-4.0, -3.0, -1.0, 0.0, 0.5, 3.0, 5.5, 6.0, 7.0]] * 2, np.float32)
ACTIVATIONS = {
    "relu6": ([("clip", "Clip", ["x", "lo", "hi"], ["y"], {})], {"lo": np.float32(0), "hi": np.float32(6)},
              lambda tf, t: tf.nn.relu6(t)),
    "relu": ([("relu", "Relu", ["x"], ["y"], {})], {}, lambda tf, t: tf.nn.relu(t)),
    "hard-swish": ([("hswish", "HardSwish", ["x"], ["y"], {})], {}, lambda tf, t: t * tf.nn.relu6(t + 3) / 6),
    "hard-sigmoid": ([("hsig", "HardSigmoid", ["x"], ["y"], {"alpha": 0.25, "beta": 0.5})], {},
                     lambda tf, t: tf.nn.relu6(6 * (0.25 * t + 0.5)) / 6),
    # bounds known only at run time (an Identity of a weight): the comparison form of the mask
    "clip-runtime-bounds": ([("lo_id", "Identity", ["lo"], ["lo2"], {}), ("clip", "Clip", ["x", "lo2", "hi"], ["y"], {})],
                            {"lo": np.float32(-2), "hi": np.float32(4)}, lambda tf, t: tf.clip_by_value(t, -2.0, 4.0)),
}


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_masks_match_tensorflow_at_their_kinks_without_where(name, tf):
    nodes, weights, fn = ACTIVATIONS[name]
    model = make_model(nodes, {"x": ["N", 9]}, {"y": ["N", 9]}, weights)
    vjp = build_vjp(model, "y", ["x"])
    assert "Where" not in {n.op_type for n in vjp.model.graph.node}
    cot = np.random.default_rng(1).standard_normal(KINKS.shape).astype(np.float32)
    got = gradients(vjp, {"x": KINKS}, cot)["x"]
    want = tf_gradient(tf, lambda t: fn(tf, t), KINKS, cot)
    np.testing.assert_allclose(got, want, rtol=FLOAT32_TOLERANCE, atol=FLOAT32_TOLERANCE, err_msg=name)


def _linear_map_gradient(model, x: np.ndarray, cot: np.ndarray) -> np.ndarray:
    """dx of a linear op by central differences along every basis direction, in onnxruntime float64
    (exact up to float64 rounding: the op is linear)."""
    flat = np.zeros(x.size)
    for i in range(x.size):
        e = np.zeros(x.size)
        e[i] = 1.0
        e = e.reshape(x.shape)
        flat[i] = np.sum(cot * (ort_run(model, {"x": x + e})[0] - ort_run(model, {"x": x - e})[0])) / 2
    return flat.reshape(x.shape)


@pytest.mark.parametrize("pads, axes", [([0, -1, 2, 0, 1, -2], None), ([2, -1, -1, 1], [-1, 1])])
def test_constant_pad_with_negative_pads_crops_and_zero_fills_its_gradient(pads, axes):
    """Negative pads crop (onnxruntime runs them; onnx's ReferenceEvaluator does not)."""
    inputs = ["x", "pads"] + (["", "axes"] if axes else [])
    weights = {"pads": np.array(pads, np.int64), **({"axes": np.array(axes, np.int64)} if axes else {})}
    model = make_model([("pad", "Pad", inputs, ["y"], {"mode": "constant"})], {"x": [2, 4, 5]}, {"y": None}, weights, dtype=D)
    vjp = build_vjp(model, "y", ["x"])
    assert "ScatterElements" not in {n.op_type for n in vjp.model.graph.node}
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 4, 5))
    cot = rng.standard_normal(ort_run(model, {"x": x})[0].shape)
    np.testing.assert_allclose(gradients(vjp, {"x": x}, cot)["x"], _linear_map_gradient(model, x, cot), atol=1e-12)


def test_a_padded_strided_depthwise_relu6_block_backpropagates_without_scatter_or_where(tf):
    """tf2onnx's MobileNetV2 stride-2 block: ZeroPadding2D (Pad), depthwise Conv stride 2, ReLU6."""
    rng = np.random.default_rng(3)
    w = (0.5 * rng.standard_normal((16, 1, 3, 3))).astype(np.float32)
    nodes = [("pad", "Pad", ["x", "pads"], ["p"], {"mode": "constant"}),
             ("dw", "Conv", ["p", "w"], ["c"], {"group": 16, "strides": [2, 2], "kernel_shape": [3, 3]}),
             ("relu6", "Clip", ["c", "lo", "hi"], ["y"], {})]
    weights = {"pads": np.array([0, 0, 0, 0, 0, 0, 1, 1], np.int64), "w": w, "lo": np.float32(0), "hi": np.float32(6)}
    model = make_model(nodes, {"x": ["N", 16, 8, 8]}, {"y": ["N", 16, 4, 4]}, weights)
    vjp = build_vjp(model, "y", ["x"])
    assert not {"ScatterElements", "Where"} & {n.op_type for n in vjp.model.graph.node}
    x = (3 * rng.standard_normal((2, 16, 8, 8))).astype(np.float32)
    cot = rng.standard_normal((2, 16, 4, 4)).astype(np.float32)
    got = gradients(vjp, {"x": x}, cot)["x"]
    kernel = np.transpose(w, (2, 3, 0, 1)).astype(np.float64)  # (C, 1, k, k) -> (k, k, C, 1)

    def block(t):
        t = tf.pad(tf.transpose(t, [0, 2, 3, 1]), [[0, 0], [0, 1], [0, 1], [0, 0]])
        return tf.transpose(tf.nn.relu6(tf.nn.depthwise_conv2d(t, kernel, [1, 2, 2, 1], "VALID")), [0, 3, 1, 2])
    assert relative_error(got, tf_gradient(tf, block, x, cot)) < 1e-5  # a float32 sum of 9 products per element


@pytest.mark.parametrize("layout", ["nchw", "nhwc-and-back"])
def test_a_batch_norm_factor_after_a_conv_is_folded_into_its_kernel(layout, tf):
    """tf2onnx's inference batch norm is a Mul by a (1, C, 1, 1) constant (after the converter's
    NHWC round trip); its gradient scales the Conv's kernel, not the cotangent."""
    rng = np.random.default_rng(4)
    w, bias = rng.standard_normal((6, 3, 3, 3)), rng.standard_normal(6)
    scale = rng.uniform(0.5, 2, (1, 6, 1, 1))
    nodes = [("conv", "Conv", ["x", "w", "b"], ["c"], {"pads": [1, 1, 1, 1], "strides": [2, 2]})]
    if layout == "nhwc-and-back":
        nodes += [("to_nhwc", "Transpose", ["c"], ["h"], {"perm": [0, 2, 3, 1]}),
                  ("back", "Transpose", ["h"], ["c2"], {"perm": [0, 3, 1, 2]})]
    nodes += [("bn", "Mul", ["c2" if layout != "nchw" else "c", "scale"], ["y"], {})]
    for dtype, np_dtype in ((D, np.float64), (TensorProto.FLOAT, np.float32)):
        weights = {"w": w.astype(np_dtype), "b": bias.astype(np_dtype), "scale": scale.astype(np_dtype)}
        model = make_model(nodes, {"x": ["N", 3, 7, 7]}, {"y": ["N", 6, 4, 4]}, weights, dtype=dtype)
        vjp = build_vjp(model, "y", ["x"])
        assert not [n for n in vjp.model.graph.node if n.name.startswith("onnxsight/vjp/bn/")
                    and n.op_type == "Mul"], "the factor multiplies the cotangent"
        x = rng.standard_normal((2, 3, 7, 7)).astype(np_dtype)
        cot = rng.standard_normal((2, 6, 4, 4)).astype(np_dtype)
        got = gradients(vjp, {"x": x}, cot, ref_run if np_dtype == np.float64 else ort_run)["x"]
        kernel = np.transpose(w, (2, 3, 1, 0))

        def forward(t):
            t = tf.pad(tf.transpose(t, [0, 2, 3, 1]), [[0, 0], [1, 1], [1, 1], [0, 0]])
            c = tf.nn.conv2d(t, kernel, 2, "VALID") + bias
            return tf.transpose(c, [0, 3, 1, 2]) * scale
        # float64 (ReferenceEvaluator: onnxruntime has no float64 ConvTranspose): rounding only;
        # float32 (onnxruntime): sums of 54 products in float32
        assert relative_error(got, tf_gradient(tf, forward, x, cot)) < (1e-12 if np_dtype == np.float64 else 1e-5)
