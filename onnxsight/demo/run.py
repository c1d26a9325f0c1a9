"""The demo pipeline: train the seed-000 MNIST CNN, convert it, and look inside it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from onnxsight.data.datasets import Dataset, digits, mnist_npz
from onnxsight.data.files import OutputDir
from onnxsight.engine.model import load
from onnxsight.kernels.colors import as_rgb8
from onnxsight.kernels.grids import activation_figure, filter_grid

SHOWN_LAYERS = ("conv2d_1", "conv2d_2")
FILTER_LAYER = "conv2d_1"


@dataclass
class DemoResult:
    """Where the demo wrote its files, how well the model learned, and how long each stage took."""

    folder: Path
    model_path: Path
    test_accuracy: float
    max_abs_diff: float
    timings: dict[str, float] = field(default_factory=dict)


def run_demo(
    output: str | Path = "onnxsight-demo",
    data: str | Path | None = None,
    epochs: int = 8,
    images: int = 4,
    seed: int = 0,
    progress: Callable[[str, int, int], None] | None = None,
) -> DemoResult:
    """Train, convert and write activations and filters into a new time-stamped folder under ``output``.

    ``data`` is a Keras-style MNIST .npz; by default scikit-learn's bundled digits (28x28).
    ``progress(stage, done, total)`` is called as work advances.
    """
    from onnxsight.converters.keras import convert_keras_model
    from onnxsight.demo.architectures import mnist_cnn
    from onnxsight.demo.train import train

    report = progress or (lambda stage, done, total: None)
    folder = OutputDir(Path(output) / datetime.now().strftime("%Y%m%d-%H%M%S-%f"))
    timings: dict[str, float] = {}

    started = time.perf_counter()
    dataset: Dataset = mnist_npz(data) if data is not None else digits(seed=seed)
    timings["data"] = time.perf_counter() - started

    started = time.perf_counter()
    trained = train(mnist_cnn, dataset, epochs=epochs, seed=seed, progress=lambda e: report("train", e, epochs))
    keras_path = folder.file("mnist_cnn.keras")
    trained.model.save(keras_path)
    timings["train"] = time.perf_counter() - started

    started = time.perf_counter()
    conversion = convert_keras_model(trained.model, folder.file("mnist_cnn.onnx"))
    timings["convert"] = time.perf_counter() - started

    started = time.perf_counter()
    model = load(conversion.path)
    chosen = _one_per_class(dataset.y_test, images)
    x = dataset.x_test[chosen]
    predicted = model.predict(x).argmax(axis=1)
    for done, (layer, value) in enumerate(model.activations(x, list(SHOWN_LAYERS)).items(), start=1):
        folder.npy(f"activations_{layer}.npy", value)
        for i, maps in enumerate(np.moveaxis(value, model.channel_axis(layer), 1)):
            name = f"digit{dataset.y_test[chosen[i]]}_pred{predicted[i]}_{layer}.png"
            folder.png(name, activation_figure(as_rgb8(x[i]), maps, columns=8))
        report("look", done, len(SHOWN_LAYERS))
    kernels = model.kernel(FILTER_LAYER)
    folder.png(f"filters_{FILTER_LAYER}.png", filter_grid(kernels))
    folder.npy(f"filters_{FILTER_LAYER}.npy", kernels)
    timings["look"] = time.perf_counter() - started
    return DemoResult(folder.path, conversion.path, trained.test_accuracy, conversion.max_abs_diff, timings)


def _one_per_class(labels: np.ndarray, count: int) -> np.ndarray:
    """Indices of the first test image of each of the first ``count`` classes present."""
    classes = np.unique(labels)[:count]
    return np.array([np.flatnonzero(labels == c)[0] for c in classes])
