"""``demo``: train a seed model on bundled data, convert it, and write its HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import Progress

from onnxsight.cli.options import err, out


def demo(
    output: Annotated[Path, typer.Option("--output", "-o", help="Parent folder; each run gets a new time-stamped folder.")] = Path("onnxsight-demo"),
    arch: Annotated[str, typer.Option(help="mnist-cnn (seed 000, bundled digits) or cifar-cnn5 (seeds 001/004, bundled colour digits).")] = "mnist-cnn",
    data: Annotated[Optional[Path], typer.Option(help="Your data instead of the bundled set: an MNIST .npz (mnist-cnn) or a CIFAR-10 batches folder (cifar-cnn5).")] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs.")] = 8,
    train_images: Annotated[Optional[int], typer.Option(min=1, help="Train on the first N training images only.")] = None,
    images: Annotated[int, typer.Option(min=1, help="Sample images (one per class) in the report's per-image sections.")] = 10,
    steps: Annotated[int, typer.Option(min=1, help="Activation-maximization steps in the report.")] = 200,
    seed: Annotated[int, typer.Option(help="Seed for the split, weights, shuffling and the report.")] = 0,
) -> None:
    """Train a seed CNN, convert it to ONNX, and write report.html with every seed figure; prints the path and timings."""
    from onnxsight.demo.run import run_demo
    from onnxsight.report import ReportOptions

    with Progress(console=err, transient=True) as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done)

        result = run_demo(output, arch=arch, data=data, epochs=epochs, train_images=train_images, seed=seed,
                          report_options=ReportOptions(images=images, maximize_steps=steps, seed=seed), progress=progress)
    for stage, seconds in result.timings.items():
        err.print(f"{stage:>8}: {seconds:6.1f} s")
    err.print(f"{'total':>8}: {sum(result.timings.values()):6.1f} s")
    out.print(f"test accuracy {result.test_accuracy:.4f}; ONNX matches Keras to {result.max_abs_diff:.2g}")
    out.print(f"model: {result.model_path}")
    out.print(f"report: {result.report_path}")
