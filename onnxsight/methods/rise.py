"""RISE (Petsiuk et al. 2018): the target's score averaged over random smooth masks, per pixel weighted
by how much of it each mask showed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from onnxsight.engine import targets
from onnxsight.engine.model import Inputs, Model
from onnxsight.errors import InvalidArgument
from onnxsight.methods.coalitions import CHUNK_BYTES, check_count, compose, perturbed_scores, prepare


@dataclass(frozen=True)
class RiseMasks:
    """``count`` RISE masks of (height, width), made on demand: random binary ``cells`` × ``cells`` grids
    (1 with probability p), upsampled bilinearly to (cells + 1) · cell size (cell = ⌈side / cells⌉,
    OpenCV INTER_LINEAR) and cropped at a random shift of 0 .. cell − 1 pixels per axis."""

    grids: np.ndarray   # (count, cells, cells) float32 0/1
    shifts: np.ndarray  # (count, 2) ints: row, column offset of the crop
    height: int
    width: int

    @property
    def count(self) -> int:
        return len(self.grids)

    def take(self, ids: np.ndarray) -> np.ndarray:
        """The masks ``ids`` as float32 (len(ids), height, width) in [0, 1]."""
        cells = self.grids.shape[1]
        cell_h, cell_w = -(-self.height // cells), -(-self.width // cells)
        size = ((cells + 1) * cell_w, (cells + 1) * cell_h)  # OpenCV's (width, height)
        out = np.empty((len(ids), self.height, self.width), np.float32)
        for row, i in enumerate(ids):
            up = cv2.resize(self.grids[i], size, interpolation=cv2.INTER_LINEAR)
            top, left = self.shifts[i]
            out[row] = up[top:top + self.height, left:left + self.width]
        return out


def rise_masks(height: int, width: int, masks: int = 4000, cells: int = 7, p: float = 0.5, seed: int = 0) -> RiseMasks:
    """The masks :func:`rise` uses for images of (height, width) with these options (same seed, same masks)."""
    masks, cells = check_count(masks, "masks"), check_count(cells, "cells")
    if not (isinstance(p, (int, float)) and 0 < p <= 1):
        raise InvalidArgument(f"p must be in (0, 1], got {p!r}")
    if cells > min(height, width):
        raise InvalidArgument(f"cells={cells} is more than the image's side ({height}, {width})")
    rng = np.random.default_rng(seed)
    grids = (rng.random((masks, cells, cells)) < p).astype(np.float32)
    cell = np.array([-(-height // cells), -(-width // cells)])
    shifts = (rng.random((masks, 2)) * cell).astype(int)
    return RiseMasks(grids, shifts, height, width)


def rise(
    model: Model,
    x: Inputs,
    target: targets.Target = "predicted",
    *,
    of: str = "output",
    output: str | None = None,
    masks: int = 4000,
    cells: int = 7,
    p: float = 0.5,
    baseline=0.0,
    seed: int = 0,
    batch_size: int = 256,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """``Σ_i score(b + M_i ⊙ (x − b)) · M_i / (masks · p)`` over the masks :func:`rise_masks` makes.

    masks, cells, p: the paper's N = 4000, s = 7 and p = 0.5 (default; DIANNA's defaults are 1000
    masks, 8 cells and p chosen per image among 0.1 .. 0.9 by the largest spread of the class
    probabilities); the same masks (``seed``) for every image. baseline: what a masked pixel shows,
    default 0 (the paper's x ⊙ M); "mean", "blur", "grey", a number or an array as for feature ablation.
    of: default "output", the model's output as it is — the class probability of a softmax classifier,
    as in the paper (saliency = the expected confidence when the pixel is shown) and in DIANNA, which
    runs an ONNX model's output; "logits" scores the logits. target, output, batch_size, progress: as
    for feature ablation; a model with several inputs has its primary image input masked, the others held.

    Returns float32 (N, H, W) at the input's size.
    """
    prepared = prepare(model, x, target, "RISE", of=of, output=output, baseline=baseline,
                       feature_mask="grid", segments=1, batch_size=batch_size)
    n = len(prepared.x)
    height, width = prepared.labels.shape[1:]
    made = rise_masks(height, width, masks, cells, p, seed)
    owners = np.tile(np.arange(n), made.count)  # mask-major: each mask is made once per chunk
    which = np.repeat(np.arange(made.count), n)

    def build(rows: np.ndarray) -> np.ndarray:
        images = owners[rows]
        ids, inverse = np.unique(which[rows], return_inverse=True)
        return compose(prepared.x[images], prepared.baseline[images], made.take(ids)[inverse], prepared.axis)

    scores = perturbed_scores(prepared, owners, build, row_bytes=4 * height * width, progress=progress)
    scores = scores.reshape(made.count, n).T
    saliency = np.zeros((n, height * width))
    step = max(1, CHUNK_BYTES // (4 * height * width))
    for start in range(0, made.count, step):
        ids = np.arange(start, min(made.count, start + step))
        saliency += scores[:, ids] @ made.take(ids).reshape(len(ids), -1).astype(np.float64)
    return (saliency / (made.count * p)).reshape(n, height, width).astype(np.float32)
