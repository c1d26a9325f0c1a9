"""Captum's gradient methods: gradientshap, layer-ig, conductance, neuron."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from onnxsight.cli.attribution import (
    Cmap, Count, Of, Target, _reduced, gradient_plan, parse_baseline, run_method,
)
from onnxsight.cli.options import (
    DataOpt, Device, Force, GradientBatchSize, HeadOpt, Mean, ModelArg, NamedInputs, OptionalImagesArg, OutputDir,
    Scale, Std,
)
from onnxsight.cli.progress import DryRun
from onnxsight.engine.model import Model
from onnxsight.errors import InvalidArgument
from onnxsight.kernels.attribution import choice

LayerName = Annotated[str, typer.Option("--layer", "-l", help="Layer name (see `onnxsight inspect`).")]
Steps = Annotated[int, typer.Option(min=1, help="Points on the path from the baseline to the image.")]
Quadrature = Annotated[str, typer.Option("--method", help="riemann_trapezoid (default), riemann_left/right/middle or "
                                                          "gausslegendre (Captum's default).")]
Baseline = Annotated[str, typer.Option(help="black, grey, blur, a number, or an .npy file shaped like one input.")]
Reduce = Annotated[str, typer.Option(help="Channel reduction for the picture: sum (default), mean or max.")]


def gradientshap(
    model: ModelArg, images: OptionalImagesArg = None, data: DataOpt = None, count: Count = None,
    target: Target = "predicted", of: Of = "logits",
    baselines: Annotated[str, typer.Option(help="black, a number, or an .npy file of K baseline inputs (K, ...) "
                                                "(or one input).")] = "black",
    samples: Annotated[int, typer.Option(min=1, help="Random points per image (Captum's n_samples).")] = 5,
    stdevs: Annotated[float, typer.Option(min=0, help="Std of the Gaussian noise added to the input.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of the draws (baselines, points, noise).")] = 0,
    reduce: Reduce = "sum",
    output: OutputDir = Path("gradientshap"), cmap: Cmap = "jet", batch_size: GradientBatchSize = None,
    device: Device = "auto", scale: Scale = None, mean: Mean = None, std: Std = None, force: Force = False,
    dry_run: DryRun = False, head: HeadOpt = None, named: NamedInputs = None,
) -> None:
    """GradientSHAP (Captum's GradientShap): gradient × (input − baseline) at random points between random baselines and the input."""
    from onnxsight.methods.gradient_shap import gradient_shap

    choice("--reduce", reduce, ("sum", "mean", "max"))
    chosen = parse_baseline(baselines, ("black",), "--baselines")
    options = {"baselines": baselines, "samples": samples, "stdevs": stdevs, "seed": seed, "reduce": reduce}

    def compute(m, x, t, progress):
        maps = gradient_shap(m, x, t, of=of, baselines=chosen, samples=samples, stdevs=stdevs, seed=seed,
                             batch_size=batch_size, progress=progress)
        if isinstance(maps, dict):
            return {name: _reduced(a, m.input_layouts[name], reduce) for name, a in maps.items()}
        return _reduced(maps, m.input_layout, reduce)

    run_method("gradientshap", model, images, data, count, target, of, output, force, cmap, device, scale, mean, std,
               compute, options, gradient_plan(samples, of, batch_size), dry_run, head=head, named=named)


def layer_ig(
    model: ModelArg, layer: LayerName, images: OptionalImagesArg = None, data: DataOpt = None, count: Count = None,
    target: Target = "predicted", of: Of = "logits", steps: Steps = 50, method_name: Quadrature = "riemann_trapezoid",
    baseline: Baseline = "black",
    output: OutputDir = Path("layer-ig"), cmap: Cmap = "jet", batch_size: GradientBatchSize = None,
    device: Device = "auto", scale: Scale = None, mean: Mean = None, std: Std = None, force: Force = False,
    dry_run: DryRun = False, head: HeadOpt = None, named: NamedInputs = None,
) -> None:
    """Layer Integrated Gradients (Captum's): IG in a layer's activation space; the .npy has the layer's
    shape, the picture is its channel sum upsampled; the JSON reports each image's completeness gap."""
    from onnxsight.methods.layer_attribution import layer_integrated_gradients

    _layer_method("layer-ig", layer_integrated_gradients, steps, model, layer, images, data, count, target, of,
                  steps, method_name, baseline, output, cmap, batch_size, device, scale, mean, std, force, dry_run,
                  head, named)


def conductance(
    model: ModelArg, layer: LayerName, images: OptionalImagesArg = None, data: DataOpt = None, count: Count = None,
    target: Target = "predicted", of: Of = "logits", steps: Steps = 50, method_name: Quadrature = "riemann_trapezoid",
    baseline: Baseline = "black",
    output: OutputDir = Path("conductance"), cmap: Cmap = "jet", batch_size: GradientBatchSize = None,
    device: Device = "auto", scale: Scale = None, mean: Mean = None, std: Std = None, force: Force = False,
    dry_run: DryRun = False, head: HeadOpt = None, named: NamedInputs = None,
) -> None:
    """Layer Conductance (Dhamdhere et al., Captum's): each unit's share of the score change along the
    input path; the .npy has the layer's shape, the picture is its channel sum upsampled."""
    from onnxsight.methods.layer_attribution import layer_conductance

    _layer_method("conductance", layer_conductance, steps + 1, model, layer, images, data, count, target, of,
                  steps, method_name, baseline, output, cmap, batch_size, device, scale, mean, std, force, dry_run,
                  head, named)


def neuron(
    model: ModelArg, layer: LayerName,
    neuron_text: Annotated[str, typer.Option("--neuron", help="A channel (int: summed over the layer's other axes) "
                                                              "or an index into the layer's output without the "
                                                              "batch axis, comma-separated (e.g. 4,5,2).")],
    images: OptionalImagesArg = None, data: DataOpt = None, count: Count = None,
    method: Annotated[str, typer.Option(help="gradient (Captum's NeuronGradient) or ig (NeuronIntegratedGradients).")]
    = "gradient",
    steps: Steps = 50, quadrature: Annotated[str, typer.Option(help="ig's quadrature: riemann_trapezoid (default), "
                                                                    "riemann_left/right/middle or gausslegendre.")]
    = "riemann_trapezoid",
    baseline: Baseline = "black", reduce: Reduce = "sum",
    output: OutputDir = Path("neuron"), cmap: Cmap = "jet", batch_size: GradientBatchSize = None,
    device: Device = "auto", scale: Scale = None, mean: Mean = None, std: Std = None, force: Force = False,
    dry_run: DryRun = False, head: HeadOpt = None, named: NamedInputs = None,
) -> None:
    """A neuron's gradient or Integrated Gradients with respect to the input (Captum's neuron methods)."""
    from onnxsight.engine.model import take
    from onnxsight.kernels.attribution import path_nodes
    from onnxsight.methods.layer_attribution import neuron_cotangent, neuron_gradient, neuron_integrated_gradients

    choice("--method", method, ("gradient", "ig"))
    choice("--reduce", reduce, ("sum", "mean", "max"))
    unit = _neuron(neuron_text)
    chosen = parse_baseline(baseline)
    options = {"layer": layer, "neuron": neuron_text, "method": method, "reduce": reduce}
    if method == "ig":
        options.update(steps=steps, quadrature=quadrature, baseline=baseline)

    def compute(m, x, t, progress):
        if method == "gradient":
            maps = neuron_gradient(m, x, layer=layer, neuron=unit, batch_size=batch_size, progress=progress)
        else:
            maps = neuron_integrated_gradients(m, x, layer=layer, neuron=unit, steps=steps, method=quadrature,
                                               baseline=chosen, batch_size=batch_size, progress=progress)
        if isinstance(maps, dict):
            return {name: _reduced(a, m.input_layouts[name], reduce) for name, a in maps.items()}
        return _reduced(maps, m.input_layout, reduce)

    def plan(m: Model, x, indices):
        neuron_cotangent(m, take(m.input_feeds(x), slice(0, 1)), layer, unit)  # a bad neuron fails before the estimate
        if method == "ig":
            path_nodes(steps, quadrature)
        return gradient_plan(1 if method == "gradient" else steps, layer, batch_size)(m, x, indices)

    run_method("neuron", model, images, data, count, "none", layer, output, force, cmap, device, scale, mean, std,
               compute, options, plan, dry_run, head=head, named=named)


def _layer_method(name, method, per_image, model, layer, images, data, count, target, of, steps, quadrature,
                  baseline, output, cmap, batch_size, device, scale, mean, std, force, dry_run, head, named) -> None:
    """layer-ig and conductance: layer-shaped maps, pictures of their channel sums, completeness gaps."""
    from onnxsight.methods.common import attributed_inputs, target_scores
    from onnxsight.methods.integrated_gradients import baselines
    from onnxsight.kernels.attribution import path_nodes
    from onnxsight.methods.layer_attribution import layer_tensor

    chosen = parse_baseline(baseline)
    options = {"layer": layer, "steps": steps, "method": quadrature, "baseline": baseline}

    def plan(m: Model, x, indices):
        layer_tensor(m, layer)  # a bad layer or quadrature fails before the estimate
        path_nodes(per_image, quadrature)
        return gradient_plan(per_image, of, batch_size)(m, x, indices)

    def compute(m: Model, x, t, progress):
        maps = method(m, x, t, layer=layer, of=of, steps=steps, method=quadrature, baseline=chosen,
                      batch_size=batch_size, progress=progress)
        inputs = m.input_feeds(x)
        start = {**inputs, **baselines(m, inputs, chosen, attributed_inputs(m))}
        change = target_scores(m, inputs, t, of) - target_scores(m, start, t, of)
        options["completeness_gap"] = np.abs(maps.reshape(len(maps), -1).astype(np.float64).sum(axis=1)
                                             - change).tolist()
        return maps

    run_method(name, model, images, data, count, target, of, output, force, cmap, device, scale, mean, std,
               compute, options, plan, dry_run, head=head, named=named,
               draw=lambda m, x, maps: layer_pictures(m, x, layer, maps))


def layer_pictures(m: Model, x, layer: str, maps: np.ndarray) -> np.ndarray | None:
    """A spatial layer's maps summed over its channels and resized (bilinear) to the image; None for others."""
    from onnxsight.kernels.cam import upsample
    from onnxsight.methods.common import image_channel_axis, spatial_size

    axis = image_channel_axis(m)
    if maps.ndim != 4 or axis is None:
        return None
    summed = maps.sum(axis=m.channel_axis(layer))
    return upsample(summed, spatial_size(m.input_feeds(x)[m.input_name], axis))


def _neuron(text: str) -> int | tuple[int, ...]:
    try:
        parts = [int(part) for part in text.split(",")]
    except ValueError as error:
        raise InvalidArgument(f"--neuron must be a channel (int) or comma-separated indices, got {text!r}") from error
    return parts[0] if len(parts) == 1 and "," not in text else tuple(parts)

