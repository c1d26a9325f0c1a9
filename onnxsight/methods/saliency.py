"""Saliency maps: vanilla, guided and deconv gradients, Gradient×Input, SmoothGrad, SmoothGrad², VarGrad."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from onnxsight.engine import targets
from onnxsight.engine.augment import MODIFIERS
from onnxsight.engine.model import Model
from onnxsight.errors import InvalidArgument
from onnxsight.kernels import attribution as k
from onnxsight.kernels.colors import normalize_each
from onnxsight.methods.common import Tally, gradient_batch_size, image_channel_axis, rows_of, rows_per_run

MAX_CHUNK_BYTES = 256 * 2**20  # noisy copies (and their gradients) held at once, per m.gradient call


def saliency(
    model: Model,
    x: np.ndarray,
    target: targets.Target = "predicted",
    *,
    of: str = "logits",
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
) -> np.ndarray:
    """Gradient of the target score with respect to the input, post-processed, for a batch ``x``.

    target: a class of ``of`` (a channel for an N-D layer, scored by its mean), one per image,
        "predicted" (default: the argmax on the clean input, kept for its noisy copies), or None
        (the sum of ``of``).
    of: the differentiated tensor, default "logits" (the softmax is swapped for linear, as
        keras-vis does); any layer name, "output" or a tensor name.
    modifier: None (vanilla, default), "guided" (guided backprop) or "deconv" (keras-vis' "relu").
    Per-sample post-processing, in this order: ``negate`` (default False) multiplies the gradient
        by -1 (keras-vis' ``grad_modifier='negate'`` is ``negate=True, absolute=False``);
        ``times_input`` (default False) gives Gradient×Input (gradient times the input it was
        taken at, the noisy one under SmoothGrad); ``absolute`` (default True, keras-vis) takes |g|.
    SmoothGrad: ``smooth_samples`` > 0 (default 0: off) noisy copies per image, ``x + N(0, σ²)``
        with σ = ``smooth_noise`` (default 0.15) × (max − min) of each image for ``noise="relative"``
        (default, tf-keras-vis) or σ = ``smooth_noise`` for ``noise="absolute"`` (Captum's stdevs);
        the noise is :func:`onnxsight.kernels.attribution.smoothgrad_noise` with ``seed`` (default 0).
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

    Returns float32 (N, H, W) for reduced image inputs, else ``x``'s shape.
    """
    check_options(modifier, reduce, noise, smooth_aggregate)
    samples = _count(smooth_samples, "smooth_samples", minimum=0)
    x = model.check_input(x)
    batch_size = batch_size or gradient_batch_size(model)
    indices = model.resolve_target(x, target, of, batch_size)
    tally = Tally(len(x) * max(1, samples), progress)

    def grad(batch: np.ndarray, copies: int) -> np.ndarray:
        tiled = targets.tile(indices, copies)
        return np.concatenate([
            model.gradient(batch[run], of=of, target=rows_of(tiled, run), modifier=modifier, batch_size=batch_size)["input"]
            for run in tally.runs(len(batch), rows_per_run(model, batch_size))])

    post = dict(negate=negate, times_input=times_input, absolute=absolute)
    if samples == 0:
        maps = k.postprocess(grad(x, 1), x, **post)
    else:
        chunk = k.sample_chunk(samples, 2 * x.nbytes, MAX_CHUNK_BYTES)
        total = squares = 0.0
        for noise_block in k.smoothgrad_noise_chunks(x, samples, smooth_noise, noise, seed, chunk):
            noisy = (x[None] + noise_block).reshape(-1, *x.shape[1:])
            g = k.postprocess(grad(noisy, len(noise_block)), noisy, **post).reshape(noise_block.shape)
            block_total, block_squares = k.sample_moments(g)
            total, squares = total + block_total, squares + block_squares
        maps = k.finish_aggregate(total, squares, samples, smooth_aggregate)
    maps = k.reduce_channels(maps, image_channel_axis(model), reduce)
    if normalize:
        maps = normalize_each(maps)
    return maps.astype(np.float32)


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
