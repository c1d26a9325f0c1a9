"""Statistics over many maps or feature vectors: mean and standard error, marginals, ranking, PCA."""

from __future__ import annotations

import numpy as np

from onnxsight.errors import InvalidArgument


def softmax(scores: np.ndarray) -> np.ndarray:
    """Softmax over the last axis of (N, K) scores, in float64 (shifted by each row's maximum)."""
    scores = np.asarray(scores, np.float64)
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def mean_and_sem(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean over the first axis and its standard error (ddof=1, as scipy.stats.sem)."""
    maps = np.asarray(maps, np.float64)
    if len(maps) < 2:
        raise InvalidArgument(f"a standard error needs at least 2 maps, got {len(maps)}")
    return maps.mean(axis=0), maps.std(axis=0, ddof=1) / np.sqrt(len(maps))


def marginals(mean: np.ndarray, sem: np.ndarray) -> dict[str, np.ndarray]:
    """Seed 000's marginal plots: column and row sums of an HxW mean map and of its SEM."""
    return {
        "columns": mean.sum(axis=0), "columns_sem": sem.sum(axis=0),
        "rows": mean.sum(axis=1), "rows_sem": sem.sum(axis=1),
    }


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (k, units) of the k largest rows of ``scores`` (N, units) per column, largest first, and their values."""
    if not 1 <= k <= len(scores):
        raise InvalidArgument(f"k must be between 1 and the {len(scores)} images, got {k}")
    order = np.argsort(-scores, axis=0, kind="stable")[:k]
    return order, np.take_along_axis(scores, order, axis=0)


def pca_2d(features: np.ndarray) -> np.ndarray:
    """The first two principal components of (N, D) features (signs fixed: largest loading positive)."""
    centred = np.asarray(features, np.float64) - np.mean(features, axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    axes = vt[:2]
    axes *= np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(axis=1)])[:, None]
    projected = centred @ axes.T
    return projected if projected.shape[1] == 2 else np.pad(projected, ((0, 0), (0, 2 - projected.shape[1])))
