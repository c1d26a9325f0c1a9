"""Numerics of gradient attributions: post-processing, SmoothGrad noise, IG baselines and paths.

Pure functions of arrays (no sessions, no files); the channel axis is always an argument.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from onnxsight.errors import InvalidArgument
from onnxsight.kernels.images import gaussian_blur

REDUCTIONS = ("max", "mean", "sum", None)
NOISE_MODES = ("relative", "absolute")
AGGREGATES = ("mean", "square", "variance")
BASELINES = ("black", "grey", "gray", "blur")
QUADRATURES = (
    "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle", "gausslegendre", "captum_trapezoid",
)
BLUR_FRACTION = 0.1  # the "blur" baseline's sigma: 10 % of the larger spatial side, in pixels


def choice(option: str, value, allowed: Sequence) -> None:
    """Raise InvalidArgument naming ``option``, its bad ``value`` and the ``allowed`` ones."""
    if not any(value is a or (isinstance(value, str) and value == a) for a in allowed):
        raise InvalidArgument(f"{option} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


# ---- post-processing -----------------------------------------------------------------
def reduce_channels(a: np.ndarray, channel_axis: int | None, how: str | None = "max") -> np.ndarray:
    """Collapse ``channel_axis`` with "max", "mean" or "sum"; ``how`` or the axis None keeps ``a``."""
    choice("reduce", how, REDUCTIONS)
    if how is None or channel_axis is None:
        return a
    return {"max": np.max, "mean": np.mean, "sum": np.sum}[how](a, axis=channel_axis)


def postprocess(g: np.ndarray, x: np.ndarray, negate: bool, times_input: bool, absolute: bool) -> np.ndarray:
    """Per-sample steps in order: ``-g`` (negate), ``g * x`` (Gradient×Input), ``|g|`` (absolute)."""
    if negate:
        g = -g
    if times_input:
        g = g * x
    if absolute:
        g = np.abs(g)
    return g


# ---- SmoothGrad ----------------------------------------------------------------------
def noise_scale(x: np.ndarray, noise: float, mode: str = "relative") -> np.ndarray:
    """σ per image, shaped to broadcast against ``x``: ``noise × (max − min)`` of each image
    ("relative", tf-keras-vis) or ``noise`` itself ("absolute", Captum's ``stdevs``)."""
    choice("noise", mode, NOISE_MODES)
    if isinstance(noise, bool) or not isinstance(noise, (int, float, np.number)) or not np.isfinite(noise) or noise < 0:
        raise InvalidArgument(f"smooth_noise must be a finite number >= 0, got {noise}")
    shape = (len(x),) + (1,) * (x.ndim - 1)
    if mode == "absolute":
        return np.full(shape, noise, np.float32)
    flat = x.reshape(len(x), -1)
    return (noise * (flat.max(axis=1) - flat.min(axis=1))).astype(np.float32).reshape(shape)


def smoothgrad_noise_chunks(
    x: np.ndarray, samples: int, noise: float, mode: str = "relative", seed: int = 0, chunk: int | None = None,
    units: Sequence[np.ndarray] | None = None,
) -> Iterator[np.ndarray]:
    """The noise of :func:`smoothgrad_noise` in consecutive blocks of ``chunk`` samples.

    Blocks are drawn one after another from the same generator, so their concatenation is
    exactly the one-call draw (numpy's generators consume their stream sequentially).
    ``units``: those blocks' unit draws, :func:`unit_noise` of the same arguments, made earlier.
    """
    if samples < 1:
        raise InvalidArgument(f"smooth_samples must be at least 1 to draw noise, got {samples}")
    sigma = noise_scale(x, noise, mode)
    for unit in unit_noise(x.shape[1:], samples, seed, chunk) if units is None else units:
        yield unit * sigma  # one draw for all images


def unit_noise(shape: Sequence[int], samples: int, seed: int = 0, chunk: int | None = None) -> Iterator[np.ndarray]:
    """SmoothGrad's unit draws for images of ``shape`` (no batch axis): blocks of ``chunk`` (default all)
    samples, float32 (count, 1, *shape), drawn one after another from ``np.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    chunk = samples if chunk is None else max(1, int(chunk))
    for start in range(0, samples, chunk):
        yield rng.standard_normal((min(chunk, samples - start), 1, *shape), dtype=np.float32)


def smoothgrad_noise(x: np.ndarray, samples: int, noise: float, mode: str = "relative", seed: int = 0) -> np.ndarray:
    """SmoothGrad's additive noise, shape (samples, N, ...): noisy copy s of image n is
    ``x[n] + result[s, n]`` with ``result[s, n] = σ_n · ε_s``.

    The unit draws ``ε = np.random.default_rng(seed).standard_normal((samples, 1, *x.shape[1:]),
    dtype=float32)`` are made once for the shape of one image and shared by every image of the
    batch, each scaled by its own σ (:func:`noise_scale`). Each image's map is still the SmoothGrad
    estimate (its ``samples`` draws are independent of each other), and it does not depend on the
    batch it is in: an image alone and the same image among others (a server's stacked requests,
    a shard of a batch job, an explainer ONNX graph with its baked ε) get the same noise. The maps
    of different images in one batch are not statistically independent of each other.
    """
    return next(smoothgrad_noise_chunks(x, samples, noise, mode, seed))


def aggregate_samples(g: np.ndarray, how: str = "mean") -> np.ndarray:
    """Combine samples along axis 0: "mean" (SmoothGrad), "square" (SmoothGrad², mean of g²)
    or "variance" (VarGrad, population variance: mean of g² minus the squared mean)."""
    return finish_aggregate(*sample_moments(g), len(g), how)


def sample_moments(g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sums of ``g`` and ``g²`` over axis 0, in float64, to aggregate blocks of samples."""
    g = g.astype(np.float64)
    return g.sum(axis=0), np.square(g).sum(axis=0)


def finish_aggregate(total: np.ndarray, squares: np.ndarray, count: int, how: str) -> np.ndarray:
    """:func:`aggregate_samples` from the float64 sums of ``count`` samples."""
    choice("smooth_aggregate", how, AGGREGATES)
    mean = total / count
    if how == "mean":
        return mean
    if how == "square":
        return squares / count
    return np.maximum(squares / count - np.square(mean), 0.0)


# ---- Integrated Gradients ------------------------------------------------------------
def blur_sigma(x: np.ndarray, channel_axis: int) -> float:
    """The "blur" baseline's σ in pixels: ``BLUR_FRACTION`` of the larger spatial side."""
    spatial = [n for axis, n in enumerate(x.shape[1:], 1) if axis != channel_axis]
    return BLUR_FRACTION * max(spatial)


def baseline(x: np.ndarray, kind, channel_axis: int | None) -> np.ndarray:
    """IG's reference input, shaped like ``x``.

    "black": zeros; "grey"/"gray": each image filled with the midpoint ``(min + max) / 2`` of its
    own values; "blur": ``x`` Gaussian-blurred with σ = :func:`blur_sigma` (image inputs only);
    a number: filled with it; an array: broadcast to ``x``'s shape.
    """
    if isinstance(kind, str):
        choice("baseline", kind, BASELINES)
        if kind == "black":
            return np.zeros_like(x)
        if kind in ("grey", "gray"):
            flat = x.reshape(len(x), -1)
            middle = 0.5 * (flat.min(axis=1) + flat.max(axis=1))
            return np.broadcast_to(middle.reshape((-1,) + (1,) * (x.ndim - 1)), x.shape).astype(x.dtype)
        if channel_axis is None:
            raise InvalidArgument(f"baseline 'blur' needs an image input (NHWC or NCHW), got shape {x.shape}")
        return gaussian_blur(x, blur_sigma(x, channel_axis), channel_axis)
    if isinstance(kind, (int, float, np.number)) and not isinstance(kind, bool):
        if not np.isfinite(kind):
            raise InvalidArgument(f"baseline must be finite, got {kind}")
        return np.full_like(x, kind)
    if isinstance(kind, (np.ndarray, list, tuple)):
        array = np.asarray(kind, dtype=x.dtype)
        try:
            return np.ascontiguousarray(np.broadcast_to(array, x.shape))
        except ValueError:
            raise InvalidArgument(
                f"baseline of shape {array.shape} does not broadcast to the input's {x.shape}") from None
    allowed = ", ".join(map(repr, BASELINES))
    raise InvalidArgument(f"baseline must be one of {allowed}, a number or an array; got {kind!r}")


def path_nodes(steps: int, method: str = "riemann_trapezoid") -> tuple[np.ndarray, np.ndarray]:
    """Quadrature of ∫₀¹ f(α) dα with ``steps`` points: (alphas, weights). Riemann left/right/middle:
    ``i/n``, ``(i+1)/n``, ``(i+½)/n`` with weights ``1/n``; trapezoid: ``linspace(0, 1, n)`` with
    weights ``1/(n−1)``, halved at the ends (needs n ≥ 2); "captum_trapezoid": the same nodes with
    Captum's weights ``1/n``, halved at the ends (they sum to (n−1)/n, not 1); Gauss-Legendre:
    ``numpy.polynomial.legendre.leggauss`` mapped to [0, 1]. All but the trapezoid equal Captum's.
    """
    choice("method", method, QUADRATURES)
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise InvalidArgument(f"steps must be an integer >= 1, got {steps!r}")
    n = int(steps)
    i = np.arange(n, dtype=np.float64)
    if method in ("riemann_trapezoid", "captum_trapezoid"):
        if n < 2:
            raise InvalidArgument(f"steps must be at least 2 for method {method!r}")
        weights = np.full(n, 1.0 / (n if method == "captum_trapezoid" else n - 1))
        weights[[0, -1]] /= 2
        return np.linspace(0.0, 1.0, n), weights
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n)
        return (nodes + 1) / 2, weights / 2
    offset = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[method]
    return (i + offset) / n, np.full(n, 1.0 / n)


