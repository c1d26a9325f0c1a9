"""Per-image attribution commands: saliency, smoothgrad, ig, gradcam, occlusion."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from onnxsight.cli.inputs import Inputs, load_inputs
from onnxsight.cli.options import (
    BatchSize, DataOpt, Device, Force, GradientBatchSize, HeadOpt, Mean, ModelArg, NamedInputs, OptionalImagesArg,
    OutputDir, Scale, Std, err, out,
)
from onnxsight.cli.progress import DryRun, Plan, announce, tracked
from onnxsight.data.files import OutputDir as Folder
from onnxsight.data.images import read_npy
from onnxsight.engine import targets
from onnxsight.engine import model as engine
from onnxsight.engine.model import Model, load, rows, take
from onnxsight.engine.targets import Region
from onnxsight.errors import InvalidArgument
from onnxsight.kernels.attribution import choice
from onnxsight.kernels.colors import COLORMAPS, normalize
from onnxsight.kernels.grids import attribution_figure
from onnxsight.kernels.images import spatial_size
from onnxsight.methods.common import gradient_batch_size, repeat_rows, rows_of, rows_per_run, target_scores

Count = Annotated[Optional[int], typer.Option(min=1, help="With --data: how many test images (default 16).")]
Target = Annotated[str, typer.Option(help="'predicted' (argmax), 'none' (the sum: a regression output), a class/channel "
                                          "index, one index per image (3,1,4), "
                                          "'region:C' (segmentation: the pixels predicted as class C), "
                                          "'region:C:mask.npy' (class C over an HxW or NxHxW mask), or "
                                          "'cotangent:weights.npy' (weights shaped like the scored tensor).")]
Of = Annotated[str, typer.Option(help="Scored tensor: logits (softmax swapped for linear), output, or a layer (target = its channel).")]
Cmap = Annotated[str, typer.Option(help=f"Heat-map colormap: {', '.join(COLORMAPS)}.")]
Modifier = Annotated[Optional[str], typer.Option(help="Backprop modifier: guided or deconv (keras-vis 'relu'); default vanilla.")]
Reduce = Annotated[str, typer.Option(help="Channel reduction of the gradient: max (keras-vis), mean or sum.")]
Signed = Annotated[bool, typer.Option("--signed", help="Keep the gradient's sign (default: absolute value, as keras-vis).")]
Negate = Annotated[bool, typer.Option("--negate", help="Negate the gradient: what speaks against the target (keras-vis 'negate').")]
TokensGrid = Annotated[Optional[str], typer.Option(help="A token layer's patch grid, ROWSxCOLUMNS (default: found "
                                                          "from the token count and the input size).")]
TimesInput = Annotated[bool, typer.Option("--times-input", help="Gradient x Input.")]

DEFAULT_DATA_COUNT = 16


def parse_target(text: str):
    """'predicted', 'none' (the sum of the tensor: a regression output), an int, comma-separated ints
    (one per image), 'region:C' (the pixels predicted as class C), 'region:C:mask.npy' (class C's
    scores over a mask) or 'cotangent:weights.npy'."""
    if text == "predicted":
        return text
    if text == "none":
        return None
    kind, _, rest = text.partition(":")
    try:
        if kind == "cotangent" and rest:
            return read_npy(Path(rest)).astype(np.float64)
        if kind == "region" and rest:
            category, _, mask = rest.partition(":")
            return Region(int(category), read_npy(Path(mask)) if mask else None)
        values = [int(part) for part in text.split(",")]
    except ValueError as error:
        raise InvalidArgument(f"--target must be 'predicted', 'none', an index, comma-separated indices, 'region:C[:mask.npy]' "
                              f"or 'cotangent:file.npy', got {text!r}") from error
    return values[0] if len(values) == 1 else values


def run_method(method: str, model: Path, images, data, count, target, of, output, force, cmap, device,
               scale, mean, std, compute, options: dict, plan=None, dry_run: bool = False, head: str | None = None,
               named=None, draw=None) -> None:
    """Shared steps: load inputs (``named``: ``--input`` options) and the ``head``, resolve the target
    once, print the estimate of ``plan(m, x, indices)`` (a :class:`Plan`; with ``dry_run`` only that),
    compute maps with a progress bar, write PNG/.npy/JSON (``draw(m, x, maps)``: the (N, H, W)
    pictures of maps that are not the input's, e.g. a layer's)."""
    m = load(model, device=device).with_output(head)
    inputs = load_inputs(m, images, data, count or (DEFAULT_DATA_COUNT if data else None), scale, mean, std, named)
    indices = m.resolve_target(inputs.x, parse_target(target), of)
    if plan is not None:
        announce(method, plan(m, inputs.x, indices), dry_run)
    with tracked(method) as progress:
        maps = compute(m, inputs.x, indices, progress)
    write_results(method, m, inputs, maps, indices, target, of, Folder(output, force), cmap, options,
                  None if draw is None else draw(m, inputs.x, maps))


def gradient_plan(per_image: int, of: str, batch_size: int | None, modifier: str | None = None):
    """``plan(m, x, indices)`` for ``per_image`` gradient passes per image, timed on the first image."""
    def plan(m: Model, x: engine.Inputs, indices) -> Plan:
        size = batch_size or gradient_batch_size(m)

        def run(count: int) -> None:
            m.gradient(_first_repeated(m, x, count), of=of, target=targets.tile(rows_of(indices, slice(0, 1)), count),
                       modifier=modifier, batch_size=size)

        return Plan(rows(x) * per_image, "gradient", run, rows=rows_per_run(m, size))
    return plan


def forward_plan(per_image, of: str, batch_size: int):
    """``plan(m, x, indices)`` for ``per_image(m, x)`` forward passes per image, timed on the first image."""
    def plan(m: Model, x: engine.Inputs, indices) -> Plan:
        def run(count: int) -> None:
            target_scores(m, _first_repeated(m, x, count), targets.tile(rows_of(indices, slice(0, 1)), count), of,
                          batch_size)

        return Plan(rows(x) * per_image(m, x), "forward", run, rows=rows_per_run(m, batch_size))
    return plan


def _first_repeated(m: Model, x: engine.Inputs, count: int) -> dict[str, np.ndarray]:
    """``count`` copies of the first image of a batch (with its other inputs), by input name."""
    return {name: repeat_rows(value[:1], count) for name, value in m.input_feeds(x).items()}


def _primary(m: Model, x: engine.Inputs) -> np.ndarray:
    """The primary (image) input of a batch."""
    return m.input_feeds(x)[m.input_name]


def write_results(method: str, m: Model, inputs: Inputs, maps, indices, target: str, of: str,
                  folder: Folder, cmap: str, options: dict, pictures: np.ndarray | None = None) -> None:
    """One PNG per image (input | map | overlay), the maps as .npy, and a JSON summary (the target of
    each image: its index, or the --target text for a region or cotangent). Maps per input (a model
    with several) are written as ``<method>_<input>.npy``, the primary input's also as pictures.
    ``pictures``: (N, H, W) maps to draw instead (e.g. a layer's map upsampled to the image)."""
    probabilities = m.predict(inputs.x).reshape(len(inputs.names), -1)
    if pictures is not None:
        folder.npy(f"{method}.npy", maps)
        maps = pictures
    elif isinstance(maps, dict):
        for name, values in maps.items():
            folder.npy(f"{method}_{name}.npy", values)
        maps = maps[m.input_name]
    else:
        folder.npy(f"{method}.npy", maps)
    if maps.ndim == 3 and inputs.pictures:
        height, width, _ = spatial_size(m.input_shape, m.input_layout)
        for name, picture, heat in zip(inputs.names, inputs.pictures, maps):
            if heat.shape == (height, width):
                folder.png(f"{name}_{method}.png", attribution_figure(picture, normalize(heat), cmap))
    rows = []
    for i, name in enumerate(inputs.names):
        row = {"image": name, "predicted": int(probabilities[i].argmax()), "probability": float(probabilities[i].max())}
        row["target"] = None if indices is None else int(indices[i]) if indices.ndim == 1 else target
        if inputs.labels is not None:
            row["label"] = int(inputs.labels[i])
        rows.append(row)
    folder.json(f"{method}.json", {"method": method, "model": m.source, "head": m.head, "of": of, "options": options,
                                   "images": rows})
    err.print(f"{method}: {len(rows)} images")
    out.print(f"wrote {len(folder.written)} files to {folder.path}")


def saliency(
    model: ModelArg, images: OptionalImagesArg = None, data: DataOpt = None, count: Count = None,
    target: Target = "predicted", of: Of = "logits", modifier: Modifier = None, reduce: Reduce = "max",
    signed: Signed = False, negate: Negate = False, times_input: TimesInput = False,
    output: OutputDir = Path("saliency"), cmap: Cmap = "jet", batch_size: GradientBatchSize = None,
    device: Device = "auto", scale: Scale = None, mean: Mean = None, std: Std = None, force: Force = False,
    dry_run: DryRun = False,
    head: HeadOpt = None, named: NamedInputs = None,
) -> None:
    """Gradient saliency (Simonyan et al.): vanilla, guided or deconv; |gradient| max over channels by default."""
    from onnxsight.methods.saliency import check_options
    from onnxsight.methods.saliency import saliency as method

    check_options(modifier, reduce)
    options = {"modifier": modifier, "reduce": reduce, "absolute": not signed, "negate": negate, "times_input": times_input}
    run_method("saliency", model, images, data, count, target, of, output, force, cmap, device, scale, mean, std,
               lambda m, x, t, progress: method(m, x, target=t, of=of, batch_size=batch_size, progress=progress,
                                                **options),
               options, gradient_plan(1, of, batch_size, modifier), dry_run, head=head, named=named)


def smoothgrad(
    model: ModelArg, images: OptionalImagesArg = None, data: DataOpt = None, count: Count = None,
    target: Target = "predicted", of: Of = "logits", modifier: Modifier = None, reduce: Reduce = "max",
    samples: Annotated[int, typer.Option(min=1, help="Noisy copies per image.")] = 20,
    noise: Annotated[float, typer.Option(min=0, help="Noise level: std as a fraction of the image's value range.")] = 0.15,
    noise_mode: Annotated[str, typer.Option(help="relative (tf-keras-vis, default) or absolute (Captum's stdevs).")] = "relative",
    aggregate: Annotated[str, typer.Option(help="mean (SmoothGrad), square (SmoothGrad²) or variance (VarGrad).")] = "mean",
    signed: Signed = False, negate: Negate = False, times_input: TimesInput = False,
    seed: Annotated[int, typer.Option(help="Seed of the noise.")] = 0,
    output: OutputDir = Path("smoothgrad"), cmap: Cmap = "jet", batch_size: GradientBatchSize = None,
    device: Device = "auto", scale: Scale = None, mean: Mean = None, std: Std = None, force: Force = False,
    dry_run: DryRun = False,
    head: HeadOpt = None, named: NamedInputs = None,
) -> None:
    """SmoothGrad (Smilkov et al.): saliency averaged over noisy copies; SmoothGrad² and VarGrad too."""
    from onnxsight.methods.saliency import check_options
    from onnxsight.methods.saliency import saliency as method

    check_options(modifier, reduce, noise_mode, aggregate)
    options = {"modifier": modifier, "reduce": reduce, "absolute": not signed, "negate": negate,
               "times_input": times_input, "smooth_samples": samples, "smooth_noise": noise, "noise": noise_mode,
               "smooth_aggregate": aggregate, "seed": seed}
    run_method("smoothgrad", model, images, data, count, target, of, output, force, cmap, device, scale, mean, std,
               lambda m, x, t, progress: method(m, x, target=t, of=of, batch_size=batch_size, progress=progress,
                                                **options),
               options, gradient_plan(samples, of, batch_size, modifier), dry_run, head=head, named=named)


def ig(
    model: ModelArg, images: OptionalImagesArg = None, data: DataOpt = None, count: Count = None,
    target: Target = "predicted", of: Of = "logits",
    steps: Annotated[int, typer.Option(min=1, help="Points on the path from the baseline to the image.")] = 50,
    baseline: Annotated[str, typer.Option(help="black, grey, blur, a number, or an .npy file shaped like one input.")] = "black",
    method_name: Annotated[str, typer.Option("--method", help="Quadrature: riemann_trapezoid, riemann_left/right/middle, gausslegendre, "
                                                                      "captum_trapezoid (Captum's riemann_trapezoid).")] = "riemann_trapezoid",
    reduce: Annotated[str, typer.Option(help="Channel reduction for the picture: sum (default), mean or max.")] = "sum",
    output: OutputDir = Path("ig"), cmap: Cmap = "jet", batch_size: GradientBatchSize = None, device: Device = "auto",
    scale: Scale = None, mean: Mean = None, std: Std = None, force: Force = False, dry_run: DryRun = False,
    head: HeadOpt = None, named: NamedInputs = None,
) -> None:
    """Integrated Gradients (Sundararajan et al.); the JSON reports each image's completeness gap."""
    from onnxsight.kernels.attribution import path_nodes
    from onnxsight.methods.integrated_gradients import completeness_gap, integrated_gradients

    choice("--reduce", reduce, ("sum", "mean", "max"))
    chosen = parse_baseline(baseline)
    options = {"steps": steps, "baseline": baseline, "method": method_name, "reduce": reduce}

    def compute(m, x, t, progress):
        attributions = integrated_gradients(m, x, target=t, of=of, steps=steps, baseline=chosen, method=method_name,
                                            batch_size=batch_size, progress=progress)
        options["completeness_gap"] = completeness_gap(m, x, attributions, t, of=of, baseline=chosen).tolist()
        if isinstance(attributions, dict):
            return {name: _reduced(a, m.input_layouts[name], reduce) for name, a in attributions.items()}
        return _reduced(attributions, m.input_layout, reduce)

    run_method("ig", model, images, data, count, target, of, output, force, cmap, device, scale, mean, std,
               compute, options, gradient_plan(len(path_nodes(steps, method_name)[0]), of, batch_size), dry_run,
               head=head, named=named)


def _reduced(attributions: np.ndarray, layout: str, reduce: str) -> np.ndarray:
    """Image attributions reduced over their channel axis for the picture; others as they are."""
    axis = {"NHWC": 3, "NCHW": 1}.get(layout)
    return getattr(attributions, reduce)(axis=axis) if attributions.ndim == 4 and axis else attributions


def parse_baseline(text: str, names: tuple[str, ...] = ("black", "grey", "gray", "blur"),
                   option: str = "--baseline"):
    """A baseline option: one of ``names``, an .npy file's array, or a number."""
    if text in names:
        return text
    if text.endswith(".npy"):
        return np.load(text, allow_pickle=False)
    try:
        return float(text)
    except ValueError as error:
        shown = ", ".join(n for n in names if n != "gray")
        raise InvalidArgument(f"{option} must be {shown}, a number or an .npy file, got {text!r}") from error


def gradcam(
    model: ModelArg, images: OptionalImagesArg = None, data: DataOpt = None, count: Count = None,
    target: Target = "predicted", of: Of = "logits",
    layer: Annotated[Optional[str], typer.Option(help="Conv layer (default: the last spatial layer before flatten/pooling).")] = None,
    variant: Annotated[str, typer.Option(help="gradcam, gradcam++, xgradcam, hirescam, layercam, scorecam, "
                                         "gradcamelementwise, eigencam, eigengradcam, kpcacam, ablationcam or "
                                         "fullgrad (every biased layer; no --layer).")] = "gradcam",
    guided: Annotated[bool, typer.Option("--guided", help="Guided Grad-CAM: times guided backprop.")] = False,
    modifier: Modifier = None,
    relu: Annotated[bool, typer.Option(help="ReLU on the map (Grad-CAM's default).")] = True,
    upsample: Annotated[Optional[str], typer.Option(help="bilinear, nearest or align_corners (tf-keras-vis' zoom); "
                                                         "default the convention's.")] = None,
    convention: Annotated[str, typer.Option(help="onnxsight (the papers), pytorch-grad-cam or tf-keras-vis.")] = "onnxsight",
    eigen_smooth: Annotated[bool, typer.Option("--eigen-smooth", help="The map is the first principal component of "
                                               "the weighted activations (pytorch-grad-cam's eigen_smooth).")] = False,
    aug_smooth: Annotated[bool, typer.Option("--aug-smooth", help="Mean map over flips and brightness x0.9/1/1.1 "
                                             "(pytorch-grad-cam's aug_smooth; 6 times the work).")] = False,
    tokens_grid: TokensGrid = None,
    output: OutputDir = Path("gradcam"), cmap: Cmap = "jet", batch_size: BatchSize = 64, device: Device = "auto",
    scale: Scale = None, mean: Mean = None, std: Std = None, force: Force = False, dry_run: DryRun = False,
    head: HeadOpt = None, named: NamedInputs = None,
) -> None:
    """Grad-CAM and its family, upsampled to the input, normalised, overlaid (a transformer's token
    layer is laid on its patch grid)."""
    from onnxsight.kernels.cam import AUGMENTATIONS
    from onnxsight.methods.cam import cam_variant, check_cam_layer, check_fullgrad, default_cam_layer
    from onnxsight.methods.cam import gradcam as method

    options = {"layer": layer, "variant": variant, "guided": guided, "modifier": modifier, "relu": relu,
               "upsample": upsample, "convention": convention, "eigen_smooth": eigen_smooth, "aug_smooth": aug_smooth,
               "tokens_grid": _grid(tokens_grid)}
    rule = cam_variant(variant, convention)
    copies = len(AUGMENTATIONS) if aug_smooth else 1

    def plan(m: Model, x: np.ndarray, indices) -> Plan:
        """Checks the layer first; Score-CAM's and Ablation-CAM's forward passes are its layer's channels
        (a token layer's features) per image, Eigen-CAM's one; FullGrad's one gradient; times the augmentations."""
        if rule is None:
            check_fullgrad(layer, modifier, guided, eigen_smooth)
            return gradient_plan(copies, of, batch_size)(m, x, indices)
        name = default_cam_layer(m) if layer is None else check_cam_layer(m, layer)
        if rule.gradients:
            return gradient_plan(copies, of, batch_size, modifier)(m, x, indices)
        shape = m.activations(take(x, slice(0, 1)), [name])[name].shape
        channels = (shape[m.channel_axis(name)] if len(shape) == 4 else shape[-1]) if rule.per_channel else 1
        return forward_plan(lambda m, x: channels * copies, of, batch_size)(m, x, indices)

    run_method("gradcam", model, images, data, count, target, of, output, force, cmap, device, scale, mean, std,
               lambda m, x, t, progress: method(m, x, target=t, of=of, batch_size=batch_size, progress=progress,
                                                **options),
               options, plan, dry_run, head=head, named=named)


def rollout(
    model: ModelArg, images: OptionalImagesArg = None, data: DataOpt = None, count: Count = None,
    layer: Annotated[Optional[list[str]], typer.Option("--layer", "-l", help="Attention probabilities (N, heads, T, T), "
                                                       "first layer first (default: every attention softmax).")] = None,
    head_fusion: Annotated[str, typer.Option(help="Fuse heads by mean, max or min.")] = "mean",
    discard_ratio: Annotated[float, typer.Option(help="Zero this fraction of the smallest attention weights.")] = 0.0,
    residual: Annotated[float, typer.Option(help="Weight of the identity (residual connection) in each layer.")] = 0.5,
    tokens_grid: TokensGrid = None,
    upsample: Annotated[str, typer.Option(help="bilinear (default) or nearest.")] = "bilinear",
    output: OutputDir = Path("rollout"), cmap: Cmap = "jet", batch_size: BatchSize = 64, device: Device = "auto",
    scale: Scale = None, mean: Mean = None, std: Std = None, force: Force = False,
    head: HeadOpt = None, named: NamedInputs = None,
) -> None:
    """Attention rollout (Abnar & Zuidema) of a vision transformer: class-agnostic patch relevance."""
    from onnxsight.methods.rollout import attention_rollout as method

    options = {"layers": layer, "head_fusion": head_fusion, "discard_ratio": discard_ratio, "residual": residual,
               "tokens_grid": _grid(tokens_grid), "upsample": upsample}
    run_method("rollout", model, images, data, count, "none", "logits", output, force, cmap, device, scale, mean, std,
               lambda m, x, t, progress: method(m, x, batch_size=batch_size, **options), options, head=head, named=named)


def _grid(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    rows, _, columns = text.lower().partition("x")
    if not (rows.isdecimal() and columns.isdecimal()) or int(rows) < 1 or int(columns) < 1:
        raise InvalidArgument(f"--tokens-grid must be ROWSxCOLUMNS, e.g. 14x14; got {text!r}")
    return int(rows), int(columns)


def occlusion(
    model: ModelArg, images: OptionalImagesArg = None, data: DataOpt = None, count: Count = None,
    target: Target = "predicted", of: Of = "logits",
    window: Annotated[Optional[int], typer.Option(min=1, help="Occluding square's side in pixels (default: 1/14 of the "
                                                             "shorter image side, at least 4; seed 003: 11).")] = None,
    stride: Annotated[Optional[int], typer.Option(min=1, help="Step between windows (default: half the window; "
                                                             "seed 003: 4).")] = None,
    fill: Annotated[str, typer.Option(help="A number, mean (the image's mean) or blur.")] = "0",
    last_window: Annotated[str, typer.Option(help="The last window: flush with the border, or cropped at it (Captum).")] = "flush",
    output: OutputDir = Path("occlusion"), cmap: Cmap = "jet", batch_size: BatchSize = 256, device: Device = "auto",
    scale: Scale = None, mean: Mean = None, std: Std = None, force: Force = False, dry_run: DryRun = False,
    head: HeadOpt = None, named: NamedInputs = None,
) -> None:
    """Occlusion sensitivity (Zeiler & Fergus): the score drop when a window hides each pixel."""
    from onnxsight.kernels.occlusion import grid
    from onnxsight.methods.common import require_image
    from onnxsight.methods.common import spatial_size as image_size
    from onnxsight.methods.occlusion import default_window
    from onnxsight.methods.occlusion import occlusion as method

    filler = fill if fill in ("mean", "blur") else _number(fill, "--fill")
    options = {"window": window, "stride": stride, "fill": fill, "last_window": last_window}

    def windows(m: Model, x: np.ndarray) -> int:
        """Window positions per image, plus the clean image; records the window and stride in the options."""
        height, width = image_size(_primary(m, x), require_image(m, "occlusion"))
        chosen, step = default_window(height, width, window, stride)
        options.update(window=chosen[0], stride=step[0])
        return len(grid(height, width, chosen, step)[0]) + 1

    run_method("occlusion", model, images, data, count, target, of, output, force, cmap, device, scale, mean, std,
               lambda m, x, t, progress: method(m, x, target=t, of=of, window=window, stride=stride, fill=filler,
                                                last_window=last_window, batch_size=batch_size, progress=progress),
               options, forward_plan(windows, of, batch_size), dry_run, head=head, named=named)


def _number(text: str, option: str) -> float:
    try:
        return float(text)
    except ValueError as error:
        raise InvalidArgument(f"{option} must be a number, mean or blur, got {text!r}") from error
