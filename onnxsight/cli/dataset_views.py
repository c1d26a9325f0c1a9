"""Dataset-level commands: class-saliency, top-k, embed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from onnxsight.cli.inputs import load_inputs
from onnxsight.cli.options import BatchSize, Device, Force, ModelArg, OutputDir, out
from onnxsight.data.files import OutputDir as Folder
from onnxsight.engine.model import load
from onnxsight.kernels.colors import colorize, normalize, overlay
from onnxsight.kernels.grids import side_by_side, tile
from onnxsight.kernels.plots import scatter

Data = Annotated[str, typer.Option("--data", help="'digits' or 'colour-digits' (bundled), an MNIST-style .npz or a CIFAR-10 batches folder; its labelled test split.")]
Count = Annotated[Optional[int], typer.Option(min=1, help="How many test images to use (default: all).")]
LayerName = Annotated[str, typer.Option("--layer", "-l", help="Layer whose units/features are used.")]


def class_saliency(
    model: ModelArg, data: Data = "digits",
    cls: Annotated[int, typer.Option("--class", help="The class whose images are averaged.")] = 0,
    count: Annotated[int, typer.Option(min=2, help="Images of the class to average (seed 000: 100).")] = 100,
    modifier: Annotated[Optional[str], typer.Option(help="guided (seed 000, default), deconv, or vanilla.")] = "guided",
    output: OutputDir = Path("class-saliency"), batch_size: BatchSize = 64, device: Device = "auto", force: Force = False,
) -> None:
    """Seed 000's class saliency map: mean of per-image saliency over a class, its standard error, marginals."""
    from onnxsight.methods.dataset import class_saliency as method

    m = load(model, device=device)
    inputs = load_inputs(m, None, data)
    result = method(m, inputs.x, inputs.labels, cls, count=count, modifier=None if modifier == "vanilla" else modifier,
                    batch_size=batch_size)
    folder = Folder(output, force)
    tiles = [tile([colorize(normalize(a), "jet")], 1, cell=256) for a in (result.mean, result.sem)]
    folder.png(f"class{cls}_mean_sem.png", side_by_side(tiles))
    for name in ("mean", "sem"):
        folder.npy(f"class{cls}_{name}.npy", getattr(result, name))
    folder.json(f"class{cls}.json", {
        "class": cls, "images": result.indices.tolist(), "modifier": modifier,
        **{key: value.tolist() for key, value in result.marginals.items()},
    })
    out.print(f"class {cls}: {len(result.indices)} images; wrote {len(folder.written)} files to {folder.path}")


def top_k(
    model: ModelArg, layer: LayerName, data: Data = "digits", count: Count = None,
    k: Annotated[int, typer.Option(min=1, help="Images per unit.")] = 10,
    unit: Annotated[Optional[list[int]], typer.Option(help="Units to show (default: the first 8); repeatable.")] = None,
    occlusion: Annotated[bool, typer.Option("--occlusion", help="Also occlusion masks of each top image for its unit (seed 003: window 11, stride 4).")] = False,
    window: Annotated[int, typer.Option(min=1, help="Occlusion window.")] = 11,
    stride: Annotated[int, typer.Option(min=1, help="Occlusion stride.")] = 4,
    output: OutputDir = Path("top-k"), batch_size: BatchSize = 64, device: Device = "auto", force: Force = False,
) -> None:
    """Seed 003: the K test images that activate each unit of a layer most, optionally with occlusion masks."""
    from onnxsight.methods.dataset import top_k_images
    from onnxsight.methods.occlusion import occlusion as occlude

    m = load(model, device=device)
    inputs = load_inputs(m, None, data, count)
    result = top_k_images(m, inputs.x, layer, k=k, units=unit if unit else range(8), batch_size=batch_size)
    folder = Folder(output, force)
    for column, u in enumerate(result.units):
        chosen = result.indices[:, column]
        pictures = [inputs.pictures[i] for i in chosen]
        row = [tile(pictures, len(pictures), cell=64, labels=[f"{s:.2f}" for s in result.scores[:, column]])]
        if occlusion:
            maps = occlude(m, inputs.x[chosen], target=int(u), of=layer, window=window, stride=stride)
            row.append(tile([overlay(p, normalize(h)) for p, h in zip(pictures, maps)], len(pictures), cell=64))
        folder.png(f"{layer}_unit{u}.png", np.concatenate(row, axis=0) if len(row) > 1 else row[0])
    folder.json(f"{layer}_top{k}.json", {
        "layer": layer, "units": result.units.tolist(), "images": result.indices.T.tolist(), "scores": result.scores.T.tolist(),
    })
    out.print(f"{layer}: top {k} of {len(inputs.x)} images for {len(result.units)} units; wrote {len(folder.written)} files to {folder.path}")


def embed(
    model: ModelArg, layer: LayerName, data: Data = "digits", count: Count = None,
    method: Annotated[str, typer.Option(help="auto (t-SNE if scikit-learn is installed, else PCA), tsne or pca.")] = "auto",
    seed: Annotated[int, typer.Option(help="t-SNE seed.")] = 0,
    output: OutputDir = Path("embed"), batch_size: BatchSize = 64, device: Device = "auto", force: Force = False,
) -> None:
    """Seed 003: a 2-D map (t-SNE or PCA) of a layer's features, coloured by class."""
    from onnxsight.methods.dataset import embedding

    m = load(model, device=device)
    inputs = load_inputs(m, None, data, count)
    result = embedding(m, inputs.x, layer, method=method, seed=seed, batch_size=batch_size)
    folder = Folder(output, force)
    folder.png(f"{layer}_{result.method}.png", scatter(result.points, inputs.labels))
    folder.npy(f"{layer}_{result.method}.npy", result.points)
    folder.json(f"{layer}_{result.method}.json", {"layer": layer, "method": result.method,
                                                   "labels": inputs.labels.tolist(), "points": result.points.tolist()})
    out.print(f"{layer}: {result.method} of {len(inputs.x)} images; wrote {len(folder.written)} files to {folder.path}")
