"""The attribution maps a metric is given, checked once: one (H, W) map per image."""

from __future__ import annotations

import numpy as np

from onnxsight.engine.model import Model
from onnxsight.errors import InvalidArgument
from onnxsight.methods.common import require_image, spatial_size


def pixel_maps(model: Model, x: np.ndarray, maps: np.ndarray, metric: str) -> np.ndarray:
    """``maps`` as (N, H, W) float64 for the image batch ``x``: maps of shape (N, H, W) as they are,
    maps in x's own shape summed over its channels; InvalidArgument naming ``metric`` for any other
    shape or for NaN/infinite values."""
    axis = require_image(model, metric)
    size = spatial_size(x, axis)
    maps = np.asarray(maps, np.float64)
    if maps.shape == x.shape:
        maps = maps.sum(axis=axis)
    if maps.shape != (len(x), *size):
        raise InvalidArgument(f"{metric}: maps of shape {maps.shape} for {len(x)} images of {size[0]}×{size[1]}; "
                              f"expected ({len(x)}, {size[0]}, {size[1]}) or the images' shape {x.shape}")
    if not np.isfinite(maps).all():
        raise InvalidArgument(f"{metric}: the maps hold NaN or infinite values ({(~np.isfinite(maps)).sum()} entries)")
    return maps
