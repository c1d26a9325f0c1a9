"""``inspect`` and ``predict``: what a model is, and what it says about images."""

from __future__ import annotations

import json
from typing import Annotated

import numpy as np
import typer
from rich.table import Table

from onnxsight.cli.inputs import load_inputs
from onnxsight.cli.options import BatchSize, Device, HeadOpt, ImagesArg, Json, Mean, ModelArg, NamedInputs, Scale, Std, out
from onnxsight.engine.model import load
from onnxsight.engine.targets import class_scores


def _shape(shape) -> str:
    return "?" if shape is None else "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def inspect(model: ModelArg, as_json: Json = False) -> None:
    """Print the layer table (name, op, output shape, params), like Keras' summary(); the layers of
    nested models are indented under theirs (address them as ``model/layer``)."""
    m = load(model, device="cpu")
    depth = {record.name: record.depth for record in m.metadata.layers}
    rows = [
        {"name": layer.name, "op": layer.kind or layer.op, "shape": _shape(layer.shape), "params": layer.params,
         "depth": depth.get(layer.name, 0)}
        for layer in m.layers
    ]
    summary = {
        "model": str(model), "input": m.input_name, "input_shape": _shape(m.input_shape),
        "layout": m.input_layout, "logits": m.logits, "outputs": m.output_names,
        "inputs": {name: {"shape": _shape(m.shapes[name]), "layout": m.input_layouts[name]} for name in m.input_names},
        "heads": {name: m.logits_of(name) for name in m.output_names}, "default_head": m.head,
        "params": sum(r["params"] for r in rows if r["depth"] == 0), "layers": rows,
    }
    if as_json:
        out.print_json(json.dumps(summary))
        return
    table = Table(title=f"{model.name}: input {m.input_name} {summary['input_shape']} {m.input_layout}")
    for column, justify in (("Layer", "left"), ("Op", "left"), ("Output shape", "left"), ("Param #", "right")):
        table.add_column(column, justify=justify)
    for r in rows:
        name = "  " * r["depth"] + r["name"].rsplit("/", 1)[-1] if r["depth"] else r["name"]
        table.add_row(name, r["op"], r["shape"], f"{r['params']:,}")
    out.print(table)
    out.print(f"Total params: {summary['params']:,}   logits: {m.logits}   outputs: {', '.join(m.output_names)}")
    if len(m.input_names) > 1 or len(m.output_names) > 1:
        out.print("inputs: " + ", ".join(f"{n} {summary['inputs'][n]['shape']}" for n in m.input_names)
                  + "   heads (logits): " + ", ".join(f"{h} ({t})" for h, t in summary["heads"].items())
                  + f"   default head: {m.head}")


def predict(
    model: ModelArg,
    images: ImagesArg,
    top: Annotated[int, typer.Option(min=1, help="How many classes to list per image.")] = 3,
    scale: Scale = None,
    mean: Mean = None,
    std: Std = None,
    batch_size: BatchSize = 64,
    device: Device = "auto",
    as_json: Json = False,
    head: HeadOpt = None,
    named: NamedInputs = None,
) -> None:
    """Classify images: the top classes and their scores for each image."""
    m = load(model, device=device).with_output(head)
    inputs = load_inputs(m, images, None, None, scale, mean, std, named)
    names = inputs.names
    scores = class_scores(m.predict(inputs.x, batch_size=batch_size))
    order = np.argsort(-scores, axis=1)[:, :top]
    results = [
        {"image": name, "top": [{"class": int(c), "score": float(row[c])} for c in best]}
        for name, row, best in zip(names, scores, order)
    ]
    if as_json:
        out.print_json(json.dumps(results))
        return
    table = Table(title=f"{model.name}: predictions")
    table.add_column("Image")
    for k in range(order.shape[1]):
        table.add_column(f"#{k + 1} class (score)")
    for r in results:
        table.add_row(r["image"], *(f"{t['class']} ({t['score']:.4f})" for t in r["top"]))
    out.print(table)
