"""``augment`` and ``gradcheck``: gradient graphs as standalone ONNX files, verified numerically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer
from rich.table import Table

from onnxsight.cli.inputs import load_inputs
from onnxsight.cli.options import Device, Force, HeadOpt, Json, ModelArg, NamedInputs, err, out
from onnxsight.data.files import atomic_open, refuse_overwrite
from onnxsight.engine.augment import MODIFIERS, augment_model
from onnxsight.engine.gradcheck import gradcheck as check
from onnxsight.engine.model import load
from onnxsight.errors import InvalidArgument

Of = Annotated[str, typer.Option(help="Tensor to differentiate: logits (pre-softmax), output, or a layer/tensor name.")]
Wrt = Annotated[Optional[list[str]], typer.Option(help="Differentiate with respect to: input, or a layer/tensor; repeatable.")]


def augment(
    model: ModelArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="The augmented ONNX file to write.")],
    of: Of = "logits",
    wrt: Wrt = None,
    modifier: Annotated[Optional[str], typer.Option(help="Backprop modifier: guided or deconv (keras-vis 'relu').")] = None,
    activation: Annotated[Optional[list[str]], typer.Option(help="Also output this layer's activation; repeatable.")] = None,
    force: Force = False,
) -> None:
    """Write the model plus a gradient subgraph, as one plain ONNX file any ONNX runtime can serve.

    Extra input: the cotangent of OF (same shape). Extra outputs: d(sum(OF * cotangent))/d(WRT) for each WRT.
    """
    if modifier not in MODIFIERS:
        raise InvalidArgument(f"unknown modifier {modifier!r}; choose guided or deconv")
    refuse_overwrite(output, force)
    m = load(model, device="cpu")
    result = augment_model(m, of, wrt or ["input"], modifier, activation or [])
    with atomic_open(output) as handle:
        handle.write(result.model.SerializeToString())
    table = Table(title=f"{output}: inputs and outputs added to {model.name}")
    for column in ("Kind", "Name", "Tensor"):
        table.add_column(column)
    table.add_row("input", f"cotangent of {of}", result.cotangent)
    for name, tensor in result.gradients.items():
        table.add_row("output", f"gradient wrt {name}", tensor)
    for name, tensor in result.activations.items():
        table.add_row("output", f"activation {name}", tensor)
    out.print(table)


def gradcheck(
    model: ModelArg,
    images: Annotated[Optional[list[Path]], typer.Argument(help="Images or .npy to check at (default: random inputs).")] = None,
    of: Of = "logits",
    wrt: Wrt = None,
    all_layers: Annotated[bool, typer.Option("--all-layers", help="Check the input and every layer OF depends on.")] = False,
    input_shape: Annotated[Optional[str], typer.Option(help="Shape of one input for random data when the model's is dynamic, e.g. 28,28,1.")] = None,
    batch: Annotated[int, typer.Option(min=1, help="Random inputs to check at.")] = 2,
    directions: Annotated[int, typer.Option(min=1, help="Random directions per tensor.")] = 3,
    precision: Annotated[str, typer.Option(help="float64 (tight; onnx.reference where onnxruntime lacks double ops) or float32.")] = "float64",
    tolerance: Annotated[Optional[float], typer.Option(help="Largest relative error accepted (default 1e-5 float64, 5e-2 float32).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for inputs, cotangent and directions.")] = 0,
    device: Device = "cpu",
    as_json: Json = False,
    head: HeadOpt = None,
    named: NamedInputs = None,
) -> None:
    """Check the gradient graph against central finite differences; exit code 1 when an error exceeds the tolerance.

    A model with several inputs is checked at random values of each (integer inputs: zeros),
    with respect to every float input by default."""
    m = load(model, device=device).with_output(head)
    x = load_inputs(m, images, named=named).x if images or named else _random_input(m, input_shape, batch, seed)
    inputs = ["input"] if len(m.input_names) == 1 else m.differentiable_inputs()
    names = wrt or inputs
    if all_layers:
        names = [*inputs, *(layer.name for layer in m.layers if _upstream_of(m, layer.tensor, m.tensor(of)))]
    report = check(m, x, of=of, wrt=names, directions=directions, tolerance=tolerance, precision=precision, seed=seed)
    if as_json:
        out.print_json(json.dumps({
            "of": of, "precision": report.precision, "runtime": report.runtime, "tolerance": report.tolerance,
            "passed": report.passed, "rows": [row.__dict__ for row in report.rows],
        }))
    else:
        table = Table(title=f"gradcheck of {of} ({report.precision}, {report.runtime}, tolerance {report.tolerance:g})")
        for column in ("wrt", "relative error", "analytic", "numeric", "kinks", "status"):
            table.add_column(column, justify="left" if column in ("wrt", "status") else "right")
        for row in report.rows:
            style = "red" if row.status == "FAIL" else "yellow" if row.status == "kink" else "green"
            table.add_row(row.wrt, f"{row.relative_error:.2e}", f"{row.analytic:.6g}", f"{row.numeric:.6g}",
                          f"{row.kinks}/{report.directions}", f"[{style}]{row.status}[/]")
        out.print(table)
    if not report.passed:
        err.print("[bold red]error:[/] gradient check failed: " +
                  ", ".join(r.wrt for r in report.rows if not r.passed), highlight=False, soft_wrap=True)
        raise typer.Exit(1)


def _random_input(m, input_shape: str | None, batch: int, seed: int):
    """Uniform [0, 1) values for each float input, zeros for integer ones; ``input_shape`` sizes
    the primary input when its shape is dynamic."""
    rng, x = np.random.default_rng(seed), {}
    for name in m.input_names:
        dims = list(m.shapes[name][1:])
        if input_shape and name == m.input_name:
            try:
                dims = [int(d) for d in input_shape.split(",")]
            except ValueError as error:
                raise InvalidArgument(f"--input-shape must be comma-separated integers, got {input_shape!r}") from error
        if any(d is None for d in dims):
            raise InvalidArgument(f"the model input {name!r} has the dynamic shape {m.shapes[name]}; give --input-shape")
        dtype = m.dtype_of(name)
        x[name] = rng.uniform(0, 1, (batch, *dims)).astype(dtype) if np.issubdtype(dtype, np.floating) \
            else np.zeros((batch, *dims), dtype)
    return x if len(x) > 1 else x[m.input_name]


def _upstream_of(m, tensor: str, of: str) -> bool:
    """True when ``of`` depends on ``tensor`` (and ``tensor`` is not ``of``'s own shape path)."""
    from onnxsight.engine.graph import dependent_tensors

    return tensor not in m.input_names and of in dependent_tensors(m.proto.graph, [tensor])
