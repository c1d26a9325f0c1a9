"""Every VJP rule, one table row per (op, shapes, attributes), checked three independent ways:

(a) float64 against central finite differences along random directions (ReferenceEvaluator),
(b) float32 in onnxruntime against TensorFlow's GradientTape on the same computation in float64,
(c) the augmented model gives the same numbers in onnxruntime and in ReferenceEvaluator.
"""

from __future__ import annotations

import numpy as np
import pytest

from onnxsight.engine.autodiff import MODIFIER_RULES, RULES, build_vjp

from .cases import CASES
from .helpers import ort_run, ref_run, relative_error

IDS = [case.id for case in CASES]


@pytest.fixture(scope="module")
def tf():
    """TensorFlow, imported once per worker (slow import) and only by the tests comparing with it."""
    import tensorflow

    return tensorflow
STEP = 1e-6
# onnxruntime's float32 gradient against TensorFlow's float64 one: the float32 rounding bound of the
# longest sum in the table (a few hundred terms of unit roundoff 6e-8), far below any rule mistake.
FLOAT32_TOLERANCE = 1e-5
# ONNX types these ops float-only (no float64 model): their rules get float32 finite differences in test_new_ops.py
FLOAT_ONLY = {"Celu"}


def _exact(v: np.ndarray) -> np.ndarray:
    """A float32 array as float64 (exactly): TensorFlow's reference is then free of float32 rounding,
    so it does not depend on which CPU kernels (oneDNN or Eigen) TensorFlow has here."""
    return v.astype(np.float64) if v.dtype == np.float32 else v


def _vjp(case, dtype, seed=0):
    values = case.values(dtype, seed)
    model = case.model(dtype, values)
    feeds = case.feeds(values)
    vjp = build_vjp(model, "y", list(feeds))
    return values, model, feeds, vjp


def _cotangent(y: np.ndarray, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(y.shape).astype(y.dtype)


def test_every_registered_rule_has_a_case():
    covered = {case.op for case in CASES}
    registered = set(RULES) | {op for table in MODIFIER_RULES.values() for op in table}
    missing = sorted(registered - covered)
    assert not missing, f"add a case for: {', '.join(missing)}"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_rule_matches_finite_differences(case):
    if case.op in FLOAT_ONLY:
        pytest.skip(f"{case.op} has no float64 form in ONNX")
    _, model, feeds, vjp = _vjp(case, np.float64)
    wrt = list(feeds)
    y = ref_run(model, feeds)[0]
    cot = _cotangent(y)
    grads = ref_run(vjp.model, {**feeds, vjp.cotangent: cot}, [vjp.gradients[w] for w in wrt])
    for w, grad in zip(wrt, grads):
        assert grad.shape == feeds[w].shape, f"{case.id}: gradient of {w} has shape {grad.shape}, input {feeds[w].shape}"
    rng = np.random.default_rng(2)
    for k in range(2):
        directions = {w: rng.standard_normal(feeds[w].shape) for w in wrt}
        plus = ref_run(model, {w: feeds[w] + STEP * directions[w] for w in wrt})[0]
        minus = ref_run(model, {w: feeds[w] - STEP * directions[w] for w in wrt})[0]
        numeric = float(np.sum(cot * (plus - minus)) / (2 * STEP))
        analytic = float(sum(np.sum(g * directions[w]) for w, g in zip(wrt, grads)))
        error = abs(numeric - analytic) / max(abs(numeric), abs(analytic), 1e-12)
        assert error < 1e-6, (f"{case.op} {case.attrs} ({case.id}), direction {k}: VJP gives {analytic:.10g}, "
                              f"finite differences {numeric:.10g}, relative error {error:.2e}")


@pytest.mark.parametrize("case", [c for c in CASES if c.tf is not None], ids=[c.id for c in CASES if c.tf is not None])
def test_rule_matches_tensorflow(case, tf):
    values, model, feeds, vjp = _vjp(case, np.float32)
    wrt = list(feeds)
    y = ort_run(model, feeds)[0]
    cot = _cotangent(y)
    grads = ort_run(vjp.model, {**feeds, vjp.cotangent: cot}, [vjp.gradients[w] for w in wrt])
    present = [(arg, _exact(v)) for arg, v in zip(case.args, values) if v is not None]
    tensors = [tf.constant(v) for _, v in present]
    watched = [t for (arg, _), t in zip(present, tensors) if arg.data]
    with tf.GradientTape() as tape:
        tape.watch(watched)
        out = case.tf(tf, *tensors)
        loss = tf.reduce_sum(out * _exact(cot))
    assert tuple(out.shape) == y.shape, f"{case.id}: the TF twin computes shape {tuple(out.shape)}, ONNX {y.shape}"
    expected = tape.gradient(loss, watched)
    for w, got, want in zip(wrt, grads, expected):
        error = relative_error(got, tf.convert_to_tensor(want).numpy())
        assert error < FLOAT32_TOLERANCE, (f"{case.op} {case.attrs} ({case.id}): gradient of {w} vs TensorFlow in float64, "
                                           f"relative error {error:.2e}")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_augmented_model_runs_the_same_in_both_runtimes(case):
    _, _, feeds, vjp = _vjp(case, np.float32)
    names = [o.name for o in vjp.model.graph.output]
    y = ref_run(case.model(np.float32, case.values(np.float32)), feeds)[0]
    run_feeds = {**feeds, vjp.cotangent: _cotangent(y)}
    from_ort = ort_run(vjp.model, run_feeds)
    from_ref = ref_run(vjp.model, run_feeds)
    for name, a, b in zip(names, from_ort, from_ref):
        error = relative_error(a, b)
        assert error < 1e-5, f"{case.op} {case.attrs} ({case.id}): output {name} differs, onnxruntime vs reference {error:.2e}"
