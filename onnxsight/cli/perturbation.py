"""Black-box perturbation commands: ablation, shapley, kernelshap, lime, rise (forward passes only)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from onnxsight.cli.attribution import Cmap, Count, Of, Target, _number, _primary, forward_plan, run_method
from onnxsight.cli.options import (
    BatchSize, DataOpt, Device, Force, HeadOpt, Mean, ModelArg, NamedInputs, OptionalImagesArg, OutputDir,
    Scale, Std,
)
from onnxsight.cli.progress import DryRun
from onnxsight.data.images import read_npy
from onnxsight.engine.model import Model
from onnxsight.errors import InvalidArgument

MaskOpt = Annotated[str, typer.Option("--mask", help="Features: grid (near-square patches), slic (SLIC superpixels, "
                                                     "needs onnxsight[superpixels]), pixels (each pixel), or an .npy "
                                                     "of integer labels, HxW or NxHxW.")]
Segments = Annotated[Optional[int], typer.Option(min=1, help="About how many grid patches or superpixels per image "
                                                             "(default 49; shapley --exact: 9).")]
Baseline = Annotated[str, typer.Option(help="What a hidden feature shows: a number, mean (the image's), blur or grey.")]
Seed = Annotated[int, typer.Option(help="Seed of the random permutations, coalitions or masks.")]


def ablation(
    model: ModelArg, images: OptionalImagesArg = None, data: DataOpt = None, count: Count = None,
    target: Target = "predicted", of: Of = "logits", mask: MaskOpt = "grid", segments: Segments = None,
    baseline: Baseline = "0", output: OutputDir = Path("ablation"), cmap: Cmap = "jet", batch_size: BatchSize = 256,
    device: Device = "auto", scale: Scale = None, mean: Mean = None, std: Std = None, force: Force = False,
    dry_run: DryRun = False, head: HeadOpt = None, named: NamedInputs = None,
) -> None:
    """Feature ablation (Captum): the score lost when each feature in turn shows the baseline."""
    from onnxsight.methods.feature_ablation import feature_ablation as method

    segments = segments or 49
    _perturb("ablation", method, lambda m, x: _features(m, x, mask, segments) + 1, locals(), {})


def shapley(
    model: ModelArg, images: OptionalImagesArg = None, data: DataOpt = None, count: Count = None,
    target: Target = "predicted", of: Of = "logits", mask: MaskOpt = "grid", segments: Segments = None,
    baseline: Baseline = "0",
    samples: Annotated[int, typer.Option(min=1, help="Random feature orders (Captum's default 25).")] = 25,
    exact: Annotated[bool, typer.Option("--exact", help="Exact values over all 2^M coalitions (M <= 16 features; "
                                                        "default 9 segments).")] = False,
    seed: Seed = 0, output: OutputDir = Path("shapley"), cmap: Cmap = "jet", batch_size: BatchSize = 256,
    device: Device = "auto", scale: Scale = None, mean: Mean = None, std: Std = None, force: Force = False,
    dry_run: DryRun = False, head: HeadOpt = None, named: NamedInputs = None,
) -> None:
    """Shapley values of features: sampled over random orders (Captum's ShapleyValueSampling) or --exact."""
    from onnxsight.methods.shapley import shapley_value_sampling, shapley_values

    segments = segments or (9 if exact else 49)
    if exact:
        _perturb("shapley", shapley_values, lambda m, x: 2 ** _features(m, x, mask, segments), locals(), {})
    else:
        _perturb("shapley", shapley_value_sampling, lambda m, x: 1 + samples * _features(m, x, mask, segments),
                 locals(), {"samples": samples, "seed": seed})


def kernelshap(
    model: ModelArg, images: OptionalImagesArg = None, data: DataOpt = None, count: Count = None,
    target: Target = "predicted", of: Of = "logits", mask: MaskOpt = "grid", segments: Segments = None,
    baseline: Baseline = "0",
    samples: Annotated[str, typer.Option(help="Coalitions per image, x and the baseline included, or 'all' "
                                              "(2^M, exact Shapley values).")] = "500",
    seed: Seed = 0, output: OutputDir = Path("kernelshap"), cmap: Cmap = "jet", batch_size: BatchSize = 256,
    device: Device = "auto", scale: Scale = None, mean: Mean = None, std: Std = None, force: Force = False,
    dry_run: DryRun = False, head: HeadOpt = None, named: NamedInputs = None,
) -> None:
    """Kernel SHAP (Captum's KernelShap): Shapley values by a regression over Shapley-kernel coalitions."""
    from onnxsight.methods.lime import kernel_shap

    chosen = samples if samples == "all" else _integer(samples, "--samples")
    segments = segments or 49
    copies = (lambda m, x: 2 ** _features(m, x, mask, segments)) if chosen == "all" else (lambda m, x: chosen)
    _perturb("kernelshap", kernel_shap, copies, locals(), {"samples": chosen, "seed": seed})


def lime(
    model: ModelArg, images: OptionalImagesArg = None, data: DataOpt = None, count: Count = None,
    target: Target = "predicted", of: Of = "logits", mask: MaskOpt = "grid", segments: Segments = None,
    baseline: Baseline = "0",
    samples: Annotated[int, typer.Option(min=1, help="Random coalitions per image.")] = 500,
    kernel_width: Annotated[float, typer.Option(min=0, help="Width w of the similarity exp(-d²/(2w²)).")] = 1.0,
    similarity: Annotated[str, typer.Option(help="cosine-exponential (Captum's), euclidean-exponential or none.")]
    = "cosine-exponential",
    regression: Annotated[str, typer.Option(help="lasso (Captum's; needs onnxsight[lime]), ridge or linear.")] = "lasso",
    alpha: Annotated[Optional[float], typer.Option(min=0, help="Penalty (default: lasso 0.01, ridge 1).")] = None,
    seed: Seed = 0, output: OutputDir = Path("lime"), cmap: Cmap = "jet", batch_size: BatchSize = 256,
    device: Device = "auto", scale: Scale = None, mean: Mean = None, std: Std = None, force: Force = False,
    dry_run: DryRun = False, head: HeadOpt = None, named: NamedInputs = None,
) -> None:
    """LIME (Captum's Lime): a weighted linear model of the score over random feature coalitions."""
    from onnxsight.methods.lime import lime as method

    segments = segments or 49
    _perturb("lime", method, lambda m, x: samples, locals(),
             {"samples": samples, "kernel_width": kernel_width, "similarity": similarity, "regression": regression,
              "alpha": alpha, "seed": seed})


def rise(
    model: ModelArg, images: OptionalImagesArg = None, data: DataOpt = None, count: Count = None,
    target: Target = "predicted",
    of: Annotated[str, typer.Option(help="Scored tensor: output (default: the class probability, as the paper and "
                                         "DIANNA), logits, or a layer.")] = "output",
    masks: Annotated[int, typer.Option(min=1, help="Random masks (the paper's 4000).")] = 4000,
    cells: Annotated[int, typer.Option(min=1, help="Mask grid cells per side (the paper's 7).")] = 7,
    p: Annotated[float, typer.Option("--p", min=0, max=1, help="Chance a cell is shown (the paper's 0.5).")] = 0.5,
    baseline: Baseline = "0", seed: Seed = 0, output: OutputDir = Path("rise"), cmap: Cmap = "jet",
    batch_size: BatchSize = 256, device: Device = "auto", scale: Scale = None, mean: Mean = None, std: Std = None,
    force: Force = False, dry_run: DryRun = False, head: HeadOpt = None, named: NamedInputs = None,
) -> None:
    """RISE (Petsiuk et al.): the score averaged over random smooth masks, per pixel as often as it was shown."""
    from onnxsight.methods.rise import rise as method

    _perturb("rise", method, lambda m, x: masks, locals(), {"masks": masks, "cells": cells, "p": p, "seed": seed},
             masked=False)


def _perturb(name: str, method, per_image, given: dict, options: dict, masked: bool = True) -> None:
    """Run ``method`` through the shared attribution steps with the common options of these commands."""
    filler = _baseline(given["baseline"])
    options = {"baseline": given["baseline"], **options}
    if masked:
        options.update(mask=given["mask"], segments=given["segments"])
    keywords = {k: v for k, v in options.items() if k not in ("mask", "baseline")}
    if masked:
        keywords["feature_mask"] = _feature_mask(given["mask"])
    of, batch_size = given["of"], given["batch_size"]
    run_method(name, given["model"], given["images"], given["data"], given["count"], given["target"], of,
               given["output"], given["force"], given["cmap"], given["device"], given["scale"], given["mean"],
               given["std"],
               lambda m, x, t, progress: method(m, x, target=t, of=of, baseline=filler, batch_size=batch_size,
                                                progress=progress, **keywords),
               options, forward_plan(per_image, of, batch_size), given["dry_run"], head=given["head"],
               named=given["named"])


def _features(m: Model, x, mask: str, segments: int) -> int:
    """The most features of any image: the copies per image depend on it."""
    from onnxsight.methods.common import require_image
    from onnxsight.methods.superpixels import feature_labels

    image = _primary(m, x)
    return int(feature_labels(image, _feature_mask(mask), segments, require_image(m, "this method"))[1].max())


def _feature_mask(text: str):
    if text in ("grid", "slic"):
        return text
    if text == "pixels":
        return None
    if not text.endswith(".npy"):
        raise InvalidArgument(f"--mask must be grid, slic, pixels or an .npy file of integer labels, got {text!r}")
    labels = read_npy(Path(text))
    if not np.issubdtype(labels.dtype, np.integer):
        raise InvalidArgument(f"--mask {text} must hold integer labels, not {labels.dtype}")
    return labels


def _baseline(text: str):
    return text if text in ("mean", "blur", "grey", "gray") else _number(text, "--baseline")


def _integer(text: str, option: str) -> int:
    try:
        return int(text)
    except ValueError as error:
        raise InvalidArgument(f"{option} must be an integer or 'all', got {text!r}") from error
