"""Model loading, layers, batched inference and input validation on foreign ONNX files."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnxsight
from onnxsight.engine.model import load
from onnxsight.errors import InternalError, InvalidArgument, ModelFileError, UnknownName
from tests.foreign_models import nchw_cnn, reference_forward


@pytest.fixture()
def foreign(tmp_path):
    path = tmp_path / "zoo.onnx"
    onnx.save(nchw_cnn(weights_as_inputs=True), path)
    return path


@pytest.fixture()
def batch():
    return np.random.default_rng(1).uniform(-1, 1, (7, 3, 8, 8)).astype(np.float32)


def test_initializers_listed_as_inputs_are_not_the_data_input(foreign):
    m = load(foreign, device="cpu")
    assert m.input_name == "data"
    assert m.input_shape == (None, 3, 8, 8)
    assert m.input_layout == "NCHW"


def test_foreign_layers_are_named_after_nodes_with_ops_shapes_and_params(foreign):
    layers = {layer.name: layer for layer in load(foreign, device="cpu").layers}
    assert list(layers) == ["conv1", "relu1", "pool1", "flatten", "fc", "softmax"]
    assert layers["conv1"].op == "Conv" and layers["conv1"].shape == (None, 4, 8, 8)
    assert layers["conv1"].params == 4 * 3 * 3 * 3 + 4
    assert layers["fc"].params == 5 * 64 + 5
    assert layers["flatten"].params == 0  # the int64 shape constant is no parameter


def test_predict_and_activations_match_a_numpy_reference(foreign, batch):
    m = load(foreign, device="cpu")
    expected = reference_forward(m.proto, batch.astype(np.float64))
    np.testing.assert_allclose(m.predict(batch, batch_size=3), expected["prob"], rtol=1e-5, atol=1e-6)
    acts = m.activations(batch, ["conv1", "pool1", "fc"], batch_size=2)
    for name in ("conv1", "pool1", "fc"):
        np.testing.assert_allclose(acts[name], expected[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_logits_are_the_input_of_the_final_softmax(foreign, batch):
    m = load(foreign, device="cpu")
    assert m.logits == "fc"
    np.testing.assert_allclose(m.activations(batch, ["logits"])["logits"], reference_forward(m.proto, batch)["fc"],
                               rtol=1e-4, atol=1e-5)


def test_fixed_batch_models_run_in_chunks_of_their_batch(tmp_path, batch):
    path = tmp_path / "fixed.onnx"
    onnx.save(nchw_cnn(batch=1), path)
    m = load(path, device="cpu")
    assert m.input_shape[0] == 1
    np.testing.assert_allclose(m.predict(batch), reference_forward(m.proto, batch)["prob"], rtol=1e-5, atol=1e-6)


def test_fixed_batch_larger_than_the_data_pads_the_last_chunk(tmp_path, batch):
    path = tmp_path / "fixed4.onnx"
    onnx.save(nchw_cnn(batch=4), path)
    m = load(path, device="cpu")
    result = m.predict(batch)  # 7 images: chunks of 4 and 3 (+1 padding row)
    assert result.shape == (7, 5)
    np.testing.assert_allclose(result, reference_forward(m.proto, batch)["prob"], rtol=1e-5, atol=1e-6)


def test_load_accepts_a_model_proto_and_public_api_exposes_load(batch):
    m = onnxsight.load(nchw_cnn(), device="cpu")
    assert m.predict(batch).shape == (7, 5)


def test_kernel_returns_the_conv_weights_behind_a_layer(foreign):
    m = load(foreign, device="cpu")
    w = onnx.numpy_helper.to_array(next(t for t in m.proto.graph.initializer if t.name == "conv_w"))
    np.testing.assert_array_equal(m.kernel("relu1"), w)
    with pytest.raises(InvalidArgument, match="not a convolution.*conv1"):
        m.kernel("pool1")


def test_kernel_of_weights_made_by_constant_of_shape():
    """The onnx package's "light" zoo files fill their weights with ConstantOfShape nodes."""
    proto = nchw_cnn()
    weights = next(t for t in proto.graph.initializer if t.name == "conv_w")
    proto.graph.initializer.remove(weights)
    proto.graph.initializer.append(onnx.numpy_helper.from_array(np.array(weights.dims, np.int64), "conv_w_shape"))
    fill = onnx.numpy_helper.from_array(np.array([0.25], np.float32))
    proto.graph.node.insert(0, onnx.helper.make_node("ConstantOfShape", ["conv_w_shape"], ["conv_w"], value=fill))
    np.testing.assert_array_equal(load(proto, device="cpu").kernel("relu1"), np.full((4, 3, 3, 3), 0.25, np.float32))


