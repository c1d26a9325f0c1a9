"""Robustness of attribution maps: max/average sensitivity and infidelity (Yeh et al. 2019, as Captum).

Every perturbation of every image is one more row of one batch: the perturbed copies of a chunk of
images are stacked image-major (Captum's ``repeat_interleave``) and explained, or scored, in one call.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from onnxsight.engine import targets
from onnxsight.engine.model import Model
from onnxsight.errors import InvalidArgument
from onnxsight.metrics.maps import pixel_maps
from onnxsight.methods.common import require_image, spatial_size, target_scores

Explain = Callable[[Model, np.ndarray, targets.Target], np.ndarray]
Perturb = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]

MAX_CHUNK_BYTES = 256 * 2**20  # perturbed copies held at once
NORMS = ("fro", "inf")
PERTURBATIONS = ("noise", "square")


def max_sensitivity(
    model: Model,
    x: np.ndarray,
    explain: Explain,
    target: targets.Target = "predicted",
    *,
    of: str = "logits",
    radius: float = 0.02,
    samples: int = 10,
    norm: str = "fro",
    seed: int = 0,
    batch_size: int = 256,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Captum's ``sensitivity_max`` (Yeh et al. 2019) per image: the largest, over ``samples``
    (default 10) perturbations δ uniform in the L∞ ball of ``radius`` (default 0.02, Captum's
    ``default_perturb_func``), of ‖explain(x + δ) − explain(x)‖ / ‖explain(x)‖.

    ``explain(model, x, target) -> maps`` is called once on the clean batch and once per chunk of
    images on all their perturbed copies stacked (image-major); its maps are compared flattened, in
    whatever shape it returns. ``norm``: "fro" (default: L2 of the flattened difference) or "inf"
    (max |difference|). As Captum, a zero ‖explain(x)‖ divides by 1. ``target``: resolved once on
    the clean images against ``of`` (default "logits"); the perturbed copies keep their image's
    target (a class index per image, passed on to ``explain``). δ is drawn in float64 from
    ``numpy.random.default_rng(seed)`` as one (N, samples, *x.shape[1:]) array, image by image.
    Returns float64 (N,).
    """
    return _sensitivity(model, x, explain, target, "max_sensitivity", of, radius, samples, norm, seed, batch_size,
                        progress, np.max)


