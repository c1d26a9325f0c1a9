"""ROAD's noisy linear imputation (Rong et al. 2022): each removed pixel is the weighted mean of its 8
neighbours, solved for the removed pixels of many images at once as sparse linear systems (scipy)."""

from __future__ import annotations

import numpy as np

from onnxsight.errors import MissingDependency

UNKNOWNS_PER_SOLVE = 50_000  # SuperLU is faster on a few mid-sized systems than on one block-diagonal giant
# (dy, dx) -> weight: 1/6 for an edge neighbour, 1/12 for a diagonal one (they sum to 1)
NEIGHBOURS = {(dy, dx): (1 / 12 if dy and dx else 1 / 6) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx}


def noisy_linear_impute(
    images: np.ndarray, removed: np.ndarray, noise: float = 0.01, rng: np.random.Generator | None = None
) -> np.ndarray:
    """``images`` (R, H, W, C) with the pixels where ``removed`` (R, H, W) is True replaced by the
    solution of ``v_p = Σ_q w_q v_q / Σ_q w_q`` over p's in-image neighbours q (known pixels at their
    values, removed ones unknown), plus ``noise`` × N(0, 1) per removed pixel and channel (absolute,
    as ROAD's NoisyLinearImputer; 0 for none). Float64. Every connected removed region must touch a
    kept pixel (an image removed whole has no solution)."""
    try:
        from scipy import sparse
        from scipy.sparse.linalg import spsolve
    except ImportError as error:
        raise MissingDependency("scipy", "metrics") from error
    images = np.asarray(images, np.float64)
    removed = np.asarray(removed, bool)
    unknown = removed.reshape(len(removed), -1).sum(axis=1)
    out = images.copy()
    start = 0
    while start < len(images):  # systems of about UNKNOWNS_PER_SOLVE unknowns: one per large image, many small ones
        stop = start + max(1, int(np.searchsorted(np.cumsum(unknown[start:]), UNKNOWNS_PER_SOLVE, side="right")))
        out[start:stop][removed[start:stop]] = _solve(images[start:stop], removed[start:stop], sparse, spsolve)
        start = stop
    if noise:
        out[removed] += noise * (rng or np.random.default_rng(0)).standard_normal((int(unknown.sum()), images.shape[-1]))
    return out


def _solve(images: np.ndarray, removed: np.ndarray, sparse, spsolve) -> np.ndarray:
    """(removed pixels, C): the noiseless imputed values of the removed pixels in row-major order."""
    _, height, width, channels = images.shape
    unknown = np.flatnonzero(removed)
    variable = np.full(removed.size, -1)
    variable[unknown] = np.arange(len(unknown))
    r, rest = np.divmod(unknown, height * width)
    y, x = np.divmod(rest, width)
    flat_values = images.reshape(-1, channels)
    diagonal = np.zeros(len(unknown))
    rhs = np.zeros((len(unknown), channels))
    rows, cols, weights = [], [], []
    for (dy, dx), weight in NEIGHBOURS.items():
        ny, nx = y + dy, x + dx
        inside = (ny >= 0) & (ny < height) & (nx >= 0) & (nx < width)
        neighbour = (r * height + np.clip(ny, 0, height - 1)) * width + np.clip(nx, 0, width - 1)
        diagonal[inside] -= weight
        free = inside & removed.reshape(-1)[neighbour]
        rows.append(np.flatnonzero(free))
        cols.append(variable[neighbour[free]])
        weights.append(np.full(free.sum(), weight))
        fixed = inside & ~free
        rhs[fixed] -= weight * flat_values[neighbour[fixed]]
    if not len(unknown):
        return rhs
    system = sparse.csc_matrix(
        (np.concatenate([diagonal, *weights]),
         (np.concatenate([np.arange(len(unknown)), *rows]), np.concatenate([np.arange(len(unknown)), *cols]))),
        shape=(len(unknown), len(unknown)),
    )
    return spsolve(system, rhs).reshape(len(unknown), channels)
