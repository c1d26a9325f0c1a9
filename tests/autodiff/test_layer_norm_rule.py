"""LayerNormalization's gradient in float32 and float16 takes xhat and 1/std from onnxruntime's fused
kernel (a second LayerNormalization with unit scale) instead of recomputing the moments; it must
equal the moments form that float64 models keep, and TensorFlow's autograd."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto

from onnxsight.engine.autodiff import build_vjp

from .helpers import relative_error
from .test_backward import gradients, make_model

DTYPES = {np.float64: TensorProto.DOUBLE, np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16}
# against float64: float32 rounds each of ~64-term means and a few products (unit roundoff 6e-8);
# float16 (unit roundoff 5e-4) the same in half precision, with float32 moments inside
TOLERANCE = {np.float32: 1e-6, np.float16: 5e-3}


@pytest.fixture(scope="module")
def tf():
    import tensorflow

    return tensorflow


def _layer_norm(dtype, axis: int, shape: list, weights: dict):
    typed = {k: v.astype(dtype) for k, v in weights.items()}
    model = make_model([("ln", "LayerNormalization", ["x", "scale", "bias"], ["y"], {"axis": axis, "epsilon": 1e-3})],
                       {"x": shape}, {"y": shape}, typed, opset=18, dtype=DTYPES[dtype])
    return build_vjp(model, "y", ["x"])


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("axis, normalized", [(-1, (8,)), (1, (5, 8))])
def test_layer_norm_gradient_from_the_fused_kernel_equals_the_moments_and_tensorflow(dtype, axis, normalized, tf):
    rng = np.random.default_rng(0)
    weights = {"scale": rng.uniform(0.5, 2, normalized), "bias": rng.standard_normal(normalized)}
    x = 2 + 3 * rng.standard_normal((3, 5, 8))  # an offset mean: the centring matters
    cot = rng.standard_normal(x.shape)
    fused = _layer_norm(dtype, axis, ["N", 5, 8], weights)
    backward = [n.op_type for n in fused.model.graph.node if n.name.startswith("onnxsight/vjp/ln/")]
    assert backward.count("LayerNormalization") == 1 and backward.count("ReduceMean") == 2, backward
    got = gradients(fused, {"x": x.astype(dtype)}, cot.astype(dtype))["x"]
    assert got.dtype == dtype
    moments = gradients(_layer_norm(np.float64, axis, ["N", 5, 8], weights), {"x": x}, cot)["x"]
    assert relative_error(got, moments) < TOLERANCE[dtype], "fused kernel vs float64 moments"

    t = tf.constant(x)
    axes = list(range(axis % 3, 3))
    with tf.GradientTape() as tape:
        tape.watch(t)
        mean, variance = tf.nn.moments(t, axes, keepdims=True)
        y = (t - mean) / tf.sqrt(variance + 1e-3) * weights["scale"] + weights["bias"]
        loss = tf.reduce_sum(y * cot)
    want = tape.gradient(loss, t).numpy()
    assert relative_error(moments, want) < 1e-10, "float64 moments vs TensorFlow"  # the centring cancels digits
    assert relative_error(got, want) < TOLERANCE[dtype], "fused kernel vs TensorFlow"
