"""Shapley values of image features: sampled over random permutations (Captum's ShapleyValueSampling)
or exact over all coalitions (Captum's ShapleyValues, which enumerates permutations; same values)."""

from __future__ import annotations

from collections.abc import Callable
from math import factorial

import numpy as np

from onnxsight.engine import targets
from onnxsight.engine.model import Inputs, Model
from onnxsight.errors import InvalidArgument
from onnxsight.methods.coalitions import check_count, coalition_scores, prepare, spread

MAX_EXACT_FEATURES = 16  # 2^16 = 65,536 copies per image


def shapley_value_sampling(
    model: Model,
    x: Inputs,
    target: targets.Target = "predicted",
    *,
    of: str = "logits",
    output: str | None = None,
    feature_mask="grid",
    segments: int = 49,
    baseline=0.0,
    samples: int = 25,
    seed: int = 0,
    batch_size: int = 256,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Each feature's marginal contribution averaged over ``samples`` random feature orders.

    For each order (``samples`` permutations per image, each image's from its own
    ``numpy.random.default_rng(seed)``, so that its values do not depend on the other images), start
    from the baseline everywhere and show the features of x one by one in that order; a feature's
    contribution is the score after it is shown minus the score before (Captum's ShapleyValueSampling,
    default 25 samples). The contributions of one order sum to
    score(x) − score(baseline), so their mean does too. 1 + samples · M copies per image.

    target, of, output, feature_mask, segments, baseline, batch_size, progress: as for
    :func:`onnxsight.methods.feature_ablation.feature_ablation`.

    Returns float32 (N, H, W): each pixel holds its feature's Shapley value estimate.
    """
    samples = check_count(samples, "samples")
    p = prepare(model, x, target, "Shapley value sampling", of=of, output=output, baseline=baseline,
                feature_mask=feature_mask, segments=segments, batch_size=batch_size)
    n, features = len(p.x), p.features
    orders = np.full((n, samples, features), -1)
    ranks = np.full((n, samples, features), features)  # features an image lacks are never shown
    for i, count in enumerate(p.counts):
        rng = np.random.default_rng(seed)
        for s in range(samples):
            orders[i, s, :count] = rng.permutation(count)
            ranks[i, s, orders[i, s, :count]] = np.arange(count)
    owners = np.repeat(np.arange(n), 1 + samples * p.counts)
    sample = np.concatenate([np.r_[0, np.repeat(np.arange(samples), m)] for m in p.counts])
    shown = np.concatenate([np.r_[0, np.tile(np.arange(1, m + 1), samples)] for m in p.counts])

    def present(rows: np.ndarray) -> np.ndarray:
        return ranks[owners[rows], sample[rows]] < shown[rows][:, None]

    scores = coalition_scores(p, owners, present, progress)
    values = np.zeros((n, features))
    starts = np.r_[0, np.cumsum(1 + samples * p.counts)]
    for i, count in enumerate(p.counts):
        own = scores[starts[i]:starts[i + 1]]
        after = own[1:].reshape(samples, count)
        before = np.concatenate([np.full((samples, 1), own[0]), after[:, :-1]], axis=1)
        np.add.at(values[i], orders[i, :, :count], after - before)
    return spread(values / samples, p.labels)


def shapley_values(
    model: Model,
    x: Inputs,
    target: targets.Target = "predicted",
    *,
    of: str = "logits",
    output: str | None = None,
    feature_mask="grid",
    segments: int = 9,
    baseline=0.0,
    batch_size: int = 256,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Exact Shapley values of up to ``MAX_EXACT_FEATURES`` (16) features per image.

    ``φ_j = Σ_{S ∌ j} |S|! (M − |S| − 1)! / M! · (score(S ∪ {j}) − score(S))``, where score(S) is the
    score of x with the features of S shown and the others at the baseline: the mean marginal
    contribution over all M! orders (Captum's ShapleyValues), computed from the 2^M coalitions, each
    scored once (2^M copies per image). segments: default 9 (a 3 × 3 grid).

    Other options as for :func:`onnxsight.methods.feature_ablation.feature_ablation`.
    Returns float32 (N, H, W): each pixel holds its feature's Shapley value.
    """
    p = prepare(model, x, target, "Shapley values", of=of, output=output, baseline=baseline,
                feature_mask=feature_mask, segments=segments, batch_size=batch_size)
    if p.features > MAX_EXACT_FEATURES:
        raise InvalidArgument(f"exact Shapley values score 2^M coalitions per image and take at most "
                              f"{MAX_EXACT_FEATURES} features; an image has {p.features} (use fewer segments, or "
                              f"shapley_value_sampling)")
    n, features = len(p.x), p.features
    owners = np.repeat(np.arange(n), 2 ** p.counts)
    coalition = np.concatenate([np.arange(2 ** m) for m in p.counts])
    bits = 1 << np.arange(features)

    def present(rows: np.ndarray) -> np.ndarray:
        return (coalition[rows][:, None] & bits) != 0

    scores = coalition_scores(p, owners, present, progress)
    values = np.zeros((n, features))
    starts = np.r_[0, np.cumsum(2 ** p.counts)]
    for i, count in enumerate(p.counts):
        values[i, :count] = exact_from_scores(scores[starts[i]:starts[i + 1]], int(count))
    return spread(values, p.labels)


def exact_from_scores(scores: np.ndarray, features: int) -> np.ndarray:
    """Shapley values (M,) from the scores of all 2^M coalitions, coalition c having feature j iff bit j of c is set."""
    coalitions = np.arange(2 ** features)
    sizes = np.array([bin(c).count("1") for c in coalitions])
    weight = np.array([factorial(s) * factorial(features - s - 1) / factorial(features) for s in range(features)])
    values = np.empty(features)
    for j in range(features):
        without = coalitions[(coalitions >> j) & 1 == 0]
        values[j] = np.sum(weight[sizes[without]] * (scores[without | (1 << j)] - scores[without]))
    return values
