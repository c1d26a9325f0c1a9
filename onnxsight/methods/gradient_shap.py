"""GradientSHAP (Lundberg & Lee's expected gradients, as Captum's GradientShap)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from onnxsight.engine import targets
from onnxsight.engine.model import Inputs, Model
from onnxsight.errors import InvalidArgument
from onnxsight.kernels import attribution as k
from onnxsight.methods.common import (
    Tally, attributed_inputs, gradient_batch_size, gradients_in_runs, input_channel_axis, per_input, repeat_rows,
)
from onnxsight.methods.saliency import MAX_CHUNK_BYTES, _count


def gradient_shap(
    model: Model,
    x: Inputs,
    target: targets.Target = "predicted",
    *,
    of: str = "logits",
    output: str | None = None,
    baselines="black",
    samples: int = 5,
    stdevs: float = 0.0,
    seed: int = 0,
    reduce: str | None = None,
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray | dict[str, np.ndarray]:
    """``mean over samples of ∂f(b + α(x̃ − b))/∂x × (x̃ − b)`` per image (Captum's GradientShap).

    Each of ``samples`` (default 5, Captum's n_samples) draws per image: a baseline ``b`` uniformly
    from ``baselines``, ``x̃ = x + N(0, stdevs²)`` (default stdevs 0: no noise) and α uniform in
    [0, 1) — from ``numpy.random.default_rng(seed)`` (default 0), so a seed repeats the result;
    drawn in this order: the baseline indices (samples, N), the α (samples, N), then the noise of
    each block of samples (samples, N, ...), input by input.
    baselines: "black" (default: zeros), a number, an array (K, ...) of K baseline inputs (or one
        shaped like one input), or, for a model with several inputs, a dict by input name (an input
        not given is "black"); every input's baselines must number the same K, and one index picks
        each input's baseline of a sample (as Captum).
    target, of, output, reduce: as for :func:`~onnxsight.methods.integrated_gradients.integrated_gradients`.
    The expectation over α and b is IG averaged over the baselines: on a model linear in the input
    it is exactly the mean of ``w·(x − b)`` over the drawn b. All samples of all images go through
    batched gradient calls (chunks of at most ``MAX_CHUNK_BYTES``, ``batch_size`` rows per run).
    progress: (gradients done, images × samples).
    """
    k.choice("reduce", reduce, k.REDUCTIONS)
    samples = _count(samples, "samples", minimum=1)
    if isinstance(stdevs, bool) or not isinstance(stdevs, (int, float, np.number)) or not 0 <= stdevs < np.inf:
        raise InvalidArgument(f"stdevs must be a finite number >= 0, got {stdevs!r}")
    model = model.with_output(output)
    inputs = model.input_feeds(model.check_input(x))
    wrt = attributed_inputs(model)
    batch_size = batch_size or gradient_batch_size(model)
    references = baseline_sets(model, inputs, baselines, wrt)
    count = len(inputs[model.input_name])
    indices = model.resolve_target(inputs, target, of, batch_size)
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, len(next(iter(references.values()))), size=(samples, count))
    alphas = rng.uniform(0.0, 1.0, size=(samples, count))
    chunk = k.sample_chunk(samples, 4 * sum(a.nbytes for a in inputs.values()), MAX_CHUNK_BYTES)
    total = {name: np.zeros(inputs[name].shape, np.float64) for name in wrt}
    tally = Tally(samples * count, progress)
    for first in range(0, samples, chunk):
        copies = min(chunk, samples - first)
        picked, alpha = drawn[first:first + copies], alphas[first:first + copies]
        noisy, starts, points = {}, {}, {}
        for name in wrt:
            x_name = inputs[name][None]
            if stdevs > 0:
                x_name = (x_name + rng.normal(0.0, stdevs, size=(copies, *inputs[name].shape))).astype(x_name.dtype)
            else:
                x_name = np.broadcast_to(x_name, (copies, *inputs[name].shape))
            noisy[name], starts[name] = x_name, references[name][picked]
            a = alpha.reshape(copies, count, *[1] * (inputs[name].ndim - 1)).astype(np.float64)
            points[name] = (starts[name] + a * (x_name - starts[name])).astype(inputs[name].dtype).reshape(
                -1, *inputs[name].shape[1:])
        points.update({name: repeat_rows(value, copies) for name, value in inputs.items() if name not in points})
        grads = gradients_in_runs(model, points, of, targets.tile(indices, copies), wrt, None, batch_size, tally)
        for name in wrt:
            g = grads[name].reshape(copies, *inputs[name].shape).astype(np.float64)
            total[name] += (g * (noisy[name].astype(np.float64) - starts[name])).sum(axis=0)
    maps = {name: k.reduce_channels(total[name] / samples, input_channel_axis(model, name), reduce).astype(np.float32)
            for name in wrt}
    return per_input(model, maps)


def baseline_sets(model: Model, inputs: dict[str, np.ndarray], baselines, names: list[str]) -> dict[str, np.ndarray]:
    """Per input in ``names``, its baselines as float64 (K, ...) (see :func:`gradient_shap`)."""
    if isinstance(baselines, Mapping):
        unknown = sorted(set(baselines) - set(names))
        if unknown:
            raise InvalidArgument(f"baselines given for {', '.join(map(repr, unknown))}, not attributed inputs "
                                  f"of {model.source} ({', '.join(names)})")
        sets = {name: _baseline_set(name, inputs[name], baselines.get(name, "black")) for name in names}
    else:
        sets = {name: _baseline_set(name, inputs[name], baselines) for name in names}
    sizes = {name: len(s) for name, s in sets.items()}
    if len(set(sizes.values())) != 1:
        raise InvalidArgument(f"every input needs the same number of baselines (one index draws them together), got {sizes}")
    return sets


def _baseline_set(name: str, x: np.ndarray, given) -> np.ndarray:
    one = x.shape[1:]
    if isinstance(given, str):
        if given != "black":
            raise InvalidArgument(f"baselines must be 'black', a number or an array (K, {', '.join(map(str, one))}), "
                                  f"got {given!r}")
        return np.zeros((1, *one))
    if isinstance(given, (int, float, np.number)) and not isinstance(given, bool):
        if not np.isfinite(given):
            raise InvalidArgument(f"baselines must be finite, got {given}")
        return np.full((1, *one), float(given))
    array = np.asarray(given)
    if not np.issubdtype(array.dtype, np.number):
        raise InvalidArgument(f"baselines for input {name!r} must be numbers, got {array.dtype}")
    array = array[None] if array.shape == one else array
    if array.ndim != x.ndim or array.shape[1:] != one or len(array) == 0:
        raise InvalidArgument(f"baselines for input {name!r} must have shape (K, {', '.join(map(str, one))}), "
                              f"got {array.shape}")
    if not np.isfinite(array).all():
        raise InvalidArgument(f"baselines for input {name!r} contain NaN or Inf values")
    return array.astype(np.float64)
