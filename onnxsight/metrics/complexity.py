"""Complexity and localisation of attribution maps: sparseness (Gini), complexity (entropy), pointing game.

These read the maps only (no model): one map per image, any shape after the batch axis.
"""

from __future__ import annotations

import numpy as np

from onnxsight.errors import InvalidArgument


def sparseness(maps: np.ndarray) -> np.ndarray:
    """The Gini index of |map| per image (Chalasani et al. 2020, Quantus' Sparseness):
    Σᵢ (2i − n − 1)·aᵢ / (n Σ aᵢ) over the n values sorted ascending (i from 1). 1 − 1/n for a
    one-hot map, 0 for a uniform one (and for an all-zero map). float64 (N,)."""
    values = np.sort(_flat(maps, "sparseness"), axis=1)
    n = values.shape[1]
    weights = 2 * np.arange(1, n + 1) - n - 1
    total = values.sum(axis=1)
    return np.divide(values @ weights, n * total, out=np.zeros(len(values)), where=total > 0)


def complexity(maps: np.ndarray) -> np.ndarray:
    """The entropy (natural log) of the normalised |map| p = |a| / Σ|a| per image (Bhatt et al.
    2020, Quantus' Complexity): −Σ p ln p, 0 for a one-hot map, ln n for a uniform one; an all-zero
    map counts as uniform. float64 (N,)."""
    values = _flat(maps, "complexity")
    total = values.sum(axis=1, keepdims=True)
    p = np.divide(values, total, out=np.full_like(values, 1 / values.shape[1]), where=total > 0)
    return -(p * np.log(p, out=np.zeros_like(p), where=p > 0)).sum(axis=1)


def pointing_game(maps: np.ndarray, masks: np.ndarray, *, tolerance: float = 0) -> np.ndarray:
    """Zhang et al. 2018's pointing game per image: 1.0 (hit) when the map's maximum lies in the
    mask or within ``tolerance`` pixels (Euclidean, default 0; Zhang et al. use 15) of it, else 0.0.
    A map whose maximum is tied at several pixels hits when any of them does. ``maps`` (N, H, W),
    ``masks`` (N, H, W) of booleans (or 0/1), each with at least one pixel set. float64 (N,)."""
    maps = np.asarray(maps, np.float64)
    masks = np.asarray(masks)
    if maps.ndim != 3 or masks.shape != maps.shape:
        raise InvalidArgument(f"pointing_game: maps and masks must both be (N, H, W); got {maps.shape} and {masks.shape}")
    if not np.isfinite(maps).all():
        raise InvalidArgument(f"pointing_game: the maps hold NaN or infinite values ({(~np.isfinite(maps)).sum()} entries)")
    if masks.dtype != bool:
        if not np.isin(masks, (0, 1)).all():
            raise InvalidArgument("pointing_game: masks must be booleans or 0/1")
        masks = masks.astype(bool)
    empty = np.flatnonzero(~masks.any(axis=(1, 2)))
    if empty.size:
        raise InvalidArgument(f"pointing_game: the masks of images {empty[:5].tolist()} are empty; nothing to point at")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float, np.integer, np.floating)) or tolerance < 0:
        raise InvalidArgument(f"pointing_game: tolerance must be a number of pixels >= 0, got {tolerance!r}")
    peaks = maps == maps.max(axis=(1, 2), keepdims=True)
    if tolerance == 0:
        return (peaks & masks).any(axis=(1, 2)).astype(np.float64)
    near = _within(masks, float(tolerance))
    return (peaks & near).any(axis=(1, 2)).astype(np.float64)


def _within(masks: np.ndarray, radius: float) -> np.ndarray:
    """Pixels whose Euclidean distance to a set pixel of their mask is at most ``radius``: the mask
    dilated by a disc, as shifted copies (one per offset in the disc)."""
    reach = int(np.floor(radius))
    near = masks.copy()
    height, width = masks.shape[1:]
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            if dy * dy + dx * dx > radius * radius or (dy, dx) == (0, 0):
                continue
            near[:, max(0, dy):height + min(0, dy), max(0, dx):width + min(0, dx)] |= \
                masks[:, max(0, -dy):height + min(0, -dy), max(0, -dx):width + min(0, -dx)]
    return near


def _flat(maps, metric: str) -> np.ndarray:
    maps = np.asarray(maps, np.float64)
    if maps.ndim < 2 or maps[0].size == 0:
        raise InvalidArgument(f"{metric}: maps must be one map per image, (N, ...) with N >= 1; got shape {maps.shape}")
    if not np.isfinite(maps).all():
        raise InvalidArgument(f"{metric}: the maps hold NaN or infinite values ({(~np.isfinite(maps)).sum()} entries)")
    return np.abs(maps.reshape(len(maps), -1))
