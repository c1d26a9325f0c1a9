"""Map arrays to displayable uint8 images: normalisation and colormaps."""

from __future__ import annotations

import cv2
import numpy as np

from onnxsight.errors import InvalidArgument

COLORMAPS = {
    "gray": None,
    "jet": cv2.COLORMAP_JET,
    "viridis": cv2.COLORMAP_VIRIDIS,
    "inferno": cv2.COLORMAP_INFERNO,
    "bwr": "bwr",
}


def normalize(a: np.ndarray, symmetric: bool = False) -> np.ndarray:
    """Scale to [0, 1]: min-max, or around 0 (0 -> 0.5) when ``symmetric``; constants -> 0 (0.5)."""
    a = np.asarray(a, np.float64)
    if symmetric:
        peak = np.abs(a).max()
        return np.full_like(a, 0.5) if peak == 0 else 0.5 + 0.5 * a / peak
    low, high = a.min(), a.max()
    return np.zeros_like(a) if high == low else (a - low) / (high - low)


def normalize_each(a: np.ndarray) -> np.ndarray:
    """Min-max scale each item along axis 0 to [0, 1]; a constant item becomes 0; dtype kept."""
    flat = a.reshape(len(a), -1)
    low, high = flat.min(axis=1, keepdims=True), flat.max(axis=1, keepdims=True)
    span = high - low
    scaled = np.where(span > 0, (flat - low) / np.where(span > 0, span, 1), 0)
    return scaled.reshape(a.shape).astype(a.dtype, copy=False)


def colorize(unit: np.ndarray, cmap: str = "gray") -> np.ndarray:
    """An HxW array in [0, 1] as an HxWx3 uint8 RGB image."""
    if cmap not in COLORMAPS:
        raise InvalidArgument(f"unknown colormap {cmap!r}; choose one of {', '.join(COLORMAPS)}")
    if cmap == "bwr":  # blue (low) - white (middle) - red (high), for signed weights
        t = np.clip(np.asarray(unit, np.float64), 0, 1)
        red, blue = np.clip(2 * t, 0, 1), np.clip(2 - 2 * t, 0, 1)
        return np.rint(np.stack([red, np.minimum(red, blue), blue], axis=-1) * 255).astype(np.uint8)
    levels = np.clip(np.rint(unit * 255), 0, 255).astype(np.uint8)
    if cmap == "gray":
        return np.repeat(levels[..., None], 3, axis=2)
    return cv2.cvtColor(cv2.applyColorMap(levels, COLORMAPS[cmap]), cv2.COLOR_BGR2RGB)


def as_rgb8(image: np.ndarray) -> np.ndarray:
    """An HxW or HxWxC float image (any range) as HxWx3 uint8, min-max scaled."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        return colorize(normalize(image), "gray")
    return np.clip(np.rint(normalize(image[..., :3]) * 255), 0, 255).astype(np.uint8)


def overlay(picture: np.ndarray, heatmap: np.ndarray, cmap: str = "jet", alpha: float = 0.5) -> np.ndarray:
    """An RGB uint8 ``picture`` blended with ``heatmap`` (HxW in [0, 1], same size) in ``cmap``."""
    if not 0 <= alpha <= 1:
        raise InvalidArgument(f"overlay alpha must be in [0, 1], got {alpha}")
    colored = colorize(np.clip(heatmap, 0, 1), cmap).astype(np.float32)
    return np.rint((1 - alpha) * picture.astype(np.float32) + alpha * colored).astype(np.uint8)
