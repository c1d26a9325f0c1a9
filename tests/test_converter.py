"""Keras -> ONNX conversion: parity, layer map, file formats, rewrites and refusals."""

from __future__ import annotations

import subprocess
import sys

import keras
import numpy as np
import onnx
import pytest

from onnxsight.converters import convert_keras, convert_keras_model, rewrites
from onnxsight.demo import architectures
from onnxsight.engine.graph import ancestors
from onnxsight.engine.metadata import ModelMetadata
from onnxsight.errors import ConversionError, InvalidArgument, ModelFileError
from tests.keras_models import (
    batch, gelu_model, keras_logits, keras_outputs, legacy_cnn, lgamma_model, randomize,
    run_onnx,
)

tf_keras = pytest.importorskip("tf_keras")

SEEDS = ["mnist_cnn", "mnist_cnn_keras_vis", "cifar_cnn5", "residual_cnn"]


def input_shape(model):
    return tuple(model.inputs[0].shape[1:])


def layer_names(model):
    return [layer.name for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]


@pytest.fixture(scope="module", params=SEEDS)
def seed(request, tmp_path_factory):
    """(Keras model with non-trivial weights, Conversion) for one seed architecture."""
    model = randomize(getattr(architectures, request.param)())
    path = tmp_path_factory.mktemp(request.param) / "model.onnx"
    return model, convert_keras_model(model, path)


def test_seed_architectures_convert_with_parity(seed):
    model, conversion = seed
    x = batch(input_shape(model), n=5)
    assert conversion.max_abs_diff <= 1e-5
    np.testing.assert_allclose(run_onnx(conversion.path, x)["output"], np.asarray(model(x)), atol=1e-5, rtol=0)


def test_graph_has_one_input_and_output_with_dynamic_batch(seed):
    model, conversion = seed
    graph = onnx.load(conversion.path).graph
    assert [v.name for v in graph.input] == ["input"] and [v.name for v in graph.output] == ["output"]
    assert not graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value")
    assert run_onnx(conversion.path, batch(input_shape(model), n=3))["output"].shape[0] == 3
    assert all(op.version >= 17 for op in onnx.load(conversion.path).opset_import if op.domain in ("", "ai.onnx"))


def test_every_layer_is_addressable_by_name(seed):
    model, conversion = seed
    onnx_model = onnx.load(conversion.path)
    meta = ModelMetadata.read(onnx_model)
    names = layer_names(model)
    assert [record.name for record in meta.layers] == names
    assert [record.kind for record in meta.layers] == [type(model.get_layer(n)).__name__ for n in names]
    assert meta.input_layout == "NHWC" and meta.source == conversion.source
    x = batch(input_shape(model))
    ours = run_onnx(conversion.path, x, [record.tensor for record in meta.layers])
    theirs = keras_outputs(model, names, x)
    for record in meta.layers:
        np.testing.assert_allclose(ours[record.tensor], theirs[record.name], atol=1e-5, rtol=0,
                                   err_msg=f"layer {record.name} (tensor {record.tensor})")


def test_layer_tensors_lie_on_the_path_to_the_output(seed):
    """Gradients with respect to a layer need its tensor read by the computation, not a side copy."""
    _, conversion = seed
    onnx_model = onnx.load(conversion.path)
    upstream = ancestors(onnx_model.graph, "output") | {"output"}
    for record in ModelMetadata.read(onnx_model).layers:
        assert record.tensor in upstream, record


def test_layers_own_their_names_and_the_last_layer_is_the_output(seed):
    model, conversion = seed
    tensors = {record.name: record.tensor for record in conversion.layers}
    assert tensors[model.layers[-1].name] == "output"
    dropouts = {layer.name for layer in model.layers if isinstance(layer, keras.layers.Dropout)}
    for name, tensor in list(tensors.items())[:-1]:
        assert tensor == name or name in dropouts, (name, tensor)


