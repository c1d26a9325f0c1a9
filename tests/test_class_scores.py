"""Classifiers whose scores come as (N, C, 1, 1) (SqueezeNet, fully convolutional exports) or after a
reshape of the softmax: predict, "predicted", class indices, logit objectives and the report agree."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

import onnxsight
from onnxsight.cli.app import app
from onnxsight.engine import targets
from onnxsight.engine.objectives import objective_head
from onnxsight.errors import InvalidArgument
from onnxsight.report import ReportData, ReportOptions, write_report
from onnxsight.report.sections import Context

CLASSES = 7


def fully_convolutional(after_softmax: str | None = None, opset: int = 13) -> onnx.ModelProto:
    """Conv(3->7, 3x3) -> Relu -> GlobalAveragePool -> Softmax: scores (N, 7, 1, 1), input (N, 3, 8, 8);
    ``after_softmax`` ("Flatten") reshapes the probabilities to (N, 7) after the Softmax."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.normal(0, 0.5, (CLASSES, 3, 3, 3)).astype(np.float32), "w"),
               numpy_helper.from_array(rng.normal(0, 0.5, CLASSES).astype(np.float32), "b")]
    nodes = [helper.make_node("Conv", ["data", "w", "b"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
             helper.make_node("GlobalAveragePool", ["relu"], ["pool"], name="pool"),
             helper.make_node("Softmax", ["pool"], ["prob"], name="softmax", axis=1)]
    output = helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", CLASSES, 1, 1])
    if after_softmax:
        nodes.append(helper.make_node(after_softmax, ["prob"], ["flat"], name="flat"))
        output = helper.make_tensor_value_info("flat", TensorProto.FLOAT, ["N", CLASSES])
    graph = helper.make_graph(nodes, "fully_convolutional",
                              [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 8, 8])], [output], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(1).uniform(0, 1, (6, 3, 8, 8)).astype(np.float32)


def test_scores_with_axes_of_length_1_are_class_scores():
    scores = np.arange(12.0).reshape(2, 1, 1, 6)
    assert targets.class_scores(scores).shape == (2, 6)
    assert targets.class_axis((2, 1, 1, 6), channel_axis=1) == 3  # the classes, not the (length-1) channel axis
    assert targets.class_axis((2, 4, 3, 3), channel_axis=1) == 1
    with pytest.raises(InvalidArgument, match=r"class scores must have shape \(N, classes\).*\(2, 4, 3, 3\)"):
        targets.class_scores(np.zeros((2, 4, 3, 3)))


def test_targets_on_n_1_1_c_scores_read_the_class_axis():
    values = np.random.default_rng(0).normal(size=(3, 1, 1, 6))
    predicted = targets.resolve("predicted", values.shape, 1, values)
    assert predicted.tolist() == values.reshape(3, 6).argmax(axis=1).tolist()
    indices = targets.resolve([5, 0, 2], values.shape, 1)  # class 5 exists although the channel axis has length 1
    cotangent = targets.cotangent(values.shape, indices, 1)
    assert (cotangent * values).reshape(3, -1).sum(axis=1).tolist() == values[np.arange(3), 0, 0, [5, 0, 2]].tolist()


def test_predicted_class_index_and_top_k_agree_on_n_c_1_1_scores(tmp_path, x):
    model = onnxsight.load(fully_convolutional(), device="cpu")
    scores = targets.class_scores(model.predict(x))
    logits = targets.class_scores(model.activations(x, ["logits"])["logits"])
    assert model.logits == "pool" and scores.shape == logits.shape == (len(x), CLASSES)
    predicted = model.resolve_target(x, "predicted")
    assert predicted.tolist() == scores.argmax(axis=1).tolist() == logits.argmax(axis=1).tolist()
    gradient = model.gradient(x, target=predicted)["input"]
    assert np.abs(gradient).sum() > 0

    path, images = tmp_path / "fc.onnx", tmp_path / "x.npy"
    onnx.save(fully_convolutional(), path)
    np.save(images, x)
    result = CliRunner().invoke(app, ["predict", str(path), str(images), "--top", "3", "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert [row["top"][0]["class"] for row in listed] == predicted.tolist()
    assert listed[0]["top"][1]["score"] == pytest.approx(np.sort(scores[0])[-2], rel=1e-5)


@pytest.mark.parametrize("objective", ["logit", "cross_entropy"])
@pytest.mark.parametrize("after_softmax", [None, "Flatten"])
def test_logit_objectives_read_n_c_1_1_logits_before_the_softmax(x, objective, after_softmax):
    model = onnxsight.load(fully_convolutional(after_softmax), device="cpu")
    assert model.logits == "pool"  # found in front of the softmax also through the Flatten after it
    head = objective_head(model, "output", objective)
    assert head.tensor == "pool" and head.channels == CLASSES
    units = np.array([0, 6, 3, 1, 2, 5])
    session = ort.InferenceSession(head.model.SerializeToString(), providers=["CPUExecutionProvider"])
    value = session.run([head.value], {"data": x, head.unit_input: units})[0]
    logits = model.activations(x, ["pool"])["pool"].reshape(len(x), -1).astype(np.float64)
    if objective == "cross_entropy":
        logits = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(value, logits[np.arange(len(x)), units], rtol=1e-5, atol=1e-6)


def test_maximize_a_class_of_an_opset_9_fully_convolutional_model():
    model = onnxsight.load(fully_convolutional(opset=9), device="cpu")
    result = onnxsight.maximize(model, "logits", [2, 5], "logit", steps=3)
    assert result.images.shape == (2, 3, 8, 8)


def test_report_on_n_c_1_1_scores(tmp_path, x):
    model = onnxsight.load(fully_convolutional(), device="cpu")
    context = Context(model, ReportData(x), ReportOptions())
    np.testing.assert_allclose(context.probabilities, targets.class_scores(model.predict(x)), rtol=1e-5, atol=1e-7)
    assert len(context.class_names) == CLASSES
    report = write_report(model, ReportData(x), tmp_path / "report.html", ReportOptions(sections=("summary", "predictions")))
    assert report.sections == ["summary", "predictions"]
