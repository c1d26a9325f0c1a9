"""Objective heads: each objective's value equals numpy on the layer's activations; the head is a
checked, new model and the model it was built from is left as it was."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxsight
from onnxsight.engine.objectives import UNIT_INPUT, VALUE, objective_head
from onnxsight.errors import InvalidArgument, UnknownName
from tests.foreign_models import nchw_cnn, reference_forward

UNITS = np.array([0, 3, 1, 2])


def _log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


# (layer, objective, with_unit, numpy score from reference_forward's tensors (NCHW), units)
CASES = {
    "unit of a conv layer: channel mean over space": (
        "relu1", "unit", True, lambda t, u: t["relu1"].mean(axis=(2, 3))[np.arange(len(u)), u]),
    "unit of a dense layer: its value": ("fc", "unit", True, lambda t, u: t["fc"][np.arange(len(u)), u]),
    "norm of a whole layer": ("relu1", "norm", False, lambda t, u: np.linalg.norm(t["relu1"].reshape(4, -1), axis=1)),
    "norm of one channel": (
        "relu1", "norm", True, lambda t, u: np.linalg.norm(t["relu1"][np.arange(len(u)), u].reshape(4, -1), axis=1)),
    "logit of the softmax layer reads the logits": ("softmax", "logit", True, lambda t, u: t["fc"][np.arange(len(u)), u]),
    "cross entropy, negated": (
        "prob", "cross_entropy", True, lambda t, u: _log_softmax(t["fc"].astype(np.float64))[np.arange(len(u)), u]),
}


@pytest.fixture(scope="module")
def proto():
    return nchw_cnn()


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(3).normal(0, 1, (4, 3, 8, 8)).astype(np.float32)


def _run(head, x, units):
    session = ort.InferenceSession(head.model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {"data": x}
    if head.unit_input is not None:
        feeds[head.unit_input] = units
    return session.run([head.value], feeds)[0]


@pytest.mark.parametrize("case", list(CASES))
def test_objective_value_equals_numpy_on_the_activations(proto, x, case):
    layer, objective, with_unit, expected = CASES[case]
    model = onnxsight.load(proto, device="cpu")
    before = model.proto.SerializeToString()
    head = objective_head(model, layer, objective, with_unit=with_unit)
    onnx.checker.check_model(head.model, full_check=True)
    assert model.proto.SerializeToString() == before, "the model the head was built from changed"
    assert [o.name for o in head.model.graph.output] == [VALUE]
    assert (head.unit_input == UNIT_INPUT) == with_unit
    got = _run(head, x, UNITS)
    want = expected(reference_forward(proto, x), UNITS)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=case)


def test_one_head_serves_any_units(proto, x):
    model = onnxsight.load(proto, device="cpu")
    head = objective_head(model, "fc", "unit")
    fc = reference_forward(proto, x)["fc"]
    for units in (np.array([4, 4, 4, 4]), np.array([1, 0, 2, 3])):
        np.testing.assert_allclose(_run(head, x, units), fc[np.arange(4), units], rtol=1e-5)


def test_trained_model_heads_on_keras_layer_names(mnist_onnx, digits_data):
    model = onnxsight.load(mnist_onnx, device="cpu")
    x = digits_data.x_test[:4]
    acts = model.activations(x, ["conv2d_2", "logits"])
    conv = objective_head(model, "conv2d_2", "unit")  # NHWC: channel on the last axis
    assert conv.channel_axis == 3 and conv.channels == 64
    session = ort.InferenceSession(conv.model.SerializeToString(), providers=["CPUExecutionProvider"])
    units = np.array([5, 17, 40, 63])
    got = session.run([conv.value], {model.input_name: x, conv.unit_input: units})[0]
    np.testing.assert_allclose(got, acts["conv2d_2"].mean(axis=(1, 2))[np.arange(4), units], rtol=1e-5, atol=1e-7)
    logit = objective_head(model, "preds", "logit")
    assert logit.tensor == model.logits


@pytest.mark.parametrize(
    ("layer", "objective", "error", "message"),
    [
        ("relu1", "happiness", InvalidArgument, "unknown objective 'happiness'"),
        ("relu1", "logit", InvalidArgument, r"needs class scores \(N, classes\).* shape \(\?, 4, 8, 8\)"),
        ("relu2", "unit", UnknownName, "unknown layer 'relu2'; did you mean relu1"),
    ],
)
def test_heads_refuse_what_they_cannot_score(proto, layer, objective, error, message):
    with pytest.raises(error, match=message):
        objective_head(onnxsight.load(proto, device="cpu"), layer, objective)
