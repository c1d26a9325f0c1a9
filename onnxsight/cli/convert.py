"""``convert``: a Keras model file or SavedModel to an ONNX file with named layers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from onnxsight.cli.options import Force, err, out


def convert(
    source: Annotated[Path, typer.Argument(help="A Keras .keras or legacy .h5 file, or a SavedModel folder.", show_default=False)],
    output: Annotated[Path, typer.Argument(help="The ONNX file to write.", show_default=False)],
    opset: Annotated[int, typer.Option(min=17, help="ONNX opset version.")] = 17,
    tolerance: Annotated[float, typer.Option(min=0, help="Largest max-abs difference Keras vs ONNX accepted.")] = 1e-4,
    force: Force = False,
) -> None:
    """Convert a Keras model to ONNX, keep every layer addressable by name, and check both agree."""
    from onnxsight.converters.keras import convert_keras_model

    err.print(f"converting {source} ...")
    result = convert_keras_model(source, output, opset=opset, tolerance=tolerance, overwrite=force)
    out.print(
        f"wrote {result.path}: {len(result.layers)} layers, logits {result.logits!r}, "
        f"layout {result.input_layout}; max |keras - onnx| = {result.max_abs_diff:.3g}"
    )
