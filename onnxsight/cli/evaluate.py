"""``onnxsight evaluate``: which map to trust — methods ranked by faithfulness, robustness and complexity metrics."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer
from rich.table import Table

from onnxsight.cli.attribution import DEFAULT_DATA_COUNT, Count, Target, parse_target
from onnxsight.cli.inputs import load_inputs
from onnxsight.cli.options import BatchSize, DataOpt, Device, Force, Mean, ModelArg, OptionalImagesArg, Scale, Std, out
from onnxsight.cli.progress import tracked
from onnxsight.data.files import OutputDir as Folder
from onnxsight.data.files import atomic_write, refuse_overwrite
from onnxsight.engine.model import load
from onnxsight.metrics.evaluation import DEFAULT_METRICS, METHODS, METRICS, evaluate as run_evaluation

COLUMNS = ("method", "metric", "mean", "ci95", "images", "better", "rank")


def evaluate(
    model: ModelArg, images: OptionalImagesArg = None, data: DataOpt = None, count: Count = None,
    target: Target = "predicted",
    method: Annotated[Optional[list[str]], typer.Option(help=f"Repeatable: {', '.join(METHODS)} "
                                                             "(default saliency, gradcam, ig).")] = None,
    metric: Annotated[Optional[list[str]], typer.Option(help=f"Repeatable: {', '.join(METRICS)} "
                                                             f"(default {', '.join(DEFAULT_METRICS)}).")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for evaluation.csv/.json and curves.png.")]
    = Path("evaluation"),
    batch_size: BatchSize = 64, device: Device = "auto", scale: Scale = None, mean: Mean = None, std: Std = None,
    force: Force = False,
) -> None:
    """Rank attribution methods on the same images by metrics (mean and 95 % CI over images): a CSV and
    JSON table, deletion/insertion curves as PNG, and the ranking on stdout."""
    methods, metrics = method or ["saliency", "gradcam", "ig"], metric or list(DEFAULT_METRICS)
    folder = Folder(output, force)
    for name in ("evaluation.json", "evaluation.csv", "curves.png"):  # refused before the work, not after
        refuse_overwrite(folder.path / name, force)
    m = load(model, device=device)
    inputs = load_inputs(m, images, data, count or (DEFAULT_DATA_COUNT if data else None), scale, mean, std)
    with tracked("evaluate", unit="steps") as progress:
        steps, done = len(methods) * len(metrics), [0]

        def report(what: str) -> None:
            done[0] += 1
            progress(done[0], steps)

        result = run_evaluation(m, inputs.x, parse_target(target), methods=methods, metrics=metrics,
                                batch_size=batch_size, report=report)
    folder.json("evaluation.json", {"model": m.source, "images": inputs.names, "target": target, "rows": result.table,
                                    "scores": {k: {n: v.tolist() for n, v in s.items()} for k, s in result.scores.items()}})
    text = io.StringIO()
    writer = csv.DictWriter(text, COLUMNS)
    writer.writeheader()
    writer.writerows(result.table)
    atomic_write(folder.file("evaluation.csv"), text.getvalue().encode())
    if result.curves:
        from onnxsight.report import figures

        series = {name: np.stack([c.mean(axis=0) for c in per_method.values()], axis=1)
                  for name, per_method in result.curves.items()}
        folder.png("curves.png", figures.curves(series, methods, "mean score as pixels are removed / inserted"))
    table = Table(*COLUMNS, title="which map to trust (rank 1 = best)")
    for row in result.table:
        table.add_row(row["method"], row["metric"], f"{row['mean']:.4g}", f"±{row['ci95']:.2g}", str(row["images"]),
                      row["better"], str(row["rank"]))
    out.print(table)
    out.print(f"wrote {len(folder.written)} files to {folder.path}")
