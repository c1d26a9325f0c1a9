"""The ``batch`` command: one attribution method over a whole dataset, sharded and resumable, locally or on Ray."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from onnxsight.cli.attribution import parse_target
from onnxsight.cli.options import Device, Force, Mean, ModelArg, OutputDir, Scale, Std, out
from onnxsight.cli.progress import bar
from onnxsight.errors import InvalidArgument

Method = Annotated[str, typer.Option(help="saliency, gradcam, occlusion, ig or activations (top-K and statistics per unit).")]
Data = Annotated[str, typer.Option(
    "--data", help="'digits', an image folder (class subfolders = labels), a CIFAR-10 folder, a .npy or a .npz.")]
Target = Annotated[str, typer.Option(help="'predicted' (argmax), 'label' (the dataset's labels) or a class/channel index.")]

# option name -> (methods it applies to, method keyword)
METHOD_OPTIONS = {
    "modifier": (("saliency",), "modifier"), "samples": (("saliency",), "smooth_samples"),
    "noise": (("saliency",), "smooth_noise"), "layer": (("gradcam",), "layer"), "variant": (("gradcam",), "variant"),
    "window": (("occlusion",), "window"), "stride": (("occlusion",), "stride"), "fill": (("occlusion",), "fill"),
    "steps": (("ig",), "steps"), "baseline": (("ig",), "baseline"), "reduce": (("saliency", "ig"), "reduce"),
}


def batch(
    model: ModelArg, data: Data, method: Method = "saliency", output: OutputDir = Path("batch"),
    target: Target = "predicted",
    of: Annotated[str, typer.Option(help="Scored tensor: logits (softmax swapped for linear), output, or a layer.")] = "logits",
    split: Annotated[str, typer.Option(help="test or train, for data that has both.")] = "test",
    limit: Annotated[Optional[int], typer.Option(min=1, help="Only the first N images.")] = None,
    shard_size: Annotated[int, typer.Option(min=1, help="Images per shard (the unit of work and of resumption).")] = 1024,
    engine: Annotated[str, typer.Option(help="local (a pool of processes) or ray (Ray Data actors).")] = "local",
    address: Annotated[Optional[str], typer.Option(help=(
        "Ray cluster: host:port, ray://host:port, 'auto' (the cluster this node belongs to) or 'local' (a new one); "
        "default: RAY_ADDRESS if set, else a new local Ray instance."))] = None,
    connect_timeout: Annotated[float, typer.Option(help="Ray: seconds the cluster at --address or RAY_ADDRESS has to accept a connection.")] = 30.0,
    workers: Annotated[Optional[int], typer.Option(min=1, help="Worker processes or Ray actors (default: one per core; 1 on CUDA).")] = None,
    threads: Annotated[int, typer.Option(min=1, help="onnxruntime threads per worker (results do not depend on it).")] = 1,
    gpus_per_worker: Annotated[Optional[float], typer.Option(min=0, help="Ray with --device cuda: GPUs per actor (default 1).")] = None,
    layer: Annotated[Optional[list[str]], typer.Option("--layer", "-l", help="activations: layers (repeatable); gradcam: its layer.")] = None,
    k: Annotated[int, typer.Option(min=1, help="activations: top-K images per unit.")] = 10,
    modifier: Annotated[Optional[str], typer.Option(help="saliency: guided or deconv (default vanilla).")] = None,
    samples: Annotated[Optional[int], typer.Option(min=1, help="saliency: SmoothGrad noisy copies per image.")] = None,
    noise: Annotated[Optional[float], typer.Option(min=0, help="saliency: SmoothGrad noise (fraction of the value range).")] = None,
    variant: Annotated[Optional[str], typer.Option(help="gradcam: gradcam, gradcam++, xgradcam, hirescam, layercam, scorecam, "
                                                 "gradcamelementwise, eigencam, eigengradcam, kpcacam, ablationcam.")] = None,
    window: Annotated[Optional[int], typer.Option(min=1, help="occlusion: window side (default 1/14 of the shorter image side, at least 4).")] = None,
    stride: Annotated[Optional[int], typer.Option(min=1, help="occlusion: stride (default half the window).")] = None,
    fill: Annotated[Optional[str], typer.Option(help="occlusion: a number, mean (the image's mean) or blur (default 0).")] = None,
    steps: Annotated[Optional[int], typer.Option(min=1, help="ig: path points (default 50).")] = None,
    baseline: Annotated[Optional[str], typer.Option(help="ig: black, grey, blur or a number (default black).")] = None,
    reduce: Annotated[Optional[str], typer.Option(help="saliency/ig: channel reduction max, mean or sum (ig default: sum).")] = None,
    seed: Annotated[int, typer.Option(help="Noise seed (shard i uses the seed sequence [seed, i]).")] = 0,
    batch_size: Annotated[Optional[int], typer.Option(min=1, help="Images per onnxruntime call (default: the method's).")] = None,
    device: Device = "cpu", scale: Scale = None, mean: Mean = None, std: Std = None, force: Force = False,
) -> None:
    """Run an attribution method over a whole dataset in resumable shards; merge class means/SEM or per-unit top-K and statistics.

    Writes OUT/shards/NNNNNN.npz (index, label, target, maps or units.<layer>), OUT/partials/, OUT/reductions.npz
    and OUT/manifest.json; a rerun skips the finished shards.
    """
    from onnxsight.scale.run import run_batch

    given = {"modifier": modifier, "samples": samples, "noise": noise, "variant": variant, "window": window,
             "stride": stride, "fill": _named_or_number(fill, ("mean", "blur"), "--fill"), "steps": steps,
             "baseline": _named_or_number(baseline, ("black", "grey", "gray", "blur"), "--baseline"), "reduce": reduce,
             "layer": layer[0] if method == "gradcam" and layer else None}
    if layer and method not in ("activations", "gradcam"):
        raise InvalidArgument(f"--layer applies to activations and gradcam, not to {method}")
    if method == "gradcam" and layer and len(layer) > 1:
        raise InvalidArgument("gradcam takes one --layer")
    options = {}
    for name, value in given.items():
        if value is None:
            continue
        methods, keyword = METHOD_OPTIONS[name]
        if method not in methods:
            raise InvalidArgument(f"--{name} applies to {' and '.join(methods)}, not to {method}")
        options[keyword] = value
    if method == "ig":
        options.setdefault("reduce", "sum")
    if method == "saliency" and modifier == "vanilla":
        options["modifier"] = None
    chosen_target = target if target == "label" else parse_target(target)
    if isinstance(chosen_target, list):
        raise InvalidArgument("--target takes one index for a whole dataset, not one per image")
    progress = bar("images", transient=False)
    task = progress.add_task(f"{method} {data}", start=False)

    def start(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total)
        progress.start_task(task)
        progress.start()

    try:
        result = run_batch(
            model, data, method, output, target=chosen_target, of=of, options=options,
            layers=(layer or ()) if method == "activations" else (), k=k, split=split, limit=limit,
            shard_size=shard_size, engine=engine, workers=workers, threads=threads, address=address,
            connect_timeout=connect_timeout,
            gpus_per_worker=gpus_per_worker, device=device, batch_size=batch_size, seed=seed, scale=scale,
            mean=mean, std=std, force=force, on_start=start,
            on_shard=lambda record: progress.advance(task, record.stop - record.start),
        )
    finally:
        if progress.live.is_started:
            progress.stop()
    out.print(
        f"{result.images} images in {result.shards} shards ({result.computed} computed, {result.skipped} already done) "
        f"in {result.seconds:.1f} s; wrote {result.output}/manifest.json and reductions.npz"
    )


def _named_or_number(text: str | None, names: tuple[str, ...], option: str):
    if text is None or text in names:
        return text
    try:
        return float(text)
    except ValueError as error:
        raise InvalidArgument(f"{option} must be a number or one of {', '.join(names)}, got {text!r}") from error
