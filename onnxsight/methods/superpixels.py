"""Feature masks for the perturbation methods: SLIC superpixels, a grid of patches, or the user's labels."""

from __future__ import annotations

import numpy as np

from onnxsight.errors import InvalidArgument, MissingDependency
from onnxsight.kernels.attribution import choice

METHODS = ("slic", "grid")
FEATURE_MASKS = ("'slic'", "'grid'", "None (one feature per pixel)", "an (H, W) or (N, H, W) integer array")


def superpixels(
    x: np.ndarray, n_segments: int = 49, *, compactness: float = 10.0, method: str = "slic", channel_axis: int = 3,
) -> np.ndarray:
    """Integer labels (N, H, W), 0 .. K−1 per image, grouping each image's pixels into about ``n_segments`` features.

    x: a 4-D image batch with its channels on ``channel_axis`` (3: NHWC, 1: NCHW; the model's layout).
    method: "slic" (scikit-image's SLIC on each image rescaled to [0, 1] by its own min and max,
        ``start_label=0``; three channels are taken as RGB and clustered in Lab, as scikit-image does;
        needs ``pip install 'onnxsight[superpixels]'``) or "grid" (rows × columns ≈ n_segments
        near-square patches of equal size ±1 pixel, no dependency; the same for every image).
    compactness: SLIC's balance of colour and space (scikit-image's default 10; higher: squarer).
    """
    choice("method", method, METHODS)
    if x.ndim != 4 or channel_axis not in (1, 3):
        raise InvalidArgument(f"superpixels need a 4-D image batch with channels on axis 1 or 3, got shape {x.shape}")
    if isinstance(n_segments, bool) or not isinstance(n_segments, (int, np.integer)) or n_segments < 1:
        raise InvalidArgument(f"n_segments must be an integer >= 1, got {n_segments!r}")
    images = np.moveaxis(x, channel_axis, -1)
    height, width = images.shape[1:3]
    if method == "grid":
        return np.broadcast_to(grid_labels(height, width, n_segments), (len(x), height, width)).copy()
    try:
        from skimage.segmentation import slic
    except ImportError as error:
        raise MissingDependency("scikit-image", "superpixels") from error
    labels = np.empty((len(x), height, width), np.int64)
    for i, image in enumerate(images.astype(np.float64)):
        low, high = image.min(), image.max()
        scaled = (image - low) / (high - low) if high > low else np.zeros_like(image)
        gray = scaled.shape[-1] == 1
        found = slic(scaled[..., 0] if gray else scaled, n_segments=int(n_segments), compactness=float(compactness),
                     start_label=0, channel_axis=None if gray else -1)
        labels[i] = np.unique(found, return_inverse=True)[1].reshape(height, width)
    return labels


def grid_labels(height: int, width: int, n_segments: int) -> np.ndarray:
    """(H, W) labels of a rows × columns grid with rows · columns ≈ ``n_segments`` and near-square cells:
    rows = round(√(n·H/W)) (1 .. H), columns = round(n / rows) (1 .. W); cell edges at ⌊k·H/rows⌋."""
    rows = int(np.clip(round(np.sqrt(n_segments * height / width)), 1, height))
    cols = int(np.clip(round(n_segments / rows), 1, width))
    row_of = np.arange(height) * rows // height
    col_of = np.arange(width) * cols // width
    return row_of[:, None] * cols + col_of[None, :]


def feature_labels(
    x: np.ndarray, feature_mask, segments: int, channel_axis: int, compactness: float = 10.0,
) -> tuple[np.ndarray, np.ndarray]:
    """The features of each image as (labels (N, H, W) int64, 0 .. M_i − 1 in each image; counts M_i (N,)).

    feature_mask: "slic" or "grid" (:func:`superpixels` with ``segments``), None (every pixel its own
    feature, all channels together: Captum's default, per pixel), or integer labels (H, W) for every
    image or (N, H, W) one map per image — any integers, renumbered 0 .. M_i − 1 in order.
    """
    height, width = (d for axis, d in enumerate(x.shape) if axis not in (0, channel_axis))
    if isinstance(feature_mask, str):
        labels = superpixels(x, segments, compactness=compactness, method=feature_mask, channel_axis=channel_axis)
    elif feature_mask is None:
        labels = np.broadcast_to(np.arange(height * width).reshape(height, width), (len(x), height, width))
    elif isinstance(feature_mask, np.ndarray) and np.issubdtype(feature_mask.dtype, np.integer):
        if feature_mask.shape not in ((height, width), (len(x), height, width)):
            raise InvalidArgument(f"feature_mask of shape {feature_mask.shape} must be (H, W) = {(height, width)} "
                                  f"or (N, H, W) = {(len(x), height, width)}")
        labels = np.broadcast_to(feature_mask, (len(x), height, width))
    else:
        raise InvalidArgument(f"feature_mask must be {', '.join(FEATURE_MASKS)}; got {_describe(feature_mask)}")
    renumbered = np.empty(labels.shape, np.int64)
    counts = np.empty(len(x), np.int64)
    for i, image in enumerate(labels):
        values, inverse = np.unique(image, return_inverse=True)
        renumbered[i], counts[i] = inverse.reshape(height, width), len(values)
    return renumbered, counts


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of dtype {value.dtype}"
    return repr(value)
