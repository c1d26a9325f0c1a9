"""Turn the image arguments of a command into a model batch plus what is needed to show it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxsight.data.datasets import load_dataset
from onnxsight.data.images import read_images
from onnxsight.engine.model import Model
from onnxsight.kernels import images as image_kernels
from onnxsight.errors import InvalidArgument
from onnxsight.kernels.colors import as_rgb8


def load_batch(
    model: Model,
    paths: Sequence[Path],
    scale: float | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> tuple[np.ndarray, list[str], list[np.ndarray]]:
    """The batch in model layout, a name per image, and each input as an RGB uint8 picture.

    Float arrays already shaped like one model input (e.g. rows of a .npy batch) are used as they are.
    """
    images, names = read_images(paths)
    shape = tuple(model.input_shape[1:])

    def as_input(image: np.ndarray) -> np.ndarray:
        if image.shape == shape and np.issubdtype(image.dtype, np.floating):
            return image[None].astype(np.float32)
        return image_kernels.prepare([image], model.input_shape, model.input_layout, scale, mean, std)

    x = np.concatenate([as_input(np.asarray(image)) for image in images])
    x = model.check_input(x)
    pictures = [as_rgb8(im) for im in image_kernels.to_hwc(x, model.input_layout)] if x.ndim == 4 else []
    return x, names, pictures


@dataclass(frozen=True)
class Inputs:
    """A model batch, a name and a picture per image, and labels when they came from a dataset."""

    x: np.ndarray
    names: list[str]
    pictures: list[np.ndarray]
    labels: np.ndarray | None


def load_inputs(
    model: Model,
    paths: Sequence[Path] | None,
    data: str | None = None,
    count: int | None = None,
    scale: float | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Inputs:
    """Images from files, or the test split of a dataset (``--data``), in the model's input form.

    ``count`` keeps the first images of a dataset (all when None).
    """
    if bool(paths) == bool(data):
        raise InvalidArgument("give images as arguments or a dataset with --data, not both or neither")
    if paths:
        x, names, pictures = load_batch(model, paths, scale, mean, std)
        return Inputs(x, names, pictures, None)
    dataset = load_dataset(data)
    images, labels = dataset.x_test[:count], dataset.y_test[:count]
    x = model.check_input(image_kernels.prepare(list(images), model.input_shape, model.input_layout, 1.0, mean, std))
    names = [f"{dataset.name}_{i}_label{label}" for i, label in enumerate(labels)]
    pictures = [as_rgb8(im) for im in image_kernels.to_hwc(x, model.input_layout)]
    return Inputs(x, names, pictures, labels)
