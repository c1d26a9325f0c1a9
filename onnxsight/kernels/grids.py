"""Tile many small maps (feature maps, filters) into one labelled RGB image."""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from onnxsight.kernels.colors import as_rgb8, colorize, normalize, overlay

BACKGROUND = 255
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def tile(
    tiles: Sequence[np.ndarray],
    columns: int | None = None,
    cell: int = 64,
    gap: int = 4,
    labels: Sequence[str] | None = None,
) -> np.ndarray:
    """Place HxWx3 uint8 tiles on a grid, each scaled (nearest) to fit ``cell`` pixels."""
    count = len(tiles)
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    label_height = 14 if labels else 0
    pitch_y, pitch_x = cell + gap + label_height, cell + gap
    canvas = np.full((rows * pitch_y + gap, columns * pitch_x + gap, 3), BACKGROUND, np.uint8)
    for i, image in enumerate(tiles):
        row, col = divmod(i, columns)
        scale = cell / max(image.shape[:2])
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        resized = cv2.resize(image, size, interpolation=cv2.INTER_NEAREST)
        top, left = row * pitch_y + gap + label_height, col * pitch_x + gap
        canvas[top:top + size[1], left:left + size[0]] = resized
        if labels:
            cv2.putText(canvas, labels[i], (left, top - 3), _FONT, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def feature_grid(maps: np.ndarray, columns: int | None = None, cmap: str = "gray") -> np.ndarray:
    """Seed 001's ``plotOutputs`` for one image: (C, H, W) maps, each min-max scaled, or a (C,) vector."""
    maps = np.asarray(maps)
    if maps.ndim == 1:  # a dense layer: one square heat map of its units
        side = math.ceil(math.sqrt(maps.size))
        padded = np.full(side * side, maps.min(), dtype=np.float64)
        padded[:maps.size] = maps
        return tile([colorize(normalize(padded).reshape(side, side), cmap)], 1, cell=max(64, 8 * side))
    tiles = [colorize(normalize(m), cmap) for m in maps]
    return tile(tiles, columns, labels=[f"#{c}" for c in range(len(maps))])


def filter_grid(kernels: np.ndarray, columns: int | None = None) -> np.ndarray:
    """Conv kernels (Cout, Cin, kh, kw) as a grid: RGB when Cin is 3, else the channel mean in blue-white-red."""
    kernels = np.asarray(kernels)
    if kernels.shape[1] == 3:
        tiles = [as_rgb8(k.transpose(1, 2, 0)) for k in kernels]
    else:
        means = kernels.mean(axis=1)
        peak = np.abs(means).max() or 1.0
        tiles = [colorize(0.5 + 0.5 * m / peak, "bwr") for m in means]
    return tile(tiles, columns, cell=48, labels=[f"#{c}" for c in range(len(kernels))])


def side_by_side(images: Sequence[np.ndarray], gap: int = 8) -> np.ndarray:
    """Join RGB uint8 images left to right, top-aligned, on a white background."""
    height = max(image.shape[0] for image in images)
    width = sum(image.shape[1] for image in images) + gap * (len(images) - 1)
    canvas = np.full((height, width, 3), BACKGROUND, np.uint8)
    left = 0
    for image in images:
        canvas[:image.shape[0], left:left + image.shape[1]] = image
        left += image.shape[1] + gap
    return canvas


def activation_figure(picture: np.ndarray, maps: np.ndarray, columns: int | None = None, cmap: str = "gray") -> np.ndarray:
    """One row of seed 001's figure: the input picture, then the grid of its feature maps."""
    return side_by_side([tile([picture], 1, cell=128), feature_grid(maps, columns, cmap)])


def attribution_figure(picture: np.ndarray, heatmap: np.ndarray, cmap: str = "jet", alpha: float = 0.5) -> np.ndarray:
    """Input, heat map and overlay side by side; ``heatmap`` is HxW in [0, 1] at the picture's size."""
    colored = colorize(heatmap, cmap)
    return side_by_side([tile([image], 1, cell=128) for image in (picture, colored, overlay(picture, heatmap, cmap, alpha))])
