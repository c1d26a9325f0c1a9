"""Integrated Gradients against a TensorFlow path integral, completeness, baselines and batching."""

from __future__ import annotations

import numpy as np
import pytest

import onnxsight
from onnxsight.errors import InvalidArgument
from onnxsight.kernels import attribution as k
from onnxsight.methods import integrated_gradients as ig_module
from onnxsight.methods.common import target_scores
from onnxsight.methods.integrated_gradients import completeness_gap, integrated_gradients
from tests.foreign_models import nchw_cnn, reference_forward
from tests.tf_reference import gradients, relative_error, swapped_activations

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def images(digits_data):
    return digits_data.x_test[:4]


@pytest.fixture(scope="module")
def predicted(mnist_keras, images):
    return np.asarray(mnist_keras(images, training=False)).argmax(axis=1)


def quadrature(steps: int, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights on [0, 1], written out here as in Captum's approximation methods."""
    i = np.arange(steps)
    if method == "riemann_trapezoid":
        weights = np.full(steps, 1 / (steps - 1))
        weights[0] = weights[-1] = 0.5 / (steps - 1)
        return i / (steps - 1), weights
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return 0.5 * (nodes + 1), 0.5 * weights
    shift = {"riemann_left": 0, "riemann_right": 1, "riemann_middle": 0.5}[method]
    return (i + shift) / steps, np.full(steps, 1 / steps)


def numpy_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian of NHWC images, kernel side round(8σ+1)|1, mirrored borders (reflect-101)."""
    side = int(round(8 * sigma + 1)) | 1
    r = side // 2
    kernel = np.exp(-((np.arange(side) - r) ** 2) / (2 * sigma**2))
    kernel /= kernel.sum()
    padded = np.pad(x.astype(np.float64), ((0, 0), (r, r), (r, r), (0, 0)), mode="reflect")
    rows = sum(kernel[j] * padded[:, j:j + x.shape[1], :, :] for j in range(side))
    return sum(kernel[j] * rows[:, :, j:j + x.shape[2], :] for j in range(side)).astype(np.float32)


def reference_baseline(x: np.ndarray, kind: str) -> np.ndarray:
    if kind == "black":
        return np.zeros_like(x)
    if kind == "grey":
        return np.broadcast_to((x.min(axis=(1, 2, 3)) + x.max(axis=(1, 2, 3)))[:, None, None, None] / 2, x.shape)
    return numpy_blur(x, 0.1 * 28)


def tf_integrated_gradients(keras_model, x, baseline, target, steps, method):
    """(x − b) · Σ_k w_k ∂logit/∂x at b + α_k (x − b), every path point through GradientTape at once."""
    alphas, weights = quadrature(steps, method)
    a, delta = alphas[:, None, None, None, None], (x - baseline).astype(np.float32)
    # the documented path points: from the baseline below α = 1/2, from x above (exact ends)
    path = np.where(a < 0.5, baseline + a.astype(np.float32) * delta, x - (1 - a).astype(np.float32) * delta)
    g = gradients(keras_model, path.reshape(-1, *x.shape[1:]).astype(np.float32), np.tile(target, steps))["input"]
    return (x - baseline) * np.tensordot(weights, g.reshape(steps, *x.shape).astype(np.float64), axes=1)


def tf_logits(keras_model, x):
    with swapped_activations(keras_model):
        return np.asarray(keras_model(x, training=False), np.float64)


def assert_close(got, want, what):
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    error = relative_error(got, want)
    assert error <= TOLERANCE, f"{what}: relative error {error:.2e} > {TOLERANCE}"


def test_blur_baseline_is_a_gaussian_of_a_tenth_of_the_image_side(images):
    np.testing.assert_allclose(k.baseline(images, "blur", channel_axis=3), numpy_blur(images, 2.8), atol=1e-6)
    nchw = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    np.testing.assert_allclose(k.baseline(nchw, "blur", channel_axis=1),
                               numpy_blur(images, 2.8).transpose(0, 3, 1, 2), atol=1e-6)


@pytest.mark.parametrize("baseline", ["black", "grey", "blur"])
def test_matches_a_tf_path_integral_for_each_baseline(model, mnist_keras, images, predicted, baseline):
    want = tf_integrated_gradients(mnist_keras, images, reference_baseline(images, baseline), predicted, 32,
                                   "riemann_trapezoid")
    assert_close(integrated_gradients(model, images, steps=32, baseline=baseline), want, f"baseline={baseline}")


@pytest.mark.parametrize("method", ["riemann_left", "riemann_right", "riemann_middle", "gausslegendre"])
def test_matches_a_tf_path_integral_for_each_quadrature(model, mnist_keras, images, predicted, method):
    want = tf_integrated_gradients(mnist_keras, images, np.zeros_like(images), predicted, 16, method)
    assert_close(integrated_gradients(model, images, steps=16, method=method), want, f"method={method}")


def test_array_and_number_baselines_and_channel_sums(model, mnist_keras, images, predicted):
    start = np.full_like(images, 0.25)
    want = tf_integrated_gradients(mnist_keras, images, start, predicted, 8, "riemann_trapezoid")
    assert_close(integrated_gradients(model, images, steps=8, baseline=0.25), want, "baseline=0.25")
    assert_close(integrated_gradients(model, images, steps=8, baseline=start[:1]), want, "array baseline")
    assert_close(integrated_gradients(model, images, steps=8, baseline=0.25, reduce="sum"), want.sum(axis=3),
                 "reduce=sum")


def test_scores_are_the_target_logits(model, mnist_keras, images, predicted):
    logits = tf_logits(mnist_keras, images)
    np.testing.assert_allclose(target_scores(model, images, predicted), logits[np.arange(len(images)), predicted],
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(target_scores(model, images, "predicted"), logits.max(axis=1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(target_scores(model, images, None), logits.sum(axis=1), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("baseline", ["black", "blur"])
def test_completeness_gap_is_below_one_percent_at_64_steps(model, mnist_keras, digits_data, baseline):
    x = digits_data.x_test[10:18]
    target = np.asarray(mnist_keras(x, training=False)).argmax(axis=1)
    attributions = integrated_gradients(model, x, steps=64, baseline=baseline)
    gap = completeness_gap(model, x, attributions, "predicted", baseline=baseline)
    logits, base = tf_logits(mnist_keras, x), tf_logits(mnist_keras, reference_baseline(x, baseline))
    change = np.abs(logits[np.arange(len(x)), target] - base[np.arange(len(x)), target])
    # the gap computed independently agrees with onnxsight's
    independent = np.abs(attributions.reshape(len(x), -1).sum(axis=1) - (logits - base)[np.arange(len(x)), target])
    np.testing.assert_allclose(gap, independent, atol=1e-4 * change.max())
    assert (gap <= 0.01 * change).all(), f"gap / |f(x) - f(b)|: {np.round(gap / change, 4)}"


def test_predicted_class_is_taken_on_the_image_not_on_each_path_point(model, images, predicted):
    # the black image's own argmax is one class for all; path points near it would follow it
    np.testing.assert_array_equal(integrated_gradients(model, images, "predicted", steps=8),
                                  integrated_gradients(model, images, predicted, steps=8))


def test_a_batch_of_64_equals_runs_of_7_rows_and_per_chunk_calls(model, digits_data):
    x = digits_data.x_test[:64]
    full = integrated_gradients(model, x, steps=4)
    assert full.shape == x.shape and full.dtype == np.float32
    tolerance = dict(rtol=1e-5, atol=1e-6 * np.abs(full).max())
    np.testing.assert_allclose(integrated_gradients(model, x, steps=4, batch_size=7), full, **tolerance)
    pieces = np.concatenate([integrated_gradients(model, x[i:i + 7], steps=4) for i in range(0, 64, 7)])
    np.testing.assert_allclose(pieces, full, **tolerance)


def test_memory_bounded_blocks_of_path_points_equal_one_block(model, images, monkeypatch):
    whole = integrated_gradients(model, images, steps=10, method="gausslegendre")
    monkeypatch.setattr(ig_module, "MAX_CHUNK_BYTES", 3 * 4 * images.nbytes)  # blocks of 3 path points
    np.testing.assert_allclose(integrated_gradients(model, images, steps=10, method="gausslegendre"), whole,
                               rtol=1e-5, atol=1e-6 * np.abs(whole).max())


def finite_difference_ig(proto, x, baseline, target, steps, method):
    """IG of the foreign model from central differences of its numpy forward (float64)."""
    alphas, weights = quadrature(steps, method)
    delta = (x - baseline).astype(np.float64)
    path = (baseline + alphas[:, None, None, None, None] * delta).reshape(-1, *x.shape[1:])
    size, eps = x[0].size, 1e-6
    bumps = (np.eye(size) * eps).reshape(size, *x.shape[1:])
    rows = np.repeat(np.tile(target, steps), size)
    up = reference_forward(proto, (path[:, None] + bumps).reshape(-1, *x.shape[1:]))["fc"][np.arange(len(rows)), rows]
    down = reference_forward(proto, (path[:, None] - bumps).reshape(-1, *x.shape[1:]))["fc"][np.arange(len(rows)), rows]
    g = ((up - down) / (2 * eps)).reshape(steps, *x.shape)
    return delta * np.tensordot(weights, g, axes=1)


@pytest.fixture(scope="module")
def foreign():
    return onnxsight.load(nchw_cnn(), device="cpu")


@pytest.fixture(scope="module")
def foreign_images():
    return np.random.default_rng(3).uniform(-1, 1, (6, 3, 8, 8)).astype(np.float32)


@pytest.mark.parametrize("baseline", ["black", "blur"])
def test_foreign_nchw_model_matches_finite_differences_and_sums_over_axis_1(foreign, foreign_images, baseline):
    x = foreign_images[:3]
    target = reference_forward(foreign.proto, x.astype(np.float64))["fc"].argmax(axis=1)
    start = np.zeros_like(x) if baseline == "black" else numpy_blur(x.transpose(0, 2, 3, 1), 0.8).transpose(0, 3, 1, 2)
    want = finite_difference_ig(foreign.proto, x, start, target, 8, "riemann_middle")
    got = integrated_gradients(foreign, x, steps=8, baseline=baseline, method="riemann_middle")
    assert_close(got, want, f"NCHW, baseline={baseline}")
    assert_close(integrated_gradients(foreign, x, steps=8, baseline=baseline, method="riemann_middle", reduce="sum"),
                 want.sum(axis=1), "NCHW, reduce=sum over axis 1")


@pytest.mark.parametrize("baseline", ["black", "blur"])
def test_foreign_nchw_model_is_complete_as_steps_grow(foreign, foreign_images, baseline):
    """This random 8x8 model's logits bend sharply near a black image (every max-pool window ties
    at α = 0), so the trapezoid needs more than 64 steps: its gap falls like 1/steps."""
    x = foreign_images
    start = k.baseline(x, baseline, channel_axis=1)
    fc = reference_forward(foreign.proto, x.astype(np.float64))["fc"]
    base = reference_forward(foreign.proto, start)["fc"]
    change = np.abs(fc - base)[np.arange(len(x)), fc.argmax(axis=1)]
    ratios = {}
    for steps in (64, 4096):
        attributions = integrated_gradients(foreign, x, steps=steps, baseline=baseline, batch_size=4096)
        ratios[steps] = completeness_gap(foreign, x, attributions, "predicted", baseline=baseline) / change
    assert ratios[4096].max() <= 0.01, f"gap / |f(x) - f(b)| at 4096 steps: {np.round(ratios[4096], 4)}"
    assert ratios[4096].max() < ratios[64].max() / 8, f"{np.round(ratios[64], 4)} -> {np.round(ratios[4096], 4)}"


@pytest.mark.parametrize("options,message", [
    (dict(steps=0), "steps"),
    (dict(steps=2.5), "steps"),
    (dict(steps=1), "at least 2 for method 'riemann_trapezoid'"),
    (dict(method="simpson"), "method"),
    (dict(baseline="white"), "baseline"),
    (dict(baseline=np.zeros((2, 28, 28, 1), np.float32)), r"baseline of shape \(2, 28, 28, 1\)"),
    (dict(baseline=float("nan")), "baseline"),
    (dict(reduce="median"), "reduce"),
])
def test_bad_options_are_rejected_with_the_option_named(model, images, options, message):
    with pytest.raises(InvalidArgument, match=message):
        integrated_gradients(model, images, **options)


def test_one_step_is_fine_for_the_other_quadratures_and_gaps_check_rows(model, images):
    assert integrated_gradients(model, images, steps=1, method="riemann_middle").shape == images.shape
    with pytest.raises(InvalidArgument, match="attributions"):
        completeness_gap(model, images, np.zeros((2, 28, 28, 1), np.float32), "predicted")
    with pytest.raises(InvalidArgument, match="blur"):
        k.baseline(np.zeros((2, 5), np.float32), "blur", channel_axis=None)
