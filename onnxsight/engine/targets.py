"""What to differentiate: a class, a channel per image, the predicted class, the whole tensor, a
region of a dense output (segmentation), or an explicit cotangent."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

import numpy as np

from onnxsight.errors import InvalidArgument


@dataclass(frozen=True)
class Region:
    """A region of a dense (N, H, W, C) or (N, C, H, W) output, as pytorch-grad-cam's
    ``SemanticSegmentationTarget``: per image, the sum of class ``category``'s scores over ``mask``
    ((H, W) for every image or (N, H, W); booleans or weights), or, with no mask, over the pixels
    predicted as ``category`` (the argmax over classes on the clean input)."""

    category: int | Sequence[int]
    mask: np.ndarray | None = None


Target = Union[int, Sequence[int], np.ndarray, str, Region, None]
# A resolved target: None (the whole tensor), int indices (N,), or float weights shaped like the
# tensor (N, ...) whose dot product with each row is that image's score (its cotangent).
Resolved = Union[np.ndarray, None]


def resolve(target: Target, shape: Sequence[int], channel_axis: int, values: np.ndarray | None = None) -> Resolved:
    """Per image: an index (a class for 2-D tensors and scores like (N, C, 1, 1), a channel for N-D
    ones), weights, or None for "all".

    ``shape`` is the differentiated tensor's batch shape; "predicted" and a :class:`Region` without
    a mask need its ``values`` ("predicted" picks the largest score, for N-D tensors the largest
    channel mean). A float array shaped like the tensor ((N, ...), or (1, ...) for every image) is
    an explicit cotangent: the score is the sum of the tensor times it.
    """
    count = shape[0]
    if target is None:
        return None
    if isinstance(target, Region):
        return _region(target, shape, channel_axis, values)
    if isinstance(target, str):
        if target != "predicted":
            raise InvalidArgument(f"target must be an int, one int per image, 'predicted', a Region, a float "
                                  f"cotangent array or None; got {target!r}")
        return channel_means(values, channel_axis).argmax(axis=1)
    channel_axis = class_axis(shape, channel_axis)
    indices = np.asarray(target)
    if np.issubdtype(indices.dtype, np.floating) and indices.ndim == len(shape):
        return _explicit(indices, shape)
    if not np.issubdtype(indices.dtype, np.integer):
        raise InvalidArgument(f"target must be integer class or channel indices (or a float cotangent with the "
                              f"tensor's {len(shape)} axes), got {indices.dtype} values of shape {indices.shape}")
    return _per_image(indices, count, shape[channel_axis] if len(shape) > 1 else 1, "target")


def needs_values(target: Target) -> bool:
    """Whether resolving ``target`` reads the tensor's values ("predicted", a Region without a mask)."""
    return isinstance(target, str) or (isinstance(target, Region) and target.mask is None)


def tile(resolved: Resolved, copies: int) -> Resolved:
    """The resolved target of ``copies`` stacked copies of the batch (copy-major, as noisy copies or path points)."""
    return None if resolved is None else np.tile(resolved, (copies,) + (1,) * (resolved.ndim - 1))


def _per_image(indices: np.ndarray, count: int, channels: int, what: str) -> np.ndarray:
    indices = np.broadcast_to(indices, (count,)) if indices.ndim == 0 else indices
    if indices.shape != (count,):
        raise InvalidArgument(f"{what} has {indices.size} entries for {count} images; give one or one per image")
    if (indices < 0).any() or (indices >= channels).any():
        raise InvalidArgument(f"{what} {indices.tolist()} out of range: the tensor has {channels} classes/channels")
    return indices


