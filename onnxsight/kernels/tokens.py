"""Transformer token maps as array numerics: a token sequence on its patch grid, attention rollout.

Token tensors are (N, T, D), batch first, the extra tokens (class, registers) first and the patch
tokens after them in row-major order — as ViT, DeiT and DINOv2 lay them out in Keras and PyTorch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from onnxsight.errors import InvalidArgument

MAX_EXTRA_TOKENS = 8  # class token plus up to 7 registers (DINOv2 uses 4)
HEAD_FUSIONS = ("mean", "max", "min")


def patch_grid(tokens: int, image_size: Sequence[int]) -> tuple[int, int]:
    """The (rows, columns) of patches that ``tokens`` tokens cover on an image of ``image_size``
    (H, W): the fewest extra tokens for which the rest tile the image with square patches."""
    height, width = image_size
    for extra in range(min(MAX_EXTRA_TOKENS, tokens - 1) + 1):
        patches = tokens - extra
        side = math.sqrt(height * width / patches)
        if side == int(side) and height % int(side) == 0 and width % int(side) == 0:
            return height // int(side), width // int(side)
    raise InvalidArgument(f"{tokens} tokens do not tile a {height}x{width} image with square patches after "
                          f"0-{MAX_EXTRA_TOKENS} extra tokens; give the grid (tokens_grid=(rows, columns))")


def to_grid(a: np.ndarray, grid: Sequence[int]) -> np.ndarray:
    """(N, T, D) tokens as (N, rows, columns, D) float64 patch maps, the T - rows·columns leading
    extra tokens dropped (pytorch-grad-cam's ``reshape_transform`` for ViT)."""
    rows, columns = grid
    count, tokens, width = a.shape
    extra = tokens - rows * columns
    if extra < 0:
        raise InvalidArgument(f"a {rows}x{columns} grid needs {rows * columns} tokens; the layer has {tokens}")
    return np.asarray(a[:, extra:], np.float64).reshape(count, rows, columns, width)


def rollout(attentions: Sequence[np.ndarray], head_fusion: str = "mean", discard_ratio: float = 0.0,
            residual: float = 0.5) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema 2020) of per-layer attention probabilities (N, heads, T, T),
    first layer first: per layer the heads fused (mean, max or min), the smallest ``discard_ratio``
    of each image's weights zeroed (except the diagonal), the residual connection added as
    ``residual·I + (1 - residual)·A``, rows renormalised, and the layers multiplied. (N, T, T)."""
    if head_fusion not in HEAD_FUSIONS:
        raise InvalidArgument(f"head_fusion must be one of {', '.join(HEAD_FUSIONS)}; got {head_fusion!r}")
    if not 0.0 <= discard_ratio < 1.0 or not 0.0 <= residual <= 1.0:
        raise InvalidArgument(f"discard_ratio must be in [0, 1) and residual in [0, 1]; got {discard_ratio}, {residual}")
    result = None
    for attention in attentions:
        fused = getattr(np, head_fusion)(np.asarray(attention, np.float64), axis=1)
        count, tokens, _ = fused.shape
        if discard_ratio > 0:
            flat = fused.reshape(count, -1)
            cut = int(flat.shape[1] * discard_ratio)
            lowest = np.argsort(flat, axis=1)[:, :cut]
            kept = np.ones_like(flat, bool)
            np.put_along_axis(kept, lowest, False, axis=1)
            kept.reshape(count, tokens, tokens)[:, np.arange(tokens), np.arange(tokens)] = True
            fused = np.where(kept.reshape(fused.shape), fused, 0.0)
        mixed = residual * np.eye(tokens) + (1 - residual) * fused
        mixed /= mixed.sum(axis=-1, keepdims=True)
        result = mixed if result is None else mixed @ result
    if result is None:
        raise InvalidArgument("attention rollout needs at least one attention layer")
    return result
