"""Class activation maps as array numerics: channel weights per variant, weighted sum, upsampling.

Activations ``a`` and gradients ``g`` of the CAM layer are channel-last, (N, h, w, K): callers
move the layer's channel axis there with ``channels_last(a, channel_axis)``. A weighting function
``(a, g) -> weights`` returns an array broadcastable to ``a``: (N, 1, 1, K) for the variants that
weigh whole channels, (N, h, w, K) for the elementwise ones (HiResCAM, LayerCAM).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np

from onnxsight.errors import InvalidArgument
from onnxsight.kernels.images import CV_CHANNELS
from onnxsight.kernels.stats import softmax

# Added to XGradCAM's denominator (sum of a channel's activations), as pytorch-grad-cam does.
XGRADCAM_EPS = 1e-7
# Added to Grad-CAM++'s alpha denominator by pytorch-grad-cam.
GRADCAM_PLUS_PLUS_EPS = 1e-6
# Added to the range of each map FullGrad scales (pytorch-grad-cam's scale_cam_image).
FULLGRAD_EPS = 1e-7
# pytorch-grad-cam's aug_smooth (ttach): horizontal flip or not, times brightness factors.
AUGMENTATIONS = tuple((flip, factor) for flip in (False, True) for factor in (0.9, 1.0, 1.1))
# OpenCV's half-pixel interpolations, and "align_corners": bilinear with the corner pixels aligned.
UPSAMPLING = {"bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST, "align_corners": None}


def channels_last(a: np.ndarray, channel_axis: int) -> np.ndarray:
    """A 4-D layer output with its channel axis moved last: (N, h, w, K), as float64."""
    return np.moveaxis(np.asarray(a, np.float64), channel_axis, -1)


# ---- channel weights, one small function per variant --------------------------------------
def gradcam_weights(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Grad-CAM (Selvaraju et al. 2017): the spatial mean of each channel's gradient."""
    return g.mean(axis=(1, 2), keepdims=True)


def gradcam_plus_plus_weights(a: np.ndarray, g: np.ndarray, eps: float = 0.0) -> np.ndarray:
    """Grad-CAM++ (Chattopadhyay et al. 2018, eq. 19 with exp-free scores).

    alpha = g² / (2 g² + sum_ij(a) g³ + eps) and weights = sum_ij(alpha · relu(g)). alpha is only
    needed where g > 0; it is 0 where the denominator vanishes. ``eps``: 0 (the paper's) or
    ``GRADCAM_PLUS_PLUS_EPS`` (pytorch-grad-cam's).
    """
    g2 = g * g
    denominator = 2 * g2 + a.sum(axis=(1, 2), keepdims=True) * g2 * g + eps
    alpha = np.divide(g2, denominator, out=np.zeros_like(g2), where=(g > 0) & (denominator != 0))
    return (alpha * np.maximum(g, 0)).sum(axis=(1, 2), keepdims=True)


