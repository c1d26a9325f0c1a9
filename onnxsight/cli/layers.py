"""``activations`` and ``filters``: feature maps and convolution weights as pictures."""

from __future__ import annotations

from typing import Annotated, Optional

import numpy as np
import typer

from onnxsight.cli.inputs import load_batch
from onnxsight.cli.options import (
    BatchSize, Device, Force, ImagesArg, LayerOpt, Mean, ModelArg, OutputDir, Scale, Std, err, out,
)
from onnxsight.data.files import OutputDir as Folder
from onnxsight.engine.model import load
from onnxsight.kernels.colors import COLORMAPS
from onnxsight.kernels.grids import activation_figure, filter_grid

Columns = Annotated[Optional[int], typer.Option(min=1, help="Tiles per row (default: a square grid).")]


def activations(
    model: ModelArg,
    images: ImagesArg,
    layer: LayerOpt,
    output: OutputDir = "activations",
    columns: Columns = None,
    cmap: Annotated[str, typer.Option(help=f"Colormap: {', '.join(COLORMAPS)}.")] = "gray",
    scale: Scale = None,
    mean: Mean = None,
    std: Std = None,
    batch_size: BatchSize = 64,
    device: Device = "auto",
    force: Force = False,
) -> None:
    """Feature maps of layers for each image: one PNG grid per image and layer, plus LAYER.npy with the batch."""
    m = load(model, device=device)
    x, names, pictures = load_batch(m, images, scale, mean, std)
    values = m.activations(x, layer, batch_size=batch_size)
    folder = Folder(output, force)
    for name, value in values.items():
        maps = np.moveaxis(value, m.channel_axis(name), 1) if value.ndim == 4 else value.reshape(len(value), -1)
        folder.npy(f"{name}.npy", value)
        for image_name, picture, image_maps in zip(names, pictures or [None] * len(x), maps):
            if picture is None:
                continue
            folder.png(f"{image_name}_{name}.png", activation_figure(picture, image_maps, columns, cmap))
        err.print(f"{name}: {value.shape[1:]} for {len(x)} images")
    out.print(f"wrote {len(folder.written)} files to {folder.path}")


def filters(
    model: ModelArg,
    layer: Annotated[str, typer.Option("--layer", "-l", help="A convolution layer (see `onnxsight inspect`).")],
    output: OutputDir = "filters",
    columns: Columns = None,
    force: Force = False,
) -> None:
    """A convolution layer's weights as a grid: RGB for 3-channel inputs, else the channel mean (blue-white-red)."""
    m = load(model, device="cpu")
    kernels = m.kernel(layer)
    folder = Folder(output, force)
    folder.png(f"{layer}_filters.png", filter_grid(kernels, columns))
    folder.npy(f"{layer}_filters.npy", kernels)
    out.print(f"{layer}: {kernels.shape[0]} filters of {kernels.shape[1]}x{kernels.shape[2]}x{kernels.shape[3]}; "
              f"wrote {len(folder.written)} files to {folder.path}")
