"""``report``: every seed figure of a model in one self-contained HTML page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from onnxsight.cli.inputs import load_batch
from onnxsight.cli.options import BatchSize, Device, Force, ModelArg, OptionalImagesArg, err, out
from onnxsight.cli.progress import tracked
from onnxsight.engine.model import load
from onnxsight.errors import InvalidArgument


def report(
    model: ModelArg,
    images: OptionalImagesArg = None,
    data: Annotated[Optional[str], typer.Option("--data", help="'digits', 'colour-digits', an MNIST .npz or a CIFAR-10 folder: its labelled test split.")] = None,
    count: Annotated[Optional[int], typer.Option(min=1, help="Use only the first COUNT test images.")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="The HTML file to write.")] = Path("report.html"),
    samples: Annotated[int, typer.Option("--images", min=1, help="Sample images (one per class) in the per-image sections.")] = 10,
    section: Annotated[Optional[list[str]], typer.Option(help="Only these sections (repeatable); default all.")] = None,
    layer: Annotated[Optional[list[str]], typer.Option("--layer", "-l", help="Layers whose feature maps are shown (default: the first two convolutions); repeatable.")] = None,
    steps: Annotated[int, typer.Option(min=1, help="Activation-maximization steps.")] = 200,
    embed_count: Annotated[int, typer.Option(min=3, help="Images in the t-SNE/PCA scatter.")] = 500,
    saliency_count: Annotated[int, typer.Option(min=2, help="Images per class in the class saliency maps (seed 000: 100).")] = 100,
    title: Annotated[Optional[str], typer.Option(help="Page title.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of SmoothGrad noise, t-SNE, maximization and the gradient check.")] = 0,
    section_seconds: Annotated[float, typer.Option(min=0, help="About how long one section may take: occlusion strides, samples, steps and checked layers are sized down to fit, and the section says so.")] = 30.0,
    batch_size: BatchSize = 64, device: Device = "auto", force: Force = False,
) -> None:
    """One self-contained HTML report (images embedded, no network): summary, accuracy, saliency, CAMs, occlusion, ..."""
    from onnxsight.data.datasets import load_dataset
    from onnxsight.kernels.images import prepare
    from onnxsight.report import ReportData, ReportOptions, write_report

    if bool(images) == bool(data):
        raise InvalidArgument("give images as arguments or a dataset with --data, not both or neither")
    m = load(model, device=device)
    if data:
        dataset = load_dataset(data)
        x = prepare(list(dataset.x_test[:count]), m.input_shape, m.input_layout, 1.0)
        inputs = ReportData(x, dataset.y_test[:count], dataset.class_names, dataset.name)
    else:
        x, _, _ = load_batch(m, images)
        inputs = ReportData(x[:count], name=f"{len(images)} image file(s)")
    options = ReportOptions(images=samples, sections=section, feature_layers=layer, maximize_steps=steps,
                            embed_count=embed_count, saliency_count=saliency_count, seed=seed, batch_size=batch_size,
                            section_seconds=section_seconds)
    with tracked("report", "sections") as progress:
        result = write_report(m, inputs, output, options, title=title, force=force,
                              progress=lambda stage, done, total: progress(done, total))
    for name, seconds in result.timings.items():
        err.print(f"{name:>15}: {seconds:6.1f} s")
    out.print(f"report: {result.path}")
