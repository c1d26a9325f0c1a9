"""Targets beyond one class score: a region of a segmentation output (pytorch-grad-cam's
SemanticSegmentationTarget), a regression output, and an explicit cotangent — each through the
engine and the methods, against TensorFlow autograd in float64 on the Keras originals."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

import onnxsight
from onnxsight import Region
from onnxsight.cli.app import app
from onnxsight.errors import InvalidArgument
from onnxsight.kernels import attribution as k
from onnxsight.methods.common import target_scores
from tests.tf_reference import float64_twin, relative_error, swapped_activations

# onnxruntime's float32 against TensorFlow's float64 on smooth models (no ReLU kinks to flip)
TOLERANCE = 1e-4
CLASSES = 3


def unet():
    """A small U-Net: two scales, a skip connection, per-pixel class scores through a softmax."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    down = layers.Conv2D(8, 3, padding="same", activation="tanh", name="down")(inputs)
    pooled = layers.AveragePooling2D(2, name="pool")(down)
    bottom = layers.Conv2D(16, 3, padding="same", activation="tanh", name="bottom")(pooled)
    up = layers.UpSampling2D(2, interpolation="bilinear", name="up")(bottom)
    merged = layers.Concatenate(name="skip")([down, up])
    scores = layers.Conv2D(CLASSES, 1, name="scores")(merged)
    return keras.Model(inputs, layers.Softmax(name="probabilities")(scores))


def regressor():
    """A regression CNN: one linear output per image."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(1)
    return keras.Sequential([
        keras.Input((12, 12, 1)), layers.Conv2D(4, 3, activation="tanh", name="conv"),
        layers.Flatten(name="flatten"), layers.Dense(1, name="value"),
    ])


@pytest.fixture(scope="module")
def segmentation(tmp_path_factory):
    keras_model = unet()
    path = onnxsight.convert_keras(keras_model, tmp_path_factory.mktemp("seg") / "unet.onnx")
    return keras_model, onnxsight.load(path, device="cpu")


@pytest.fixture(scope="module")
def regression(tmp_path_factory):
    keras_model = regressor()
    path = onnxsight.convert_keras(keras_model, tmp_path_factory.mktemp("reg") / "regressor.onnx")
    return keras_model, onnxsight.load(path, device="cpu")


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(2).uniform(0, 1, (3, 16, 16, 3)).astype(np.float32)


def tf_weighted(keras_model, x, weights, layer=None):
    """TensorFlow in float64: d(sum(logits · weights))/d(input) and, with ``layer``, that layer's
    activation and gradient (the final softmax swapped for linear)."""
    import keras
    import tensorflow as tf

    twin = float64_twin(keras_model)
    last = twin.layers[-1]
    head = last.input if type(last).__name__ in ("Softmax", "Activation") else last.output
    outputs = [twin.get_layer(layer).output, head] if layer else [head]
    probe = keras.Model(twin.inputs, outputs)
    x = tf.constant(x, tf.float64)
    with swapped_activations(twin), tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        values = probe(x, training=False)
        values = values if isinstance(values, (list, tuple)) else [values]
        score = tf.reduce_sum(values[-1] * weights)
    result = {"input": tape.gradient(score, x).numpy(), "logits": values[-1].numpy()}
    if layer:
        result[layer] = values[0].numpy(), tape.gradient(score, values[0]).numpy()
    return result


def region_weights(logits, category, mask=None):
    """pytorch-grad-cam's SemanticSegmentationTarget as weights: the mask (or the predicted
    pixels of ``category``) on that class's channel."""
    mask = (logits.argmax(axis=-1) == category) if mask is None else np.broadcast_to(mask, logits.shape[:-1])
    weights = np.zeros(logits.shape)
    weights[..., category] = mask
    return weights


def test_a_region_over_a_mask_is_the_masked_sum_of_its_class_logits(segmentation, images):
    keras_model, model = segmentation
    mask = np.zeros((16, 16), bool)
    mask[4:10, 3:12] = True
    logits = tf_weighted(keras_model, images, 0.0)["logits"]
    want = tf_weighted(keras_model, images, region_weights(logits, 1, mask))["input"]
    got = model.gradient(images, target=Region(1, mask))["input"]
    assert relative_error(got, want) <= TOLERANCE
    other = model.gradient(images, target=Region(2, mask))["input"]
    assert relative_error(other, want) > 0.1  # the class matters


def test_a_region_without_a_mask_sums_the_pixels_predicted_as_its_class(segmentation, images):
    keras_model, model = segmentation
    logits = tf_weighted(keras_model, images, 0.0)["logits"]
    categories = np.array([0, 1, 2])
    weights = np.stack([region_weights(logits[i], c) for i, c in enumerate(categories)])
    assert all(weights[i, ..., c].any() for i, c in enumerate(categories))  # every class is predicted somewhere
    want = tf_weighted(keras_model, images, weights)["input"]
    got = onnxsight.saliency(model, images, Region(categories), absolute=False, reduce=None)
    assert relative_error(got, want) <= TOLERANCE


def test_gradcam_of_a_region_weighs_the_layer_by_its_gradient(segmentation, images):
    keras_model, model = segmentation
    mask = np.zeros((3, 16, 16), np.float32)
    mask[:, :8] = 1.0
    logits = tf_weighted(keras_model, images, 0.0)["logits"]
    a, g = tf_weighted(keras_model, images, region_weights(logits, 0, mask), layer="bottom")["bottom"]
    cam = np.maximum((a * g.mean(axis=(1, 2), keepdims=True)).sum(axis=-1), 0)  # Grad-CAM at 8x8
    import cv2

    want = np.stack([cv2.resize(c.astype(np.float32), (16, 16), interpolation=cv2.INTER_LINEAR) for c in cam])
    got = onnxsight.gradcam(model, images, Region(0, mask), layer="bottom", normalize=False)
    assert relative_error(got, want) <= TOLERANCE


