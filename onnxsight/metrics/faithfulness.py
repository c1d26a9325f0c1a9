"""Faithfulness of attribution maps: how the model's score moves when the pixels a map ranks first
are removed, inserted or imputed — deletion/insertion (Petsiuk et al. 2018), pixel flipping (Samek et
al. 2016), ROAD (Rong et al. 2022), MuFidelity (Bhatt et al. 2020) and pytorch-grad-cam's confidence
change. Every perturbed copy of every image is one row of a large onnxruntime batch
(:func:`onnxsight.methods.occlusion.copy_scores`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from onnxsight.engine import targets
from onnxsight.engine.model import Inputs, Model
from onnxsight.errors import InvalidArgument
from onnxsight.kernels.occlusion import fill_values
from onnxsight.methods.common import require_image, spatial_size, split_inputs, with_context
from onnxsight.methods.occlusion import copy_scores
from onnxsight.metrics.imputation import noisy_linear_impute
from onnxsight.metrics.maps import pixel_maps

ORDERS = ("morf", "lerf")
PERCENTAGES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
Progress = Callable[[int, int], None] | None


class _Batch:
    """What every metric starts from: the checked images, their other inputs, the maps as (N, H, W)
    float64 and each image's target resolved once on the clean images."""

    def __init__(self, model: Model, x: Inputs, maps: np.ndarray, target: targets.Target, of: str,
                 output: str | None, batch_size: int, metric: str):
        self.model = model.with_output(output)
        self.x, self.context = split_inputs(self.model, x)
        self.axis = require_image(self.model, metric)
        self.maps = pixel_maps(self.model, self.x, maps, metric)
        self.indices = self.model.resolve_target(with_context(self.model, self.x, self.context), target, of,
                                                 batch_size)
        self.of, self.batch_size, self.metric = of, batch_size, metric

    @property
    def pixels(self) -> int:
        return self.maps[0].size

    def scores(self, copies: int, build: Callable[[np.ndarray], np.ndarray], progress: Progress = None) -> np.ndarray:
        """(N, copies) target scores of the copies ``build(rows)`` (row r is copy r % copies of image r // copies)."""
        return copy_scores(self.model, self.x, copies, lambda start, stop: build(np.arange(start, stop)), self.indices,
                           self.of, self.batch_size, progress, self.context).reshape(len(self.x), copies)

    def clean(self) -> np.ndarray:
        """(N,) the target scores of the images themselves."""
        return self.scores(1, lambda r: self.x[r])[:, 0]

    def fills(self, fill: float | str, blur_sigma: float) -> np.ndarray:
        try:
            return fill_values(self.x, fill, self.axis, (blur_sigma, blur_sigma))
        except InvalidArgument as error:
            raise InvalidArgument(f"{self.metric}: {error}") from None

    def ranks(self, order: str) -> np.ndarray:
        """(N, H, W) each pixel's place in the removal order: 0 for the first. "morf" (most relevant
        first) takes the largest map values first, "lerf" the smallest; ties go in row-major order."""
        if order not in ORDERS:
            raise InvalidArgument(f"{self.metric}: order must be one of {', '.join(ORDERS)}; got {order!r}")
        flat = self.maps.reshape(len(self.maps), -1)
        by = np.argsort(-flat if order == "morf" else flat, axis=1, kind="stable")
        ranks = np.empty(by.shape, np.int32)
        np.put_along_axis(ranks, by, np.broadcast_to(np.arange(flat.shape[1]), by.shape), axis=1)
        return ranks.reshape(self.maps.shape)

    def spread(self, pixel_mask: np.ndarray) -> np.ndarray:
        """(R, H, W) pixel masks broadcast over the images' channel axis."""
        return np.expand_dims(pixel_mask, self.axis)


