"""Nested Keras models (transfer learning): conversion, layer paths, gradients at inner layers
against TensorFlow, Grad-CAM of the issue's snippet, siamese calls, and one-line refusals."""

from __future__ import annotations

import json

import keras
import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

import onnxsight
from onnxsight.cli.app import app
from onnxsight.converters import convert_keras_model
from onnxsight.engine.metadata import ModelMetadata
from onnxsight.errors import ConversionError, UnknownName
from tests.exact import float64_gradient
from tests.tf_reference import gradients, nested_layer_values, relative_error

# As in test_tf_parity: float64 against float64 (the converter's float32 weights remain), and
# onnxruntime's float32 run against its own float64 run (rounding and a few ReLU flips).
FLOAT64_TOLERANCE = 1e-5
FLOAT32_TOLERANCE = 2e-3
PARITY = 1e-5  # max abs difference of the softmax output, Keras float32 vs onnxruntime


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def _randomize_batchnorm(model, rng):
    """Batch norms that are not the identity, in nested models too (weights=None leaves them so)."""
    for layer in _all_layers(model):
        if type(layer).__name__ == "BatchNormalization":
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.1, beta.shape),
                               rng.normal(0, 0.1, mean.shape), rng.uniform(0.5, 1.5, var.shape)])


def _transfer(base, classes=5):
    """The transfer-learning pattern: base -> global average pool -> new softmax head."""
    inputs = keras.Input(base.input_shape[1:])
    h = keras.layers.GlobalAveragePooling2D(name="pool")(base(inputs))
    return keras.Model(inputs, keras.layers.Dense(classes, activation="softmax", name="head")(h))


def _convert(tmp_path, keras_model, seed=0):
    _randomize_batchnorm(keras_model, np.random.default_rng(seed))
    conversion = convert_keras_model(keras_model, tmp_path / "model.onnx")
    return conversion, onnxsight.load(conversion.path, device="cpu")


def _batch(keras_model, n=2, seed=1):
    return np.random.default_rng(seed).uniform(0, 1, (n, *keras_model.input_shape[1:])).astype(np.float32)


def _compare_gradients(model, keras_model, x, target, layer):
    """Input and inner-layer gradients: float64 graph vs TensorFlow float64, float32 run vs float64."""
    wrt = ["input", layer]
    want = gradients(keras_model, x, target, layer)
    exact = float64_gradient(model, x, target, wrt)
    got = model.gradient(x, target=target, wrt=wrt)
    errors = {}
    for name in wrt:
        assert got[name].shape == want[name].shape, name
        assert np.abs(want[name]).max() > 0, f"the reference gradient wrt {name} is zero: nothing is tested"
        errors[name] = (relative_error(exact[name], want[name]), relative_error(got[name], exact[name]))
        assert errors[name][0] <= FLOAT64_TOLERANCE, f"wrt {name} in float64 vs TensorFlow: {errors[name][0]:.2e}"
        assert errors[name][1] <= FLOAT32_TOLERANCE, f"wrt {name} in float32 vs float64: {errors[name][1]:.2e}"
    return errors


# ---- keras.applications bases with a new head ----------------------------------------------
APPLICATIONS = {
    "MobileNetV2": (lambda: keras.applications.MobileNetV2(
        weights=None, include_top=False, input_shape=(32, 32, 3), alpha=0.35), "block_6_project"),
    "EfficientNetB0": (lambda: keras.applications.EfficientNetB0(
        weights=None, include_top=False, input_shape=(32, 32, 3)), "block4a_expand_activation"),
    "ResNet50V2": (lambda: keras.applications.ResNet50V2(
        weights=None, include_top=False, input_shape=(32, 32, 3)), "conv3_block4_out"),
    "DenseNet121": (lambda: keras.applications.DenseNet121(
        weights=None, include_top=False, input_shape=(32, 32, 3)), "pool3_conv"),
}


# The fine-tuning recipe freezes the base (base.trainable = False): the same inference graph,
# batch norms in inference mode; one base is converted frozen to keep the suite short.
FROZEN = {"MobileNetV2"}


