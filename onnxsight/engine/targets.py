"""What to differentiate: a class, a channel per image, the predicted class, or the whole tensor."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import numpy as np

from onnxsight.errors import InvalidArgument

Target = Union[int, Sequence[int], np.ndarray, str, None]


def resolve(
    target: Target, shape: Sequence[int], channel_axis: int, values: np.ndarray | None = None
) -> np.ndarray | None:
    """One index per image (a class for 2-D tensors, a channel for N-D ones), or None for "all".

    ``shape`` is the differentiated tensor's batch shape; "predicted" needs its ``values`` and
    picks the largest score (for N-D tensors the largest channel mean).
    """
    count, channels = shape[0], shape[channel_axis] if len(shape) > 1 else 1
    if target is None:
        return None
    if isinstance(target, str):
        if target != "predicted":
            raise InvalidArgument(f"target must be an int, one int per image, 'predicted' or None; got {target!r}")
        return channel_means(values, channel_axis).argmax(axis=1)
    indices = np.asarray(target)
    if not np.issubdtype(indices.dtype, np.integer):
        raise InvalidArgument(f"target must be integer class or channel indices, got {indices.dtype} values")
    indices = np.broadcast_to(indices, (count,)) if indices.ndim == 0 else indices
    if indices.shape != (count,):
        raise InvalidArgument(f"target has {indices.size} entries for {count} images; give one or one per image")
    if (indices < 0).any() or (indices >= channels).any():
        raise InvalidArgument(f"target {indices.tolist()} out of range: the tensor has {channels} classes/channels")
    return indices


def cotangent(shape: Sequence[int], indices: np.ndarray | None, channel_axis: int, dtype=np.float32) -> np.ndarray:
    """The vector whose dot product with the tensor is the per-image score of ``indices``.

    A class for 2-D tensors (one-hot); the mean of a channel over the other axes for N-D ones;
    ones (the sum of the whole tensor) when ``indices`` is None.
    """
    if indices is None:
        return np.ones(shape, dtype)
    moved = np.zeros((shape[0], *np.delete(shape[1:], channel_axis - 1), shape[channel_axis]), dtype)
    spread = int(np.prod(moved.shape[1:-1]))
    moved[np.arange(shape[0]), ..., indices] = 1.0 / spread
    return np.ascontiguousarray(np.moveaxis(moved, -1, channel_axis))


def channel_means(values: np.ndarray, channel_axis: int) -> np.ndarray:
    """(N, C): each channel's mean over all non-batch, non-channel axes."""
    if values.ndim == 2:
        return values
    moved = np.moveaxis(values, channel_axis, -1)
    return moved.reshape(len(values), -1, moved.shape[-1]).mean(axis=1)
