"""Fixed-batch models made dynamic where that is exact, refused with the node and the reason where not."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxsight
from onnxsight.engine.dynamic_batch import dynamic_batch, with_dynamic_batch
from onnxsight.errors import InvalidArgument
from tests.foreign_models import nchw_cnn


def reshaping(shape: list[int], allowzero: int = 0) -> onnx.ModelProto:
    """Input (1, 4, 8) -> Relu -> Reshape to the constant ``shape`` (node "reshape") -> output."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Reshape", ["r", "shape"], ["y"], name="reshape", allowzero=allowzero)]
    graph = helper.make_graph(nodes, "reshaping", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * len(shape))],
                              [numpy_helper.from_array(np.array(shape, np.int64), "shape")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], ir_version=8)


def _first_dims(proto: onnx.ModelProto) -> list:
    return [v.type.tensor_type.shape.dim[0].dim_param or v.type.tensor_type.shape.dim[0].dim_value
            for v in [proto.graph.input[0], *proto.graph.output]]


def test_a_fixed_batch_cnn_runs_any_batch_like_its_dynamic_twin():
    fixed = nchw_cnn(batch=1)
    before = fixed.SerializeToString()
    rewritten = dynamic_batch(fixed)
    assert fixed.SerializeToString() == before  # a new model; the input is left as it was
    assert _first_dims(rewritten) == ["N", "N"]
    x = np.random.default_rng(0).uniform(0, 1, (5, 3, 8, 8)).astype(np.float32)
    got = onnxsight.load(rewritten, device="cpu").predict(x)
    np.testing.assert_allclose(got, onnxsight.load(nchw_cnn("N"), device="cpu").predict(x), atol=1e-6)


@pytest.mark.parametrize(("shape", "allowzero"), [([1, 32], 0), ([1, -1], 0), ([0, 32], 0), ([-1, 4, 8], 1)])
def test_reshapes_to_constant_shapes_starting_with_the_batch_become_dynamic(shape, allowzero):
    rewritten = dynamic_batch(reshaping(shape, allowzero))
    x = np.random.default_rng(0).normal(size=(3, 4, 8)).astype(np.float32)
    y = onnxsight.load(rewritten, device="cpu").predict(x)
    np.testing.assert_allclose(y.reshape(3, -1), np.maximum(x, 0).reshape(3, -1))


@pytest.mark.parametrize(("shape", "allowzero", "message"), [
    ([2, 16], 0, r"model: Reshape 'reshape' to the constant shape \[2, 16\] does not start with the batch 1: "
                 "it mixes the batch with other axes"),
    ([1, -1, 4], 1, r"Reshape 'reshape' to the constant shape \[1, -1, 4\] already infers another axis .*allowzero"),
])
def test_reshapes_that_mix_the_batch_are_refused_by_name(shape, allowzero, message):
    with pytest.raises(InvalidArgument, match=message):
        dynamic_batch(reshaping(shape, allowzero), "model")


def test_a_model_that_mixes_rows_otherwise_fails_the_row_check():
    """A sum over the whole batch runs with any batch but is not per image: the runs tell."""
    graph = helper.make_graph([helper.make_node("ReduceSum", ["x"], ["total"], name="sum", keepdims=1)], "total",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("total", TensorProto.FLOAT, [1, 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    with pytest.raises(InvalidArgument, match=r"m.onnx: with a dynamic batch, output 'total' of a batch of 2 differs"):
        dynamic_batch(model, "m.onnx")


def test_a_dynamic_model_is_kept_and_a_fixed_one_reloaded():
    dynamic = onnxsight.load(nchw_cnn("N"), device="cpu")
    assert with_dynamic_batch(dynamic) is dynamic
    fixed = onnxsight.load(nchw_cnn(1), device="cpu")
    assert with_dynamic_batch(fixed).input_shape[0] is None and fixed.input_shape[0] == 1


def test_maximize_several_classes_of_a_fixed_batch_model():
    result = onnxsight.maximize(onnxsight.load(nchw_cnn(1), device="cpu"), "logits", [0, 3, 4], "logit", steps=2)
    assert result.images.shape == (3, 3, 8, 8)


def test_gradcheck_of_two_images_on_a_fixed_batch_model():
    x = np.random.default_rng(0).uniform(0, 1, (2, 3, 8, 8)).astype(np.float32)
    report = onnxsight.gradcheck(onnxsight.load(nchw_cnn(1), device="cpu"), x, wrt=["input", "relu1"])
    assert report.passed and [row.wrt for row in report.rows] == ["input", "relu1"]


def test_the_report_runs_a_fixed_batch_model_in_batches():
    from onnxsight.report import ReportData, ReportOptions
    from onnxsight.report.sections import Context

    x = np.random.default_rng(0).uniform(0, 1, (3, 3, 8, 8)).astype(np.float32)
    assert Context(onnxsight.load(nchw_cnn(1), device="cpu"), ReportData(x), ReportOptions()).model.input_shape[0] is None
