"""What the attribution methods share: image axes, the score of a target, rows per run and progress."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from onnxsight.engine import targets
from onnxsight.engine.autodiff import Modifier
from onnxsight.engine.model import DEFAULT_BATCH_SIZE, Inputs, Model, rows, take
from onnxsight.errors import InvalidArgument
from onnxsight.kernels.stats import softmax


def image_channel_axis(model: Model) -> int | None:
    """The (primary) input's channel axis for image layouts (NHWC: 3, NCHW: 1), else None."""
    return input_channel_axis(model, model.input_name)


def input_channel_axis(model: Model, name: str) -> int | None:
    """Input ``name``'s channel axis for image layouts (NHWC: 3, NCHW: 1), else None."""
    return {"NHWC": 3, "NCHW": 1}.get(model.input_layouts[name])


def attributed_inputs(model: Model) -> list[str]:
    """The inputs attributions are given for: the input of a one-input model, else every float input."""
    if len(model.input_names) == 1:
        return [model.input_name]
    names = model.differentiable_inputs()
    if not names:
        raise InvalidArgument(f"{model.source} has no float input to attribute to (inputs: {', '.join(model.input_names)})")
    return names


def per_input(model: Model, maps: dict[str, np.ndarray]) -> np.ndarray | dict[str, np.ndarray]:
    """One map per attributed input: the array itself for a one-input model, else the dict."""
    return maps[model.input_name] if len(model.input_names) == 1 else maps


def repeat_rows(value: np.ndarray, copies: int) -> np.ndarray:
    """``copies`` copies of a batch, copy-major: row ``c·N + i`` is row i."""
    return np.broadcast_to(value[None], (copies, *value.shape)).reshape(-1, *value.shape[1:])


def split_inputs(model: Model, x: Inputs) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A checked batch as the primary (image) input and the other inputs, which image methods
    that perturb or resize the image hold fixed per image."""
    feeds = model.input_feeds(model.check_input(x))
    image = feeds.pop(model.input_name)
    return image, feeds


def with_context(model: Model, image: np.ndarray, context: dict[str, np.ndarray], images: np.ndarray | None = None) -> Inputs:
    """The batch of ``image`` rows and, for each row, the other inputs of image ``images[row]``
    (default: row i is image i) — a dict for a model with several inputs, else ``image``."""
    if not context:
        return image
    return {model.input_name: image, **{n: v if images is None else v[images] for n, v in context.items()}}


def require_image(model: Model, method: str) -> int:
    """The input's channel axis, or InvalidArgument naming ``method`` for non-image models."""
    axis = image_channel_axis(model)
    if axis is None:
        raise InvalidArgument(
            f"{method} needs an image model (NHWC or NCHW input); {model.source} has input layout {model.input_layout}"
        )
    return axis


def spatial_size(x: np.ndarray, channel_axis: int) -> tuple[int, int]:
    """(H, W) of a 4-D image batch whose channels are on ``channel_axis``."""
    height, width = (d for axis, d in enumerate(x.shape) if axis not in (0, channel_axis))
    return height, width


def target_scores(
    model: Model, x: Inputs, target: targets.Target, of: str = "logits", batch_size: int = DEFAULT_BATCH_SIZE,
    probability: bool = False,
) -> np.ndarray:
    """Per image the target's score — a class's logit, a channel's mean (N-D ``of``) or, for
    None, the sum of ``of`` — the quantity whose gradient the methods take. float64 (N,).
    ``probability``: softmax over ``of``'s class (channel) axis first."""
    values = model.run(x, [model.tensor(of)], batch_size=batch_size)[0]
    axis = model.channel_axis(of)
    if probability:
        values = np.moveaxis(softmax(np.moveaxis(values, axis, -1)), -1, axis)
    indices = targets.resolve(target, values.shape, axis, values)
    weights = targets.cotangent(values.shape, indices, axis, np.float64)
    return (weights * values).reshape(len(values), -1).sum(axis=1)


def rows_of(resolved: targets.Resolved, run: slice) -> targets.Resolved:
    """The resolved target of the rows ``run`` (None stays None: the sum of the tensor)."""
    return None if resolved is None else resolved[run]


def rows_per_run(model: Model, batch_size: int) -> int:
    """Rows onnxruntime gets at once: the model's fixed batch size, else ``batch_size``."""
    fixed = model.input_shape[0]
    return fixed if isinstance(fixed, int) else batch_size


def gradients_in_runs(
    model: Model, batch: dict[str, np.ndarray], of: str, target: targets.Resolved, wrt: list[str],
    modifier: str | Modifier | None, batch_size: int, tally: "Tally",
) -> dict[str, np.ndarray]:
    """``model.gradient`` of a batch (inputs by name) with respect to ``wrt``, one onnxruntime run
    of ``rows_per_run`` rows at a time, each counted in ``tally``."""
    runs = [model.gradient(take(batch, run), of=of, target=rows_of(target, run), wrt=wrt, modifier=modifier,
                           batch_size=batch_size)
            for run in tally.runs(rows(batch), rows_per_run(model, batch_size))]
    return {name: runs[0][name] if len(runs) == 1 else np.concatenate([r[name] for r in runs]) for name in wrt}


def gradient_batch_size(model: Model) -> int:
    """Rows per gradient run when none is given: DEFAULT_BATCH_SIZE, fewer when that many rows'
    activations (every batched tensor of the model, kept for the backward pass, and as many
    gradients) would take more than a quarter of the available memory."""
    per_row = 2 * model.bytes_per_row
    available = available_memory()
    if available is None or per_row == 0:
        return DEFAULT_BATCH_SIZE
    return int(np.clip(available // 4 // per_row, 1, DEFAULT_BATCH_SIZE))


def available_memory() -> int | None:
    """Bytes of memory available to a new process (MemAvailable on Linux, else free pages), or None."""
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


@dataclass
class Tally:
    """Rows sent through the model so far, reported as ``progress(done, total)`` after each run."""

    total: int
    progress: Callable[[int, int], None] | None
    done: int = 0

    def runs(self, rows: int, size: int) -> Iterator[slice]:
        """Consecutive slices of at most ``size`` of ``rows`` rows; each is counted once it has been used."""
        for start in range(0, rows, size):
            stop = min(rows, start + size)
            yield slice(start, stop)
            self.done += stop - start
            if self.progress is not None:
                self.progress(self.done, self.total)
