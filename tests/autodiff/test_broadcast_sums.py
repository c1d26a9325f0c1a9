"""Gradients summed over broadcast axes that shape inference does not know (tf2onnx's einsum and
residual adds: dims computed at run time), in the form onnxruntime runs fast.

Each case declares shapes as shape inference sees them (None: unknown, a letter: a symbol that
proves nothing) and runs shapes that broadcast, or not, at run time; the gradients are checked
against TensorFlow's autograd and central differences, both in float64.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, numpy_helper

from onnxsight.engine.autodiff import build_vjp

from .helpers import ort_run, relative_error
from .test_backward import gradients, make_model

# float64 throughout: both references agree with the graph up to rounding of a few sums
FLOAT64_TOLERANCE = 1e-12
# central differences of a bilinear function in float64 are exact up to rounding (~1e-16 relative
# per evaluation, amplified by 1/step)
DIFFERENCE_TOLERANCE = 1e-8

U = None  # a dim shape inference does not know
CASES = {
    # op, declared a, declared b, run a, run b
    "matmul-unknown-same-batch": ("MatMul", [U, U, U], [U, U, U], (5, 3, 4), (5, 4, 2)),
    "matmul-unknown-a-broadcast": ("MatMul", [U, U, U], [U, U, U], (1, 3, 4), (5, 4, 2)),
    "matmul-unknown-b-broadcast": ("MatMul", [U, U, U], [U, U, U], (5, 3, 4), (1, 4, 2)),
    "matmul-two-unknown-batch-dims": ("MatMul", ["P", "Q", 3, 4], ["R", "S", 4, 2], (2, 1, 3, 4), (1, 3, 4, 2)),
    "matmul-static-one-and-unknown": ("MatMul", ["N", 1, 3, 4], ["M", 3, 4, 2], (2, 1, 3, 4), (2, 3, 4, 2)),
    "matmul-rank-4-by-rank-3": ("MatMul", ["N", 3, 3, 4], [U, 4, 2], (2, 3, 3, 4), (3, 4, 2)),
    "add-unknown-same-batch": ("Add", [U, 3, 4], [U, 3, 4], (5, 3, 4), (5, 3, 4)),
    "add-unknown-broadcast-and-static-one": ("Add", ["N", 3, 4], ["M", 3, 1], (5, 3, 4), (1, 3, 1)),
    "mul-unknown-broadcast-rank-2-by-3": ("Mul", ["N", 3, 4], ["M", 4], (5, 3, 4), (1, 4)),
}


@pytest.fixture(scope="module")
def tf():
    import tensorflow

    return tensorflow


def _model(op: str, a_shape: list, b_shape: list):
    model = make_model([("op", op, ["a", "b"], ["y"], {})], {"a": a_shape, "b": b_shape}, {"y": None},
                       dtype=TensorProto.DOUBLE)
    return model, build_vjp(model, "y", ["a", "b"])


def _tf_gradients(tf, op: str, a: np.ndarray, b: np.ndarray, cot: np.ndarray) -> list[np.ndarray]:
    fn = {"MatMul": tf.linalg.matmul, "Add": tf.add, "Mul": tf.multiply}[op]
    ta, tb = tf.constant(a), tf.constant(b)
    with tf.GradientTape() as tape:
        tape.watch([ta, tb])
        loss = tf.reduce_sum(fn(ta, tb) * cot)
    return [t.numpy() for t in tape.gradient(loss, [ta, tb])]


@pytest.mark.parametrize("name", CASES)
def test_gradient_over_unknown_broadcast_matches_tensorflow_and_differences(name, tf):
    op, a_decl, b_decl, a_shape, b_shape = CASES[name]
    model, vjp = _model(op, a_decl, b_decl)
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(a_shape), rng.standard_normal(b_shape)
    y = ort_run(model, {"a": a, "b": b})[0]
    cot = rng.standard_normal(y.shape)
    got = gradients(vjp, {"a": a, "b": b}, cot)
    want = _tf_gradients(tf, op, a, b, cot)
    for key, expected in zip("ab", want):
        assert got[key].shape == expected.shape, f"{name}: d{key} has shape {got[key].shape}"
        assert relative_error(got[key], expected) < FLOAT64_TOLERANCE, f"{name}: d{key} differs from TensorFlow"
    step, va, vb = 1e-3, rng.standard_normal(a_shape), rng.standard_normal(b_shape)
    f = lambda s: np.sum(cot * ort_run(model, {"a": a + s * va, "b": b + s * vb})[0])  # noqa: E731
    numeric = (f(step) - f(-step)) / (2 * step)
    analytic = np.sum(got["a"] * va) + np.sum(got["b"] * vb)
    assert abs(numeric - analytic) < DIFFERENCE_TOLERANCE * abs(numeric), f"{name}: directional derivative"


def _reduce_axes(model) -> list[list[int]]:
    values = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node if n.op_type == "Constant"}
    return [list(values[n.input[1]]) for n in model.graph.node if n.op_type == "ReduceSum"]


@pytest.mark.parametrize("name", ["matmul-unknown-same-batch", "add-unknown-same-batch"])
def test_one_unknown_batch_dim_is_summed_over_one_middle_axis(name):
    """(like's size, the rest, kept dims...): onnxruntime copies a size-1 middle axis quickly, while a
    sum over interleaved size-1 axes (every axis split in two) took ~8× longer."""
    op, a_decl, b_decl, *_ = CASES[name]
    _, vjp = _model(op, a_decl, b_decl)
    assert _reduce_axes(vjp.model) == [[1], [1]]


def test_a_matmul_by_a_weight_sums_nothing():
    """A (N, T, D) · (D, E) product: dA has A's batch dims as they are, whatever shape inference knows."""
    weight = np.ones((4, 2))
    model = make_model([("op", "MatMul", ["a", "w"], ["y"], {})], {"a": [U, U, 4]}, {"y": None}, {"w": weight},
                       dtype=TensorProto.DOUBLE)
    vjp = build_vjp(model, "y", ["a"])
    assert not _reduce_axes(vjp.model)
    a = np.random.default_rng(1).standard_normal((3, 5, 4))
    cot = np.random.default_rng(2).standard_normal((3, 5, 2))
    np.testing.assert_allclose(gradients(vjp, {"a": a}, cot)["a"], cot @ weight.T, rtol=FLOAT64_TOLERANCE)
