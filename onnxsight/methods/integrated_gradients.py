"""Integrated Gradients along the straight path from a baseline, and its completeness gap."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from onnxsight.engine import targets
from onnxsight.engine.model import DEFAULT_BATCH_SIZE, Inputs, Model
from onnxsight.errors import InvalidArgument
from onnxsight.kernels import attribution as k
from onnxsight.methods.common import (
    Tally, attributed_inputs, gradient_batch_size, gradients_in_runs, input_channel_axis, per_input, repeat_rows,
    target_scores,
)
from onnxsight.methods.saliency import MAX_CHUNK_BYTES


def integrated_gradients(
    model: Model,
    x: Inputs,
    target: targets.Target = "predicted",
    *,
    of: str = "logits",
    output: str | None = None,
    steps: int = 50,
    baseline="black",
    method: str = "riemann_trapezoid",
    reduce: str | None = None,
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray | dict[str, np.ndarray]:
    """``(x − b) × ∫₀¹ ∂f(b + α(x − b))/∂x dα`` per image, the integral by ``steps``-point quadrature.

    target: as for saliency; "predicted" (default) is the argmax on ``x`` itself, kept for every
        path point. of: the scored tensor, default "logits"; output: the head it refers to in a
        model with several outputs (default: the first classification head).
    steps: quadrature points (default 50). method: "riemann_trapezoid" (default, the textbook
        trapezoid rule: its weights sum to 1, so completeness holds for a linear model; needs
        steps ≥ 2), "riemann_left", "riemann_right", "riemann_middle", "gausslegendre" (Captum's
        default) or "captum_trapezoid" (Captum's "riemann_trapezoid", whose step sizes are 1/n, not
        1/(n−1)); see :func:`onnxsight.kernels.attribution.path_nodes`.
    baseline: "black" (zeros, default), "grey"/"gray" (each image filled with the midpoint
        (min + max) / 2 of its values), "blur" (x Gaussian-blurred with σ = 10 % of the larger
        image side, opencv), a number, or an array broadcastable to x. A model with several inputs
        takes ``x`` and ``baseline`` as dicts by input name (a baseline not given is "black"; a
        string or number applies to every input) and returns one attribution per float input;
        the others are held at their values along the path.
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
    model = model.with_output(output)
    inputs = model.input_feeds(model.check_input(x))
    wrt = attributed_inputs(model)
    batch_size = batch_size or gradient_batch_size(model)
    starts = baselines(model, inputs, baseline, wrt)
    indices = model.resolve_target(inputs, target, of, batch_size)
    chunk = k.sample_chunk(len(alphas), 4 * sum(a.nbytes for a in inputs.values()), MAX_CHUNK_BYTES)
    integral = {name: np.zeros(inputs[name].shape, np.float64) for name in wrt}
    tally = Tally(len(alphas) * len(inputs[model.input_name]), progress)
    for first in range(0, len(alphas), chunk):
        a, w = alphas[first:first + chunk], weights[first:first + chunk]
        path = {name: k.path_points(starts[name], inputs[name], a).reshape(-1, *inputs[name].shape[1:]) for name in wrt}
        path.update({name: repeat_rows(value, len(a)) for name, value in inputs.items() if name not in path})
        grads = gradients_in_runs(model, path, of, targets.tile(indices, len(a)), wrt, None, batch_size, tally)
        for name in wrt:
            shape = (len(a), *inputs[name].shape)
            integral[name] += np.einsum("a,a...->...", w, grads[name].reshape(shape), dtype=np.float64)
    attributions = {name: k.reduce_channels((inputs[name] - starts[name]) * integral[name],
                                            input_channel_axis(model, name), reduce).astype(np.float32)
                    for name in wrt}
    return per_input(model, attributions)


def baselines(model: Model, inputs: dict[str, np.ndarray], baseline, names: list[str]) -> dict[str, np.ndarray]:
    """IG's baseline of each input in ``names`` (see :func:`integrated_gradients`)."""
    if isinstance(baseline, Mapping):
        unknown = sorted(set(baseline) - set(names))
        if unknown:
            raise InvalidArgument(f"baseline given for {', '.join(map(repr, unknown))}, not attributed inputs "
                                  f"of {model.source} ({', '.join(names)})")
        return {name: k.baseline(inputs[name], baseline.get(name, "black"), input_channel_axis(model, name))
                for name in names}
    return {name: k.baseline(inputs[name], baseline, input_channel_axis(model, name)) for name in names}


def completeness_gap(
    model: Model,
    x: Inputs,
    attributions: np.ndarray | Mapping[str, np.ndarray],
    target: targets.Target,
    *,
    of: str = "logits",
    output: str | None = None,
    baseline="black",
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> np.ndarray:
    """Per image ``|sum(attributions) − (f(x) − f(baseline))|`` (IG's completeness axiom).

    ``target``, ``output`` and ``baseline`` as given to :func:`integrated_gradients`; "predicted"
    is resolved on ``x`` and the same class scored on the baseline. Several inputs: the
    attributions of every input count. float64 (N,).
    """
    model = model.with_output(output)
    inputs = model.input_feeds(model.check_input(x))
    wrt = attributed_inputs(model)
    maps = dict(attributions) if isinstance(attributions, Mapping) else {model.input_name: attributions}
    if set(maps) != set(wrt):
        raise InvalidArgument(f"attributions are for {sorted(maps)}; {model.source} attributes to {wrt}")
    count = len(inputs[model.input_name])
    flat = [np.asarray(maps[name]).reshape(count, -1) if len(maps[name]) == count else None for name in wrt]
    if any(f is None for f in flat):
        raise InvalidArgument(f"attributions have {[len(maps[n]) for n in wrt]} rows for {count} images")
    start = {**inputs, **baselines(model, inputs, baseline, wrt)}
    indices = model.resolve_target(inputs, target, of, batch_size)
    ours = target_scores(model, inputs, indices, of, batch_size)
    theirs = target_scores(model, start, indices, of, batch_size)
    return k.completeness_gap(np.concatenate(flat, axis=1), ours, theirs)
