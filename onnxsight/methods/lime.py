"""Linear surrogates over random feature coalitions: LIME (Ribeiro et al. 2016, Captum's Lime) and
Kernel SHAP (Lundberg & Lee 2017, Captum's KernelShap: LIME with the Shapley kernel)."""

from __future__ import annotations

from collections.abc import Callable
from math import comb

import numpy as np

from onnxsight.engine import targets
from onnxsight.engine.model import Inputs, Model
from onnxsight.errors import InvalidArgument, MissingDependency
from onnxsight.kernels.attribution import choice
from onnxsight.methods.coalitions import Perturbed, check_count, coalition_scores, prepare, spread
from onnxsight.methods.shapley import MAX_EXACT_FEATURES

REGRESSIONS = ("lasso", "ridge", "linear")
SIMILARITIES = ("cosine-exponential", "euclidean-exponential", "none")
DEFAULT_ALPHA = {"lasso": 0.01, "ridge": 1.0, "linear": 0.0}


def lime(
    model: Model,
    x: Inputs,
    target: targets.Target = "predicted",
    *,
    of: str = "logits",
    output: str | None = None,
    feature_mask="grid",
    segments: int = 49,
    baseline=0.0,
    samples: int = 500,
    kernel_width: float = 1.0,
    similarity: str = "cosine-exponential",
    regression: str = "lasso",
    alpha: float | None = None,
    seed: int = 0,
    batch_size: int = 256,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """The coefficients of a weighted linear model fitted to the scores of ``samples`` random coalitions.

    Each sample shows each feature of x with probability ½ and the baseline elsewhere (Captum's
    default_perturb_func; ``numpy.random.default_rng(seed)``); its weight is ``exp(−d² / (2·w²))``
    with ``w = kernel_width`` (default 1.0) and d the distance between x and the perturbed image (the
    primary input, all channels, flattened): similarity "cosine-exponential" (default, Captum's
    exp_kernel_similarity: d = 1 − cosine similarity, the norms' product clamped at 1e-8),
    "euclidean-exponential" (d = the L2 distance) or "none" (weight 1). The surrogate
    ``score ≈ b + Σ_j c_j z_j`` is fitted with intercept by ``regression``: "lasso" (default, Captum's
    SkLearnLasso: scikit-learn's Lasso with ``alpha`` 0.01, ``pip install 'onnxsight[lime]'``),
    "ridge" (numpy, the penalty ``alpha``·‖c‖², default 1.0, as scikit-learn's Ridge) or "linear"
    (numpy weighted least squares, the minimum-norm solution when underdetermined).
    samples: default 500 (Captum's 50 leave 49 grid features underdetermined; the original LIME uses 1000).

    target, of, output, feature_mask, segments, baseline, batch_size, progress: as for
    :func:`onnxsight.methods.feature_ablation.feature_ablation`.
    Returns float32 (N, H, W): each pixel holds its feature's coefficient.
    """
    choice("similarity", similarity, SIMILARITIES)
    choice("regression", regression, REGRESSIONS)
    samples = check_count(samples, "samples")
    if not (isinstance(kernel_width, (int, float)) and kernel_width > 0):
        raise InvalidArgument(f"kernel_width must be a number > 0, got {kernel_width!r}")
    alpha = DEFAULT_ALPHA[regression] if alpha is None else float(alpha)
    if alpha < 0:
        raise InvalidArgument(f"alpha must be >= 0, got {alpha}")
    fit = _regression(regression)
    p = prepare(model, x, target, "LIME", of=of, output=output, baseline=baseline, feature_mask=feature_mask,
                segments=segments, batch_size=batch_size)
    coalitions = lime_coalitions(seed, p.counts, samples)
    scores = _scores(p, coalitions, progress)
    values = np.zeros((len(p.x), p.features))
    for i, count in enumerate(p.counts):
        z = coalitions[i, :, :count]
        weights = similarity_weights(p, i, z, similarity, kernel_width)
        values[i, :count] = fit(z.astype(np.float64), scores[i], weights, alpha)
    return spread(values, p.labels)


def kernel_shap(
    model: Model,
    x: Inputs,
    target: targets.Target = "predicted",
    *,
    of: str = "logits",
    output: str | None = None,
    feature_mask="grid",
    segments: int = 49,
    baseline=0.0,
    samples: int | str = 500,
    seed: int = 0,
    batch_size: int = 256,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Shapley values estimated by a linear regression over coalitions weighted by the Shapley kernel.

    Coalitions are drawn as Captum's KernelShap draws them: a size k from p(k) ∝ (M − 1) / (k (M − k)),
    k = 1 .. M − 1, then k features uniformly, so each coalition already carries its Shapley-kernel
    weight (every weight is 1; duplicates count); ``samples`` (default 500) counts them together with
    x itself and the all-baseline image (one feature: their difference), as Captum's n_samples does.
    samples="all" scores every coalition
    instead (2^M, M ≤ 16) weighted by the kernel (M − 1) / (C(M, k) k (M − k)): the result is then the
    exact Shapley values. The regression ``score(z) − score(∅) ≈ Σ_j φ_j z_j`` is solved with the
    end-point constraints exact — no intercept beyond score(∅), and Σ φ = score(x) − score(baseline) —
    (Lundberg & Lee), where Captum gives the two end points a weight of 10⁶ in an ordinary regression.

    Other options as for :func:`onnxsight.methods.feature_ablation.feature_ablation`; seed: of
    ``numpy.random.default_rng``. Returns float32 (N, H, W): each pixel holds its feature's value.
    """
    every = isinstance(samples, str)
    if every and samples != "all":
        raise InvalidArgument(f"samples must be an integer >= 3 or 'all', got {samples!r}")
    if not every:
        samples = check_count(samples, "samples", 3)
    p = prepare(model, x, target, "Kernel SHAP", of=of, output=output, baseline=baseline,
                feature_mask=feature_mask, segments=segments, batch_size=batch_size)
    if every and p.features > MAX_EXACT_FEATURES:
        raise InvalidArgument(f"samples='all' scores 2^M coalitions per image and takes at most "
                              f"{MAX_EXACT_FEATURES} features; an image has {p.features}")
    if every:
        if p.counts.min() != p.counts.max():
            raise InvalidArgument("samples='all' needs the same number of features in every image")
        coalitions = np.broadcast_to(_all_coalitions(p.features, p.features), (len(p.x), 2 ** p.features, p.features))
    else:
        coalitions = shap_coalitions(seed, p.counts, samples)
    scores = _scores(p, coalitions, progress)
    values = np.zeros((len(p.x), p.features))
    for i, count in enumerate(p.counts):
        z = coalitions[i, :, :count]
        weights = shapley_kernel(z) if every else np.ones(len(z))
        values[i, :count] = constrained_fit(z, scores[i], weights)
    return spread(values, p.labels)


def lime_coalitions(seed: int, counts: np.ndarray, samples: int) -> np.ndarray:
    """(N, samples, max M) bools: each of an image's M_i features shown with probability ½, drawn as
    ``default_rng(seed).random((samples, M_i)) < 0.5`` for every image (an image's draws do not depend on
    the other images of the batch); columns past M_i False."""
    out = np.zeros((len(counts), samples, int(counts.max())), bool)
    for i, m in enumerate(int(c) for c in counts):
        out[i, :, :m] = np.random.default_rng(seed).random((samples, m)) < 0.5
    return out


def shap_coalitions(seed: int, counts: np.ndarray, samples: int) -> np.ndarray:
    """(N, samples, max M) bools: x itself, the baseline, then ``samples`` − 2 coalitions of size k drawn from
    p(k) ∝ (M − 1) / (k (M − k)) and k features uniformly (M ≥ 2; one feature: the baseline repeated), each
    image's from its own ``default_rng(seed)``."""
    features = int(counts.max())
    out = np.zeros((len(counts), samples, features), bool)
    for i, m in enumerate(int(c) for c in counts):
        rng = np.random.default_rng(seed)
        out[i, 0, :m] = True
        if m < 2:  # one feature: its value is the difference of the two ends
            continue
        sizes = np.arange(1, m)
        chance = (m - 1) / (sizes * (m - sizes))
        k = rng.choice(sizes, size=samples - 2, p=chance / chance.sum())
        order = np.argsort(rng.random((samples - 2, m)), axis=1)
        out[i, 2:, :m] = np.argsort(order, axis=1) < k[:, None]
    return out


def shapley_kernel(z: np.ndarray) -> np.ndarray:
    """The Shapley kernel (M − 1) / (C(M, k) k (M − k)) of each coalition (k features of M); inf at both ends."""
    m = z.shape[1]
    k = z.sum(axis=1)
    with np.errstate(divide="ignore"):
        return np.array([(m - 1) / (comb(m, int(s)) * s * (m - s)) if 0 < s < m else np.inf for s in k])


def constrained_fit(z: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """φ minimising Σ w (score(z) − score(∅) − z·φ)² over the coalitions strictly between ∅ and all, subject
    to Σ φ = score(all) − score(∅), the end points taken from the rows where z is all False / all True."""
    m = z.shape[1]
    full, empty = z.all(axis=1), ~z.any(axis=1)
    if not full.any() or not empty.any():
        raise InvalidArgument("Kernel SHAP needs the all-features and no-feature coalitions among the samples")
    f_empty, total = scores[empty][0], scores[full][0] - scores[empty][0]
    if m == 1:
        return np.array([total])
    inner = ~(full | empty)
    zi, y, w = z[inner].astype(np.float64), scores[inner] - f_empty, weights[inner]
    # eliminate the last feature: φ_M = total − Σ_{j<M} φ_j
    design = zi[:, :-1] - zi[:, -1:]
    target = y - zi[:, -1] * total
    root = np.sqrt(w)[:, None]
    head = least_squares(root * design, root[:, 0] * target)
    return np.r_[head, total - head.sum()]


def similarity_weights(p: Perturbed, image: int, z: np.ndarray, similarity: str, width: float) -> np.ndarray:
    """LIME's weight of each coalition z (S, M) of ``image``: exp(−d² / (2 width²)) with d between x and the
    perturbed image, from per-feature sums of x·x, x·b, b·b (no perturbed image is built again)."""
    if similarity == "none":
        return np.ones(len(z))
    x = np.moveaxis(p.x[image], p.axis - 1, -1).astype(np.float64)
    b = np.moveaxis(p.baseline[image], p.axis - 1, -1).astype(np.float64)
    labels, m = p.labels[image].ravel(), z.shape[1]
    sums = {name: np.bincount(labels, (u * v).sum(axis=-1).ravel(), minlength=m)
            for name, (u, v) in {"xx": (x, x), "xb": (x, b), "bb": (b, b)}.items()}
    shown = z.astype(np.float64)
    hidden = 1.0 - shown
    perturbed_sq = shown @ sums["xx"] + hidden @ sums["bb"]
    if similarity == "cosine-exponential":
        dot = shown @ sums["xx"] + hidden @ sums["xb"]
        distance = 1.0 - dot / np.maximum(np.sqrt(sums["xx"].sum() * perturbed_sq), 1e-8)
    else:  # ‖x − perturbed‖² = Σ over hidden features of ‖x − b‖²
        distance = np.sqrt(np.maximum(hidden @ (sums["xx"] - 2 * sums["xb"] + sums["bb"]), 0.0))
    return np.exp(-distance ** 2 / (2 * width ** 2))


def _scores(p: Perturbed, coalitions: np.ndarray, progress) -> np.ndarray:
    """The scores (N, S) of S coalitions per image, all images' copies in batched runs."""
    n, samples = coalitions.shape[:2]
    owners = np.repeat(np.arange(n), samples)
    which = np.tile(np.arange(samples), n)
    return coalition_scores(p, owners, lambda rows: coalitions[owners[rows], which[rows]], progress).reshape(n, samples)


def _all_coalitions(m: int, width: int) -> np.ndarray:
    """(2^m, width) bools: coalition c has feature j iff bit j of c is set."""
    return (np.arange(2 ** m)[:, None] >> np.arange(width)) & 1 == 1


def _regression(kind: str) -> Callable[[np.ndarray, np.ndarray, np.ndarray, float], np.ndarray]:
    if kind == "lasso":
        try:
            from sklearn.linear_model import Lasso
        except ImportError as error:
            raise MissingDependency("scikit-learn", "lime") from error

        def lasso(z, y, w, alpha):
            return Lasso(alpha=alpha).fit(z, y, sample_weight=w).coef_

        return lasso
    return weighted_least_squares


def weighted_least_squares(z: np.ndarray, y: np.ndarray, w: np.ndarray, alpha: float) -> np.ndarray:
    """c minimising Σ w (y − b − z·c)² + alpha ‖c‖² with a free intercept b (scikit-learn's Ridge with these
    sample weights; alpha 0: LinearRegression, the minimum-norm c when underdetermined)."""
    zc, yc = z - (w @ z) / w.sum(), y - (w @ y) / w.sum()
    if alpha > 0:
        return np.linalg.solve(zc.T @ (w[:, None] * zc) + alpha * np.eye(z.shape[1]), zc.T @ (w * yc))
    root = np.sqrt(w)[:, None]
    return least_squares(root * zc, root[:, 0] * yc)


def least_squares(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The minimum-norm c minimising ‖a c − b‖, from the normal equations (M × M, pinv(aᵀa) aᵀ = pinv(a)):
    LAPACK on the tall (S × M) matrix right after an onnxruntime run can take 100× longer, its threads
    meeting onnxruntime's spinning ones; the squared condition number of a 0/1 design is harmless in float64."""
    return np.linalg.lstsq(a.T @ a, a.T @ b, rcond=None)[0]
