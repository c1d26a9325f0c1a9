"""Occlusion maps (Zeiler & Fergus 2014), and the batched scoring of perturbed copies it shares with Score-CAM."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from onnxsight.engine import targets
from onnxsight.engine.model import Inputs, Model, take
from onnxsight.errors import InvalidArgument
from onnxsight.kernels import occlusion as k
from onnxsight.methods.common import (
    Tally, require_image, rows_of, rows_per_run, spatial_size, split_inputs, target_scores, with_context,
)

# Perturbed copies (and their outputs), counted 4× for what building them holds, built at once: pieces
# that stay in cache beat one large build (MobileNetV2 Score-CAM, 576 masked copies: 195 ms at once, 112 ms
# 64 at a time; seed-CNN occlusion, 10880 copies: 18 ms at once, 12.5 ms 2560 at a time).
CHUNK_BYTES = 32 * 2**20


def occlusion(
    model: Model,
    x: Inputs,
    target: targets.Target = "predicted",
    *,
    window: int | Sequence[int] | None = None,
    stride: int | Sequence[int] | None = None,
    fill: float | str = 0.0,
    last_window: str = "flush",
    of: str = "logits",
    output: str | None = None,
    batch_size: int = 256,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Score drop per pixel when a sliding window hides it, averaged over the windows covering it.

    target: a class of ``of`` (default "predicted": the argmax on the clean input), one per
        image, a channel of an intermediate layer ``of`` (scored by its spatial mean, seed 003's
        per-unit occlusion), or None (the sum of ``of``).
    of: the scored tensor, default "logits" (softmax swapped for linear); any layer name.
    output: the head "logits" refers to in a model with several outputs (default: the first
        classification head). A model with several inputs takes ``x`` as a dict by input name; the
        primary image input (``Model.input_name``) is occluded, the others are held at their values.
    window, stride: int or (height, width); default :func:`default_window` of the image: 1/14 of its
        shorter side, at least 4 (4 up to 63 px, 16 at 224), and a stride of half the window (2 at
        28 px, 8 at 224; Captum's tutorials use 15 and 8 at 224, seed 003 uses 11 and 4). Windows
        start at 0, stride, 2·stride, ... while they fit, plus one more when the strided ones stop
        short of the bottom/right border, so every pixel is covered.
    last_window: that last window "flush" with the border (default: every window hides a full
        window's area) or "cropped": one stride further, cut at the border (Captum's Occlusion).
    fill: what a window shows: a float (default 0.0, Zeiler & Fergus' grey/black square),
        "mean" (each image's per-channel mean) or "blur" (the image blurred by a Gaussian with
        sigma = window / 2 per axis, cv2.GaussianBlur).
    batch_size: rows per onnxruntime run (default 256). All occluded copies of all images go
        through the model in large batches, built in chunks of about ``CHUNK_BYTES``.
    progress: called with (copies scored, copies in all: the occluded ones and each clean image)
        after each onnxruntime run.

    Returns float32 (N, H, W) at the input's size: score(x) − score(occluded x), averaged per pixel.
    """
    model = model.with_output(output)
    x, context = split_inputs(model, x)
    axis = require_image(model, "occlusion")
    height, width = spatial_size(x, axis)
    window, stride = default_window(height, width, window, stride)
    fills = k.fill_values(x, fill, axis, sigma=(window[0] / 2, window[1] / 2))
    rows, cols = k.grid(height, width, window, stride, last_window)
    indices = model.resolve_target(with_context(model, x, context), target, of, batch_size)
    # Copy 0 of each image hides nothing: the clean score comes from the same batched runs.
    windows = np.vstack([np.zeros((1, 4), int), k.window_bounds(rows, cols)])
    copies = len(windows)

    def occluded(start: int, stop: int) -> np.ndarray:
        return k.occlude(x, fills, windows, start, stop, axis)

    scores = copy_scores(model, x, copies, occluded, indices, of, batch_size, progress, context).reshape(len(x), copies)
    drops = scores[:, :1] - scores[:, 1:]
    return k.average_drops(drops, rows, cols).astype(np.float32)


def default_window(
    height: int, width: int, window: int | Sequence[int] | None = None, stride: int | Sequence[int] | None = None
) -> tuple[tuple[int, int], tuple[int, int]]:
    """(window, stride) as (height, width) pairs, checked against the image; a window not given is 1/14
    of the image's shorter side rounded, at least 4 (at most the image), and a stride not given is half
    the window, at least 1."""
    side = min(max(4, round(min(height, width) / 14)), height, width)
    window = _pair(side if window is None else window, "window", 1)
    if window[0] > height or window[1] > width:
        raise InvalidArgument(f"window {window} is larger than the image ({height}, {width})")
    stride = _pair(tuple(max(1, w // 2) for w in window) if stride is None else stride, "stride", 1)
    return window, stride


def copy_scores(
    model: Model,
    x: np.ndarray,
    copies: int,
    build: Callable[[int, int], np.ndarray],
    indices: np.ndarray | None,
    of: str = "logits",
    batch_size: int = 256,
    progress: Callable[[int, int], None] | None = None,
    context: dict[str, np.ndarray] | None = None,
    probability: bool = False,
) -> np.ndarray:
    """Target scores (``probability``: softmax probabilities) of ``copies`` perturbed versions of each image, image-major, float64 (N·copies,).

    ``build(start, stop)`` returns the copies with flat ids ``start`` to ``stop - 1`` (copy ``r`` is of
    image ``r // copies``); they are built in chunks of about ``CHUNK_BYTES``, a whole number of runs
    (at least one), and run ``batch_size`` rows at a time, each run reported as ``progress(copies scored, copies in all)``. The score
    is the engine's: a class of 2-D ``of``, a channel's mean of N-D ``of`` (``indices`` per
    image), or the sum of ``of`` when ``indices`` is None. ``context``: the model's other inputs
    per image, fed unchanged with each copy.
    """
    static = model.shapes.get(model.tensor(of)) or ()
    out_bytes = 4 * int(np.prod([d for d in static[1:] if d is not None] or [1]))
    per_run = rows_per_run(model, batch_size)
    step = max(1, CHUNK_BYTES // (4 * x[0].nbytes + out_bytes))
    step = max(per_run, step // per_run * per_run)  # whole runs, at least one
    total = len(x) * copies
    scores = np.empty(total)
    tally = Tally(total, progress)
    for start in range(0, total, step):
        rows = np.arange(start, min(total, start + step))
        chosen = None if indices is None else indices[rows // copies]
        built = with_context(model, build(start, start + len(rows)), context or {}, rows // copies)
        for run in tally.runs(len(rows), per_run):
            scores[rows[run]] = target_scores(model, take(built, run), rows_of(chosen, run), of, batch_size, probability)
    return scores


def _pair(value, name: str, minimum: int) -> tuple[int, int]:
    pair = (value, value) if np.ndim(value) == 0 else tuple(value)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum for v in pair):
        raise InvalidArgument(
            f"{name} must be an integer >= {minimum} or a pair (height, width) of them; got {value!r}"
        )
    return int(pair[0]), int(pair[1])
