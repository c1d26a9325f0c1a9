"""``demo``: train the seed-000 MNIST CNN on bundled digits, convert it, and show what it learned."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import Progress

from onnxsight.cli.options import err, out


def demo(
    output: Annotated[Path, typer.Option("--output", "-o", help="Parent folder; each run gets a new time-stamped folder.")] = Path("onnxsight-demo"),
    data: Annotated[Optional[Path], typer.Option(help="A Keras-style MNIST .npz instead of the bundled digits.")] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs.")] = 8,
    images: Annotated[int, typer.Option(min=1, max=10, help="Test digits to show (one per class).")] = 4,
    seed: Annotated[int, typer.Option(help="Seed for the split, weights and shuffling.")] = 0,
) -> None:
    """Train seed 000's CNN (Conv32-Pool-Conv64-Dropout-Pool-Dense1000-Dense10 'preds'), convert, look inside."""
    from onnxsight.demo.run import run_demo

    with Progress(console=err, transient=True) as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done)

        result = run_demo(output, data=data, epochs=epochs, images=images, seed=seed, progress=progress)
    for stage, seconds in result.timings.items():
        err.print(f"{stage:>8}: {seconds:6.1f} s")
    out.print(f"test accuracy {result.test_accuracy:.4f}; ONNX matches Keras to {result.max_abs_diff:.2g}")
    out.print(f"model: {result.model_path}")
    out.print(f"results: {result.folder}")