def deletion_curve(
    model: Model,
    x: Inputs,
    maps: np.ndarray,
    target: targets.Target = "predicted",
    *,
    steps: int = 100,
    order: str = "morf",
    fill: float | str = 0.0,
    blur_sigma: float = 5.0,
    of: str = "output",
    output: str | None = None,
    batch_size: int = 256,
    progress: Progress = None,
) -> np.ndarray:
    """(N, steps + 1) float64: the target's score after the first ⌊k·P/steps⌋ of an image's P pixels,
    in the map's ``order``, are set to ``fill``, for k = 0 … steps (column 0: the image itself).

    maps: (N, H, W) or the images' shape (summed over channels), see :func:`pixel_maps`.
    target: a class of ``of`` per image, "predicted" (default: the argmax on the clean images) or None
        (the sum of ``of``); of: the scored tensor, default "output" (a softmax classifier's class
        probability, as the deletion/insertion papers use); "logits" or any layer name.
    order: "morf" (default: most relevant — largest map value — first) or "lerf" (least relevant first);
        ties are taken in row-major pixel order (a stable sort).
    fill: what a removed pixel shows: a float (default 0.0), "mean" (each image's per-channel mean) or
        "blur" (the image blurred with a Gaussian of ``blur_sigma`` px, default 5: RISE's klen 11, σ 5).
    batch_size: rows per onnxruntime run; progress: called with (copies scored, copies in all).
    """
    return _curve("deletion_curve", False, model, x, maps, target, steps=steps, order=order, fill=fill,
                  blur_sigma=blur_sigma, of=of, output=output, batch_size=batch_size, progress=progress)


def insertion_curve(
    model: Model,
    x: Inputs,
    maps: np.ndarray,
    target: targets.Target = "predicted",
    *,
    steps: int = 100,
    order: str = "morf",
    fill: float | str = "blur",
    blur_sigma: float = 5.0,
    of: str = "output",
    output: str | None = None,
    batch_size: int = 256,
    progress: Progress = None,
) -> np.ndarray:
    """(N, steps + 1) float64: the target's score of the ``fill`` image (default "blur", Petsiuk et al.'s
    insertion) with the first ⌊k·P/steps⌋ pixels in the map's ``order`` put back to their values, for
    k = 0 … steps (the last column is the image itself). Options as :func:`deletion_curve`."""
    return _curve("insertion_curve", True, model, x, maps, target, steps=steps, order=order, fill=fill,
                  blur_sigma=blur_sigma, of=of, output=output, batch_size=batch_size, progress=progress)


def deletion(model: Model, x: Inputs, maps: np.ndarray, target: targets.Target = "predicted", **options) -> np.ndarray:
    """(N,) the area under :func:`deletion_curve` (trapezoid over the removed fraction k/steps in [0, 1]);
    lower is better for MoRF, higher for LeRF. Options as :func:`deletion_curve`."""
    return auc(_curve("deletion", False, model, x, maps, target, **options))


def insertion(model: Model, x: Inputs, maps: np.ndarray, target: targets.Target = "predicted", **options) -> np.ndarray:
    """(N,) the area under :func:`insertion_curve` (trapezoid over the inserted fraction in [0, 1]);
    higher is better for MoRF. Options as :func:`insertion_curve`."""
    return auc(_curve("insertion", True, model, x, maps, target, **options))


def pixel_flipping(
    model: Model, x: Inputs, maps: np.ndarray, target: targets.Target = "predicted", *, fill: float | str = 0.0,
    **options,
) -> np.ndarray:
    """(N,) Samek et al.'s pixel flipping: the area under the MoRF deletion curve that flips one pixel
    per step — exactly ``deletion(..., steps=H·W, order="morf")``. Their AOPC is
    score(x) − mean(curve), the same curve averaged over its H·W + 1 points instead of integrated."""
    if "steps" in options or "order" in options:
        raise InvalidArgument("pixel_flipping: steps and order are fixed (one pixel per step, MoRF); use deletion")
    checked = model.with_output(options.get("output"))
    height, width = spatial_size(split_inputs(checked, x)[0], require_image(checked, "pixel_flipping"))
    return auc(_curve("pixel_flipping", False, model, x, maps, target, steps=height * width, fill=fill, **options))


def auc(curves: np.ndarray) -> np.ndarray:
    """(N,) trapezoidal area under (N, steps + 1) curves sampled at k/steps, k = 0 … steps."""
    curves = np.asarray(curves, np.float64)
    return (curves[:, :-1] + curves[:, 1:]).sum(axis=1) / (2 * (curves.shape[1] - 1))


