"""The ``maximize`` command: activation maximization with its finite-difference proof."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from onnxsight.cli.inputs import load_batch
from onnxsight.cli.options import Device, Force, HeadOpt, ModelArg, OutputDir, err, out
from onnxsight.cli.progress import DryRun, Plan, announce, tracked
from onnxsight.data.files import OutputDir as Folder
from onnxsight.engine.model import Model, load
from onnxsight.errors import InvalidArgument
from onnxsight.kernels.colors import as_rgb8
from onnxsight.kernels.grids import side_by_side, tile
from onnxsight.kernels.images import to_hwc
from onnxsight.kernels.plots import line_plot

OBJECTIVE_NAMES = {"unit": "unit", "norm": "norm", "logit": "logit", "cross-entropy": "cross_entropy",
                   "cross_entropy": "cross_entropy"}


def maximize(
    model: ModelArg,
    layer: Annotated[str, typer.Option("--layer", "-l", help="Layer to maximise (see `onnxsight inspect`); 'logits' = class scores.")] = "logits",
    unit: Annotated[Optional[list[int]], typer.Option(help="Unit / channel / class; repeatable: one image each, optimised together.")] = None,
    all_units: Annotated[bool, typer.Option("--all-units", help="Every unit of the layer, drawn as a grid too.")] = False,
    objective: Annotated[Optional[str], typer.Option(help="unit (mean), norm, logit or cross-entropy; default: logit for the output/logits, else unit (norm without --unit).")] = None,
    steps: Annotated[int, typer.Option(min=1, help="Gradient-ascent steps.")] = 200,
    lr: Annotated[Optional[float], typer.Option(min=0, help="Step size (default: chosen per image so the first step moves "
                                                         "pixels by 0.5 % of --low..--high; seed 004: 0.05).")] = None,
    step: Annotated[str, typer.Option(help="plain (x + lr·grad, seed 004) or normalized (x + lr·grad/‖grad‖, keras-vis).")] = "plain",
    init: Annotated[str, typer.Option(help="grey, noise, a number, or an image file / .npy to start from (seed 004: a test image).")] = "grey",
    l2: Annotated[float, typer.Option(min=0, help="Weight of the L2 norm of the image (seed 004: 1e-3).")] = 0.0,
    tv: Annotated[float, typer.Option(min=0, help="Weight of the squared total variation.")] = 0.0,
    jitter: Annotated[int, typer.Option(min=0, help="Largest random shift in pixels per step (exact: rolled back on the gradient).")] = 0,
    rotate: Annotated[float, typer.Option(min=0, help="Largest random rotation in degrees per step (approximate gradient).")] = 0.0,
    scale: Annotated[float, typer.Option(min=0, help="Largest random zoom: factor in [1-scale, 1+scale] (approximate gradient).")] = 0.0,
    blur_every: Annotated[int, typer.Option(min=0, help="Blur the image every this many steps (0: never).")] = 0,
    blur_sigma: Annotated[float, typer.Option(min=0, help="Blur sigma in pixels.")] = 1.0,
    clip: Annotated[bool, typer.Option("--clip/--no-clip", help="Clamp the image to --low..--high after every step.")] = False,
    low: Annotated[float, typer.Option(help="Lowest input value (grey is the middle of the range).")] = 0.0,
    high: Annotated[float, typer.Option(help="Highest input value.")] = 1.0,
    check_every: Annotated[Optional[int], typer.Option(min=0, help="Finite-difference check at step 0 and every N steps "
                                                      "(0: never; default: every 50, or step 0 only where float64 "
                                                      "needs onnx.reference, e.g. photo-sized convolutions).")] = None,
    tolerance: Annotated[float, typer.Option(help="Largest relative error the check accepts.")] = 1e-3,
    seed: Annotated[int, typer.Option(help="Seed of the noise start, jitter and check directions.")] = 0,
    output: OutputDir = Path("maximize"), device: Device = "auto", force: Force = False, dry_run: DryRun = False,
    head: HeadOpt = None,
) -> None:
    """Activation maximization: inputs that maximise a unit, a layer's norm or a class, gradients checked by finite differences."""
    from onnxsight.methods.maximize import CHECK_EVERY, require_one_input
    from onnxsight.methods.maximize import maximize as method

    if objective is not None and objective not in OBJECTIVE_NAMES:
        raise InvalidArgument(f"unknown objective {objective!r}; choose unit, norm, logit or cross-entropy")
    if all_units and unit:
        raise InvalidArgument("give --unit or --all-units, not both")
    m = load(model, device=device).with_output(head)
    require_one_input(m)
    units = _all_units(m, layer, objective) if all_units else (unit or None)
    start = _init(m, init)
    count = len(units) if units else 1
    every = CHECK_EVERY if check_every is None else check_every
    checks = len(range(0, steps, every)) if every else 0
    announce("maximize", Plan(steps * count, "gradient", lambda rows: m.gradient(
        np.full((rows, *m.input_shape[1:]), (low + high) / 2, m.input_dtype), of=layer, target=None), rows=count,
        extra=f"{'up to ' if check_every is None else ''}{checks} float64 finite-difference checks (not timed)"
        if checks else ""), dry_run)
    folder = Folder(output, force)
    with tracked(f"maximize {layer}", "steps") as progress:
        result = method(
            m, layer, units, OBJECTIVE_NAMES.get(objective), steps=steps, lr=lr, step=step, init=start,
            regularizers={"l2": l2, "tv": tv, "blur_every": blur_every, "blur_sigma": blur_sigma},
            modifiers={"jitter": jitter, "rotate": rotate, "scale": scale}, clip=clip, value_range=(low, high),
            check_every="auto" if check_every is None else check_every, tolerance=tolerance, seed=seed,
            progress=lambda done: progress(done, steps),
        )
    pictures = [as_rgb8(image) for image in to_hwc(result.images, m.input_layout)] if result.images.ndim == 4 else []
    names = [f"unit{u}" for u in result.units] if result.units is not None else ["norm"]
    for name, picture in zip(names, pictures):
        folder.png(f"{layer}_{name}.png", tile([picture], 1, cell=max(128, picture.shape[0])))
    if all_units and pictures:
        folder.png(f"{layer}_grid.png", tile(pictures, labels=[f"#{u}" for u in result.units]))
    folder.npy(f"{layer}_images.npy", result.images)
    folder.png("curves.png", side_by_side([line_plot(result.series("total"), "objective - penalties"),
                                           line_plot(result.series("image_norm"), "image L2 norm")]))
    errors = result.fd_errors
    folder.json("history.json", {
        "model": m.source, "layer": layer, "objective": result.objective, "units": result.units,
        "options": {**result.options, "init": init},
        "start_activation": result.start_activation.tolist(), "final_activation": result.final_activation.tolist(),
        "fd_max_error": float(errors.max()) if errors.size else None, "fd_checks": int(errors.size),
        "history": result.history,
    })
    for name, before, after in zip(names, result.start_activation, result.final_activation):
        out.print(f"{layer} {name}: {result.objective} {before:.4g} -> {after:.4g}")
    if errors.size:
        err.print(f"finite-difference check: {errors.size} passed, largest relative error {errors.max():.1e}")
    out.print(f"wrote {len(folder.written)} files to {folder.path}")


def _all_units(m: Model, layer: str, objective: str | None) -> list[int]:
    """Every unit of ``layer`` (its channels; the classes of a softmax layer)."""
    from onnxsight.engine.objectives import pre_softmax

    tensor = m.tensor(layer)
    shape = m.shapes.get(pre_softmax(m, tensor)) or m.shapes.get(tensor)
    axis = m.channel_axis(layer) if shape is not None and len(shape) == 4 else 1
    if shape is None or len(shape) < 2 or shape[axis] is None:
        raise InvalidArgument(f"layer {layer!r} has no fixed number of units; use --unit")
    return list(range(shape[axis]))


def _init(m: Model, text: str):
    """grey / noise / a number / an image file or .npy, as ``maximize``'s ``init``."""
    if text in ("grey", "gray", "noise"):
        return text
    try:
        return float(text)
    except ValueError:
        pass
    path = Path(text)
    if not path.is_file():
        raise InvalidArgument(f"--init must be grey, noise, a number or an image file; {text!r} is none of these")
    x, _, _ = load_batch(m, [path])
    return x[0] if len(x) == 1 else x