def test_logits_are_the_pre_softmax_values(seed):
    model, conversion = seed
    x = batch(input_shape(model))
    assert conversion.logits == "logits" == ModelMetadata.read(onnx.load(conversion.path)).logits
    ours = run_onnx(conversion.path, x, ["logits"])["logits"]
    np.testing.assert_allclose(ours, keras_logits(model, x), atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    """A Keras 3 seed model, its reference outputs and a folder for files."""
    model = randomize(architectures.mnist_cnn())
    x = batch((28, 28, 1))
    return model, x, np.asarray(model(x)), tmp_path_factory.mktemp("files")


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_keras3_files_round_trip(mnist, suffix):
    model, x, expected, folder = mnist
    source = folder / f"model{suffix}"
    model.save(source)
    before = source.read_bytes()
    conversion = convert_keras_model(source, folder / f"from{suffix}.onnx")
    assert conversion.max_abs_diff <= 1e-5 and str(source) in conversion.source
    np.testing.assert_allclose(run_onnx(conversion.path, x)["output"], expected, atol=1e-5, rtol=0)
    assert conversion.layers == convert_keras_model(model, folder / f"memory{suffix}.onnx").layers
    assert source.read_bytes() == before


@pytest.fixture(scope="module")
def legacy(tmp_path_factory):
    """A tf_keras (Keras 2) model as the seed notebooks saved them."""
    model = randomize(legacy_cnn())
    x = batch((16, 16, 1))
    return model, x, np.asarray(model(x)), tmp_path_factory.mktemp("legacy")


@pytest.mark.parametrize("form", ["h5", "saved_model", "memory"])
def test_keras2_models_convert(legacy, form):
    model, x, expected, folder = legacy
    source = {"h5": folder / "legacy.h5", "saved_model": folder / "saved_model", "memory": model}[form]
    if form != "memory":
        model.save(source, save_format=form.replace("saved_model", "tf"))
    conversion = convert_keras_model(source, folder / f"{form}.onnx")
    assert conversion.max_abs_diff <= 1e-5
    ours = run_onnx(conversion.path, x, [record.tensor for record in conversion.layers])
    np.testing.assert_allclose(ours["output"], expected, atol=1e-5, rtol=0)
    names = [layer.name for layer in model.layers]
    assert [record.name for record in conversion.layers] == names
    theirs = keras_outputs(model, names, x)
    for record in conversion.layers:
        np.testing.assert_allclose(ours[record.tensor], theirs[record.name], atol=1e-5, rtol=0)
    assert conversion.logits == "logits"


def test_keras3_export_artifact_converts_with_layers_from_scopes(mnist):
    model, x, expected, folder = mnist
    model.export(folder / "exported", verbose=False)
    conversion = convert_keras_model(folder / "exported", folder / "exported.onnx")
    assert conversion.max_abs_diff <= 1e-5
    np.testing.assert_allclose(run_onnx(conversion.path, x)["output"], expected, atol=1e-5, rtol=0)
    scopes = [record.name for record in conversion.layers]
    # Keras 3 name scopes carry a "_1" suffix: conv2d_1 is traced as conv2d_1_1.
    assert [s.removesuffix("_1") for s in scopes[:3]] == ["conv2d_1", "max_pooling2d_1", "conv2d_2"]
    conv = conversion.layers[0]
    ours = run_onnx(conversion.path, x, [conv.tensor])[conv.tensor]
    np.testing.assert_allclose(ours, keras_outputs(model, ["conv2d_1"], x)["conv2d_1"], atol=1e-5, rtol=0)


def test_convnext_converts_via_erf_and_inlined_grouped_convolutions(tmp_path):
    model = keras.applications.ConvNeXtTiny(weights=None, input_shape=(32, 32, 3), classes=10)
    conversion = convert_keras_model(model, tmp_path / "convnext.onnx")
    graph = onnx.load(conversion.path).graph
    ops = {node.op_type for node in graph.node}
    assert "Erf" in ops and not ops & {"Erfc", "StatefulPartitionedCall", "PartitionedCall"}
    assert [v.name for v in graph.input] == ["input"]
    assert conversion.max_abs_diff <= 1e-4


def test_efficientnet_normalization_is_frozen_into_the_graph(tmp_path):
    model = keras.applications.EfficientNetB0(weights=None, input_shape=(32, 32, 3), classes=10)
    norm = next(layer for layer in model.layers if isinstance(layer, keras.layers.Normalization))
    norm.adapt(batch((32, 32, 3), n=16, seed=5) * np.array([0.2, 0.5, 0.9], np.float32))
    conversion = convert_keras_model(model, tmp_path / "efficientnet.onnx")
    assert [v.name for v in onnx.load(conversion.path).graph.input] == ["input"]
    assert conversion.max_abs_diff <= 1e-5
    x = batch((32, 32, 3), n=4) * 255.0
    tensor = {record.name: record.tensor for record in conversion.layers}[norm.name]
    ours = run_onnx(conversion.path, x, [tensor, conversion.logits])
    theirs = keras_outputs(model, [norm.name], x)[norm.name]
    assert np.abs(theirs - x / 255.0).max() > 1.0  # the adapted mean and variance matter
    np.testing.assert_allclose(ours[tensor], theirs, atol=1e-4, rtol=0)
    np.testing.assert_allclose(ours[conversion.logits], keras_logits(model, x), atol=1e-5, rtol=0)
    np.testing.assert_allclose(ours["output"], np.asarray(model(x)), atol=1e-5, rtol=0)


def test_erfc_is_rewritten_as_one_minus_erf(tmp_path):
    model = randomize(gelu_model())
    conversion = convert_keras_model(model, tmp_path / "gelu.onnx")
    assert conversion.max_abs_diff <= 1e-5
    assert conversion.logits == "scores"
    x = batch((12,)) * 6.0 - 3.0
    ours = run_onnx(conversion.path, x, ["gelu"])
    np.testing.assert_allclose(ours["gelu"], keras_outputs(model, ["gelu"], x)["gelu"], atol=1e-5, rtol=0)


def test_a_wrong_rewrite_fails_the_parity_check(tmp_path, monkeypatch):
    def erf_instead_of_erfc(model):
        for node in model.graph.node:
            if node.op_type == "Erfc":
                node.op_type = "Erf"

    monkeypatch.setattr(rewrites, "replace_erfc", erf_instead_of_erfc)
    with pytest.raises(ConversionError, match=r"differs from Keras by .* above the tolerance 0.0001"):
        convert_keras_model(randomize(gelu_model()), tmp_path / "wrong.onnx")
    assert not list(tmp_path.iterdir())


def test_tolerance_bounds_the_parity_check(tmp_path):
    model = randomize(gelu_model())
    with pytest.raises(ConversionError, match="above the tolerance"):
        convert_keras(model, tmp_path / "strict.onnx", tolerance=-1.0)


def test_unsupported_tensorflow_op_fails_naming_op_and_layer(tmp_path):
    with pytest.raises(ConversionError, match=r"Lgamma.*log_gamma"):
        convert_keras(lgamma_model(), tmp_path / "lgamma.onnx")
    assert not list(tmp_path.iterdir())


def test_zero_padding_before_max_pooling_keeps_its_zeros(tmp_path):
    """ResNet50V2's stem: ZeroPadding2D then MaxPooling2D over values that may be negative. Where
    onnxruntime fused the Pad into the MaxPool (padding with -inf), border windows of negative
    values gave their maximum instead of 0 and ResNet50V2's output moved by 2.3e-3."""
    inputs = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(3, 1, bias_initializer=keras.initializers.Constant(-2.0), name="shift")(inputs)
    h = keras.layers.MaxPooling2D(3, strides=2, name="pool")(keras.layers.ZeroPadding2D(1, name="pad")(h))
    model = keras.Model(inputs, keras.layers.Flatten(name="flat")(h))
    conversion = convert_keras_model(model, tmp_path / "padded.onnx", tolerance=1e-6)
    x = batch((6, 6, 2), n=3)
    np.testing.assert_allclose(run_onnx(conversion.path, x)["output"], np.asarray(model(x)), atol=1e-6, rtol=0)


def test_a_layer_without_a_tensorflow_graph_is_one_line_and_nothing_is_written(tmp_path):
    class EagerOnly(keras.layers.Layer):
        def call(self, x):
            return keras.ops.convert_to_tensor(np.tanh(np.asarray(x)))

        def compute_output_shape(self, shape):
            return shape

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(EagerOnly(name="numpy_tanh")(inputs)))
    with pytest.raises(ConversionError, match=r"^layer 'numpy_tanh' \(EagerOnly\) cannot be traced to a TensorFlow graph: [^\n]+$"):
        convert_keras(model, tmp_path / "eager.onnx")
    assert not list(tmp_path.iterdir())


