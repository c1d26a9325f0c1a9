"""Saliency maps: vanilla, guided and deconv gradients, Gradient×Input, SmoothGrad, SmoothGrad², VarGrad."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from onnxsight.engine import targets
from onnxsight.engine.augment import MODIFIERS
from onnxsight.engine.model import Inputs, Model
from onnxsight.errors import InvalidArgument
from onnxsight.kernels import attribution as k
from onnxsight.kernels.colors import normalize_each
from onnxsight.methods.common import (
    Tally, attributed_inputs, gradient_batch_size, gradients_in_runs, input_channel_axis, per_input, repeat_rows,
)

MAX_CHUNK_BYTES = 256 * 2**20  # noisy copies (and their gradients) held at once, per m.gradient call
KEPT_NOISE_BYTES, KEPT_NOISE_SETS = 16 * 2**20, 4  # SmoothGrad's unit draws kept per model for later calls


def saliency(
    model: Model,
    x: Inputs,
    target: targets.Target = "predicted",
    *,
    of: str = "logits",
    output: str | None = None,
    modifier: str | None = None,
    absolute: bool = True,
    negate: bool = False,
    reduce: str | None = "max",
    normalize: bool = False,
    times_input: bool = False,
    smooth_samples: int = 0,
    smooth_noise: float = 0.15,
    noise: str = "relative",
    smooth_aggregate: str = "mean",
    seed: int = 0,
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray | dict[str, np.ndarray]:
    """Gradient of the target score with respect to the input, post-processed, for a batch ``x``.

    target: a class of ``of`` (a channel for an N-D layer, scored by its mean), one per image,
        "predicted" (default: the argmax on the clean input, kept for its noisy copies), or None
        (the sum of ``of``).
    of: the differentiated tensor, default "logits" (the softmax is swapped for linear, as
        keras-vis does); any layer name, "output" or a tensor name.
    output: the head that "logits" and "output" refer to in a model with several outputs
        (default: its first classification head, see ``Model.head``).
    modifier: None (vanilla, default), "guided" (guided backprop) or "deconv" (keras-vis' "relu").
    Per-sample post-processing, in this order: ``negate`` (default False) multiplies the gradient
        by -1 (keras-vis' ``grad_modifier='negate'`` is ``negate=True, absolute=False``);
        ``times_input`` (default False) gives Gradient×Input (gradient times the input it was
        taken at, the noisy one under SmoothGrad); ``absolute`` (default True, keras-vis) takes |g|.
    SmoothGrad: ``smooth_samples`` > 0 (default 0: off) noisy copies per image, ``x + N(0, σ²)``
        with σ = ``smooth_noise`` (default 0.15) × (max − min) of each image for ``noise="relative"``
        (default, tf-keras-vis) or σ = ``smooth_noise`` for ``noise="absolute"`` (Captum's stdevs);
        the noise is :func:`onnxsight.kernels.attribution.smoothgrad_noise` with ``seed`` (default 0):
        the same unit draws for every image, so an image's map does not depend on its batch.
        ``smooth_aggregate``: "mean" (SmoothGrad, default), "square" (SmoothGrad²: mean of g²) or
        "variance" (VarGrad: population variance of g), over the post-processed samples.
    After aggregation: ``reduce`` over the input's channel axis (from ``model.input_layout``):
        "max" (default, keras-vis), "mean", "sum" or None (keep channels); ignored for inputs that
        are not NHWC/NCHW images (e.g. 2-D "NC"). ``normalize`` (default False: raw values)
        min-max scales each map to [0, 1] (keras-vis normalises).
    batch_size: rows per onnxruntime run (default None:
        :func:`~onnxsight.methods.common.gradient_batch_size`, 64 unless memory is short); all
        images and noisy copies go through batched gradient calls, the copies built in chunks of at
        most ``MAX_CHUNK_BYTES``.
    progress: called with (gradients done, gradients in all: images × max(1, smooth_samples)) after
        each onnxruntime run.

    Returns float32 (N, H, W) for reduced image inputs, else ``x``'s shape. A model with several
    inputs takes ``x`` as a dict by input name and returns one map per float input, each
    post-processed (and reduced over its own channel axis) as above; noise is drawn per input.
    """
    check_options(modifier, reduce, noise, smooth_aggregate)
    samples = _count(smooth_samples, "smooth_samples", minimum=0)
    model = model.with_output(output)
    inputs = model.input_feeds(model.check_input(x))
    wrt = attributed_inputs(model)
    batch_size = batch_size or gradient_batch_size(model)
    indices = model.resolve_target(inputs, target, of, batch_size)
    tally = Tally(len(inputs[model.input_name]) * max(1, samples), progress)

    def grad(batch: dict[str, np.ndarray], copies: int) -> dict[str, np.ndarray]:
        tiled = targets.tile(indices, copies)
        return gradients_in_runs(model, batch, of, tiled, wrt, modifier, batch_size, tally)

    post = dict(negate=negate, times_input=times_input, absolute=absolute)
    if samples == 0:
        gradients = grad(inputs, 1)
        maps = {name: k.postprocess(gradients[name], inputs[name], **post) for name in wrt}
    else:
        chunk = k.sample_chunk(samples, 2 * sum(a.nbytes for a in inputs.values()), MAX_CHUNK_BYTES)
        noises = [k.smoothgrad_noise_chunks(inputs[name], samples, smooth_noise, noise, seed + i, chunk,
                                            _kept_unit_noise(model, inputs[name].shape[1:], samples, seed + i, chunk))
                  for i, name in enumerate(wrt)]
        total = dict.fromkeys(wrt, 0.0)
        squares = dict.fromkeys(wrt, 0.0)
        for blocks in zip(*noises):
            copies = len(blocks[0])
            noisy = {name: (inputs[name][None] + block).reshape(-1, *block.shape[2:]) for name, block in zip(wrt, blocks)}
            noisy.update({name: repeat_rows(a, copies) for name, a in inputs.items() if name not in noisy})
            gradients = grad(noisy, copies)
            for name, block in zip(wrt, blocks):
                g = k.postprocess(gradients[name], noisy[name], **post).reshape(block.shape)
                block_total, block_squares = k.sample_moments(g)
                total[name], squares[name] = total[name] + block_total, squares[name] + block_squares
        maps = {name: k.finish_aggregate(total[name], squares[name], samples, smooth_aggregate) for name in wrt}
    for name in wrt:
        maps[name] = k.reduce_channels(maps[name], input_channel_axis(model, name), reduce)
        if normalize:
            maps[name] = normalize_each(maps[name])
    return per_input(model, {name: m.astype(np.float32) for name, m in maps.items()})


def _kept_unit_noise(model: Model, shape: tuple, samples: int, seed: int, chunk: int) -> list[np.ndarray] | None:
    """SmoothGrad's unit draws for these arguments, kept on ``model`` for later calls (the last few sets,
    each at most ``KEPT_NOISE_BYTES``), or None where they would take more (drawn anew). Drawing 20 × 96×96×3
    normals costs about 5 % of a MobileNetV2 SmoothGrad at batch 1."""
    if samples * 4 * int(np.prod(shape)) > KEPT_NOISE_BYTES:
        return None
    kept = model.memo(("smoothgrad unit noise",), dict)
    key = (shape, samples, seed, chunk)
    draws = kept.get(key)
    if draws is None:
        draws = list(k.unit_noise(shape, samples, seed, chunk))
        if len(kept) >= KEPT_NOISE_SETS:
            kept.clear()
        kept[key] = draws
    return draws


def check_options(modifier: str | None, reduce: str | None, noise: str = "relative", smooth_aggregate: str = "mean") -> None:
    """InvalidArgument for a modifier, reduction, noise mode or aggregate :func:`saliency` does not know."""
    k.choice("modifier", modifier, MODIFIERS)
    k.choice("reduce", reduce, k.REDUCTIONS)
    k.choice("noise", noise, k.NOISE_MODES)
    k.choice("smooth_aggregate", smooth_aggregate, k.AGGREGATES)


def _count(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InvalidArgument(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)
