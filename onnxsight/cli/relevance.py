"""``lrp``: Layer-wise Relevance Propagation maps (LRP rules, Zennit's composites, Deep Taylor)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from onnxsight.cli.attribution import DEFAULT_DATA_COUNT, Count, Of, Target, gradient_plan, parse_target
from onnxsight.cli.inputs import load_inputs
from onnxsight.cli.options import (
    DataOpt, Device, Force, GradientBatchSize, HeadOpt, Mean, ModelArg, NamedInputs, OptionalImagesArg, OutputDir,
    Scale, Std, err, out,
)
from onnxsight.cli.progress import DryRun, announce, tracked
from onnxsight.data.files import OutputDir as Folder
from onnxsight.engine.model import load
from onnxsight.kernels.colors import COLORMAPS, normalize
from onnxsight.kernels.grids import attribution_figure
from onnxsight.kernels.images import spatial_size
from onnxsight.methods.relevance import RULES, STARTS, lrp as method, relevance_modifier

Number = Optional[float]


def lrp(
    model: ModelArg, images: OptionalImagesArg = None, data: DataOpt = None, count: Count = None,
    target: Target = "predicted", of: Of = "logits",
    rule: Annotated[str, typer.Option(help=f"LRP rule or composite: {', '.join(RULES)}.")] = "epsilon",
    epsilon: Annotated[float, typer.Option(min=0, help="ε of the epsilon rule (Zennit's default).")] = 1e-6,
    gamma: Annotated[float, typer.Option(min=0, help="γ of the gamma rule.")] = 0.25,
    alpha: Annotated[float, typer.Option(min=0, help="α of the alpha-beta rule (α − β = 1).")] = 2.0,
    beta: Annotated[float, typer.Option(min=0, help="β of the alpha-beta rule.")] = 1.0,
    low: Annotated[Number, typer.Option(help="z^B lower bound of the first layer's input (default: each image's minimum).")] = None,
    high: Annotated[Number, typer.Option(help="z^B upper bound (default: each image's maximum).")] = None,
    stabilizer: Annotated[float, typer.Option(min=0, help="ε of every other rule's denominator.")] = 1e-6,
    start: Annotated[str, typer.Option(help="Initial relevance: score (the target's logit) or one (Zennit's one-hot).")] = "score",
    output: OutputDir = Path("lrp"),
    cmap: Annotated[str, typer.Option(help=f"Heat-map colormap: {', '.join(COLORMAPS)}; 0 is its middle.")] = "bwr",
    batch_size: GradientBatchSize = None, device: Device = "auto", scale: Scale = None, mean: Mean = None,
    std: Std = None, force: Force = False, dry_run: DryRun = False, head: HeadOpt = None, named: NamedInputs = None,
) -> None:
    """Layer-wise Relevance Propagation (Bach et al.; Zennit's rules): relevance summed over channels, signed."""
    from onnxsight.errors import InvalidArgument

    options = {"rule": rule, "epsilon": epsilon, "gamma": gamma, "alpha": alpha, "beta": beta, "low": low,
               "high": high, "stabilizer": stabilizer, "start": start}
    modifier = relevance_modifier(rule, epsilon=epsilon, gamma=gamma, alpha=alpha, beta=beta, low=low, high=high,
                                  stabilizer=stabilizer)
    if start not in STARTS:
        raise InvalidArgument(f"--start must be one of {', '.join(STARTS)}, got {start!r}")
    if cmap not in COLORMAPS:
        raise InvalidArgument(f"--cmap must be one of {', '.join(COLORMAPS)}, got {cmap!r}")
    m = load(model, device=device).with_output(head)
    inputs = load_inputs(m, images, data, count or (DEFAULT_DATA_COUNT if data else None), scale, mean, std, named)
    indices = m.resolve_target(inputs.x, parse_target(target), of)
    announce("lrp", gradient_plan(1, of, batch_size, modifier)(m, inputs.x, indices), dry_run)
    with tracked("lrp") as progress:
        maps = method(m, inputs.x, indices, of=of, batch_size=batch_size, progress=progress, **options)
    folder = Folder(output, force)
    relevance = maps if not isinstance(maps, dict) else maps[m.input_name]
    if isinstance(maps, dict):
        for name, values in maps.items():
            folder.npy(f"lrp_{name}.npy", values)
    else:
        folder.npy("lrp.npy", maps)
    axis = {"NHWC": 3, "NCHW": 1}.get(m.input_layout)
    summed = relevance.sum(axis=axis) if relevance.ndim == 4 and axis else relevance
    if summed.ndim == 3 and inputs.pictures:
        height, width, _ = spatial_size(m.input_shape, m.input_layout)
        for name, picture, heat in zip(inputs.names, inputs.pictures, summed):
            if heat.shape == (height, width):
                folder.png(f"{name}_lrp.png", attribution_figure(picture, normalize(heat, symmetric=True), cmap))
    scores = m.run(inputs.x, [m.tensor(of)])[0]
    rows = []
    for i, name in enumerate(inputs.names):
        row = {"image": name, "target": None if indices is None else int(indices[i]) if indices.ndim == 1 else target,
               "relevance_sum": float(relevance[i].sum())}
        if indices is not None and indices.ndim == 1 and scores.ndim == 2:
            row["score"] = float(scores[i, int(indices[i])])
        if inputs.labels is not None:
            row["label"] = int(inputs.labels[i])
        rows.append(row)
    folder.json("lrp.json", {"method": "lrp", "model": m.source, "head": m.head, "of": of, "options": options,
                             "images": rows})
    err.print(f"lrp: {len(rows)} images")
    out.print(f"wrote {len(folder.written)} files to {folder.path}")
