"""Occlusion maps against a plain loop over window positions (Zeiler & Fergus 2014) on Keras and numpy models."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

import onnxsight
from onnxsight.errors import InvalidArgument
from onnxsight.methods.occlusion import occlusion
from tests.foreign_models import nchw_cnn, reference_forward
from tests.tf_reference import relative_error, swapped_activations

TOLERANCE = 1e-4


def starts(size: int, window: int, stride: int) -> list[int]:
    """0, stride, ... while the window fits, then one window flush with the far border if needed."""
    out, s = [], 0
    while s + window <= size:
        out.append(s)
        s += stride
    if out[-1] + window < size:
        out.append(size - window)
    return out


def reference_occlusion(score, x, window, stride, fill, channel_axis):
    """Slide the window over every position, one model call per position; average each pixel's drops."""
    images = np.moveaxis(x, channel_axis, -1).astype(np.float32)  # N, H, W, C
    n, height, width, channels = images.shape
    if fill == "mean":
        shown = np.broadcast_to(images.mean(axis=(1, 2), keepdims=True), images.shape)
    elif fill == "blur":
        shown = np.stack([cv2.GaussianBlur(im, (0, 0), sigmaX=window[1] / 2, sigmaY=window[0] / 2).reshape(im.shape)
                          for im in images])
    else:
        shown = np.full_like(images, fill)
    base = score(x)
    sums, counts = np.zeros((n, height, width)), np.zeros((height, width))
    for top in starts(height, window[0], stride[0]):
        for left in starts(width, window[1], stride[1]):
            occluded = images.copy()
            box = (slice(None), slice(top, top + window[0]), slice(left, left + window[1]))
            occluded[box] = shown[box]
            drop = base - score(np.moveaxis(occluded, -1, channel_axis))
            sums[box] += drop[:, None, None]
            counts[box[1:]] += 1
    return np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)


@pytest.fixture(scope="module")
def x(digits_data):
    return digits_data.x_test[:3]


@pytest.fixture(scope="module")
def keras_score(mnist_keras):
    """score(x, target, of): a logit, or the spatial mean of a channel of the layer ``of``, from Keras."""
    import keras

    last = mnist_keras.layers[-1]

    def score(batch, target, of=None):
        out = mnist_keras.get_layer(of).output if of else last.output
        with swapped_activations(mnist_keras):
            values = np.asarray(keras.Model(mnist_keras.inputs, out)([batch], training=False), np.float64)
        if of:
            return values[np.arange(len(batch)), ..., target].mean(axis=(1, 2))
        return values[np.arange(len(batch)), target]

    return score


@pytest.mark.parametrize("window, stride, fill", [
    (11, 4, 0.0),  # seed 003's occluder
    (4, 2, 0.0),  # the default
    ((5, 3), (3, 2), "mean"),  # rectangular, strides that leave a border: the flush window
    (7, 5, "blur"),
    (6, 6, 0.5),
])
def test_class_occlusion_matches_a_loop_over_windows(model, keras_score, x, window, stride, fill):
    target = np.array([0, 4, 7])
    pair = lambda v: (v, v) if isinstance(v, int) else v  # noqa: E731
    want = reference_occlusion(lambda b: keras_score(b, target), x, pair(window), pair(stride), fill, 3)
    got = occlusion(model, x, target, window=window, stride=stride, fill=fill)
    assert got.shape == (3, 28, 28) and got.dtype == np.float32
    error = relative_error(got, want)
    assert error <= TOLERANCE, f"window {window}, stride {stride}, fill {fill!r}: relative error {error:.2e}"


def test_unit_of_an_intermediate_layer_seed_003(model, keras_score, x):
    unit = 17
    want = reference_occlusion(lambda b: keras_score(b, unit, "conv2d_2"), x, (11, 11), (4, 4), 0.0, 3)
    got = occlusion(model, x, unit, window=11, stride=4, of="conv2d_2")
    error = relative_error(got, want)
    assert error <= TOLERANCE, f"unit {unit} of conv2d_2: relative error {error:.2e}"


def test_predicted_target_is_the_clean_argmax(model, x):
    predicted = model.predict(x).argmax(axis=1)
    np.testing.assert_allclose(occlusion(model, x), occlusion(model, x, predicted), rtol=1e-6)


def test_batch_of_64_in_chunks_matches_per_image_maps(model, digits_data):
    batch = digits_data.x_test[:64]
    maps = occlusion(model, batch, window=11, stride=4, batch_size=100)
    assert maps.shape == (64, 28, 28) and np.isfinite(maps).all()
    for i in (0, 37, 63):
        np.testing.assert_allclose(maps[i], occlusion(model, batch[i:i + 1], window=11, stride=4)[0], atol=1e-5)


@pytest.mark.parametrize("fill", [0.0, "mean", "blur"])
def test_foreign_nchw_model_matches_numpy(fill):
    proto = nchw_cnn()
    foreign = onnxsight.load(proto, device="cpu")
    xs = np.random.default_rng(2).uniform(-1, 1, (4, 3, 8, 8)).astype(np.float32)
    target = np.array([1, 0, 4, 2])
    score = lambda b: reference_forward(proto, b.astype(np.float64))["fc"][np.arange(len(b)), target]  # noqa: E731
    want = reference_occlusion(score, xs, (3, 3), (2, 2), fill, 1)
    got = occlusion(foreign, xs, target, window=3, stride=2, fill=fill)
    assert got.shape == (4, 8, 8)
    assert relative_error(got, want) <= TOLERANCE


def test_foreign_nchw_model_unit_target_and_batch_of_64():
    foreign = onnxsight.load(nchw_cnn(), device="cpu")
    xs = np.random.default_rng(3).uniform(-1, 1, (64, 3, 8, 8)).astype(np.float32)
    maps = occlusion(foreign, xs, 2, of="relu1")
    assert maps.shape == (64, 8, 8) and np.isfinite(maps).all() and np.abs(maps).max() > 0


def test_bad_options_are_rejected_clearly(model, x):
    with pytest.raises(InvalidArgument, match=r"window \(29, 29\) is larger than the image \(28, 28\)"):
        occlusion(model, x, window=29)
    with pytest.raises(InvalidArgument, match="stride must be an integer >= 1.*got 0"):
        occlusion(model, x, stride=0)
    with pytest.raises(InvalidArgument, match="window must be an integer >= 1"):
        occlusion(model, x, window=(3, 0))
    with pytest.raises(InvalidArgument, match="fill must be a float \\(constant\\), 'mean', 'blur'; got 'zeros'"):
        occlusion(model, x, fill="zeros")
    with pytest.raises(InvalidArgument, match="fill must be"):
        occlusion(model, x, fill=True)
    with pytest.raises(InvalidArgument, match="unknown layer 'conv9'"):
        occlusion(model, x, of="conv9")