@pytest.mark.parametrize("name", list(APPLICATIONS))
def test_application_base_with_a_new_head_converts_and_differentiates_like_tensorflow(tmp_path, name):
    keras.utils.set_random_seed(0)
    build, inner = APPLICATIONS[name]
    base = build()
    base.trainable = name not in FROZEN
    keras_model = _transfer(base)
    conversion, model = _convert(tmp_path, keras_model)
    x = _batch(keras_model)
    diff = np.abs(model.predict(x) - np.asarray(keras_model(x))).max()
    assert conversion.max_abs_diff <= PARITY and diff <= PARITY, (conversion.max_abs_diff, diff)
    path = f"{base.name}/{inner}"
    assert model.layer(inner).name == path and model.layer(path).params == base.get_layer(inner).count_params()
    inner_model = keras.Model(base.inputs, base.get_layer(inner).output)
    np.testing.assert_allclose(model.activations(x, [path])[path], np.asarray(inner_model(x)), atol=1e-4, rtol=1e-4)
    errors = _compare_gradients(model, keras_model, x, np.array([1, 3]), path)
    print(f"{name}: parity {max(conversion.max_abs_diff, diff):.1e}; gradient errors {errors}")


# ---- the issue's snippet: Grad-CAM inside the base ------------------------------------------
def test_issue_snippet_gradcam_at_an_inner_layer_matches_tensorflow(tmp_path):
    from tests.test_cam import finish, paper_weights

    keras.utils.set_random_seed(0)
    base = keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(64, 64, 3))
    inp = keras.Input((64, 64, 3))
    h = keras.layers.GlobalAveragePooling2D()(base(inp))
    keras_model = keras.Model(inp, keras.layers.Dense(5, activation="softmax", name="head")(h))
    onnxsight.convert_keras(keras_model, tmp_path / "nested.onnx")  # crashed: "Output with path `1` ..."
    model = onnxsight.load(tmp_path / "nested.onnx", device="cpu")
    x, target = _batch(keras_model, n=3), np.array([0, 2, 4])
    path = "mobilenetv2_1.00_64/block_16_project"
    a, g = nested_layer_values(keras_model, x, target, path)
    want = finish(np.einsum("nhwk,nhwk->nhw", a, paper_weights(a, g[path], "gradcam")), 64)
    got = onnxsight.gradcam(model, x, target, layer=path)
    assert relative_error(got, want) <= 1e-4
    np.testing.assert_array_equal(onnxsight.gradcam(model, x, target, layer="block_16_project"), got)


# ---- hand-built nesting ---------------------------------------------------------------------
def _conv_block(name, channels=4, shape=(16, 16, 3)):
    inputs = keras.Input(shape)
    h = keras.layers.Conv2D(channels, 3, padding="same", activation="tanh", name="conv")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    return keras.Model(inputs, keras.layers.AveragePooling2D(2, name="pool")(h), name=name)


def test_nested_sequential_layers_are_addressable(tmp_path):
    keras.utils.set_random_seed(0)
    base = keras.Sequential([
        keras.Input((16, 16, 3)),
        keras.layers.Conv2D(6, 3, activation="tanh", name="conv_a"),
        keras.layers.MaxPooling2D(name="pool_a"),
        keras.layers.Conv2D(8, 3, activation="tanh", name="conv_b"),
    ], name="features")
    inputs = keras.Input((16, 16, 3))
    h = keras.layers.Flatten(name="flatten")(base(inputs))
    keras_model = keras.Model(inputs, keras.layers.Dense(4, activation="softmax", name="head")(h))
    _, model = _convert(tmp_path, keras_model)
    assert [layer.name for layer in model.layers] == [
        "features", "features/conv_a", "features/pool_a", "features/conv_b", "flatten", "head"]
    x = _batch(keras_model, n=3)
    for inner in ("conv_a", "pool_a", "conv_b"):
        want = keras.Model(base.inputs, base.get_layer(inner).output)(x)
        np.testing.assert_allclose(model.activations(x, [inner])[inner], np.asarray(want), atol=1e-5, rtol=0)
    _compare_gradients(model, keras_model, x, np.array([0, 1, 3]), "features/conv_a")


