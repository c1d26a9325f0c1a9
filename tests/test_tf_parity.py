"""Gradients of converted models equal TensorFlow autograd on the Keras originals."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import onnxsight
from tests.tf_reference import gradients, relative_error

TOLERANCE = 1e-4


def _randomize_batchnorm(model, rng):
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.1, beta.shape),
                               rng.normal(0, 0.1, mean.shape), rng.uniform(0.5, 1.5, var.shape)])


def _seed_models():
    from onnxsight.demo import architectures as a

    return {
        "mnist_cnn": (a.mnist_cnn, "conv2d_2"),
        "mnist_cnn_keras_vis": (a.mnist_cnn_keras_vis, None),
        "cifar_cnn5": (a.cifar_cnn5, "conv_2"),
        "residual_cnn": (a.residual_cnn, None),
    }


def _applications():
    apps = keras.applications
    return {
        "MobileNetV2": (lambda: apps.MobileNetV2(weights=None, input_shape=(32, 32, 3), alpha=0.35, classes=10),
                        "Conv_1"),
        "EfficientNetB0": (lambda: apps.EfficientNetB0(weights=None, input_shape=(32, 32, 3), classes=10),
                           "top_conv"),
        "ResNet50": (lambda: apps.ResNet50(weights=None, input_shape=(32, 32, 3), classes=10),
                     "conv5_block3_out"),
    }


def transformer_block(tokens: int = 8, width: int = 16, classes: int = 5):
    """LayerNorm -> multi-head self-attention -> residual -> LayerNorm -> GELU MLP -> residual -> pool -> softmax."""
    inputs = keras.Input((tokens, width))
    h = keras.layers.LayerNormalization(name="ln_1")(inputs)
    h = keras.layers.MultiHeadAttention(num_heads=2, key_dim=8, name="attention")(h, h)
    x = keras.layers.Add(name="residual_1")([inputs, h])
    h = keras.layers.LayerNormalization(name="ln_2")(x)
    h = keras.layers.Dense(32, activation="gelu", name="mlp_in")(h)
    h = keras.layers.Dense(width, name="mlp_out")(h)
    x = keras.layers.Add(name="residual_2")([x, h])
    x = keras.layers.GlobalAveragePooling1D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(classes, activation="softmax", name="preds")(x))


def _check(tmp_path, keras_model, layer, seed=0):
    rng = np.random.default_rng(seed)
    _randomize_batchnorm(keras_model, rng)
    path = onnxsight.convert_keras(keras_model, tmp_path / "model.onnx")
    model = onnxsight.load(path, device="cpu")
    shape = tuple(keras_model.input_shape[1:])
    x = rng.uniform(0, 1, (3, *shape)).astype(np.float32)
    classes = keras_model.output_shape[-1]
    target = rng.integers(0, classes, 3)
    want = gradients(keras_model, x, target, layer)
    wrt = ["input", layer] if layer else ["input"]
    got = model.gradient(x, of="logits", target=target, wrt=wrt)
    for name in wrt:
        error = relative_error(got[name], want[name])
        assert error <= TOLERANCE, f"gradient wrt {name}: relative error {error:.2e}"


@pytest.mark.parametrize("name", list(_seed_models()))
def test_seed_model_gradients_match_tensorflow(tmp_path, name):
    keras.utils.set_random_seed(0)
    build, layer = _seed_models()[name]
    _check(tmp_path, build(), layer)


@pytest.mark.parametrize("name", ["MobileNetV2", "EfficientNetB0", "ResNet50"])
def test_keras_applications_gradients_match_tensorflow(tmp_path, name):
    keras.utils.set_random_seed(0)  # random deep nets amplify float32 rounding; keep the weights fixed
    build, layer = _applications()[name]
    _check(tmp_path, build(), layer)


def test_transformer_block_gradients_match_tensorflow(tmp_path):
    keras.utils.set_random_seed(0)
    _check(tmp_path, transformer_block(), "ln_2")


@pytest.mark.parametrize("modifier", ["guided", "deconv"])
def test_guided_and_deconv_match_a_tensorflow_relu_override(tmp_path, modifier):
    from onnxsight.demo.architectures import mnist_cnn

    keras_model = mnist_cnn()
    path = onnxsight.convert_keras(keras_model, tmp_path / "model.onnx")
    model = onnxsight.load(path, device="cpu")
    x = np.random.default_rng(1).uniform(0, 1, (4, 28, 28, 1)).astype(np.float32)
    target = np.array([0, 3, 5, 9])
    want = gradients(keras_model, x, target, modifier=modifier)["input"]
    got = model.gradient(x, target=target, modifier=modifier)["input"]
    assert relative_error(got, want) <= TOLERANCE
    exact = model.gradient(x, target=target)["input"]
    assert relative_error(exact, want) > 1e-2  # the modifier really changes the result