def test_refuses_to_overwrite_unless_asked(mnist, tmp_path):
    model = mnist[0]
    target = tmp_path / "model.onnx"
    target.write_bytes(b"keep me")
    with pytest.raises(InvalidArgument, match="model.onnx"):
        convert_keras(model, target)
    assert target.read_bytes() == b"keep me"
    assert convert_keras(model, target, overwrite=True) == target
    assert ModelMetadata.read(onnx.load(target)).logits == "logits"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_missing_and_unreadable_files_are_model_file_errors(tmp_path):
    with pytest.raises(ModelFileError, match="nothere.h5"):
        convert_keras(tmp_path / "nothere.h5", tmp_path / "out.onnx")
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match="garbage.h5"):
        convert_keras(garbage, tmp_path / "out.onnx")
    assert garbage.read_bytes() == b"not a model"


def test_integer_inputs_convert_and_keep_their_dtype(tmp_path):
    tokens, values = keras.Input((5,), dtype="int32", name="tokens"), keras.Input((3,), name="values")
    embedded = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(7, 3)(tokens))
    model = keras.Model([tokens, values], keras.layers.Dense(2, activation="softmax")(keras.layers.Add()([embedded, values])))
    result = convert_keras_model(model, tmp_path / "tokens.onnx")
    assert result.max_abs_diff < 1e-6
    inputs = {v.name: v.type.tensor_type.elem_type for v in onnx.load(tmp_path / "tokens.onnx").graph.input}
    assert inputs == {"tokens": onnx.TensorProto.INT32, "values": onnx.TensorProto.FLOAT}


def test_an_output_returned_twice_is_refused(tmp_path):
    inp = keras.Input((3,), name="values")
    dense = keras.layers.Dense(2, name="dense")(inp)
    with pytest.raises(ConversionError, match=r"output names \['dense', 'dense'\] must be distinct"):
        convert_keras(keras.Model(inp, [dense, dense]), tmp_path / "twice.onnx")
    with pytest.raises(ConversionError, match=r"output 'values' is the input 'input' returned as it is"):
        convert_keras(keras.Model(inp, [inp, dense]), tmp_path / "twice.onnx")
    assert not (tmp_path / "twice.onnx").exists()


def test_opset_below_17_is_refused(tmp_path):
    with pytest.raises(InvalidArgument, match="opset"):
        convert_keras(gelu_model(), tmp_path / "old.onnx", opset=13)


def test_importing_the_converters_does_not_import_tensorflow():
    code = "import sys, onnxsight.converters; assert not {'tensorflow', 'tf2onnx', 'keras'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)
