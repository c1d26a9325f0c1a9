"""ROAD's noisy linear imputation (Rong et al. 2022): each removed pixel is the weighted mean of its 8
neighbours, solved for all removed pixels of a batch at once as one sparse linear system."""

from __future__ import annotations

import numpy as np

from onnxsight.errors import MissingDependency

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
    count, height, width, channels = images.shape
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
    system = sparse.csc_matrix(
        (np.concatenate([diagonal, *weights]),
         (np.concatenate([np.arange(len(unknown)), *rows]), np.concatenate([np.arange(len(unknown)), *cols]))),
        shape=(len(unknown), len(unknown)),
    )
    solution = spsolve(system, rhs).reshape(len(unknown), channels) if len(unknown) else rhs
    if noise:
        solution = solution + noise * (rng or np.random.default_rng(0)).standard_normal(solution.shape)
    out = flat_values.copy()
    out[unknown] = solution
    return out.reshape(images.shape)
