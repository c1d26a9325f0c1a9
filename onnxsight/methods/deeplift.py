"""DeepLIFT (rescale rule) and DeepLiftShap, with Captum's conventions, and their summation-to-delta gap.

Each image and its reference are stacked along the batch axis, ``[images; references]``, and
sent through the model augmented with the strict ``deeplift`` backprop modifier
(:mod:`onnxsight.engine.autodiff.deeplift`); the input half of its gradient is the multiplier.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from onnxsight.engine import targets
from onnxsight.engine.autodiff import Modifier
from onnxsight.engine.autodiff.deeplift import EPS, MODIFIER
from onnxsight.engine.model import DEFAULT_BATCH_SIZE, Inputs, Model
from onnxsight.errors import InvalidArgument
from onnxsight.kernels import attribution as k
from onnxsight.methods.common import (
    Tally, attributed_inputs, gradient_batch_size, input_channel_axis, per_input, rows_of, target_scores,
)
from onnxsight.methods.integrated_gradients import baselines as ig_baselines


def deeplift(
    model: Model,
    x: Inputs,
    target: targets.Target = "predicted",
    *,
    baseline="black",
    multiply_by_inputs: bool = True,
    eps: float = EPS,
    reduce: str | None = None,
    of: str = "logits",
    output: str | None = None,
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray | dict[str, np.ndarray]:
    """DeepLIFT with the rescale rule (Captum's ``DeepLift``): ``(x − x₀) ⊙ m`` per image, with
    ``m`` the DeepLIFT multipliers of the target score, so that the attributions sum to
    ``score(x) − score(x₀)`` (summation-to-delta).

    target: as for saliency; "predicted" (default) is the argmax on ``x``, also scored on ``x₀``.
    of: the scored tensor, default "logits"; output: the head it refers to in a model with
        several outputs (default: the first classification head).
    baseline: the reference ``x₀``: "black" (zeros, default), "grey"/"gray", "blur", a number or
        an array broadcastable to ``x`` (as :func:`onnxsight.integrated_gradients`); several
        inputs: a dict by input name (an input not given is "black").
    multiply_by_inputs: True (default) gives ``(x − x₀) ⊙ m``; False the multipliers ``m``
        (Captum's ``multiply_by_inputs``).
    eps: where ``|Δx| < eps`` at a nonlinearity, its gradient is used instead of ``Δy/Δx``
        (default 1e-10, Captum's).
    reduce: None (default: x's shape), "sum", "mean" or "max" over the channel axis (images only).
    batch_size: rows per onnxruntime run, images and references together (default None:
        :func:`~onnxsight.methods.common.gradient_batch_size`); at least 2.
    progress: called with (images done, images) after each onnxruntime run.

    Only ops with a DeepLIFT rule or a kept exact gradient may lie between the input and ``of``;
    another op raises UnsupportedOp naming it (see :mod:`onnxsight.engine.autodiff.deeplift`).
    A model with several inputs takes ``x`` (and ``baseline``) as dicts by input name and returns
    one map per float input; the other inputs are held at their values in the reference.
    """
    k.choice("reduce", reduce, k.REDUCTIONS)
    model = model.with_output(output)
    inputs = model.input_feeds(model.check_input(x))
    wrt = attributed_inputs(model)
    batch_size = _pair_rows(model, batch_size)
    references = {**inputs, **ig_baselines(model, inputs, baseline, wrt)}
    indices = model.resolve_target(inputs, target, of, batch_size)
    count = len(inputs[model.input_name])
    pairs = np.arange(count)
    maps = _multipliers(model, inputs, references, pairs, pairs, indices, of, wrt, eps, batch_size,
                        Tally(count, progress))
    if multiply_by_inputs:
        maps = {name: (inputs[name] - references[name]) * maps[name] for name in wrt}
    return _finish(model, maps, reduce)


def deeplift_shap(
    model: Model,
    x: Inputs,
    target: targets.Target = "predicted",
    *,
    baselines,
    multiply_by_inputs: bool = True,
    eps: float = EPS,
    reduce: str | None = None,
    of: str = "logits",
    output: str | None = None,
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray | dict[str, np.ndarray]:
    """DeepLiftShap (Captum's): DeepLIFT of each image against every reference of the distribution
    ``baselines``, averaged: ``mean_k (x − b_k) ⊙ m(x, b_k)``; the attributions sum to
    ``score(x) − mean_k score(b_k)``.

    baselines: an array of K ≥ 1 references, (K, *x.shape[1:]); several inputs: a dict by input
        name of such arrays with one K (an input not given is held at the image's value).
    Every (image, reference) pair goes through batched runs, ``batch_size`` rows (pairs × 2) per
    run. progress: called with (pairs done, pairs) after each run. The other options are
    :func:`deeplift`'s.
    """
    k.choice("reduce", reduce, k.REDUCTIONS)
    model = model.with_output(output)
    inputs = model.input_feeds(model.check_input(x))
    wrt = attributed_inputs(model)
    batch_size = _pair_rows(model, batch_size)
    references = reference_set(model, inputs, baselines, wrt)
    kinds = len(next(iter(references.values())))
    indices = model.resolve_target(inputs, target, of, batch_size)
    count = len(inputs[model.input_name])
    images, refs = np.repeat(np.arange(count), kinds), np.tile(np.arange(kinds), count)
    held = {name: value for name, value in inputs.items() if name not in references}
    sums = {name: np.zeros(inputs[name].shape, np.float64) for name in wrt}
    tally = Tally(count * kinds, progress)
    for run in tally.runs(len(images), batch_size // 2):
        image, ref = images[run], refs[run]
        mine = {name: value[image] for name, value in inputs.items()}
        theirs = {**{name: value[image] for name, value in held.items()},
                  **{name: value[ref] for name, value in references.items()}}
        grads = _pair_gradients(model, mine, theirs, targets_of(indices, image), of, wrt, eps)
        for name in wrt:
            part = (mine[name] - theirs[name]) * grads[name] if multiply_by_inputs else grads[name]
            np.add.at(sums[name], image, part.astype(np.float64))
    return _finish(model, {name: sums[name] / kinds for name in wrt}, reduce)


def deeplift_gap(
    model: Model, x: Inputs, attributions, target: targets.Target, *, baseline="black", of: str = "logits",
    output: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
) -> np.ndarray:
    """Per image ``|Σ attributions − (score(x) − score(x₀))|``, float64 (N,): the summation-to-delta
    gap of :func:`deeplift` attributions (unreduced, ``multiply_by_inputs=True``)."""
    from onnxsight.methods.integrated_gradients import completeness_gap

    return completeness_gap(model, x, attributions, target, of=of, output=output, baseline=baseline,
                            batch_size=batch_size)


def deeplift_shap_gap(
    model: Model, x: Inputs, attributions, target: targets.Target, *, baselines, of: str = "logits",
    output: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
) -> np.ndarray:
    """Per image ``|Σ attributions − (score(x) − mean_k score(b_k))|``, float64 (N,), for
    :func:`deeplift_shap` attributions (unreduced, ``multiply_by_inputs=True``)."""
    model = model.with_output(output)
    inputs = model.input_feeds(model.check_input(x))
    wrt = attributed_inputs(model)
    references = reference_set(model, inputs, baselines, wrt)
    kinds = len(next(iter(references.values())))
    maps = dict(attributions) if isinstance(attributions, Mapping) else {model.input_name: attributions}
    if set(maps) != set(wrt):
        raise InvalidArgument(f"attributions are for {sorted(maps)}; {model.source} attributes to {wrt}")
    count = len(inputs[model.input_name])
    indices = model.resolve_target(inputs, target, of, batch_size)
    images, refs = np.repeat(np.arange(count), kinds), np.tile(np.arange(kinds), count)
    rows = {name: (references[name][refs] if name in references else value[images]) for name, value in inputs.items()}
    theirs = target_scores(model, rows, targets_of(indices, images), of, batch_size).reshape(count, kinds).mean(axis=1)
    ours = target_scores(model, inputs, indices, of, batch_size)
    flat = np.concatenate([np.asarray(maps[name], np.float64).reshape(count, -1) for name in wrt], axis=1)
    return k.completeness_gap(flat, ours, theirs)


def reference_set(model: Model, inputs: dict[str, np.ndarray], baselines, wrt: list[str]) -> dict[str, np.ndarray]:
    """DeepLiftShap's references by input name, each (K, ...) in its input's dtype, one K for all."""
    given = dict(baselines) if isinstance(baselines, Mapping) else {model.input_name: baselines}
    unknown = sorted(set(given) - set(wrt))
    if unknown:
        raise InvalidArgument(f"baselines given for {', '.join(map(repr, unknown))}, not attributed inputs "
                              f"of {model.source} ({', '.join(wrt)})")
    references = {}
    for name, value in given.items():
        array = np.asarray(value, dtype=inputs[name].dtype)
        if array.ndim != inputs[name].ndim or array.shape[1:] != inputs[name].shape[1:] or len(array) == 0:
            dims = ", ".join(map(str, inputs[name].shape[1:]))
            raise InvalidArgument(f"baselines for {name!r} must have shape (K, {dims}) with K >= 1, got {array.shape}")
        if not np.isfinite(array).all():
            raise InvalidArgument(f"baselines for {name!r} hold non-finite values")
        references[name] = array
    if len({len(a) for a in references.values()}) > 1:
        raise InvalidArgument(f"baselines hold different numbers of references: "
                              f"{ {name: len(a) for name, a in references.items()} }")
    return references


def targets_of(resolved: targets.Resolved, images: np.ndarray) -> targets.Resolved:
    """The resolved target of rows ``images`` (image indices)."""
    return None if resolved is None else resolved[images]


def _multipliers(model, inputs, references, images, refs, indices, of, wrt, eps, batch_size,
                 tally) -> dict[str, np.ndarray]:
    """The multipliers of each pair (image ``images[i]``, reference row ``refs[i]``), ``batch_size // 2``
    pairs per run."""
    runs = []
    for run in tally.runs(len(images), batch_size // 2):
        mine = {name: value[images[run]] for name, value in inputs.items()}
        theirs = {name: value[refs[run]] for name, value in references.items()}
        runs.append(_pair_gradients(model, mine, theirs, rows_of(targets_of(indices, images), run), of, wrt, eps))
    return {name: np.concatenate([r[name] for r in runs]) for name in wrt}


def _pair_gradients(model: Model, mine: dict, theirs: dict, target: targets.Resolved, of: str, wrt: list[str],
                    eps: float) -> dict[str, np.ndarray]:
    """One onnxruntime run of ``[mine; theirs]``; the input half of the deeplift gradients."""
    count = len(next(iter(mine.values())))
    stacked = {name: np.concatenate([mine[name], theirs[name]]) for name in mine}
    grads = model.gradient(stacked, of=of, target=targets.tile(target, 2), wrt=wrt,
                           modifier=Modifier(MODIFIER, eps=float(eps)), batch_size=2 * count)
    return {name: grads[name][:count] for name in wrt}


def _pair_rows(model: Model, batch_size: int | None) -> int:
    """Rows per run (images and references together): even, at least 2; a fixed batch axis is refused."""
    fixed = model.input_shape[0]
    if isinstance(fixed, int):
        raise InvalidArgument(f"DeepLIFT stacks images and references along the batch axis; {model.source} has a "
                              f"fixed batch size {fixed} (re-export it with a dynamic batch axis)")
    if batch_size is None:
        return max(2, gradient_batch_size(model))
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 2:
        raise InvalidArgument(f"batch_size must be an integer >= 2 (an image and its reference), got {batch_size!r}")
    return int(batch_size)


def _finish(model: Model, maps: dict[str, np.ndarray], reduce: str | None) -> np.ndarray | dict[str, np.ndarray]:
    return per_input(model, {name: k.reduce_channels(np.asarray(m), input_channel_axis(model, name), reduce)
                             .astype(np.float32) for name, m in maps.items()})
