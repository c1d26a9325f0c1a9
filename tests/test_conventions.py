"""Peers' conventions as options: each against the peer's formula written here in numpy/scipy/OpenCV.

The layer's activations, gradients and scores come from the engine (checked against TensorFlow in
test_cam.py and test_integrated_gradients.py); what each test proves is the peer's formula on top
of them. Each test also checks that the default differs (so it fails without the option).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from scipy.ndimage import zoom

from onnxsight.errors import InvalidArgument
from onnxsight.methods.cam import gradcam
from onnxsight.methods.common import target_scores
from onnxsight.methods.integrated_gradients import integrated_gradients
from onnxsight.methods.occlusion import occlusion
from tests.tf_reference import relative_error

LAYER = "max_pooling2d_2"  # seed 000's default CAM layer, 4×4
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def x(digits_data):
    return digits_data.x_test[:16]


@pytest.fixture(scope="module")
def target(model, x):
    return model.activations(x, ["logits"])["logits"].argmax(axis=1)


def layer_values(model, x, target):
    result = model.backward(x, "logits", target, [LAYER], outputs=[LAYER])
    return result.activations[LAYER].astype(np.float64), result.gradients[LAYER].astype(np.float64)


def minmax(maps):
    low, high = maps.min(axis=(1, 2), keepdims=True), maps.max(axis=(1, 2), keepdims=True)
    return np.where(high > low, (maps - low) / np.where(high > low, high - low, 1), 0.0)


def zoomed(cam, size=28):
    """tf-keras-vis' upsampling: scipy.ndimage.zoom(order=1) by size / h (corners aligned)."""
    return np.stack([zoom(c, (size / c.shape[0], size / c.shape[1]), order=1) for c in cam])


def resized(cam, size=28):
    """pytorch-grad-cam's (and onnxsight's default) upsampling: cv2.resize, bilinear."""
    return np.stack([cv2.resize(c.astype(np.float32), (size, size)) for c in cam]).astype(np.float64)


def differs(default, want, what):
    """The default is not the peer's convention: a test of the option fails without it."""
    error = relative_error(default, want)
    assert error > 10 * TOLERANCE, f"{what}: the default equals the peer's (relative difference {error:.1e})"


def close(got, want, what):
    error = relative_error(got, want)
    assert error <= TOLERANCE, f"{what}: relative error {error:.2e} > {TOLERANCE}"


# ---- Integrated Gradients ------------------------------------------------------------------
def test_captum_trapezoid_has_captums_step_sizes(model, x, target):
    """Captum's riemann_trapezoid: alphas linspace(0, 1, n), step sizes 1/n with both ends halved."""
    n = 8
    alphas, steps = np.linspace(0, 1, n), np.full(n, 1 / n)
    steps[[0, -1]] /= 2
    path = np.concatenate([a * x for a in alphas]).astype(np.float32)
    g = model.gradient(path, target=np.tile(target, n))["input"].reshape(n, *x.shape).astype(np.float64)
    want = x * np.tensordot(steps, g, axes=1)
    close(integrated_gradients(model, x, target, steps=n, method="captum_trapezoid"), want, "captum_trapezoid")
    differs(integrated_gradients(model, x, target, steps=n), want, "riemann_trapezoid")


# ---- Grad-CAM family -----------------------------------------------------------------------
def test_gradcam_upsampled_with_corners_aligned_as_tf_keras_vis(model, x, target):
    a, g = layer_values(model, x, target)
    want = minmax(zoomed(np.maximum((g.mean(axis=(1, 2), keepdims=True) * a).sum(axis=-1), 0)))
    close(gradcam(model, x, target, upsample="align_corners"), want, "upsample=align_corners")
    close(gradcam(model, x, target, convention="tf-keras-vis"), want, "convention=tf-keras-vis")
    differs(gradcam(model, x, target), want, "bilinear")


def test_gradcam_plus_plus_with_pytorch_grad_cams_eps(model, x, target):
    """pytorch-grad-cam: aij = g² / (2 g² + Σa g³ + 1e-6) where g ≠ 0; weights Σ relu(g) aij."""
    a, g = layer_values(model, x, target)
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = np.where(g != 0, g**2 / (2 * g**2 + a.sum(axis=(1, 2), keepdims=True) * g**3 + 1e-6), 0)
    weights = (np.maximum(g, 0) * alpha).sum(axis=(1, 2), keepdims=True)
    want = resized(np.maximum((weights * a).sum(axis=-1), 0))
    options = dict(variant="gradcam++", normalize=False)
    close(gradcam(model, x, target, convention="pytorch-grad-cam", **options), want, "pytorch-grad-cam gradcam++")
    differs(gradcam(model, x, target, **options), want, "gradcam++ without eps")


def test_gradcam_plus_plus_with_tf_keras_vis_normalised_alphas(model, x, target):
    """tf-keras-vis: alphas = g² / (2 g² + g³ Σa) (denominator + 1 where g² = 0), divided by their
    spatial sum (+ 1 where 0); weights Σ relu(g) alphas (its factor exp(score) cancels in min-max)."""
    a, g = layer_values(model, x, target)
    second, third = g**2, g**3
    alpha = second / (2 * second + third * a.sum(axis=(1, 2), keepdims=True) + (second == 0))
    total = alpha.sum(axis=(1, 2), keepdims=True)
    alpha = alpha / (total + (total == 0))
    weights = (np.maximum(g, 0) * alpha).sum(axis=(1, 2), keepdims=True)
    want = minmax(zoomed(np.maximum((weights * a).sum(axis=-1), 0)))
    close(gradcam(model, x, target, variant="gradcam++", convention="tf-keras-vis"), want, "tf-keras-vis gradcam++")
    differs(gradcam(model, x, target, variant="gradcam++", upsample="align_corners"), want, "gradcam++ alphas")