def test_smoothgrad_and_ig_keep_each_images_region(segmentation, images):
    _, model = segmentation
    target = Region([0, 1, 2])
    resolved = model.resolve_target(images, target)  # on the clean images, kept for their noisy copies
    noise = k.smoothgrad_noise(images, 4, 0.15, "relative", seed=3)
    grads = [model.gradient(images + n, target=resolved)["input"] for n in noise]
    want = np.abs(np.stack(grads)).mean(axis=0).max(axis=3)
    got = onnxsight.saliency(model, images, target, smooth_samples=4, seed=3)
    assert relative_error(got, want) <= 1e-5
    attributions = onnxsight.integrated_gradients(model, images, target, steps=64)
    gap = onnxsight.completeness_gap(model, images, attributions, target)
    scores = np.abs(target_scores(model, images, resolved))
    assert (gap <= 1e-2 * scores).all(), f"completeness gaps {gap} for scores {scores}"


def test_occlusion_of_a_region_is_the_drop_of_its_masked_sum(segmentation, images):
    _, model = segmentation
    mask = np.zeros((16, 16), bool)
    mask[2:6, 2:6] = True
    maps = onnxsight.occlusion(model, images, Region(1, mask), window=4, stride=4)
    inside, outside = maps[:, 2:6, 2:6], maps[:, 10:, 10:]
    assert np.abs(inside).mean() > 10 * np.abs(outside).mean()  # occluding far from the region barely matters


def test_a_regression_output_is_differentiated_as_it_is(regression):
    keras_model, model = regression
    x = np.random.default_rng(4).uniform(0, 1, (4, 12, 12, 1)).astype(np.float32)
    want = tf_weighted(keras_model, x, 1.0)["input"]
    for target in (None, 0, "predicted"):
        got = onnxsight.saliency(model, x, target, absolute=False, reduce=None)
        assert relative_error(got, want) <= TOLERANCE, f"target={target!r}"
    attributions = onnxsight.integrated_gradients(model, x, None, steps=64)
    values = model.predict(x)[:, 0] - model.predict(np.zeros_like(x))[:, 0]
    np.testing.assert_allclose(attributions.reshape(4, -1).sum(axis=1), values, rtol=1e-2, atol=1e-4)


def test_an_explicit_cotangent_weighs_every_score(segmentation, images):
    keras_model, model = segmentation
    weights = np.random.default_rng(5).standard_normal((3, 16, 16, CLASSES))
    want = tf_weighted(keras_model, images, weights)["input"]
    assert relative_error(model.gradient(images, target=weights)["input"], want) <= TOLERANCE
    shared = tf_weighted(keras_model, images, weights[:1])["input"]
    assert relative_error(model.gradient(images, target=weights[:1])["input"], shared) <= TOLERANCE


@pytest.mark.parametrize(("target", "message"), [
    (Region(1), "needs a dense output"),
    (np.ones((2, 5)), "cotangent target must have the tensor's shape"),
    (np.full((4, 10), np.nan), "must be finite"),
    (1.5, "integer class or channel indices"),
])
def test_targets_that_do_not_fit_a_classifier_are_refused(model, digits_data, target, message):
    x = digits_data.x_test[:4]
    with pytest.raises(InvalidArgument, match=message):
        model.gradient(x, target=target)


@pytest.mark.parametrize(("target", "message"), [
    (Region(3), r"Region category \[3, 3, 3\] out of range"),
    (Region(1, np.ones((8, 8), bool)), r"mask must be booleans or numbers of shape \(16, 16\)"),
])
def test_regions_that_do_not_fit_the_output_are_refused(segmentation, images, target, message):
    with pytest.raises(InvalidArgument, match=message):
        segmentation[1].gradient(images, target=target)


def test_the_cli_takes_a_region_and_a_cotangent_file(segmentation, images, tmp_path):
    keras_model, model = segmentation
    np.save(tmp_path / "x.npy", images)
    mask = np.zeros((16, 16), bool)
    mask[4:12, 4:12] = True
    np.save(tmp_path / "mask.npy", mask)
    weights = np.random.default_rng(6).standard_normal((3, 16, 16, CLASSES)).astype(np.float32)
    np.save(tmp_path / "cot.npy", weights)
    runner = CliRunner()
    cases = {"region:1:" + str(tmp_path / "mask.npy"): Region(1, mask), "region:2": Region(2),
             "cotangent:" + str(tmp_path / "cot.npy"): weights}
    for k, (text, target) in enumerate(cases.items()):
        out = tmp_path / f"out{k}"
        result = runner.invoke(app, ["saliency", str(model.source), str(tmp_path / "x.npy"), "--target", text,
                                     "-o", str(out)])
        assert result.exit_code == 0, result.output
        want = onnxsight.saliency(model, images, target)
        np.testing.assert_allclose(np.load(out / "saliency.npy"), want, rtol=1e-5, atol=1e-7)
    result = runner.invoke(app, ["saliency", str(model.source), str(tmp_path / "x.npy"), "--target", "region:x"])
    assert result.exit_code == 1 and "--target" in result.output