def path_points(start: np.ndarray, x: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """``start + α (x − start)`` for each α, shape (len(alphas), N, ...), in ``x``'s dtype.

    Points with α ≥ ½ are computed from the far end as ``x − (1 − α)(x − start)``, so α = 0 and
    α = 1 give exactly the baseline and the input (no rounding that could split their ties). Each
    point is written in place, one α at a time (a batch's slab stays in cache: 20× faster than
    whole-array expressions for a 96×96×3 image and 50 points).
    """
    delta = x - start
    alphas = np.asarray(alphas, np.float64)
    near = alphas < 0.5
    scales = np.where(near, alphas, 1 - alphas).astype(x.dtype)
    points = np.empty((len(alphas), *x.shape), x.dtype)
    for point, scale, from_start in zip(points, scales, near):
        np.multiply(scale, delta, out=point)
        if from_start:
            point += start
        else:
            np.subtract(x, point, out=point)
    return points


def completeness_gap(attributions: np.ndarray, score: np.ndarray, baseline_score: np.ndarray) -> np.ndarray:
    """Per image ``|sum(attributions) − (f(x) − f(baseline))|``."""
    total = attributions.reshape(len(attributions), -1).astype(np.float64).sum(axis=1)
    return np.abs(total - (np.asarray(score, np.float64) - np.asarray(baseline_score, np.float64)))


def sample_chunk(samples: int, bytes_per_sample: int, max_bytes: int) -> int:
    """How many of ``samples`` copies fit in ``max_bytes`` at once (at least one)."""
    return int(min(samples, max(1, max_bytes // max(1, bytes_per_sample))))
