"""What the attribution methods share: image axes and the score of a target."""

from __future__ import annotations

import numpy as np

from onnxsight.engine import targets
from onnxsight.engine.model import DEFAULT_BATCH_SIZE, Model
from onnxsight.errors import InvalidArgument


def image_channel_axis(model: Model) -> int | None:
    """The input's channel axis for image layouts (NHWC: 3, NCHW: 1), else None."""
    return {"NHWC": 3, "NCHW": 1}.get(model.input_layout)


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
    model: Model, x: np.ndarray, target: targets.Target, of: str = "logits", batch_size: int = DEFAULT_BATCH_SIZE
) -> np.ndarray:
    """Per image the target's score — a class's logit, a channel's mean (N-D ``of``) or, for
    None, the sum of ``of`` — the quantity whose gradient the methods take. float64 (N,)."""
    x = model.check_input(x)
    values = model.run(x, [model.tensor(of)], batch_size=batch_size)[0]
    axis = model.channel_axis(of)
    indices = targets.resolve(target, values.shape, axis, values)
    weights = targets.cotangent(values.shape, indices, axis, np.float64)
    return (weights * values).reshape(len(x), -1).sum(axis=1)