def gradcam_plus_plus_normalized_weights(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Grad-CAM++ as tf-keras-vis: the alphas (every pixel's, 0 where g = 0) divided by their
    spatial sum, then weights = sum_ij(alpha · relu(g)); tf-keras-vis' extra factor exp(score) per
    image is left out (min-max normalisation removes it)."""
    g2 = g * g
    denominator = 2 * g2 + a.sum(axis=(1, 2), keepdims=True) * g2 * g
    alpha = np.divide(g2, denominator, out=np.zeros_like(g2), where=denominator != 0)
    total = alpha.sum(axis=(1, 2), keepdims=True)
    alpha = alpha / np.where(total == 0, 1.0, total)
    return (alpha * np.maximum(g, 0)).sum(axis=(1, 2), keepdims=True)


def xgradcam_weights(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """XGradCAM (Fu et al. 2020): sum_ij(a · g) / (sum_ij(a) + 1e-7)."""
    return (a * g).sum(axis=(1, 2), keepdims=True) / (a.sum(axis=(1, 2), keepdims=True) + XGRADCAM_EPS)


def hirescam_weights(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """HiResCAM (Draelos & Carin 2020): the gradient itself, elementwise (no spatial averaging)."""
    return g


def layercam_weights(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """LayerCAM (Jiang et al. 2021): relu(g), elementwise."""
    return np.maximum(g, 0)


def gradcam_elementwise_weights(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's GradCAMElementWise: the terms a · g kept where positive, so that the
    weighted sum is sum_k relu(a · g)."""
    return np.where(a * g > 0, g, 0.0)


def eigengradcam_weights(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """EigenGradCAM (pytorch-grad-cam): the terms a · g, whose first principal component is the map."""
    return g


GRADIENT_WEIGHTS = {
    "gradcam": gradcam_weights,
    "gradcam++": gradcam_plus_plus_weights,
    "xgradcam": xgradcam_weights,
    "hirescam": hirescam_weights,
    "layercam": layercam_weights,
    "gradcamelementwise": gradcam_elementwise_weights,
}


def scorecam_weights(scores: np.ndarray) -> np.ndarray:
    """Score-CAM (Wang et al. 2020): softmax over the channels of (N, K) masked-input scores, (N, 1, 1, K)."""
    return softmax(scores)[:, None, None, :]


def scorecam_probability_weights(probabilities: np.ndarray) -> np.ndarray:
    """Score-CAM as tf-keras-vis: the target's (N, K) softmax probabilities on the masked inputs
    themselves as weights, (N, 1, 1, K)."""
    return np.asarray(probabilities, np.float64)[:, None, None, :]


def masked_inputs(
    x: np.ndarray, maps: np.ndarray, images: np.ndarray, size: Sequence[int], mode: str, channel_axis: int
) -> np.ndarray:
    """Score-CAM's masked inputs, in ``x``'s dtype: row r is image ``x[images[r]]`` times ``maps[r]`` (h, w)
    upsampled to ``size`` with ``mode`` and min-max scaled to [0, 1] (a constant map: 0), as
    ``normalize_each`` scales; ``images`` ascending. Each image's rows are multiplied at once."""
    masks = np.ascontiguousarray(upsample(maps, size, mode))
    flat = masks.reshape(len(masks), -1)
    low = flat.min(axis=1, keepdims=True)
    span = flat.max(axis=1, keepdims=True) - low
    np.subtract(flat, low, out=flat)
    np.divide(flat, np.where(span > 0, span, 1), out=flat)  # a constant map minus its minimum is 0 already
    masked = np.empty((len(images), *x.shape[1:]), np.result_type(x, masks))
    planes, pixels = np.moveaxis(masked, channel_axis, -1), np.moveaxis(x, channel_axis, -1)  # (..., H, W, C)
    bounds = [0, *(np.flatnonzero(np.diff(images)) + 1), len(images)]
    for first, end in zip(bounds[:-1], bounds[1:]):
        for channel in range(planes.shape[-1]):  # one plane at a time: long inner loops, no broadcast over C
            np.multiply(masks[first:end], pixels[images[first], ..., channel], out=planes[first:end, ..., channel])
    return masked.astype(x.dtype, copy=False)


def ablation_weights(scores: np.ndarray, ablated: np.ndarray) -> np.ndarray:
    """Ablation-CAM (Desai & Ramaswamy 2020): (y − y_k) / y from the (N,) target scores y and the (N, K)
    scores y_k with channel k of the layer zeroed, (N, 1, 1, K); 0 for an image whose score is 0."""
    y = scores[:, None]
    weights = np.divide(y - ablated, y, out=np.zeros_like(ablated, dtype=np.float64), where=y != 0)
    return weights[:, None, None, :]


def eigen_projection(terms: np.ndarray) -> np.ndarray:
    """(N, h, w): each image's (h·w, K) terms, mean-centred over positions, projected on their first
    right singular vector — Eigen-CAM (Muhammad & Yeasin 2020) as pytorch-grad-cam's
    ``get_2d_projection`` computes it, with the sign numpy's SVD (LAPACK) gives, as theirs."""
    n, h, w, channels = terms.shape
    flat = terms.reshape(n, h * w, channels)
    flat = flat - flat.mean(axis=1, keepdims=True)
    first = np.linalg.svd(flat, full_matrices=False)[2][:, 0]  # (N, K)
    return np.einsum("npk,nk->np", flat, first).reshape(n, h, w)


def kpca_projection(terms: np.ndarray) -> np.ndarray:
    """(N, h, w): KPCA-CAM (Karmani et al. 2024) as pytorch-grad-cam computes it with scikit-learn's
    ``KernelPCA(n_components=1)`` defaults: each image's mean-centred (h·w, K) terms, their sigmoid
    kernel tanh(x·y / K + 1) centred, its leading eigenvector (largest entry made positive) times the
    square root of its eigenvalue."""
    n, h, w, channels = terms.shape
    flat = terms.reshape(n, h * w, channels)
    flat = flat - flat.mean(axis=1, keepdims=True)
    gram = np.tanh(flat @ flat.transpose(0, 2, 1) / channels + 1)
    gram = gram - gram.mean(axis=1, keepdims=True) - gram.mean(axis=2, keepdims=True) + gram.mean(axis=(1, 2), keepdims=True)
    values, vectors = np.linalg.eigh(gram)
    top = vectors[..., -1]
    sign = np.sign(top[np.arange(n), np.abs(top).argmax(axis=1)])
    return (top * (sign * np.sqrt(np.maximum(values[:, -1], 0)))[:, None]).reshape(n, h, w)


# ---- shared steps --------------------------------------------------------------------------
def weighted_sum(
    a: np.ndarray, weights: np.ndarray, relu: bool = True, project: Callable[[np.ndarray], np.ndarray] | None = None
) -> np.ndarray:
    """(N, h, w): sum over channels of weights · a — or ``project`` of these terms, e.g.
    ``eigen_projection`` (pytorch-grad-cam's ``eigen_smooth``) — then ReLU when ``relu``."""
    terms = a * weights
    cam = terms.sum(axis=-1) if project is None else project(terms)
    return np.maximum(cam, 0) if relu else cam


def check_upsample(mode: str) -> int:
    """The OpenCV interpolation flag of an upsampling mode, or InvalidArgument."""
    if mode not in UPSAMPLING:
        raise InvalidArgument(f"upsample must be one of {', '.join(UPSAMPLING)}; got {mode!r}")
    return UPSAMPLING[mode]


def upsample(maps: np.ndarray, size: Sequence[int], mode: str = "bilinear") -> np.ndarray:
    """(N, h, w) maps resized to ``size`` = (H, W), float32: with OpenCV ("bilinear" or "nearest",
    pixel centres at half-pixel offsets), or "align_corners": bilinear with the first and last
    pixels' centres on the output's (scipy.ndimage.zoom(order=1) as tf-keras-vis,
    torch's UpsamplingBilinear2d as pytorch-grad-cam's Score-CAM masks)."""
    flag = check_upsample(mode)
    height, width = size
    if flag is None:
        rows, cols = _aligned(maps.shape[1], height), _aligned(maps.shape[2], width)
        return np.einsum("Hh,nhw,Ww->nHW", rows, np.asarray(maps, np.float64), cols).astype(np.float32)
    stacked = np.ascontiguousarray(np.moveaxis(np.asarray(maps, np.float32), 0, -1))  # h, w, N
    parts = []
    for start in range(0, stacked.shape[-1], CV_CHANNELS):
        chunk = np.ascontiguousarray(stacked[..., start:start + CV_CHANNELS])
        parts.append(cv2.resize(chunk, (width, height), interpolation=flag).reshape(height, width, -1))
    return np.moveaxis(np.concatenate(parts, axis=-1), -1, 0)


def _aligned(n: int, size: int) -> np.ndarray:
    """(size, n) linear interpolation from n samples to ``size`` points, the end points aligned."""
    position = np.linspace(0.0, n - 1, size)
    low = np.minimum(position.astype(int), max(n - 2, 0))
    weights = np.zeros((size, n))
    weights[np.arange(size), low] = 1 - (position - low)
    if n > 1:
        weights[np.arange(size), low + 1] = position - low
    return weights


def fullgrad_term(values: np.ndarray, channel_axis: int, size: Sequence[int], mode: str = "bilinear") -> np.ndarray:
    """(N, H, W): one FullGrad term, the sum over channels of each (image, channel) map of |values|
    shifted to 0 and divided by its maximum + ``FULLGRAD_EPS``, upsampled (summed before upsampling,
    which is linear)."""
    maps = np.abs(np.moveaxis(np.asarray(values, np.float64), channel_axis, 1))
    shifted = maps - maps.min(axis=(2, 3), keepdims=True)
    scaled = shifted / (FULLGRAD_EPS + shifted.max(axis=(2, 3), keepdims=True))
    return upsample(scaled.sum(axis=1), size, mode)


def augmented(x: np.ndarray, width_axis: int) -> np.ndarray:
    """The copies of ``AUGMENTATIONS`` of a batch, augmentation-major: copy ``a·N + i`` of image i."""
    return np.concatenate([(np.flip(x, width_axis) if flip else x) * np.asarray(factor, x.dtype)
                           for flip, factor in AUGMENTATIONS])


def deaugmented_mean(maps: np.ndarray) -> np.ndarray:
    """(N, H, W): the mean of the (A·N, H, W) maps of ``augmented`` copies, each flipped back."""
    copies = maps.reshape(len(AUGMENTATIONS), -1, *maps.shape[1:])
    return np.mean([m[..., ::-1] if flip else m for m, (flip, _) in zip(copies, AUGMENTATIONS)], axis=0)


def guided(cam: np.ndarray, saliency: np.ndarray, channel_axis: int) -> np.ndarray:
    """Guided Grad-CAM (Selvaraju et al.): guided backprop ⊙ upsampled CAM, reduced by max |.| over channels.

    ``cam`` is (N, H, W) at the input size; ``saliency`` the guided gradient in the input's
    layout with its channels on ``channel_axis``.
    """
    product = np.asarray(saliency, np.float64) * np.expand_dims(cam, channel_axis)
    return np.abs(product).max(axis=channel_axis)
