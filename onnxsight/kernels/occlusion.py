"""Occlusion (Zeiler & Fergus 2014) as array numerics: windows, occluded copies, fills, averaging.

Images are a batch in any 4-D layout with the channels on ``channel_axis`` (1 or 3); the two
other non-batch axes are height and width, in that order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from onnxsight.errors import InvalidArgument
from onnxsight.kernels.images import gaussian_blur

FILLS = ("a float (constant)", "'mean'", "'blur'")
LAST_WINDOWS = ("flush", "cropped")


def window_starts(size: int, window: int, stride: int, last: str = "flush") -> np.ndarray:
    """Window starts 0, stride, 2·stride, ... while start + window <= size, plus one more when the
    strided ones stop short of the border, so every pixel is covered by at least one window.

    ``last``: "flush" (that window starts at size − window) or "cropped" (it starts one stride
    further, at ⌈(size − window) / stride⌉ · stride, and is cut at the border, as Captum's Occlusion).
    """
    if last not in LAST_WINDOWS:
        raise InvalidArgument(f"last_window must be one of {', '.join(map(repr, LAST_WINDOWS))}; got {last!r}")
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] + window < size:
        starts.append(size - window if last == "flush" else starts[-1] + stride)
    return np.asarray(starts)


def window_indicators(starts: np.ndarray, window: int, size: int) -> np.ndarray:
    """(P, size) booleans: which of ``size`` pixels each window starting at ``starts`` covers."""
    pixels = np.arange(size)
    return (pixels >= starts[:, None]) & (pixels < starts[:, None] + window)


def grid(
    height: int, width: int, window: Sequence[int], stride: Sequence[int], last: str = "flush"
) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indicators of every window position, row-major: (P, H) and (P, W); ``last``
    as for :func:`window_starts`."""
    rows = window_indicators(window_starts(height, window[0], stride[0], last), window[0], height)
    cols = window_indicators(window_starts(width, window[1], stride[1], last), window[1], width)
    return np.repeat(rows, len(cols), axis=0), np.tile(cols, (len(rows), 1))


def window_bounds(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(P, 4) ints: each window's (top, bottom, left, right) from its row and column indicators
    ((P, H) and (P, W), as :func:`grid` gives them); a window that covers nothing gives empty bounds."""
    top, left = rows.argmax(axis=1), cols.argmax(axis=1)
    return np.stack([top, top + rows.sum(axis=1), left, left + cols.sum(axis=1)], axis=1)


def occlude(x: np.ndarray, fill: np.ndarray, windows: np.ndarray, start: int, stop: int, channel_axis: int) -> np.ndarray:
    """Occluded copies ``start`` to ``stop - 1`` of the batch ``x``, image-major: copy r is image ``r // P``
    with its window ``windows[r % P]`` = (top, bottom, left, right) set to the same pixels of ``fill``
    (shaped like ``x``), P = len(windows). Each image's copies are written at once, then each window
    position of all copies at once through strided views."""
    count = len(windows)
    images = np.arange(start, stop) // count
    copies = np.empty((stop - start, *x.shape[1:]), x.dtype)
    for image in range(start // count, (stop - 1) // count + 1):
        copies[max(start, image * count) - start:min(stop, (image + 1) * count) - start] = x[image]
    pixels, shown = np.moveaxis(copies, channel_axis, -1), np.moveaxis(fill, channel_axis, -1)  # (..., H, W, C)
    for window, (top, bottom, left, right) in enumerate(windows.tolist()):
        if top < bottom and left < right:
            picked = slice((window - start) % count, None, count)
            pixels[picked, top:bottom, left:right] = shown[images[picked], top:bottom, left:right]
    return copies


def fill_values(x: np.ndarray, fill: float | str, channel_axis: int, sigma: Sequence[float]) -> np.ndarray:
    """What an occluded window shows, for each image: an array shaped like ``x``.

    ``fill``: a float (that constant), "mean" (each image's per-channel mean) or "blur" (the
    image blurred with a Gaussian of standard deviations ``sigma`` = (sigma_y, sigma_x), OpenCV's
    default reflected border).
    """
    if isinstance(fill, str):
        if fill == "mean":
            spatial = tuple(axis for axis in (1, 2, 3) if axis != channel_axis)
            return np.broadcast_to(x.mean(axis=spatial, keepdims=True), x.shape).astype(x.dtype)
        if fill == "blur":
            return gaussian_blur(x, sigma, channel_axis)
    elif isinstance(fill, (int, float, np.integer, np.floating)) and not isinstance(fill, bool):
        if not np.isfinite(fill):
            raise InvalidArgument(f"fill must be finite, got {fill}")
        return np.full_like(x, fill)
    raise InvalidArgument(f"fill must be {', '.join(FILLS)}; got {fill!r}")


def average_drops(drops: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(N, H, W): each pixel's mean of the (N, P) score drops over the windows covering it (0 if none)."""
    rows, cols = rows.astype(np.float64), cols.astype(np.float64)
    sums = np.einsum("np,ph,pw->nhw", np.asarray(drops, np.float64), rows, cols)
    counts = np.einsum("ph,pw->hw", rows, cols)
    return np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