def _explicit(weights: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    wanted = tuple(shape[1:])
    if weights.shape[1:] != wanted or weights.shape[0] not in (1, shape[0]):
        raise InvalidArgument(f"a cotangent target must have the tensor's shape {(shape[0], *wanted)} "
                              f"(or {(1, *wanted)} for every image), got {weights.shape}")
    if not np.isfinite(weights).all():
        raise InvalidArgument("a cotangent target must be finite")
    return np.ascontiguousarray(np.broadcast_to(weights, (shape[0], *wanted)), dtype=np.float64)


def _region(target: Region, shape: Sequence[int], channel_axis: int, values: np.ndarray | None) -> np.ndarray:
    """The weights of a :class:`Region`: the mask on its class's channel, zeros elsewhere."""
    if len(shape) < 3:
        raise InvalidArgument(f"a Region target needs a dense output (N, H, W, C) or (N, C, H, W); "
                              f"the tensor has shape {tuple(shape)}")
    count, channels = shape[0], shape[channel_axis]
    spatial = tuple(d for axis, d in enumerate(shape) if axis not in (0, channel_axis))
    category = _per_image(np.asarray(target.category), count, channels, "Region category")
    if target.mask is None:
        mask = np.moveaxis(values, channel_axis, -1).argmax(axis=-1) == category.reshape(-1, *[1] * len(spatial))
    else:
        mask = np.asarray(target.mask)
        if mask.shape not in (spatial, (count, *spatial)) or not (mask.dtype == bool or np.issubdtype(mask.dtype, np.number)):
            raise InvalidArgument(f"a Region mask must be booleans or numbers of shape {spatial} or "
                                  f"{(count, *spatial)}, got {mask.dtype} {mask.shape}")
        mask = np.broadcast_to(mask, (count, *spatial))
    weights = np.zeros((count, *spatial, channels))
    weights[np.arange(count), ..., category] = mask
    return np.ascontiguousarray(np.moveaxis(weights, -1, channel_axis))


def cotangent(shape: Sequence[int], indices: Resolved, channel_axis: int, dtype=np.float32) -> np.ndarray:
    """The vector whose dot product with the tensor is the per-image score of a resolved target.

    A class for 2-D tensors (one-hot); the mean of a channel over the other axes for N-D ones;
    the weights themselves for a float target; ones (the sum of the whole tensor) for None.
    """
    if indices is None:
        return np.ones(shape, dtype)
    if indices.dtype.kind == "f":
        return np.ascontiguousarray(indices, dtype=dtype)
    if len(shape) == 2:  # one-hot classes: the general case below, without its axis moves
        onehot = np.zeros(shape, dtype)
        onehot[np.arange(shape[0]), indices] = 1.0
        return onehot
    channel_axis = class_axis(shape, channel_axis)
    moved = np.zeros((shape[0], *np.delete(shape[1:], channel_axis - 1), shape[channel_axis]), dtype)
    spread = int(np.prod(moved.shape[1:-1]))
    moved[np.arange(shape[0]), ..., indices] = 1.0 / spread
    return np.ascontiguousarray(np.moveaxis(moved, -1, channel_axis))


def channel_means(values: np.ndarray, channel_axis: int) -> np.ndarray:
    """(N, C): each channel's mean over all non-batch, non-channel axes."""
    if values.ndim == 2:
        return values
    moved = np.moveaxis(values, class_axis(values.shape, channel_axis), -1)
    return moved.reshape(len(values), -1, moved.shape[-1]).mean(axis=1)


def class_axis(shape: Sequence[int | None], channel_axis: int) -> int:
    """The axis of the classes: in scores with axes of length 1 ((N, C, 1, 1), (N, 1, 1, C): fully
    convolutional classifiers) the only other axis longer than 1, else ``channel_axis``."""
    longer = [axis for axis, size in enumerate(shape) if axis and size != 1]
    return longer[0] if len(shape) > 2 and len(longer) == 1 else channel_axis


def class_scores(values: np.ndarray) -> np.ndarray:
    """(N, classes) from class scores with any axes of length 1 ((N, C, 1, 1), (N, 1, 1, C));
    InvalidArgument for a tensor with more than one axis of classes or positions."""
    if sum(size != 1 for size in values.shape[1:]) > 1:
        raise InvalidArgument(f"class scores must have shape (N, classes), or that with axes of length 1 "
                              f"such as (N, classes, 1, 1); got {values.shape}")
    return values.reshape(len(values), -1)