def test_sequential_without_input_inside_a_sequential(tmp_path):
    """Sequential models built by their first call (no keras.Input) nest too."""
    keras.utils.set_random_seed(0)
    inner = keras.Sequential([keras.layers.Conv2D(3, 3, activation="tanh", name="c1"),
                              keras.layers.Conv2D(2, 3, name="c2")], name="inner")
    keras_model = keras.Sequential([keras.Input((12, 12, 1)), inner, keras.layers.Flatten(name="flat"),
                                    keras.layers.Dense(4, activation="softmax", name="head")], name="outer")
    _, model = _convert(tmp_path, keras_model)
    assert [layer.name for layer in model.layers] == ["inner", "inner/c1", "inner/c2", "flat", "head"]
    x = _batch(keras_model)
    np.testing.assert_allclose(model.predict(x), np.asarray(keras_model(x)), atol=PARITY, rtol=0)
    _compare_gradients(model, keras_model, x, np.array([3, 1]), "inner/c1")


def test_two_levels_of_nesting(tmp_path):
    keras.utils.set_random_seed(0)
    block = _conv_block("block")
    inner_in = keras.Input((16, 16, 3))
    middle = keras.Model(inner_in, keras.layers.Conv2D(5, 3, activation="tanh", name="mix")(block(inner_in)), name="middle")
    inputs = keras.Input((16, 16, 3))
    h = keras.layers.GlobalAveragePooling2D(name="gap")(middle(inputs))
    keras_model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="head")(h))
    conversion, model = _convert(tmp_path, keras_model)
    names = [layer.name for layer in model.layers]
    assert names == ["middle", "middle/block", "middle/block/conv", "middle/block/bn", "middle/block/pool",
                     "middle/mix", "gap", "head"]
    meta = ModelMetadata.read(onnx.load(conversion.path))
    assert [record.depth for record in meta.layers] == [0, 1, 2, 2, 2, 1, 0, 0]
    assert [record.kind for record in meta.layers][:3] == ["Functional", "Functional", "Conv2D"]
    assert model.tensor("conv") == model.tensor("block/conv") == model.tensor("middle/block/conv")
    _compare_gradients(model, keras_model, _batch(keras_model), np.array([2, 0]), "middle/block/conv")


# ---- a base called twice (siamese on one input: the image and its negative) -----------------
def test_siamese_base_calls_are_named_by_call_index(tmp_path):
    keras.utils.set_random_seed(0)
    block = _conv_block("twin")
    inputs = keras.Input((16, 16, 3))
    left = keras.layers.GlobalAveragePooling2D(name="gap_left")(block(inputs))
    right = keras.layers.GlobalAveragePooling2D(name="gap_right")(block(keras.layers.Rescaling(-1.0, offset=1.0, name="invert")(inputs)))
    h = keras.layers.Concatenate(name="both")([left, right])
    keras_model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="head")(h))
    _, model = _convert(tmp_path, keras_model)
    names = [layer.name for layer in model.layers]
    start = names.index("twin@0")  # in Keras' layer order, after the inversion; the calls of a model together
    assert names[start:start + 8] == ["twin@0", "twin@0/conv", "twin@0/bn", "twin@0/pool",
                         "twin@1", "twin@1/conv", "twin@1/bn", "twin@1/pool"]
    x = _batch(keras_model, n=3)
    conv = keras.Model(block.inputs, block.get_layer("conv").output)
    got = model.activations(x, ["twin@0/conv", "twin@1/conv"])
    np.testing.assert_allclose(got["twin@0/conv"], np.asarray(conv(x)), atol=1e-5, rtol=0)  # call 0: the image
    np.testing.assert_allclose(got["twin@1/conv"], np.asarray(conv(1 - x)), atol=1e-5, rtol=0)  # call 1: inverted
    with pytest.raises(UnknownName, match=r"ambiguous.*twin@0/conv, twin@1/conv"):
        model.tensor("conv")
    with pytest.raises(UnknownName, match="ambiguous"):
        model.tensor("twin/conv")
    for path in ("twin@0/conv", "twin@1/conv"):
        a, _ = nested_layer_values(keras_model, x, np.array([0, 1, 2]), path)
        np.testing.assert_allclose(got[path], a, atol=1e-5, rtol=0)  # the reference picks the same call
        _compare_gradients(model, keras_model, x, np.array([0, 1, 2]), path)


