"""Integrated Gradients along the straight path from a baseline, and its completeness gap."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from onnxsight.engine import targets
from onnxsight.engine.model import DEFAULT_BATCH_SIZE, Model
from onnxsight.errors import InvalidArgument
from onnxsight.kernels import attribution as k
from onnxsight.methods.common import (
    Tally, gradient_batch_size, image_channel_axis, rows_of, rows_per_run, target_scores,
)
from onnxsight.methods.saliency import MAX_CHUNK_BYTES


def integrated_gradients(
    model: Model,
    x: np.ndarray,
    target: targets.Target = "predicted",
    *,
    of: str = "logits",
    steps: int = 50,
    baseline="black",
    method: str = "riemann_trapezoid",
    reduce: str | None = None,
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """``(x − b) × ∫₀¹ ∂f(b + α(x − b))/∂x dα`` per image, the integral by ``steps``-point quadrature.

    target: as for saliency; "predicted" (default) is the argmax on ``x`` itself, kept for every
        path point. of: the scored tensor, default "logits".
    steps: quadrature points (default 50). method: "riemann_trapezoid" (default; needs steps ≥ 2),
        "riemann_left", "riemann_right", "riemann_middle" or "gausslegendre" (Captum's default),
        see :func:`onnxsight.kernels.attribution.path_nodes`.
    baseline: "black" (zeros, default), "grey"/"gray" (each image filled with the midpoint
        (min + max) / 2 of its values), "blur" (x Gaussian-blurred with σ = 10 % of the larger
        image side, opencv), a number, or an array broadcastable to x.
    reduce: None (default: attributions in x's shape, so they sum to the score difference),
        "sum", "mean" or "max" over the input's channel axis (image inputs only).
    Path points are ``b + α(x − b)``, from the far end ``x − (1 − α)(x − b)`` for α ≥ ½ (so the
    ends are exactly b and x). All path points of all images go through batched gradient calls, built
    in chunks of at most ``MAX_CHUNK_BYTES``, ``batch_size`` rows per onnxruntime run (default None:
    :func:`~onnxsight.methods.common.gradient_batch_size`, 64 unless memory is short).
    progress: called with (path points done, path points in all) after each onnxruntime run.
    """
    k.choice("reduce", reduce, k.REDUCTIONS)
    alphas, weights = k.path_nodes(steps, method)
    x = model.check_input(x)
    batch_size = batch_size or gradient_batch_size(model)
    axis = image_channel_axis(model)
    start = k.baseline(x, baseline, axis)
    indices = model.resolve_target(x, target, of, batch_size)
    delta = x - start
    chunk = k.sample_chunk(len(alphas), 4 * x.nbytes, MAX_CHUNK_BYTES)  # path, two ends, gradient
    integral = np.zeros(x.shape, np.float64)
    tally = Tally(len(alphas) * len(x), progress)
    for first in range(0, len(alphas), chunk):
        a, w = alphas[first:first + chunk], weights[first:first + chunk]
        path = k.path_points(start, x, a).reshape(-1, *x.shape[1:])
        tiled = targets.tile(indices, len(a))
        grads = np.concatenate([
            model.gradient(path[run], of=of, target=rows_of(tiled, run), batch_size=batch_size)["input"]
            for run in tally.runs(len(path), rows_per_run(model, batch_size))])
        integral += np.tensordot(w, grads.reshape(len(a), *x.shape).astype(np.float64), axes=1)
    attributions = k.reduce_channels(delta * integral, axis, reduce)
    return attributions.astype(np.float32)


def completeness_gap(
    model: Model,
    x: np.ndarray,
    attributions: np.ndarray,
    target: targets.Target,
    *,
    of: str = "logits",
    baseline="black",
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> np.ndarray:
    """Per image ``|sum(attributions) − (f(x) − f(baseline))|`` (IG's completeness axiom).

    ``target`` and ``baseline`` as given to :func:`integrated_gradients`; "predicted" is
    resolved on ``x`` and the same class scored on the baseline. float64 (N,).
    """
    x = model.check_input(x)
    attributions = np.asarray(attributions)
    if len(attributions) != len(x):
        raise InvalidArgument(f"attributions have {len(attributions)} rows for {len(x)} images")
    start = k.baseline(x, baseline, image_channel_axis(model))
    indices = model.resolve_target(x, target, of, batch_size)
    ours = target_scores(model, x, indices, of, batch_size)
    theirs = target_scores(model, start, indices, of, batch_size)
    return k.completeness_gap(attributions, ours, theirs)
