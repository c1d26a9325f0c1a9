"""Activation-maximization numerics in numpy/opencv: regularisers with their gradients, input
modifiers (jitter, rotation/scale), blur, clipping and start images.

Every function takes a batch ``x`` (N, ...) and, for images, the ``channel_axis`` of its
layout (NHWC: 3, NCHW: 1); the other non-batch axes are space. Values are per image (N,).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from onnxsight.errors import InvalidArgument

NOISE_SPREAD = 0.1  # "noise" start: grey ± this fraction of the value range (keras-vis' random start)


def spatial_axes(ndim: int, channel_axis: int) -> tuple[int, int]:
    """The two spatial axes of a 4-D image batch whose channels are on ``channel_axis``."""
    if ndim != 4 or channel_axis not in (1, 3):
        raise InvalidArgument(f"expected a 4-D image batch with channels on axis 1 or 3, got {ndim}-D, axis {channel_axis}")
    return (2, 3) if channel_axis == 1 else (1, 2)


# ---- regularisers: value per image and gradient -----------------------------------------
# Values are float64 sums; gradients keep the dtype of ``x`` (float64 in, float64 out).
def l2_norm(x: np.ndarray) -> np.ndarray:
    """‖x_n‖₂ per image (seed 004's ``tf.norm(img)``), float64 (N,)."""
    flat = x.reshape(len(x), -1)
    return np.sqrt(np.einsum("ij,ij->i", flat, flat, dtype=np.float64))


def l2_norm_gradient(x: np.ndarray, norm: np.ndarray | None = None) -> np.ndarray:
    """d‖x_n‖₂/dx_n = x_n / ‖x_n‖₂ (0 for an all-zero image, where the norm has a kink);
    ``norm``: ``l2_norm(x)`` when already known."""
    norm = l2_norm(x) if norm is None else norm
    scale = np.divide(1.0, norm, out=np.zeros_like(norm), where=norm > 0).astype(x.dtype)
    return x * scale.reshape(-1, *[1] * (x.ndim - 1))


def total_variation(x: np.ndarray, channel_axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Squared total variation TV²(x_n) per image — the sum of squared differences of
    neighbouring pixels along both spatial axes, over all channels (Mahendran & Vedaldi's
    TV^β with β = 2; smooth, so finite differences can check it), float64 (N,) — and its
    gradient d TV²(x_n) / dx_n, shaped like ``x``; one pass over the differences for both."""
    total, gradient = np.zeros(len(x)), np.zeros_like(x)
    for axis in spatial_axes(x.ndim, channel_axis):
        later, earlier = [slice(None)] * x.ndim, [slice(None)] * x.ndim
        later[axis], earlier[axis] = slice(1, None), slice(None, -1)
        step = x[tuple(later)] - x[tuple(earlier)]
        flat = step.reshape(len(x), -1)
        total += np.einsum("ij,ij->i", flat, flat, dtype=np.float64)
        gradient[tuple(later)] += step  # d/d(x[i+1]) of (x[i+1] - x[i])² / 2, and minus that for x[i]
        gradient[tuple(earlier)] -= step
    gradient *= 2
    return total, gradient


# ---- input modifiers ---------------------------------------------------------------------
def draw_shift(rng: np.random.Generator, jitter: int) -> tuple[int, int]:
    """One jitter shift (rows, columns), each uniform in [-jitter, jitter]: ``rng.integers`` once, size 2."""
    if jitter <= 0:
        return 0, 0
    rows, columns = rng.integers(-jitter, jitter + 1, size=2)
    return int(rows), int(columns)


def roll(x: np.ndarray, shift: tuple[int, int], channel_axis: int) -> np.ndarray:
    """Shift every image circularly by (rows, columns) — ``np.roll`` — exact and invertible."""
    if shift == (0, 0):
        return x
    return np.roll(x, shift, axis=spatial_axes(x.ndim, channel_axis))


def unroll(gradient: np.ndarray, shift: tuple[int, int], channel_axis: int) -> np.ndarray:
    """The gradient w.r.t. the unshifted images: the inverse roll (exact, a permutation)."""
    return roll(gradient, (-shift[0], -shift[1]), channel_axis)


def warp_matrix(height: int, width: int, angle: float, scale: float) -> np.ndarray:
    """The 2×3 affine map of a rotation by ``angle`` degrees and a zoom by ``scale`` about the centre."""
    return cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), angle, scale)


def warp(x: np.ndarray, matrix: np.ndarray, channel_axis: int) -> np.ndarray:
    """Each image resampled (bilinear, reflected border) at ``matrix`` — tf-keras-vis' Rotate/Scale."""
    return _per_image(x, channel_axis, lambda image, size: cv2.warpAffine(
        image, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101))


def unwarp(gradient: np.ndarray, matrix: np.ndarray, channel_axis: int) -> np.ndarray:
    """A gradient w.r.t. warped images mapped back by the inverse warp, times the area ratio.

    This approximates the adjoint of bilinear resampling (it is not its exact transpose, and
    what the forward warp read from the reflected border is not folded back):
    rotation and scale are input modifiers as in tf-keras-vis, not exactly differentiated.
    """
    area = abs(np.linalg.det(matrix[:, :2]))
    return area * _per_image(gradient, channel_axis, lambda image, size: cv2.warpAffine(
        image, matrix, size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT))


def clip(x: np.ndarray, value_range: Sequence[float]) -> np.ndarray:
    """Values clamped to ``value_range`` (low, high)."""
    low, high = check_range(value_range)
    return np.clip(x, low, high)


# ---- start images ------------------------------------------------------------------------
def start_images(
    init: str | float | np.ndarray,
    count: int,
    shape: Sequence[int],
    value_range: Sequence[float],
    rng: np.random.Generator,
    dtype=np.float32,
) -> np.ndarray:
    """``count`` start images shaped (count, *shape).

    "grey": the middle of ``value_range``; "noise": grey plus uniform noise of ±10 % of the range
    (one ``rng.uniform`` draw of the whole batch); a number: that constant; an array shaped like
    one input (used for every image) or like the batch.
    """
    low, high = check_range(value_range)
    grey = (low + high) / 2
    full = (count, *shape)
    if isinstance(init, str):
        if init in ("grey", "gray"):
            return np.full(full, grey, dtype)
        if init == "noise":
            spread = NOISE_SPREAD * (high - low)
            return (grey + rng.uniform(-spread, spread, full)).astype(dtype)
        raise InvalidArgument(f"init must be 'grey', 'noise', a number or an image array, got {init!r}")
    array = np.asarray(init)
    if array.ndim == 0:
        if not np.isfinite(array):
            raise InvalidArgument(f"init value must be finite, got {init}")
        return np.full(full, float(array), dtype)
    if tuple(array.shape) == tuple(shape):
        array = np.broadcast_to(array, full)
    if tuple(array.shape) != full:
        raise InvalidArgument(f"init image has shape {array.shape}; expected {tuple(shape)} or {full}")
    if not np.issubdtype(array.dtype, np.number) or not np.isfinite(array).all():
        raise InvalidArgument("init image must hold finite numbers")
    return np.array(array, dtype=dtype)


def check_range(value_range: Sequence[float]) -> tuple[float, float]:
    """(low, high) with low < high, or InvalidArgument."""
    try:
        low, high = (float(v) for v in value_range)
    except (TypeError, ValueError) as error:
        raise InvalidArgument(f"value_range must be two numbers (low, high), got {value_range!r}") from error
    if not low < high:
        raise InvalidArgument(f"value_range must have low < high, got {value_range!r}")
    return low, high


def _per_image(x: np.ndarray, channel_axis: int, fn) -> np.ndarray:
    """Apply an opencv ``fn(hwc_image, (width, height))`` to each image, keeping the layout."""
    spatial_axes(x.ndim, channel_axis)
    hwc = np.moveaxis(x, channel_axis, -1)
    height, width = hwc.shape[1:3]
    out = np.empty(hwc.shape, x.dtype)
    for i, image in enumerate(hwc):
        result = fn(np.ascontiguousarray(image), (width, height))
        out[i] = result.reshape(image.shape)  # opencv drops a single channel axis
    return np.moveaxis(out, -1, channel_axis)
