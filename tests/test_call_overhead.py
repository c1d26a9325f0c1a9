"""What the per-call fast paths cache must follow the model, the head and the input: nothing served stale."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxsight
from onnxsight.errors import InvalidArgument
from onnxsight.methods.cam import _find_default_cam_layer, default_cam_layer


def _two_heads() -> onnx.ModelProto:
    """x (N, 4) -> "probs" = Softmax(x·A) and "score" = x·B: a classification head and a plain one."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal((4, 2)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "A"], ["logits_a"]), helper.make_node("Softmax", ["logits_a"], ["probs"]),
         helper.make_node("MatMul", ["x", "B"], ["score"])],
        "two_heads",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [None, 3]),
         helper.make_tensor_value_info("score", TensorProto.FLOAT, [None, 2])],
        [numpy_helper.from_array(a, "A"), numpy_helper.from_array(b, "B")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_cached_head_and_logits_follow_each_view():
    m = onnxsight.load(_two_heads(), device="cpu")
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    assert (m.head, m.logits) == ("probs", "logits_a")
    view = m.with_output("score")
    assert (view.head, view.logits) == ("score", "score")
    assert (m.head, m.logits) == ("probs", "logits_a")  # the view's answers did not leak into the model
    # The gradients follow the head: d(x·B[:, 1])/dx = B[:, 1] for every row, d(x·A[:, 2])/dx = A[:, 2].
    weights = {init.name: numpy_helper.to_array(init) for init in m.proto.graph.initializer}
    exact = 1e-6  # a MatMul's gradient is its weight column, copied: float32 rounding only
    np.testing.assert_allclose(view.gradient(x, target=1)["input"], np.tile(weights["B"][:, 1], (3, 1)), atol=exact)
    np.testing.assert_allclose(m.gradient(x, target=2)["input"], np.tile(weights["A"][:, 2], (3, 1)), atol=exact)


def test_memo_computes_once_per_key_and_is_shared_with_views(model):
    calls = []

    def compute(value):
        calls.append(value)
        return value

    assert model.memo(("test_memo", 1), lambda: compute("one")) == "one"
    assert model.memo(("test_memo", 1), lambda: compute("again")) == "one"
    assert model.with_output(model.head).memo(("test_memo", 1), lambda: compute("view")) == "one"
    assert model.memo(("test_memo", 2), lambda: compute("two")) == "two"
    assert calls == ["one", "two"]


def test_default_cam_layer_is_memoised_per_model(model, tmp_path, mnist_keras):
    assert default_cam_layer(model) == _find_default_cam_layer(model) == "max_pooling2d_2"
    from onnxsight.demo.architectures import cifar_cnn5

    other = onnxsight.load(onnxsight.convert_keras(cifar_cnn5(), tmp_path / "cnn5.onnx"), device="cpu")
    assert default_cam_layer(other) == _find_default_cam_layer(other) != default_cam_layer(model)


def test_inputs_are_still_checked_once_per_call(model, digits_data):
    x = digits_data.x_test[:2].copy()
    x[1, 3, 3, 0] = np.nan
    for call in (lambda: model.gradient(x, target=1), lambda: model.run(x, [model.logits]),
                 lambda: model.vjp(x, "logits", np.ones((2, 10), np.float32)),
                 lambda: onnxsight.saliency(model, x, target=1), lambda: onnxsight.occlusion(model, x, target=1)):
        with pytest.raises(InvalidArgument, match="NaN or Inf"):
            call()


def test_one_hot_cotangent_of_class_scores_matches_the_identity_rows():
    from onnxsight.engine import targets

    indices = np.array([3, 0, 9, 3])
    for dtype in (np.float32, np.float64):
        onehot = targets.cotangent((4, 10), indices, 1, dtype)
        assert onehot.dtype == dtype
        np.testing.assert_array_equal(onehot, np.eye(10, dtype=dtype)[indices])  # exact: zeros and ones
    # A 4-D score tensor (N, C, 1, 1) still takes the general path: the same one-hot, reshaped.
    np.testing.assert_array_equal(targets.cotangent((4, 10, 1, 1), indices, 1), np.eye(10)[indices][:, :, None, None])