# ---- names, metadata, inspect ---------------------------------------------------------------
@pytest.fixture(scope="module")
def nested_file(tmp_path_factory):
    keras.utils.set_random_seed(0)
    keras_model = _transfer(_conv_block("backbone"), classes=3)
    path = tmp_path_factory.mktemp("nested") / "model.onnx"
    onnxsight.convert_keras(keras_model, path)
    return path


def test_unknown_layer_names_list_the_near_misses(nested_file):
    model = onnxsight.load(nested_file, device="cpu")
    with pytest.raises(UnknownName, match="did you mean backbone/conv"):
        model.tensor("cnv")
    with pytest.raises(UnknownName, match="did you mean backbone/conv"):
        model.layer("bakbone/conv")
    assert model.layer("backbone/conv").kind == "Conv2D" and model.layer("conv").name == "backbone/conv"


def test_inspect_shows_the_tree(nested_file):
    runner = CliRunner()
    table = runner.invoke(app, ["inspect", str(nested_file)])
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    row = next(line for line in lines if "Conv2D" in line)
    assert "│   conv " in row  # indented under backbone, by its own name
    summary = json.loads(runner.invoke(app, ["inspect", str(nested_file), "--json"]).stdout)
    assert [(r["name"], r["depth"]) for r in summary["layers"]] == [
        ("backbone", 0), ("backbone/conv", 1), ("backbone/bn", 1), ("backbone/pool", 1), ("pool", 0), ("head", 0)]
    assert summary["params"] == sum(r["params"] for r in summary["layers"] if r["depth"] == 0)


# ---- refusals: one line, nothing written ----------------------------------------------------
class NumpyLayer(keras.layers.Layer):
    """Runs eagerly only: its call needs concrete values, so there is no TensorFlow graph."""

    def call(self, x):
        return keras.ops.convert_to_tensor(np.tanh(np.asarray(x)))

    def compute_output_shape(self, shape):
        return shape


def _assert_nothing_written(folder):
    assert list(folder.iterdir()) == [], list(folder.iterdir())


def test_a_layer_without_a_graph_is_one_line_naming_it_and_its_class(tmp_path):
    inner_in = keras.Input((8,))
    inner = keras.Model(inner_in, NumpyLayer(name="eager_only")(keras.layers.Dense(4, name="d")(inner_in)), name="inner")
    inputs = keras.Input((8,))
    keras_model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inner(inputs)))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ConversionError) as error:
        onnxsight.convert_keras(keras_model, out / "model.onnx")
    message = str(error.value)
    assert "\n" not in message and "'inner/eager_only' (NumpyLayer)" in message, message
    _assert_nothing_written(out)


def test_a_ragged_input_is_one_line_naming_the_input_layer(tmp_path):
    inputs = keras.Input((5,), ragged=True, name="tokens")
    keras_model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    with pytest.raises(ConversionError) as error:
        onnxsight.convert_keras(keras_model, tmp_path / "model.onnx")
    message = str(error.value)
    assert "\n" not in message and "'tokens' (InputLayer)" in message and "ragged" in message, message
    _assert_nothing_written(tmp_path)



def test_tf_keras_nested_model_converts_with_its_top_level_layers(tmp_path):
    """tf_keras (Keras 2) models are traced through Keras itself: a nested model converts (its
    output was disconnected from the outer inputs) and is one layer; its inner layers are not mapped."""
    tf_keras = pytest.importorskip("tf_keras")
    inner_in = tf_keras.Input((8, 8, 1))
    base = tf_keras.Model(inner_in, tf_keras.layers.Conv2D(2, 3, name="conv")(inner_in), name="base")
    inputs = tf_keras.Input((8, 8, 1))
    h = tf_keras.layers.Flatten(name="flat")(base(inputs))
    keras_model = tf_keras.Model(inputs, tf_keras.layers.Dense(3, activation="softmax", name="head")(h))
    conversion = convert_keras_model(keras_model, tmp_path / "model.onnx")
    assert [record.name for record in conversion.layers] == ["base", "flat", "head"]
    x = _batch(keras_model)
    np.testing.assert_allclose(onnxsight.load(conversion.path, device="cpu").predict(x), keras_model(x).numpy(),
                               atol=PARITY, rtol=0)
