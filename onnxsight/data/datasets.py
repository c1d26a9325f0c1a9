"""Labelled image sets: scikit-learn's bundled digits as 28x28 MNIST look-alikes or as 32x32 colour
pictures, a user's MNIST .npz or CIFAR-10 batches."""

from __future__ import annotations

from dataclasses import dataclass
import pickle
from pathlib import Path

import cv2
import numpy as np

from onnxsight.data.images import read_image
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


class _ArraysOnly(pickle.Unpickler):
    """Unpickles dicts, lists, bytes and numpy arrays only: a batch file cannot run code."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def cifar10_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One file of the CIFAR-10 python version: (N, 32, 32, 3) float32 in [0, 1] and int64 labels."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"CIFAR-10 batch file not found: {path}")
    try:
        with path.open("rb") as file:
            batch = _ArraysOnly(file, encoding="bytes").load()
        pixels, labels = batch[b"data"], batch[b"labels"]
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, AttributeError) as error:
        raise ModelFileError(f"{path} is not a CIFAR-10 python batch (a pickled dict with data and labels): {error}") from error
    images = np.asarray(pixels, dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images.astype(np.float32) / 255.0, np.asarray(labels, dtype=np.int64)


def cifar10(folder: str | Path) -> Dataset:
    """The ``cifar-10-batches-py`` folder: ``data_batch_1..5`` for training, ``test_batch`` for testing."""
    folder = Path(folder)
    train_files = sorted(folder.glob("data_batch_*"))
    if not folder.is_dir() or not train_files or not (folder / "test_batch").is_file():
        raise ModelFileError(f"{folder}: a CIFAR-10 folder needs data_batch_1..5 and test_batch (the python version)")
    train = [cifar10_batch(f) for f in train_files]
    x_test, y_test = cifar10_batch(folder / "test_batch")
    return Dataset(
        np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), x_test, y_test,
        CIFAR10_CLASSES, folder.name,
    )


def colour_digits(size: int = 32, test_fraction: float = 0.25, seed: int = 0) -> Dataset:
    """A small CIFAR-shaped stand-in made offline: scikit-learn's 1,797 bundled digits at ``size`` pixels, RGB.

    Each digit gets a random saturated foreground colour and is drawn over a random crop of
    scikit-learn's two bundled sample photos (``china.jpg``, ``flower.jpg``), darkened to keep
    the digit readable. It is not CIFAR-10 (the classes are still the digits 0-9), only shaped
    like it (32x32x3 in [0, 1]) so that colour models such as seed 001's CNN5 train in seconds.
    """
    base = digits(size, test_fraction, seed)
    photos = _sample_photos()
    rng = np.random.default_rng(seed)

    def colour(images: np.ndarray) -> np.ndarray:
        out = np.empty((len(images), size, size, 3), np.float32)
        for i, mask in enumerate(images):
            photo = photos[rng.integers(len(photos))]
            top, left = rng.integers(0, photo.shape[0] - 4 * size), rng.integers(0, photo.shape[1] - 4 * size)
            crop = cv2.resize(photo[top:top + 4 * size, left:left + 4 * size], (size, size), interpolation=cv2.INTER_AREA)
            hue = cv2.cvtColor(np.uint8([[[rng.integers(180), 255, 255]]]), cv2.COLOR_HSV2RGB)[0, 0] / 255.0
            out[i] = mask * hue + (1 - mask) * 0.5 * crop
        return out

    return Dataset(colour(base.x_train), base.y_train, colour(base.x_test), base.y_test, base.class_names, "colour-digits")


def _sample_photos() -> list[np.ndarray]:
    """scikit-learn's bundled sample photos as float32 RGB in [0, 1] (read with opencv; no download)."""
    try:
        from importlib.resources import files

        folder = files("sklearn.datasets") / "images"
    except ModuleNotFoundError as error:
        raise MissingDependency("scikit-learn", "demo") from error
    paths = [Path(str(folder / name)) for name in ("china.jpg", "flower.jpg")]
    if not all(path.is_file() for path in paths):
        raise MissingDependency("scikit-learn (its bundled sample images)", "demo")
    return [read_image(path).astype(np.float32) / 255.0 for path in paths]


def load_dataset(spec: str | Path) -> Dataset:
    """``"digits"`` (the bundled set at 28x28), ``"colour-digits"`` (the bundled set as 32x32 RGB),
    a Keras-style MNIST ``.npz`` or a CIFAR-10 batches folder."""
    if str(spec) == "digits":
        return digits()
    if str(spec) == "colour-digits":
        return colour_digits()
    path = Path(spec)
    if path.is_dir():
        return cifar10(path)
    if path.suffix.lower() != ".npz":
        raise InvalidArgument(f"--data takes 'digits', 'colour-digits', an MNIST-style .npz file or a CIFAR-10 batches folder, got {spec}")
    return mnist_npz(path)
