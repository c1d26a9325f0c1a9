"""Occlusion maps (Zeiler & Fergus 2014), and the batched scoring of perturbed copies it shares with Score-CAM."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from onnxsight.engine import targets
from onnxsight.engine.model import Inputs, Model
from onnxsight.errors import InvalidArgument
from onnxsight.kernels import occlusion as k
from onnxsight.methods.common import require_image, spatial_size, split_inputs, target_scores, with_context

CHUNK_BYTES = 256 * 2**20  # perturbed copies (and their outputs) built and held at once


def occlusion(
    model: Model,
    x: Inputs,
    target: targets.Target = "predicted",
    *,
    window: int | Sequence[int] = 4,
    stride: int | Sequence[int] = 2,
    fill: float | str = 0.0,
    of: str = "logits",
    output: str | None = None,
    batch_size: int = 256,
) -> np.ndarray:
    """Score drop per pixel when a sliding window hides it, averaged over the windows covering it.

    target: a class of ``of`` (default "predicted": the argmax on the clean input), one per
        image, a channel of an intermediate layer ``of`` (scored by its spatial mean, seed 003's
        per-unit occlusion), or None (the sum of ``of``).
    of: the scored tensor, default "logits" (softmax swapped for linear); any layer name.
    output: the head "logits" refers to in a model with several outputs (default: the first
        classification head). A model with several inputs takes ``x`` as a dict by input name; the
        primary image input (``Model.input_name``) is occluded, the others are held at their values.
    window, stride: int or (height, width); default 4 and 2 (seed 003 uses window 11, stride 4).
        Windows start at 0, stride, 2·stride, ... while they fit, plus one flush with the
        bottom/right border when the strided ones stop short of it, so every pixel is covered.
    fill: what a window shows: a float (default 0.0, Zeiler & Fergus' grey/black square),
        "mean" (each image's per-channel mean) or "blur" (the image blurred by a Gaussian with
        sigma = window / 2 per axis, cv2.GaussianBlur).
    batch_size: rows per onnxruntime run (default 256). All occluded copies of all images go
        through the model in large batches, built in chunks of at most ``CHUNK_BYTES``.

    Returns float32 (N, H, W) at the input's size: score(x) − score(occluded x), averaged per pixel.
    """
    model = model.with_output(output)
    x, context = split_inputs(model, x)
    axis = require_image(model, "occlusion")
    height, width = spatial_size(x, axis)
    window = _pair(window, "window", 1)
    stride = _pair(stride, "stride", 1)
    if window[0] > height or window[1] > width:
        raise InvalidArgument(f"window {window} is larger than the image ({height}, {width})")
    fills = k.fill_values(x, fill, axis, sigma=(window[0] / 2, window[1] / 2))
    rows, cols = k.grid(height, width, window, stride)
    indices = model.resolve_target(with_context(model, x, context), target, of, batch_size)
    clean = copy_scores(model, x, 1, lambda r: x[r], indices, of, batch_size, context)
    positions = len(rows)

    def occluded(r: np.ndarray) -> np.ndarray:
        image, where = r // positions, r % positions
        return k.occlude(x[image], fills[image], rows[where], cols[where], axis)

    scores = copy_scores(model, x, positions, occluded, indices, of, batch_size, context)
    drops = clean[:, None] - scores.reshape(len(x), positions)
    return k.average_drops(drops, rows, cols).astype(np.float32)


def copy_scores(
    model: Model,
    x: np.ndarray,
    copies: int,
    build: Callable[[np.ndarray], np.ndarray],
    indices: np.ndarray | None,
    of: str = "logits",
    batch_size: int = 256,
    context: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    """Target scores of ``copies`` perturbed versions of each image, image-major, float64 (N·copies,).

    ``build(rows)`` returns the copies with flat ids ``rows`` (copy ``r`` is of image
    ``r // copies``); they are built and run in chunks of at most ``CHUNK_BYTES``. The score
    is the engine's: a class of 2-D ``of``, a channel's mean of N-D ``of`` (``indices`` per
    image), or the sum of ``of`` when ``indices`` is None. ``context``: the model's other inputs
    per image, fed unchanged with each copy.
    """
    static = model.shapes.get(model.tensor(of)) or ()
    out_bytes = 4 * int(np.prod([d for d in static[1:] if d is not None] or [1]))
    step = max(1, CHUNK_BYTES // (4 * x[0].nbytes + out_bytes))
    total = len(x) * copies
    scores = np.empty(total)
    for start in range(0, total, step):
        rows = np.arange(start, min(total, start + step))
        chosen = None if indices is None else indices[rows // copies]
        batch = with_context(model, build(rows), context or {}, rows // copies)
        scores[rows] = target_scores(model, batch, chosen, of, batch_size)
    return scores


def _pair(value, name: str, minimum: int) -> tuple[int, int]:
    pair = (value, value) if np.ndim(value) == 0 else tuple(value)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum for v in pair):
        raise InvalidArgument(
            f"{name} must be an integer >= {minimum} or a pair (height, width) of them; got {value!r}"
        )
    return int(pair[0]), int(pair[1])
