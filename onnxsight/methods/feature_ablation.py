"""Feature ablation (Captum's FeatureAblation): the score lost when one feature at a time shows the baseline."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from onnxsight.engine import targets
from onnxsight.engine.model import Inputs, Model
from onnxsight.methods.coalitions import coalition_scores, prepare, spread


def feature_ablation(
    model: Model,
    x: Inputs,
    target: targets.Target = "predicted",
    *,
    of: str = "logits",
    output: str | None = None,
    feature_mask="grid",
    segments: int = 49,
    baseline=0.0,
    batch_size: int = 256,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """``score(x) − score(x with feature j replaced by the baseline)`` for every feature j, on its pixels.

    target: "predicted" (default: the argmax on x), a class index or one per image, or None (the sum
        of ``of``); of: the scored tensor, default "logits" (softmax swapped for linear, onnxsight's
        convention: Captum scores the forward output as given, which for a PyTorch classifier is
        usually the logits; "output" scores a softmax model's probabilities). output: the head.
    feature_mask: "grid" (default: ``segments`` near-square patches), "slic" (SLIC superpixels, the
        ``superpixels`` extra), None (every pixel a feature: H·W copies per image) or integer labels
        (H, W) or (N, H, W); see :func:`onnxsight.methods.superpixels.feature_labels`.
    baseline: what an ablated feature shows: a number (default 0), "mean", "blur", "grey" or an array
        broadcastable to x. A model with several inputs takes x as a dict; the primary image input is
        ablated, the others are held at their values.
    batch_size: rows per onnxruntime run (default 256); progress(copies scored, copies in all).

    Returns float32 (N, H, W): each pixel holds its feature's attribution (Captum's convention; the sum
    over features, not pixels, is comparable to the score).
    """
    p = prepare(model, x, target, "feature ablation", of=of, output=output, baseline=baseline,
                feature_mask=feature_mask, segments=segments, batch_size=batch_size)
    n, features = len(p.x), p.features
    # per image: x itself (hidden = −1), then each of its own features hidden in turn
    owners = np.concatenate([np.full(m + 1, i) for i, m in enumerate(p.counts)])
    hidden = np.concatenate([np.arange(-1, m) for m in p.counts])

    def present(rows: np.ndarray) -> np.ndarray:
        return np.arange(features)[None, :] != hidden[rows][:, None]

    scores = coalition_scores(p, owners, present, progress)
    clean = scores[hidden == -1]
    drops = np.zeros((n, features))
    ablated = hidden >= 0
    drops[owners[ablated], hidden[ablated]] = clean[owners[ablated]] - scores[ablated]
    return spread(drops, p.labels)