def avg_sensitivity(
    model: Model,
    x: np.ndarray,
    explain: Explain,
    target: targets.Target = "predicted",
    *,
    of: str = "logits",
    radius: float = 0.02,
    samples: int = 10,
    norm: str = "fro",
    seed: int = 0,
    batch_size: int = 256,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Average sensitivity (Yeh et al. 2019, Quantus' AvgSensitivity): as :func:`max_sensitivity`,
    with the mean over the perturbations in place of the maximum. Returns float64 (N,)."""
    return _sensitivity(model, x, explain, target, "avg_sensitivity", of, radius, samples, norm, seed, batch_size,
                        progress, np.mean)


def infidelity(
    model: Model,
    x: np.ndarray,
    maps: np.ndarray,
    target: targets.Target = "predicted",
    *,
    of: str = "logits",
    perturbation: str | Perturb = "noise",
    samples: int = 10,
    noise: float = 0.003,
    square: int = 4,
    baseline: float = 0.0,
    normalize: bool = False,
    seed: int = 0,
    batch_size: int = 256,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Captum's ``infidelity`` (Yeh et al. 2019) per image: E_I[(Iᵀ maps − (f(x) − f(x − I)))²] over
    ``samples`` (default 10) perturbations I, where f is the target's score of ``of`` (default
    "logits": the class logit, resolved once on the clean images and kept for the perturbed ones).

    perturbation: a function of the stacked inputs (each image repeated ``samples`` times,
        image-major) returning (I, perturbed inputs) as Captum's ``perturb_func``; or
        "noise" (default, Captum's documented example, for local maps such as the plain gradient):
        I ~ N(0, ``noise``²) (default 0.003), perturbed input x − I; or
        "square" (Yeh et al.'s square removal, for maps that include the input multiplier such as
        Gradient×Input or Integrated Gradients): a ``square``×``square`` pixel patch (default 4),
        placed uniformly at random inside the image, of every channel set to ``baseline``
        (default 0); I is its binary mask (Captum's ``multiply_by_inputs`` convention:
        (x − perturbed) / (x − baseline)).
    maps: in x's shape (used as they are), or one (H, W) map per image, in which case Iᵀ maps uses
        the channel mean of I (exact for the channel-constant "square" masks and for maps that are
        channel sums).
    normalize (default False): Captum's ``normalize``: the maps are first scaled per image by
        β = E[Iᵀa·Δf] / E[(Iᵀa)²] (0 when E[(Iᵀa)²] = 0).
    Random draws come from ``numpy.random.default_rng(seed)``, image by image. Returns float64 (N,).
    """
    x = _single_image_input(model, x, "infidelity")
    if callable(perturbation):
        perturb = perturbation
    elif perturbation == "noise":
        perturb = None
        _positive_float(noise, "noise")
    elif perturbation == "square":
        perturb = None
        axis = require_image(model, "infidelity")
        size = spatial_size(x, axis)
        if isinstance(square, bool) or not isinstance(square, (int, np.integer)) or not 1 <= square <= min(size):
            raise InvalidArgument(f"infidelity: square must be an integer from 1 to {min(size)} pixels, got {square!r}")
    else:
        raise InvalidArgument(f"infidelity: unknown perturbation {perturbation!r}; choose one of "
                              f"{', '.join(PERTURBATIONS)} or a function inputs -> (perturbations, perturbed inputs)")
    samples = _count(samples, "samples", "infidelity")
    pixel = np.shape(maps) != x.shape
    maps = pixel_maps(model, x, maps, "infidelity") if pixel else _finite(maps, "infidelity")
    indices = model.resolve_target(x, target, of, batch_size)
    clean = target_scores(model, x, indices, of, batch_size)
    rng = np.random.default_rng(seed)
    products = np.empty((len(x), samples))
    drops = np.empty((len(x), samples))
    chunk = _images_per_chunk(x, samples)
    for start in range(0, len(x), chunk):
        rows = slice(start, min(len(x), start + chunk))
        stacked = np.repeat(x[rows], samples, axis=0)
        if perturb is not None:
            found = perturb(stacked)
            if not (isinstance(found, tuple) and len(found) == 2):
                raise InvalidArgument("infidelity: the perturbation function must return (perturbations, perturbed inputs)")
            change, perturbed = (np.asarray(a) for a in found)
            if change.shape != stacked.shape or perturbed.shape != stacked.shape:
                raise InvalidArgument(f"infidelity: the perturbation function returned shapes {change.shape} and "
                                      f"{perturbed.shape} for inputs of shape {stacked.shape}")
        elif perturbation == "noise":
            change = rng.normal(0.0, noise, stacked.shape)
            perturbed = stacked - change
        else:
            change = _square_masks(rng, stacked.shape, require_image(model, "infidelity"), square)
            perturbed = stacked - change * (stacked - baseline)
        change = np.asarray(change, np.float64)
        if pixel:
            change = change.mean(axis=require_image(model, "infidelity"))
        weights = np.repeat(maps[rows], samples, axis=0)
        count = rows.stop - rows.start
        products[rows] = (change * weights).reshape(count * samples, -1).sum(axis=1).reshape(count, samples)
        scores = target_scores(model, perturbed.astype(x.dtype), np.repeat(indices, samples, axis=0)
                               if indices is not None else None, of, batch_size)
        drops[rows] = clean[rows, None] - scores.reshape(count, samples)
        if progress is not None:
            progress(rows.stop, len(x))
    if normalize:
        square_mean = (products ** 2).mean(axis=1)
        beta = np.divide((products * drops).mean(axis=1), square_mean, out=np.zeros(len(x)), where=square_mean != 0)
        products = beta[:, None] * products
    return ((products - drops) ** 2).mean(axis=1)


def _sensitivity(model, x, explain, target, metric, of, radius, samples, norm, seed, batch_size, progress, reduce):
    x = _single_image_input(model, x, metric)
    if not callable(explain):
        raise InvalidArgument(f"{metric}: explain must be a function (model, x, target) -> maps, got {explain!r}")
    if norm not in NORMS:
        raise InvalidArgument(f"{metric}: unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
    _positive_float(radius, "radius")
    samples = _count(samples, "samples", metric)
    indices = model.resolve_target(x, target, of, batch_size)
    clean = _explained(explain, model, x, indices, len(x), metric).reshape(len(x), -1)
    order = 2 if norm == "fro" else np.inf
    scale = np.linalg.norm(clean, ord=order, axis=1)
    scale[scale == 0] = 1.0
    rng = np.random.default_rng(seed)
    result = np.empty(len(x))
    chunk = _images_per_chunk(x, samples)
    for start in range(0, len(x), chunk):
        rows = slice(start, min(len(x), start + chunk))
        count = rows.stop - rows.start
        delta = rng.uniform(-radius, radius, (count, samples, *x.shape[1:]))
        stacked = (x[rows, None] + delta).astype(x.dtype).reshape(count * samples, *x.shape[1:])
        tiled = None if indices is None else np.repeat(indices[rows], samples, axis=0)
        maps = _explained(explain, model, stacked, tiled, count * samples, metric).reshape(count, samples, -1)
        if maps.shape[2] != clean.shape[1]:
            raise InvalidArgument(f"{metric}: explain returned maps of {maps.shape[2]} values per image for the "
                                  f"perturbed inputs and {clean.shape[1]} for the clean ones")
        distance = np.linalg.norm(maps - clean[rows, None], ord=order, axis=2)
        result[rows] = reduce(distance / scale[rows, None], axis=1)
        if progress is not None:
            progress(rows.stop, len(x))
    return result


def _explained(explain, model, x, target, count, metric) -> np.ndarray:
    maps = explain(model, x, target)
    if isinstance(maps, dict) or np.ndim(maps) < 1 or len(maps) != count:
        raise InvalidArgument(f"{metric}: explain must return one map per image (an array of {count} rows), "
                              f"got {type(maps).__name__} of shape {np.shape(maps)}")
    return _finite(maps, metric)


def _square_masks(rng: np.random.Generator, shape: tuple, channel_axis: int, side: int) -> np.ndarray:
    """One random ``side``×``side`` patch per row (all channels), as a 0/1 float64 mask of ``shape``."""
    height, width = (d for axis, d in enumerate(shape) if axis not in (0, channel_axis))
    top = rng.integers(0, height - side + 1, shape[0])
    left = rng.integers(0, width - side + 1, shape[0])
    rows = np.arange(height)[None, :, None]
    cols = np.arange(width)[None, None, :]
    inside = ((rows >= top[:, None, None]) & (rows < top[:, None, None] + side)
              & (cols >= left[:, None, None]) & (cols < left[:, None, None] + side))
    return np.broadcast_to(np.expand_dims(inside, channel_axis), shape).astype(np.float64)


def _single_image_input(model: Model, x, metric: str) -> np.ndarray:
    if isinstance(x, dict) or len(model.input_names) > 1:
        raise InvalidArgument(f"{metric} perturbs one input; {model.source} has inputs {', '.join(model.input_names)}")
    return model.check_input(x)


def _images_per_chunk(x: np.ndarray, samples: int) -> int:
    return max(1, MAX_CHUNK_BYTES // max(1, 8 * x[0].size * samples))


def _finite(maps, metric: str) -> np.ndarray:
    maps = np.asarray(maps, np.float64)
    if not np.isfinite(maps).all():
        raise InvalidArgument(f"{metric}: the maps hold NaN or infinite values ({(~np.isfinite(maps)).sum()} entries)")
    return maps


def _count(value, name: str, metric: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidArgument(f"{metric}: {name} must be a positive integer, got {value!r}")
    return int(value)


def _positive_float(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) or not value > 0:
        raise InvalidArgument(f"{name} must be a positive number, got {value!r}")
    return float(value)
