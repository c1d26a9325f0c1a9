"""Typed option aliases shared by the commands, and the consoles they print to."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

out = Console()  # results
err = Console(stderr=True)  # progress, logs, errors

ModelArg = Annotated[Path, typer.Argument(help="ONNX model file.", show_default=False)]
IMAGES_HELP = "Images: PNG/JPEG/BMP/TIFF files (grey or colour) or .npy arrays (one image or a batch)."
ImagesArg = Annotated[list[Path], typer.Argument(help=IMAGES_HELP, show_default=False)]
OptionalImagesArg = Annotated[Optional[list[Path]], typer.Argument(help=IMAGES_HELP + " Or use --data.", show_default=False)]
DataOpt = Annotated[Optional[str], typer.Option("--data", help="Instead of images: 'digits' or 'colour-digits' (bundled), an MNIST .npz or a CIFAR-10 batches folder; its test split.")]
OutputDir = Annotated[Path, typer.Option("--output", "-o", help="Folder for the results (created if missing).")]
Force = Annotated[bool, typer.Option("--force", help="Replace files that already exist in the output.")]
Device = Annotated[str, typer.Option(help="auto (CUDA when it really works, else onnxruntime on the CPU), cpu, cuda or openvino (OpenVINO on the CPU, float32).")]
BatchSize = Annotated[int, typer.Option(min=1, help="Images per onnxruntime call.")]
GradientBatchSize = Annotated[Optional[int], typer.Option(
    min=1, help="Images per onnxruntime call (default 64, fewer when that many would fill a quarter of the free memory).")]
Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON instead of a table.")]
Scale = Annotated[
    Optional[float],
    typer.Option(help="Multiply pixel values by this; default 1/255 for 8/16-bit files and 1 for float .npy."),
]
Mean = Annotated[
    Optional[list[float]],
    typer.Option(help="Subtract per-channel mean after scaling (repeat per channel, or once for all)."),
]
Std = Annotated[
    Optional[list[float]],
    typer.Option(help="Divide by per-channel std after the mean (repeat per channel, or once for all)."),
]
HeadOpt = Annotated[Optional[str], typer.Option(
    "--head", help="The output of a model with several (its name, or its layer's) that 'logits' and 'output' mean; "
                   "default: the first classification head.")]
NamedInputs = Annotated[Optional[list[str]], typer.Option(
    "--input", help="NAME=FILE.npy: feed the model input NAME from an array, one row per image or one for all; "
                    "repeatable. Images and --data feed the primary (image) input.")]
LayerOpt = Annotated[list[str], typer.Option("--layer", "-l", help="Layer name (see `onnxsight inspect`); repeatable.")]