def masked_logits(model, x, masks):
    """Logits of each image times each of its K masks (N, K, H, W): (N, K, classes)."""
    copies = (x[:, None] * masks[..., None]).reshape(-1, *x.shape[1:]).astype(np.float32)
    return model.activations(copies, ["logits"])["logits"].astype(np.float64).reshape(*masks.shape[:2], -1)


def test_scorecam_masks_upsampled_as_pytorch_grad_cam(model, x, target):
    """pytorch-grad-cam: masks by UpsamplingBilinear2d (align_corners=True), min-max scaled; weights
    the softmax over channels of the target logit; the CAM resized with cv2."""
    a = model.activations(x, [LAYER])[LAYER].astype(np.float64)
    masks = np.stack([minmax(zoomed(np.moveaxis(m, -1, 0))) for m in a])
    scores = masked_logits(model, x, masks)[np.arange(len(x)), :, target]
    weights = np.exp(scores - scores.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    want = minmax(resized(np.maximum(np.einsum("nhwk,nk->nhw", a, weights), 0)))
    close(gradcam(model, x, target, variant="scorecam", convention="pytorch-grad-cam"), want, "pytorch-grad-cam scorecam")
    differs(gradcam(model, x, target, variant="scorecam"), want, "scorecam masks")


def test_scorecam_weighted_by_class_probability_as_tf_keras_vis(model, x, target):
    """tf-keras-vis: weights are the target's softmax probabilities on the masked copies (its
    score(K.softmax(predictions)) on a model whose softmax is swapped for linear)."""
    a = model.activations(x, [LAYER])[LAYER].astype(np.float64)
    masks = np.stack([minmax(zoomed(np.moveaxis(m, -1, 0))) for m in a])
    logits = masked_logits(model, x, masks)
    probabilities = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probabilities /= probabilities.sum(axis=-1, keepdims=True)
    weights = probabilities[np.arange(len(x)), :, target]
    want = minmax(zoomed(np.maximum(np.einsum("nhwk,nk->nhw", a, weights), 0)))
    close(gradcam(model, x, target, variant="scorecam", convention="tf-keras-vis"), want, "tf-keras-vis scorecam")
    differs(gradcam(model, x, target, variant="scorecam", upsample="align_corners"), want, "scorecam softmax weights")


def test_guided_gradcam_in_pytorch_grad_cams_order(model, x, target):
    """pytorch-grad-cam's example: the min-max scaled CAM times guided backprop (then min-max here);
    the default multiplies the CAM itself and normalises only the product (the paper's, Captum's)."""
    a, g = layer_values(model, x, target)
    cam = resized(np.maximum((g.mean(axis=(1, 2), keepdims=True) * a).sum(axis=-1), 0))
    guided = model.gradient(x, target=target, modifier="guided")["input"].astype(np.float64)
    want = minmax(np.abs(guided * minmax(cam)[..., None]).max(axis=-1))
    close(gradcam(model, x, target, guided=True, convention="pytorch-grad-cam"), want, "pytorch-grad-cam guided")
    paper = minmax(np.abs(guided * cam[..., None]).max(axis=-1))
    close(gradcam(model, x, target, guided=True), paper, "guided Grad-CAM default")
    differs(paper, want, "guided Grad-CAM order")


# ---- occlusion -----------------------------------------------------------------------------
def test_occlusion_last_window_cropped_as_captum(model, x, target):
    """Captum: ⌈(H − w) / s⌉ + 1 windows per axis at multiples of the stride, the last cut at the
    border; each pixel's attribution is the mean score drop over the windows covering it."""
    window, stride = 8, 6
    starts = [i * stride for i in range(math.ceil((28 - window) / stride) + 1)]
    clean = target_scores(model, x, target)
    drops, counts = np.zeros((len(x), 28, 28)), np.zeros((28, 28))
    for top in starts:
        for left in starts:
            hidden = x.copy()
            hidden[:, top:top + window, left:left + window, :] = 0
            drops[:, top:top + window, left:left + window] += (clean - target_scores(model, hidden, target))[:, None, None]
            counts[top:top + window, left:left + window] += 1
    want = drops / counts
    options = dict(window=window, stride=stride)
    close(occlusion(model, x, target, last_window="cropped", **options), want, "last_window=cropped")
    differs(occlusion(model, x, target, **options), want, "flush last window")


def test_unknown_conventions_are_one_line_errors(model, x):
    for call, message in [
        (lambda: gradcam(model, x, convention="captum"), "unknown convention 'captum'; choose one of onnxsight"),
        (lambda: gradcam(model, x, upsample="zoom"), "upsample must be one of bilinear, nearest, align_corners"),
        (lambda: occlusion(model, x, last_window="crop"), "last_window must be one of 'flush', 'cropped'"),
        (lambda: integrated_gradients(model, x, method="captum"), "'captum_trapezoid'"),
    ]:
        with pytest.raises(InvalidArgument, match=message):
            call()
