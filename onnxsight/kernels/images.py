"""Bring images of any size, channel count and dtype to a model's input layout, and back."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from onnxsight.errors import InvalidArgument


def spatial_size(input_shape: Sequence[int | None], layout: str) -> tuple[int | None, int | None, int | None]:
    """(height, width, channels) of a 4-D image input in ``layout`` "NHWC" or "NCHW"."""
    if layout == "NHWC":
        return input_shape[1], input_shape[2], input_shape[3]
    if layout == "NCHW":
        return input_shape[2], input_shape[3], input_shape[1]
    raise InvalidArgument(f"model input layout {layout} is not an image layout (NHWC or NCHW)")


def prepare(
    images: Sequence[np.ndarray],
    input_shape: Sequence[int | None],
    layout: str,
    scale: float | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> np.ndarray:
    """Resize, convert channels, scale and normalise HxW[xC] images into one float32 batch.

    ``scale`` multiplies pixel values (default: 1/255 for integer images, 1 for floats);
    then ``(x - mean) / std`` per channel when given; finally the batch is put in ``layout``.
    """
    height, width, channels = spatial_size(input_shape, layout)
    batch = []
    for image in images:
        image = np.asarray(image)
        factor = scale if scale is not None else (1 / 255 if np.issubdtype(image.dtype, np.integer) else 1.0)
        image = to_channels(image.astype(np.float32) * factor, channels)
        if height and width and image.shape[:2] != (height, width):
            shrink = image.shape[0] > height or image.shape[1] > width
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
            image = image.reshape(height, width, -1)
        batch.append(image)
    x = np.stack(batch).astype(np.float32)
    for name, values in (("mean", mean), ("std", std)):
        if values is not None and len(values) not in (1, x.shape[3]):
            raise InvalidArgument(f"{name} needs 1 or {x.shape[3]} values (one per channel), got {len(values)}")
    if mean is not None:
        x = x - np.asarray(mean, np.float32)
    if std is not None:
        x = x / np.asarray(std, np.float32)
    return x if layout == "NHWC" else x.transpose(0, 3, 1, 2).copy()


def to_channels(image: np.ndarray, channels: int | None) -> np.ndarray:
    """An HxWxC float image with ``channels`` channels (grey <-> RGB; alpha dropped)."""
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3:
        raise InvalidArgument(f"an image must be HxW or HxWxC, got shape {image.shape}")
    have = image.shape[2]
    if have == 4:
        image, have = image[..., :3], 3
    if channels is None or have == channels:
        return image
    if have == 1 and channels == 3:
        return np.repeat(image, 3, axis=2)
    if have == 3 and channels == 1:
        return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)[..., None]
    raise InvalidArgument(f"cannot turn a {have}-channel image into the model's {channels} channels")


def to_hwc(x: np.ndarray, layout: str) -> np.ndarray:
    """A batch in model layout as (N, H, W, C)."""
    return x if layout == "NHWC" else x.transpose(0, 2, 3, 1)


CV_CHANNELS = 128  # the most channels one OpenCV 5 call takes (CV_CN_MAX)


def gaussian_blur(x: np.ndarray, sigma: float | Sequence[float], channel_axis: int) -> np.ndarray:
    """Every channel of every image of a 4-D batch blurred over its spatial axes (``cv2.GaussianBlur``,
    kernel size from ``sigma`` — one value or (sigma_y, sigma_x) —, reflect-101 borders); dtype kept."""
    sigma_y, sigma_x = (sigma, sigma) if np.ndim(sigma) == 0 else sigma
    if x.ndim != 4 or channel_axis not in (1, 3):
        raise InvalidArgument(f"a blur needs a 4-D image batch with channels on axis 1 or 3, got shape {x.shape}")
    if min(sigma_y, sigma_x) <= 0:
        raise InvalidArgument(f"blur sigma must be positive, got {sigma}")
    hwc = np.moveaxis(x, channel_axis, -1)
    count, height, width, channels = hwc.shape
    stacked = np.ascontiguousarray(hwc.transpose(1, 2, 0, 3).reshape(height, width, count * channels))
    parts = []
    for start in range(0, stacked.shape[-1], CV_CHANNELS):
        chunk = np.ascontiguousarray(stacked[..., start:start + CV_CHANNELS])
        blurred = cv2.GaussianBlur(chunk, (0, 0), sigmaX=float(sigma_x), sigmaY=float(sigma_y),
                                   borderType=cv2.BORDER_REFLECT_101)
        parts.append(blurred.reshape(height, width, -1))
    result = np.concatenate(parts, axis=-1).reshape(height, width, count, channels).transpose(2, 0, 1, 3)
    return np.ascontiguousarray(np.moveaxis(result, -1, channel_axis)).astype(x.dtype)