@pytest.mark.parametrize(
    ("make_input", "message"),
    [
        (lambda b: b[0], r"expects \(N, 3, 8, 8\); add a batch axis"),
        (lambda b: b[:, :, :4], r"expects \(N, 3, 8, 8\)"),
        (lambda b: (b * 255).astype(np.uint8), "floating-point array, got uint8"),
        (lambda b: np.where(b > 0.9, np.nan, b), "NaN or Inf"),
        (lambda b: np.where(b > 0.9, np.inf, b), "NaN or Inf"),
        (lambda b: b[:0], "empty"),
    ],
)
def test_bad_input_arrays_get_one_clear_error(foreign, batch, make_input, message):
    with pytest.raises(InvalidArgument, match=message):
        load(foreign, device="cpu").predict(make_input(batch))


def test_unknown_layer_lists_near_misses_and_known_layers(foreign, batch):
    with pytest.raises(UnknownName, match=r"unknown layer 'conv2'; did you mean conv1.*known: conv1, relu1"):
        load(foreign, device="cpu").activations(batch, ["conv2"])


def test_missing_and_invalid_model_files_are_named(tmp_path):
    with pytest.raises(ModelFileError, match="model file not found: .*absent.onnx"):
        load(tmp_path / "absent.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not a protobuf at all\xff" * 10)
    with pytest.raises(ModelFileError, match="garbage.onnx is not a valid ONNX model"):
        load(garbage)


def test_a_second_data_input_must_be_fed(batch):
    model = nchw_cnn()
    model.graph.input.append(onnx.helper.make_tensor_value_info("mask", onnx.TensorProto.FLOAT, ["N", 1]))
    with pytest.raises(InvalidArgument, match=r"has 2 inputs \(data, mask\): pass x as a dict"):
        load(model).predict(batch)


def test_unknown_device_is_refused():
    with pytest.raises(InvalidArgument, match="unknown device 'tpu'"):
        load(nchw_cnn(), device="tpu")


def test_auto_device_prints_nothing_when_cuda_is_unusable(capfd):
    from onnxsight.engine import session

    session.cuda_works.cache_clear()
    m = load(nchw_cnn(), device="auto")
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""
    assert m.device in ("cpu", "cuda")
    if not session.cuda_works():
        with pytest.raises(InvalidArgument, match="'cuda' requested"):
            load(nchw_cnn(), device="cuda")


def test_sessions_take_a_thread_count_and_refuse_a_bad_one(mnist_onnx, model, digits_data):
    x = digits_data.x_test[:8]
    single = onnxsight.load(mnist_onnx, device="cpu", threads=1)
    np.testing.assert_array_equal(single.predict(x), model.predict(x))
    session = single._session((single.output_names[0],), None)
    assert session.get_session_options().intra_op_num_threads == 1
    with pytest.raises(InvalidArgument, match="threads must be a positive integer"):
        onnxsight.load(mnist_onnx, device="cpu", threads=0)


def test_renaming_a_tensor_reaches_initializers_and_fresh_names_avoid_prefixes():
    from onnx import TensorProto, helper, numpy_helper

    from onnxsight.engine.graph import free_name, rename_tensor, tensor_names

    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "image"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [numpy_helper.from_array(np.ones(2, np.float32), "image")])
    rename_tensor(graph, "image", "image_1")
    assert graph.initializer[0].name == "image_1" and list(graph.node[0].input) == ["x", "image_1"]
    with pytest.raises(InternalError, match="the name is taken"):
        rename_tensor(graph, "x", "y")
    assert tensor_names(graph) == ["x", "image_1", "y"]
    assert free_name(["onnxsight/vjp/a", "y"], "onnxsight/vjp") == "onnxsight/vjp_1"
    assert free_name(["y", "y_1"], "y") == "y_2" and free_name(["y"], "z") == "z"
