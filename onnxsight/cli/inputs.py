"""Turn the image arguments of a command into a model batch plus what is needed to show it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxsight.data.datasets import load_dataset
from onnxsight.data.images import read_images, read_npy
from onnxsight.engine import model as engine
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
    """The batch in model layout (of the primary input), a name per image, and each input as an RGB uint8 picture.

    Float arrays already shaped like one model input (e.g. rows of a .npy batch) are used as they are.
    """
    images, names = read_images(paths)
    shape = tuple(model.input_shape[1:])

    def as_input(image: np.ndarray) -> np.ndarray:
        if image.shape == shape and np.issubdtype(image.dtype, np.floating):
            return image[None].astype(np.float32)
        return image_kernels.prepare([image], model.input_shape, model.input_layout, scale, mean, std)

    x = np.concatenate([as_input(np.asarray(image)) for image in images])
    x = model.check_array(model.input_name, x)
    pictures = [as_rgb8(im) for im in image_kernels.to_hwc(x, model.input_layout)] if x.ndim == 4 else []
    return x, names, pictures


@dataclass(frozen=True)
class Inputs:
    """A model batch (a dict by input name for a model with several inputs), a name and a picture
    per image, and labels when they came from a dataset."""

    x: engine.Inputs
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
    named: Sequence[str] | None = None,
) -> Inputs:
    """Images from files, or the test split of a dataset (``--data``), in the model's input form,
    with the inputs ``named`` by ``--input NAME=FILE.npy``.

    ``count`` keeps the first images of a dataset (all when None).
    """
    arrays = named_arrays(model, named)
    if model.input_name in arrays:
        if paths or data:
            raise InvalidArgument(f"--input {model.input_name}=... feeds the primary input; give no images or --data")
        x = arrays.pop(model.input_name)
        x = x[None] if x.ndim == len(model.input_shape) - 1 else x
        names, labels = [f"{model.input_name}_{i}" for i in range(len(x))], None
    elif bool(paths) == bool(data):
        raise InvalidArgument("give images as arguments or a dataset with --data, not both or neither")
    elif paths:
        x, names, _ = load_batch(model, paths, scale, mean, std)
        labels = None
    else:
        dataset = load_dataset(data)
        images, labels = dataset.x_test[:count], dataset.y_test[:count]
        x = image_kernels.prepare(list(images), model.input_shape, model.input_layout, 1.0, mean, std)
        names = [f"{dataset.name}_{i}_label{label}" for i, label in enumerate(labels)]
    batch = model.check_input(_with_named(model, x, arrays))
    image = model.input_feeds(batch)[model.input_name]
    pictures = [as_rgb8(im) for im in image_kernels.to_hwc(image, model.input_layout)] if image.ndim == 4 else []
    return Inputs(batch, names, pictures, labels)


def named_arrays(model: Model, specs: Sequence[str] | None) -> dict[str, np.ndarray]:
    """``--input NAME=FILE.npy`` options as arrays by input name."""
    arrays = {}
    for spec in specs or ():
        name, sign, path = spec.partition("=")
        if not sign or not name or not path:
            raise InvalidArgument(f"--input must be NAME=FILE.npy, got {spec!r}")
        if name not in model.input_names:
            raise InvalidArgument(f"--input {name!r}: {model.source} has the inputs {', '.join(model.input_names)}")
        arrays[name] = read_npy(Path(path))
    return arrays


def _with_named(model: Model, x: np.ndarray, arrays: dict[str, np.ndarray]) -> engine.Inputs:
    """The primary batch ``x`` with the other inputs; an input given as one row (or without a batch
    axis) is repeated for every image."""
    missing = [name for name in model.input_names if name != model.input_name and name not in arrays]
    if missing:
        raise InvalidArgument(f"{model.source} also needs the inputs {', '.join(missing)}: give --input NAME=FILE.npy")
    if not arrays:
        return x
    batch = {model.input_name: x}
    for name, value in arrays.items():
        value = value[None] if value.ndim == len(model.shapes[name]) - 1 else value
        batch[name] = np.repeat(value, len(x), axis=0) if len(value) == 1 else value
    return batch