def road_curve(
    model: Model,
    x: Inputs,
    maps: np.ndarray,
    target: targets.Target = "predicted",
    *,
    percentages: Sequence[float] = PERCENTAGES,
    order: str = "morf",
    noise: float = 0.01,
    seed: int = 0,
    of: str = "output",
    output: str | None = None,
    batch_size: int = 256,
    progress: Progress = None,
) -> np.ndarray:
    """(N, len(percentages)) float64: ROAD (Rong et al. 2022, remove and debias) — the target's score
    after round(p·H·W) pixels, in the map's ``order`` (as :func:`deletion_curve`), are removed and
    imputed by noisy linear imputation: each removed pixel is the 1/6 (edge) and 1/12 (diagonal)
    weighted mean of its in-image neighbours, solved jointly (scipy.sparse), plus ``noise`` × N(0, 1)
    per pixel and channel (absolute, default 0.01, as the paper's and pytorch-grad-cam's
    NoisyLinearImputer; ``seed``: the generator's seed).

    percentages: the removed fractions, each in (0, 1) (default 0.1 … 0.9). pytorch-grad-cam's
    ``ROADMostRelevantFirst(percentile=q)`` removes 1 − q/100 of the pixels by a threshold (ties may
    differ) and reports score − score(x); its averages over 10 … 90 equal :func:`road` − score(x).
    """
    return _road("road_curve", model, x, maps, target, percentages=percentages, order=order, noise=noise, seed=seed,
                 of=of, output=output, batch_size=batch_size, progress=progress)


def _road(
    metric: str, model: Model, x: Inputs, maps: np.ndarray, target: targets.Target = "predicted", *,
    percentages: Sequence[float] = PERCENTAGES, order: str = "morf", noise: float = 0.01, seed: int = 0,
    of: str = "output", output: str | None = None, batch_size: int = 256, progress: Progress = None,
) -> np.ndarray:
    """:func:`road_curve`, errors naming ``metric``."""
    batch = _Batch(model, x, maps, target, of, output, batch_size, metric)
    fractions = np.asarray(percentages, np.float64).reshape(-1)
    if not len(fractions) or not ((fractions > 0) & (fractions < 1)).all():
        raise InvalidArgument(f"{metric}: percentages must be fractions in (0, 1); got {tuple(percentages)}")
    if not np.isfinite(noise) or noise < 0:
        raise InvalidArgument(f"{metric}: noise must be a finite standard deviation >= 0; got {noise}")
    ranks = batch.ranks(order)
    counts = np.round(fractions * batch.pixels).astype(int)
    copies = len(counts)
    rng = np.random.default_rng(seed)

    def imputed(r: np.ndarray) -> np.ndarray:
        image = r // copies
        removed = ranks[image] < counts[r % copies][:, None, None]
        channels_last = np.moveaxis(batch.x[image], batch.axis, -1)
        filled = noisy_linear_impute(channels_last, removed, noise, rng)
        return np.moveaxis(filled, -1, batch.axis).astype(batch.x.dtype)

    return batch.scores(copies, imputed, progress)


def road(model: Model, x: Inputs, maps: np.ndarray, target: targets.Target = "predicted", **options) -> np.ndarray:
    """(N,) the mean of :func:`road_curve` over its percentages (lower is better for MoRF, higher for
    LeRF; ROAD's combined score is (road LeRF − road MoRF) / 2). Options as :func:`road_curve`."""
    return _road("road", model, x, maps, target, **options).mean(axis=1)


def mufidelity(
    model: Model,
    x: Inputs,
    maps: np.ndarray,
    target: targets.Target = "predicted",
    *,
    subsets: int = 128,
    subset_fraction: float = 0.1,
    fill: float | str = 0.0,
    blur_sigma: float = 5.0,
    seed: int = 0,
    of: str = "output",
    output: str | None = None,
    batch_size: int = 256,
    progress: Progress = None,
) -> np.ndarray:
    """(N,) MuFidelity (Bhatt et al. 2020): per image, the Pearson correlation over ``subsets`` random
    pixel subsets S (default 128, each of round(``subset_fraction`` · H·W) pixels, default 0.1, drawn
    without replacement with ``seed``) of Σ_{i∈S} map_i and score(x) − score(x with S at ``fill``).
    ``fill`` as :func:`deletion_curve` (default 0.0, Quantus' "black"). NaN where either side does not
    vary over the subsets (a correlation is not defined there)."""
    batch = _Batch(model, x, maps, target, of, output, batch_size, "mufidelity")
    if isinstance(subsets, bool) or not isinstance(subsets, (int, np.integer)) or subsets < 2:
        raise InvalidArgument(f"mufidelity: subsets must be an integer >= 2; got {subsets!r}")
    if not 0 < subset_fraction <= 1:
        raise InvalidArgument(f"mufidelity: subset_fraction must be in (0, 1]; got {subset_fraction}")
    fills = batch.fills(fill, blur_sigma)
    size = max(1, round(subset_fraction * batch.pixels))
    rng = np.random.default_rng(seed)
    chosen = np.stack([rng.random((subsets, batch.pixels)).argpartition(size - 1, axis=1)[:, :size].astype(np.int32)
                       for _ in range(len(batch.x))]) if size < batch.pixels else \
        np.broadcast_to(np.arange(size), (len(batch.x), subsets, size))
    sums = np.take_along_axis(batch.maps.reshape(len(batch.x), 1, -1), chosen, axis=2).sum(axis=2)

    def removed(r: np.ndarray) -> np.ndarray:
        image = r // subsets
        mask = np.zeros((len(r), batch.pixels), bool)
        np.put_along_axis(mask, chosen[image, r % subsets], True, axis=1)
        mask = batch.spread(mask.reshape(len(r), *batch.maps.shape[1:]))
        return np.where(mask, fills[image], batch.x[image])

    drops = batch.clean()[:, None] - batch.scores(subsets, removed, progress)
    return pearson(sums, drops)


def pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,) the Pearson correlation of each row of ``a`` with the same row of ``b``; NaN where a row is constant."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    norms = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norms > 0, (a * b).sum(axis=1) / norms, np.nan)


def confidence_change(
    model: Model,
    x: Inputs,
    maps: np.ndarray,
    target: targets.Target = "predicted",
    *,
    percentile: float | None = None,
    of: str = "output",
    output: str | None = None,
    batch_size: int = 256,
    progress: Progress = None,
) -> np.ndarray:
    """(N,) score(x · m) − score(x): pytorch-grad-cam's ``CamMultImageConfidenceChange`` (positive when
    the region the map keeps is enough for, or raises, the target's confidence).

    percentile: None (default) multiplies the image by its map scaled to [0, 1] per image,
        (map − min) / (max − min + 1e-7) as pytorch-grad-cam scales its CAMs; a number q in [0, 100)
        keeps only the top round((1 − q/100)·H·W) pixels by map value (m = 1 there, 0 elsewhere; ties
        in row-major order), the "keep the top region" variant. pytorch-grad-cam's DropInConfidence is
        max(−change, 0) and IncreaseInConfidence is change > 0.
    """
    batch = _Batch(model, x, maps, target, of, output, batch_size, "confidence_change")
    if percentile is None:
        low = batch.maps.min(axis=(1, 2), keepdims=True)
        weights = (batch.maps - low) / (batch.maps.max(axis=(1, 2), keepdims=True) - low + 1e-7)
    elif isinstance(percentile, bool) or not 0 <= percentile < 100:
        raise InvalidArgument(f"confidence_change: percentile must be None or in [0, 100); got {percentile!r}")
    else:
        weights = (batch.ranks("morf") < round((1 - percentile / 100) * batch.pixels)).astype(np.float64)
    weights = batch.spread(weights)
    kept = batch.scores(1, lambda r: (batch.x[r] * weights[r]).astype(batch.x.dtype), progress)[:, 0]
    return kept - batch.clean()


def _curve(
    metric: str, inserting: bool, model: Model, x: Inputs, maps: np.ndarray, target: targets.Target = "predicted", *,
    steps: int = 100, order: str = "morf", fill: float | str | None = None, blur_sigma: float = 5.0,
    of: str = "output", output: str | None = None, batch_size: int = 256, progress: Progress = None,
) -> np.ndarray:
    """The deletion (``inserting``: insertion) curve, errors naming ``metric``; fill None: 0.0 for
    deletion, "blur" for insertion."""
    batch = _Batch(model, x, maps, target, of, output, batch_size, metric)
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise InvalidArgument(f"{metric}: steps must be an integer >= 1; got {steps!r}")
    ranks = batch.ranks(order)
    fills = batch.fills(("blur" if inserting else 0.0) if fill is None else fill, blur_sigma)
    start, end = (fills, batch.x) if inserting else (batch.x, fills)
    counts = np.arange(steps + 1) * batch.pixels // steps
    copies = steps + 1

    def switched(r: np.ndarray) -> np.ndarray:
        image = r // copies
        done = batch.spread(ranks[image] < counts[r % copies][:, None, None])
        return np.where(done, end[image], start[image])

    return batch.scores(copies, switched, progress)
