"""What the black-box perturbation methods share: features and baselines of a batch, and the batched
scores of images whose features are kept (shown) or replaced by the baseline in given combinations.

A coalition is a boolean vector over an image's features: True keeps the feature's pixels (every
channel) as in ``x``, False shows the baseline there. Every perturbed copy of every image goes
through onnxruntime ``batch_size`` rows per run, built in chunks of at most ``CHUNK_BYTES``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from onnxsight.engine import targets
from onnxsight.engine.model import Inputs, Model, take
from onnxsight.errors import InvalidArgument
from onnxsight.kernels import attribution as ka
from onnxsight.kernels import occlusion as ko
from onnxsight.methods.common import (
    Tally, require_image, rows_of, rows_per_run, split_inputs, target_scores, with_context,
)
from onnxsight.methods.superpixels import feature_labels

CHUNK_BYTES = 256 * 2**20  # perturbed copies (and their masks) built and held at once


@dataclass
class Perturbed:
    """A batch ready for perturbation: the primary image input ``x`` (N, ...), the other inputs
    ``context`` (held at their values), the channel axis, what a hidden pixel shows (``baseline``,
    like ``x``), the features (``labels`` (N, H, W), 0 .. M_i − 1, ``counts`` M_i) and the target."""

    model: Model
    x: np.ndarray
    context: dict[str, np.ndarray]
    axis: int
    baseline: np.ndarray
    labels: np.ndarray
    counts: np.ndarray
    indices: targets.Resolved
    of: str
    batch_size: int

    @property
    def features(self) -> int:
        """The most features of any image: the width of the coalition vectors."""
        return int(self.counts.max())


def prepare(
    model: Model, x: Inputs, target: targets.Target, method: str, *, of: str, output: str | None, baseline,
    feature_mask=None, segments: int = 49, batch_size: int = 256,
) -> Perturbed:
    """Check and split the batch (a model with several inputs: the primary image input is perturbed,
    the others are held), resolve the target on the clean images, and find the features and the baseline."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InvalidArgument(f"batch_size must be an integer >= 1, got {batch_size!r}")
    model = model.with_output(output)
    image, context = split_inputs(model, x)
    axis = require_image(model, method)
    labels, counts = feature_labels(image, feature_mask, segments, axis)
    indices = model.resolve_target(with_context(model, image, context), target, of, batch_size)
    return Perturbed(model, image, context, axis, baselines(image, baseline, axis), labels, counts, indices, of,
                     int(batch_size))


def baselines(x: np.ndarray, baseline, channel_axis: int) -> np.ndarray:
    """What a hidden feature shows, shaped like ``x``: a number (default 0: black), "mean" (each image's
    per-channel mean), "blur" (x Gaussian-blurred with σ = 10 % of the larger side, as IG's), "grey"
    (each image's (min + max) / 2) or an array broadcastable to ``x``."""
    if isinstance(baseline, str) and baseline == "mean":
        return ko.fill_values(x, "mean", channel_axis, sigma=(1.0, 1.0))
    return ka.baseline(x, baseline, channel_axis).astype(x.dtype, copy=False)


def coalition_scores(
    p: Perturbed, owners: np.ndarray, present: Callable[[np.ndarray], np.ndarray],
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Target scores (float64, one per row) of perturbed copies: row r is image ``owners[r]`` with the
    features ``present(rows)[r]`` (a (R, features) bool array for the flat row ids ``rows``) kept and the
    others replaced by the baseline. Columns past an image's own feature count are ignored."""
    def build(rows: np.ndarray) -> np.ndarray:
        images = owners[rows]
        keep = np.take_along_axis(present(rows), p.labels[images].reshape(len(rows), -1), axis=1)
        return compose(p.x[images], p.baseline[images], keep.reshape(p.labels[images].shape), p.axis)

    return perturbed_scores(p, owners, build, row_bytes=p.features + 9 * p.labels[0].size, progress=progress)


def compose(x: np.ndarray, baseline: np.ndarray, keep: np.ndarray, channel_axis: int) -> np.ndarray:
    """``baseline + keep · (x − baseline)`` with ``keep`` (R, H, W) spread over the channels: where a
    boolean ``keep`` is True exactly x, elsewhere exactly the baseline."""
    keep = np.expand_dims(keep, channel_axis)
    if keep.dtype == bool:
        return np.where(keep, x, baseline)
    return (baseline + keep * (x - baseline)).astype(x.dtype, copy=False)


def perturbed_scores(
    p: Perturbed, owners: np.ndarray, build: Callable[[np.ndarray], np.ndarray], row_bytes: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Target scores (float64 (R,)) of the perturbed copies ``build(rows)`` of images ``owners[rows]``;
    each copy keeps its image's target and other inputs. Copies are built in chunks of at most
    ``CHUNK_BYTES`` (``row_bytes``: what building one row holds besides the copy) and run
    ``batch_size`` rows at a time, each run reported as ``progress(copies scored, copies in all)``."""
    model, total = p.model, len(owners)
    static = model.shapes.get(model.tensor(p.of)) or ()
    out_bytes = 4 * int(np.prod([d for d in static[1:] if d is not None] or [1]))
    step = max(1, CHUNK_BYTES // (3 * p.x[0].nbytes + out_bytes + row_bytes))
    scores = np.empty(total)
    tally = Tally(total, progress)
    for start in range(0, total, step):
        rows = np.arange(start, min(total, start + step))
        images = owners[rows]
        chosen = None if p.indices is None else p.indices[images]
        built = with_context(model, build(rows), p.context, images)
        for run in tally.runs(len(rows), rows_per_run(model, p.batch_size)):
            scores[rows[run]] = target_scores(model, take(built, run), rows_of(chosen, run), p.of, p.batch_size)
    return scores


def spread(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-feature values (N, features) painted on their pixels: float32 (N, H, W), each pixel the value of
    its feature (Captum's convention: a feature's attribution is not divided among its pixels)."""
    flat = labels.reshape(len(labels), -1)
    return np.take_along_axis(values, flat, axis=1).reshape(labels.shape).astype(np.float32)


def check_count(value, name: str, minimum: int = 1) -> int:
    """An integer option >= ``minimum``, or InvalidArgument naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InvalidArgument(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)
