"""Labelled image sets: scikit-learn's bundled digits as 28x28 MNIST look-alikes, or a user's MNIST .npz."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from onnxsight.errors import InvalidArgument, MissingDependency, ModelFileError


@dataclass(frozen=True)
class Dataset:
    """Train/test images (N, H, W, C) float32 in [0, 1] with integer labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    name: str


def digits(size: int = 28, test_fraction: float = 0.25, seed: int = 0) -> Dataset:
    """scikit-learn's 1,797 bundled 8x8 handwritten digits, resized to ``size`` pixels, split by class."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as error:
        raise MissingDependency("scikit-learn", "demo") from error
    bunch = load_digits()
    images = np.stack([cv2.resize(im / 16.0, (size, size), interpolation=cv2.INTER_LINEAR) for im in bunch.images])
    x = np.clip(images, 0, 1).astype(np.float32)[..., None]
    x_train, x_test, y_train, y_test = train_test_split(
        x, bunch.target, test_size=test_fraction, random_state=seed, stratify=bunch.target
    )
    return Dataset(x_train, y_train, x_test, y_test, tuple(str(d) for d in range(10)), "digits")


def mnist_npz(path: str | Path) -> Dataset:
    """A Keras-style ``mnist.npz`` (x_train, y_train, x_test, y_test; uint8 images)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"data file not found: {path}")
    try:
        with np.load(path) as data:
            arrays = {key: data[key] for key in ("x_train", "y_train", "x_test", "y_test")}
    except KeyError as error:
        raise InvalidArgument(f"{path}: an MNIST .npz needs x_train, y_train, x_test, y_test ({error})") from error
    except (OSError, ValueError) as error:
        raise ModelFileError(f"{path} is not a readable .npz file: {error}") from error

    def images(a: np.ndarray) -> np.ndarray:
        a = a.astype(np.float32) / (255.0 if np.issubdtype(a.dtype, np.integer) else 1.0)
        return a[..., None] if a.ndim == 3 else a

    return Dataset(
        images(arrays["x_train"]), arrays["y_train"].astype(np.int64).ravel(),
        images(arrays["x_test"]), arrays["y_test"].astype(np.int64).ravel(),
        tuple(str(d) for d in range(10)), path.name,
    )


def load_dataset(spec: str | Path) -> Dataset:
    """``"digits"`` (the bundled set at 28x28) or the path of a Keras-style MNIST ``.npz``."""
    if str(spec) == "digits":
        return digits()
    path = Path(spec)
    if path.suffix.lower() != ".npz":
        raise InvalidArgument(f"--data takes 'digits' or an MNIST-style .npz file, got {spec}")
    return mnist_npz(path)
