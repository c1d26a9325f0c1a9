"""Model.gradient, targets, augment and gradcheck, against an independent numpy reference."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx.reference import ReferenceEvaluator

import onnxsight
from onnxsight.engine.autodiff import RULES
from onnxsight.errors import InvalidArgument, UnsupportedOp
from tests.foreign_models import nchw_cnn, reference_forward


@pytest.fixture(scope="module")
def model():
    return onnxsight.load(nchw_cnn(), device="cpu")


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(3).uniform(-1, 1, (4, 3, 8, 8)).astype(np.float32)


def numeric_gradient(proto, x, score, tensor="data", step=1e-6):
    """Central differences of ``score(forward)`` over every element of ``x``, in numpy float64."""
    x = x.astype(np.float64)
    grad = np.zeros_like(x)
    flat, out = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        saved = flat[i]
        flat[i] = saved + step
        up = score(reference_forward(proto, x))
        flat[i] = saved - step
        down = score(reference_forward(proto, x))
        flat[i] = saved
        out[i] = (up - down) / (2 * step)
    return grad


def test_class_gradient_matches_numpy_finite_differences(model, x):
    target = np.array([0, 1, 2, 4])
    got = model.gradient(x, target=target)["input"]
    want = numeric_gradient(model.proto, x, lambda t: t["fc"][np.arange(4), target].sum())
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5)


def test_channel_target_of_a_conv_layer_is_the_spatial_mean(model, x):
    got = model.gradient(x[:1], of="relu1", target=2)["input"]
    want = numeric_gradient(model.proto, x[:1], lambda t: t["relu1"][0, 2].mean())
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-6)


def test_none_target_differentiates_the_sum_and_output_is_the_softmax(model, x):
    got = model.gradient(x[:1], of="output", target=None)["input"]
    np.testing.assert_allclose(got, 0, atol=1e-6)  # softmax rows sum to one: a constant
    logit_sum = model.gradient(x[:1], of="logits", target=None)["input"]
    assert np.abs(logit_sum).max() > 1e-3


def test_predicted_target_equals_the_argmax_class(model, x):
    predicted = model.predict(x).argmax(axis=1)
    np.testing.assert_allclose(model.gradient(x, target="predicted")["input"],
                               model.gradient(x, target=predicted)["input"], rtol=1e-6)


def test_backward_gives_gradients_and_activations_of_the_same_layer_from_one_run(model, x):
    result = model.backward(x, target=1, wrt=["input", "pool1"], outputs=["relu1", "pool1"])
    assert set(result.gradients) == {"input", "pool1"} and set(result.activations) == {"relu1", "pool1"}
    reference = reference_forward(model.proto, x)
    np.testing.assert_allclose(result.activations["relu1"], reference["relu1"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(result.activations["pool1"], reference["pool1"], rtol=1e-4, atol=1e-5)
    weights = onnx.numpy_helper.to_array(next(t for t in model.proto.graph.initializer if t.name == "fc_w"))
    np.testing.assert_allclose(result.gradients["pool1"].reshape(4, -1), np.tile(weights[1], (4, 1)), rtol=1e-6)


def test_batches_give_the_same_gradients_as_one_call(model, x):
    whole = model.gradient(x, target=3)["input"]
    np.testing.assert_allclose(model.gradient(x, target=3, batch_size=3)["input"], whole, rtol=1e-6)


@pytest.mark.parametrize(
    ("target", "message"),
    [(7, "out of range"), ([1, 2], "2 entries for 4 images"), (1.5, "integer"), ("best", "'predicted'")],
)
def test_bad_targets_are_refused(model, x, target, message):
    with pytest.raises(InvalidArgument, match=message):
        model.gradient(x, target=target)


def test_augment_returns_a_checked_standalone_model_that_reference_runtimes_agree_on(model, x):
    before = model.proto.SerializeToString()
    augmented = onnxsight.augment(model, of="logits", wrt=["input", "conv1"], modifier="guided")
    assert model.proto.SerializeToString() == before
    onnx.checker.check_model(augmented, full_check=True)
    assert {n.domain for n in augmented.graph.node} <= {"", "ai.onnx"}
    info = json.loads({p.key: p.value for p in augmented.metadata_props}["onnxsight.augmented"])
    assert info["modifier"] == "guided" and set(info["gradients"]) == {"input", "conv1"}
    cotangent = np.eye(5, dtype=np.float32)[[0, 1, 2, 3]]
    feeds = {"data": x, info["cotangent_input"]: cotangent}
    want = ReferenceEvaluator(augmented).run([info["gradients"]["input"]], feeds)[0]
    got = model.gradient(x, target=[0, 1, 2, 3], modifier="guided")["input"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_gradcheck_passes_in_float64_and_names_each_tensor(model, x):
    report = onnxsight.gradcheck(model, x, wrt=["input", "conv1", "pool1", "logits"])
    assert report.precision == "float64" and report.passed
    assert [row.wrt for row in report.rows] == ["input", "conv1", "pool1", "logits"]
    assert max(row.relative_error for row in report.rows) < 1e-6


def test_gradcheck_catches_a_wrong_gradient_rule(model, x, monkeypatch):
    monkeypatch.setitem(RULES, "Relu", lambda g, n: [n.gy])  # forgets the mask: a plausible bug
    broken = onnxsight.load(nchw_cnn(), device="cpu")
    report = onnxsight.gradcheck(broken, x, wrt=["input"])
    assert not report.passed and report.rows[0].status == "FAIL"
    assert report.rows[0].relative_error > 1e-2


def test_an_op_without_a_rule_names_itself_and_the_layers_still_differentiable(x):
    model = nchw_cnn()
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    relu.op_type, relu.name = "Hardmax", "hardmax1"  # an op on the data path with no gradient rule
    m = onnxsight.load(model, device="cpu")
    with pytest.raises(UnsupportedOp, match=r"op Hardmax \(node 'hardmax1'\).*layers still differentiable: hardmax1, pool1, flatten, fc"):
        m.gradient(x, target=0)
    assert m.gradient(x, target=0, wrt=["pool1"])["pool1"].shape == (4, 4, 4, 4)
