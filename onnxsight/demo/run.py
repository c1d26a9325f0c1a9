"""The demo pipeline: train a seed model on bundled (or the user's) data, convert it, and write its report."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

from onnxsight.data.datasets import Dataset, colour_digits, digits, load_dataset
from onnxsight.data.files import OutputDir
from onnxsight.engine.model import load
from onnxsight.errors import InvalidArgument
from onnxsight.report import ReportData, ReportOptions, write_report


@dataclass(frozen=True)
class Architecture:
    """A seed model: its builder's name in ``demo.architectures``, its input, and its bundled data."""

    builder: str
    input_shape: tuple[int, int, int]
    bundled: Callable[..., Dataset]


ARCHITECTURES = {
    "mnist-cnn": Architecture("mnist_cnn", (28, 28, 1), digits),  # seed 000
    "cifar-cnn5": Architecture("cifar_cnn5", (32, 32, 3), colour_digits),  # seeds 001 and 004
}


@dataclass
class DemoResult:
    """Where the demo wrote its files, how well the model learned, and how long each stage took."""

    folder: Path
    model_path: Path
    report_path: Path
    test_accuracy: float
    max_abs_diff: float
    timings: dict[str, float] = field(default_factory=dict)


def run_demo(
    output: str | Path = "onnxsight-demo",
    arch: str = "mnist-cnn",
    data: str | Path | None = None,
    epochs: int = 8,
    train_images: int | None = None,
    seed: int = 0,
    report_options: ReportOptions | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> DemoResult:
    """Train ``arch``, convert it to ONNX and write ``report.html`` into a new time-stamped folder under ``output``.

    ``data``: a Keras-style MNIST .npz (mnist-cnn) or a CIFAR-10 batches folder (cifar-cnn5);
    by default the architecture's bundled set. ``train_images`` keeps the first N training
    images. ``progress(stage, done, total)`` is called as work advances.
    """
    from onnxsight.converters.keras import convert_keras_model
    from onnxsight.demo import architectures
    from onnxsight.demo.train import train

    if arch not in ARCHITECTURES:
        raise InvalidArgument(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    chosen = ARCHITECTURES[arch]
    report = progress or (lambda stage, done, total: None)
    folder = OutputDir(Path(output) / datetime.now().strftime("%Y%m%d-%H%M%S-%f"))
    timings: dict[str, float] = {}

    started = time.perf_counter()
    dataset = load_dataset(data) if data is not None else chosen.bundled(seed=seed)
    if dataset.x_train.shape[1:] != chosen.input_shape:
        raise InvalidArgument(f"{arch} takes {chosen.input_shape} images; {dataset.name} has {dataset.x_train.shape[1:]}")
    if train_images is not None:
        dataset = replace(dataset, x_train=dataset.x_train[:train_images], y_train=dataset.y_train[:train_images])
    timings["data"] = time.perf_counter() - started

    started = time.perf_counter()
    trained = train(getattr(architectures, chosen.builder), dataset, epochs=epochs, seed=seed,
                    progress=lambda e: report("train", e, epochs))
    trained.model.save(folder.file(f"{chosen.builder}.keras"))
    timings["train"] = time.perf_counter() - started

    started = time.perf_counter()
    conversion = convert_keras_model(trained.model, folder.file(f"{chosen.builder}.onnx"))
    timings["convert"] = time.perf_counter() - started

    started = time.perf_counter()
    model = load(conversion.path)
    written = write_report(
        model, ReportData(dataset.x_test, dataset.y_test, dataset.class_names, dataset.name), folder.file("report.html"),
        report_options, title=f"onnxsight demo: {arch} on {dataset.name}", progress=report,
    )
    timings["report"] = time.perf_counter() - started
    return DemoResult(folder.path, conversion.path, written.path, trained.test_accuracy, conversion.max_abs_diff, timings)
