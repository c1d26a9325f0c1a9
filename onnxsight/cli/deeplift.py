"""DeepLIFT commands: deeplift (one reference per image) and deepliftshap (a distribution of references)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from onnxsight.cli.attribution import Cmap, Count, Of, Target, _first_repeated, _reduced, parse_baseline, run_method
from onnxsight.cli.options import (
    DataOpt, Device, Force, GradientBatchSize, HeadOpt, Mean, ModelArg, NamedInputs, OptionalImagesArg, OutputDir,
    Scale, Std,
)
from onnxsight.cli.progress import DryRun, Plan
from onnxsight.data.images import read_npy
from onnxsight.engine import targets
from onnxsight.engine.model import rows
from onnxsight.kernels.attribution import choice
from onnxsight.methods.common import gradient_batch_size, rows_of

Reduce = Annotated[str, typer.Option(help="Channel reduction for the picture: sum (default), mean or max.")]
Eps = Annotated[float, typer.Option(min=0.0, help="Below this |Δx| a nonlinearity passes its gradient "
                                                  "(Captum's 1e-10).")]
Multipliers = Annotated[bool, typer.Option("--multipliers", help="Write the multipliers, not (x − x₀) × multipliers "
                                                                 "(Captum's multiply_by_inputs=False).")]


def deeplift(
    model: ModelArg, images: OptionalImagesArg = None, data: DataOpt = None, count: Count = None,
    target: Target = "predicted", of: Of = "logits",
    baseline: Annotated[str, typer.Option(help="The reference: black, grey, blur, a number, or an .npy file shaped "
                                               "like one input.")] = "black",
    eps: Eps = 1e-10, multipliers: Multipliers = False, reduce: Reduce = "sum",
    output: OutputDir = Path("deeplift"), cmap: Cmap = "jet", batch_size: GradientBatchSize = None,
    device: Device = "auto", scale: Scale = None, mean: Mean = None, std: Std = None, force: Force = False,
    dry_run: DryRun = False, head: HeadOpt = None, named: NamedInputs = None,
) -> None:
    """DeepLIFT, rescale rule (Shrikumar et al., Captum's DeepLift); the JSON reports each image's
    summation-to-delta gap |Σ attributions − (score(x) − score(x₀))|."""
    from onnxsight.methods.deeplift import deeplift as method
    from onnxsight.methods.deeplift import deeplift_gap

    choice("--reduce", reduce, ("sum", "mean", "max"))
    chosen = parse_baseline(baseline)
    options = {"baseline": baseline, "eps": eps, "multipliers": multipliers, "reduce": reduce}

    def compute(m, x, t, progress):
        maps = method(m, x, target=t, of=of, baseline=chosen, eps=eps, multiply_by_inputs=not multipliers,
                      batch_size=batch_size, progress=progress)
        if not multipliers:
            options["summation_gap"] = deeplift_gap(m, x, maps, t, of=of, baseline=chosen).tolist()
        return _per_input(m, maps, reduce)

    run_method("deeplift", model, images, data, count, target, of, output, force, cmap, device, scale, mean, std,
               compute, options, _plan(of, batch_size, eps, 1), dry_run, head=head, named=named)


def deepliftshap(
    model: ModelArg, images: OptionalImagesArg = None, data: DataOpt = None, count: Count = None,
    target: Target = "predicted", of: Of = "logits",
    baselines: Annotated[Path, typer.Option(help="An .npy file of K references, shaped (K, *one input's shape).",
                                            exists=True, dir_okay=False)] = ...,
    eps: Eps = 1e-10, multipliers: Multipliers = False, reduce: Reduce = "sum",
    output: OutputDir = Path("deepliftshap"), cmap: Cmap = "jet", batch_size: GradientBatchSize = None,
    device: Device = "auto", scale: Scale = None, mean: Mean = None, std: Std = None, force: Force = False,
    dry_run: DryRun = False, head: HeadOpt = None, named: NamedInputs = None,
) -> None:
    """DeepLiftShap (Captum's): DeepLIFT against every reference of --baselines, averaged; the JSON
    reports each image's gap |Σ attributions − (score(x) − mean score(references))|."""
    from onnxsight.methods.deeplift import deeplift_shap, deeplift_shap_gap

    choice("--reduce", reduce, ("sum", "mean", "max"))
    references = read_npy(baselines)
    options = {"baselines": str(baselines), "references": len(references), "eps": eps, "multipliers": multipliers,
               "reduce": reduce}

    def compute(m, x, t, progress):
        maps = deeplift_shap(m, x, target=t, of=of, baselines=references, eps=eps, multiply_by_inputs=not multipliers,
                             batch_size=batch_size, progress=progress)
        if not multipliers:
            options["summation_gap"] = deeplift_shap_gap(m, x, maps, t, of=of, baselines=references).tolist()
        return _per_input(m, maps, reduce)

    run_method("deepliftshap", model, images, data, count, target, of, output, force, cmap, device, scale, mean, std,
               compute, options, _plan(of, batch_size, eps, len(references)), dry_run, head=head, named=named)


def _per_input(m, maps, reduce: str):
    if isinstance(maps, dict):
        return {name: _reduced(a, m.input_layouts[name], reduce) for name, a in maps.items()}
    return _reduced(maps, m.input_layout, reduce)


def _plan(of: str, batch_size: int | None, eps: float, references: int):
    """``plan(m, x, indices)``: image-reference pairs, timed on the first image against black references."""
    def plan(m, x, indices) -> Plan:
        from onnxsight.methods.deeplift import deeplift as method

        size = max(2, batch_size or gradient_batch_size(m))

        def run(count: int) -> None:
            method(m, _first_repeated(m, x, count), targets.tile(rows_of(indices, slice(0, 1)), count), of=of,
                   eps=eps, batch_size=size)

        return Plan(rows(x) * references, "image-and-reference gradient", run, rows=max(1, size // 2))
    return plan
