"""Gradients of converted models equal TensorFlow autograd on the Keras originals."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import onnxsight
from tests.exact import float64_gradient
from tests.tf_reference import gradients, relative_error

# Both sides in float64, on the same weights: what remains is the converter's float32 weights
# (BatchNorm folded into convolutions in float32, relative rounding 6e-8) through the network.
FLOAT64_TOLERANCE = 1e-5
# onnxruntime's float32 run against the float64 one: float32 rounding (at most 9e-7 on these
# models), and on deep random nets the occasional ReLU whose pre-activation lies within rounding
# of zero and flips with the CPU's kernels (one flip moved ResNet50's input gradient by 4.7e-4 on
# an AMD CPU without AVX-512). The bound admits a few flips; a wrong rule is off by O(1).
FLOAT32_TOLERANCE = 2e-3


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
    wrt = ["input", layer] if layer else ["input"]
    _compare(model, keras_model, x, target, wrt)


def _compare(model, keras_model, x, target, wrt, modifier=None):
    """onnxsight's graph in float64 against TensorFlow in float64, and its float32 run against both."""
    want = gradients(keras_model, x, target, wrt[1] if len(wrt) > 1 else None, modifier)
    exact = float64_gradient(model, x, target, wrt, modifier)
    got = model.gradient(x, of="logits", target=target, wrt=wrt, modifier=modifier)
    for name in wrt:
        error = relative_error(exact[name], want[name])
        assert error <= FLOAT64_TOLERANCE, f"gradient wrt {name} in float64 vs TensorFlow: relative error {error:.2e}"
        error = relative_error(got[name], exact[name])
        assert error <= FLOAT32_TOLERANCE, f"gradient wrt {name} in float32 vs float64: relative error {error:.2e}"
    return got


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
    got = _compare(model, keras_model, x, target, ["input"], modifier)["input"]
    exact = model.gradient(x, target=target)["input"]
    assert relative_error(exact, got) > 1e-2  # the modifier really changes the result
