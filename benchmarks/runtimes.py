"""Every input-gradient and perturbation method on every runtime, against TensorFlow ``tf.function``.

For each model (the seed-000 CNN with random weights on digits; keras.applications MobileNetV2,
EfficientNetB0 and ResNet50 with weights=None; a small ViT from tests/vit_models.py; the others
on random images of ``--size``²) and each batch size, one process times each method on
onnxruntime (``device="cpu"``), OpenVINO (``device="openvino"``, reported as not available when
this onnxsight or machine refuses it) and TensorFlow (the ``tf.function`` versions of
methods_vs_tensorflow.py; none for DeepLIFT): one warm-up call, then ``--repeats`` timed calls,
median and min–max in ms per image. Ratios: TensorFlow ÷ onnxsight per runtime, and saliency ÷
forward on each runtime. Targets (issue 18) with ✓/✗: saliency ≤ 2.5× forward at batch 64 on the
seed CNN, ≤ 3× on the others; every method ≥ 1.5× faster than TensorFlow at batch 64 and ≥ 3× at
batch 1, on the faster onnxsight runtime. A cell (model, batch, method, runtime) whose estimated
time (the time per row of a forward pass or of saliency's gradient × the passes the method needs per
image × rows × calls) exceeds its allowance is skipped and says so: ``--cell-budget`` seconds, less when the cells still to come
would not fit in what is left of ``--total-budget`` (default 13 min for the whole run) at that pace. Run:
.venv/bin/python benchmarks/runtimes.py [--models cnn,mobilenetv2] [--methods saliency,ig] [--batches 1,64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import onnxsight
from onnxsight.errors import OnnxsightError
from onnxsight.methods.cam import default_cam_layer
from methods_vs_tensorflow import tensorflow_methods  # benchmarks/ is the script's folder
from timing import spread, timed

MODELS = ("cnn", "mobilenetv2", "efficientnetb0", "resnet50", "vit")
RUNTIMES = {"onnxruntime": "cpu", "openvino": "openvino"}
# Cost per image for the time estimate: gradients (forward+backward passes, timed by saliency) or
# forward passes ("channels": the CAM layer's, "positions": occlusion's windows, each plus one clean pass).
METHODS = {
    "saliency": (lambda m, x, t, o: onnxsight.saliency(m, x, target=t), ("gradient", 1)),
    "gradient_x_input": (lambda m, x, t, o: onnxsight.saliency(m, x, target=t, times_input=True), ("gradient", 1)),
    "guided_backprop": (lambda m, x, t, o: onnxsight.saliency(m, x, target=t, modifier="guided"), ("gradient", 1)),
    "smoothgrad_20": (lambda m, x, t, o: onnxsight.saliency(m, x, target=t, smooth_samples=20), ("gradient", 20)),
    "integrated_gradients_50": (lambda m, x, t, o: onnxsight.integrated_gradients(m, x, target=t, steps=50),
                                ("gradient", 50)),
    "gradcam": (lambda m, x, t, o: onnxsight.gradcam(m, x, target=t, layer=o["layer"], normalize=False),
                ("gradient", 1)),
    "gradcam++": (lambda m, x, t, o: onnxsight.gradcam(m, x, target=t, layer=o["layer"], variant="gradcam++",
                                                       normalize=False), ("gradient", 1)),
    "scorecam": (lambda m, x, t, o: onnxsight.gradcam(m, x, target=t, layer=o["layer"], variant="scorecam",
                                                      normalize=False), ("forward", "channels")),
    "occlusion": (lambda m, x, t, o: onnxsight.occlusion(m, x, target=t, window=o["window"], stride=o["stride"]),
                  ("forward", "positions")),
    "deeplift": (lambda m, x, t, o: onnxsight.deeplift(m, x, target=t), ("gradient", 2)),
}
CLASSES = 10


def build(name: str, size: int):
    """(Keras model, images) for a model name; random weights, classes ``CLASSES``."""
    from onnxsight.converters.keras import import_keras

    keras = import_keras()
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    if name == "cnn":
        from onnxsight.data.datasets import digits
        from onnxsight.demo.architectures import mnist_cnn

        return mnist_cnn(), digits().x_test
    images = rng.uniform(0, 1, (64, size, size, 3)).astype(np.float32)
    if name == "vit":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.vit_models import vit

        return vit(image=size, patch=size // 12, width=64, depth=4, heads=4, classes=CLASSES), images
    builders = {"mobilenetv2": keras.applications.MobileNetV2, "efficientnetb0": keras.applications.EfficientNetB0,
                "resnet50": keras.applications.ResNet50}
    return builders[name](weights=None, input_shape=(size, size, 3), classes=CLASSES), images


def runtimes(path: Path, wanted: list[str]) -> dict[str, onnxsight.Model]:
    """The onnxsight runtimes that load ``path``; a refused one is printed and left out."""
    loaded = {}
    for name in wanted:
        try:
            loaded[name] = onnxsight.load(path, device=RUNTIMES[name])
        except OnnxsightError as error:
            print(f"{name}: not available ({error})", flush=True)
    return loaded


class Budget:
    """Seconds a cell may take: ``--cell-budget``, less when the cells still to come would not fit in
    what is left of ``--total-budget`` at that pace."""

    def __init__(self, cell: float, total: float, cells: int):
        self.cell, self.deadline, self.cells = cell, time.perf_counter() + total, cells

    def allowance(self) -> float:
        self.cells = max(1, self.cells - 1)
        return min(self.cell, max(0.0, self.deadline - time.perf_counter()) / self.cells)


def cell(run, rows: int, repeats: int, estimate: float, budget: float) -> dict:
    """Timing of ``run`` in ms per image (median, min, max), or why it was skipped."""
    if estimate > budget:
        return {"skipped": f"estimated {estimate:.1f} s > {budget:.1f} s allowed"}
    try:
        return spread(timed(run, repeats), 1e3 / rows)
    except OnnxsightError as error:
        return {"skipped": str(error).splitlines()[0]}


def measure(name: str, args, budget: Budget) -> list[dict]:
    """Rows of results for one model: one per (batch, method)."""
    keras_model, images = build(name, args.size)
    with tempfile.TemporaryDirectory() as folder:
        path = onnxsight.convert_keras(keras_model, Path(folder) / f"{name}.onnx")
        models = runtimes(path, args.runtimes)
    reference = next(iter(models.values()))
    side = images.shape[1]
    options = {"layer": default_cam_layer(reference), "window": 4 if side <= 32 else side // 6}
    options["stride"] = max(1, options["window"] // 2)
    channels = reference.activations(images[:1], [options["layer"]])[options["layer"]].shape[-1]
    positions = len(range(0, side - options["window"] + 1, options["stride"])) ** 2 + 1
    engines = {**models}
    if "tensorflow" in args.engines:
        engines["tensorflow"] = tensorflow_methods(keras_model, options["layer"], options["window"], options["stride"])
    results = []
    for batch in args.batches:
        x = np.resize(images, (batch, *images.shape[1:]))
        target = np.arange(batch) % CLASSES
        per_row = {}
        for engine, model in engines.items():  # forward: the reference of every ratio; with a gradient, of every estimate
            run = (lambda m=model: m.predict(x)) if engine != "tensorflow" else (lambda f=model: f["forward"](x, target))
            times = timed(run, max(3, args.repeats))
            gradient = (lambda m=model: METHODS["saliency"][0](m, x, target, options)) if engine != "tensorflow" \
                else (lambda f=model: f["saliency"](x, target))
            try:
                one_gradient = min(timed(gradient, 1))
            except OnnxsightError as error:  # each gradient cell then says why; estimate as three forward passes
                print(f"  {name} batch {batch} gradient {engine}: {str(error).splitlines()[0]}", file=sys.stderr, flush=True)
                one_gradient = 3 * min(times)
            per_row[engine] = {"forward": min(times) / batch, "gradient": one_gradient / batch}
            results.append({"model": name, "batch": batch, "method": "forward", "engine": engine,
                            **spread(times, 1e3 / batch)})
        for method in args.methods:
            compute, (kind, cost) = METHODS[method]
            passes = {"channels": channels + 1, "positions": positions}.get(cost, cost)
            for engine, model in engines.items():
                if engine == "tensorflow":
                    if method not in model:
                        continue
                    run = lambda f=model[method]: f(x, target)
                else:
                    run = lambda m=model, c=compute: c(m, x, target, options)
                estimate = per_row[engine][kind] * passes * batch * (args.repeats + 1)
                results.append({"model": name, "batch": batch, "method": method, "engine": engine,
                                **cell(run, batch, args.repeats, estimate, budget.allowance())})
                print(f"  {name} batch {batch} {method} {engine}: {_text(results[-1])}", file=sys.stderr, flush=True)
    return results


def table(results: list[dict], engines: list[str]) -> list[str]:
    """The printed table: ms per image per engine, ratios, and the issue's targets with ✓/✗."""
    onnx = [e for e in engines if e != "tensorflow"]
    found = {(r["model"], r["batch"], r["method"], r["engine"]): r for r in results}
    header = ["model", "batch", "method", *[f"{e} ms/img" for e in engines],
              *[f"tf/{e}" for e in onnx if "tensorflow" in engines], "÷ forward", "target", "met"]
    lines = [" | ".join(header), " | ".join("---" for _ in header)]
    keys = dict.fromkeys((r["model"], r["batch"], r["method"]) for r in results)
    for model, batch, method in keys:
        cells = [found.get((model, batch, method, e)) for e in engines]
        times = [c["median"] if c and "median" in c else None for c in cells]
        row = [model, str(batch), method, *[_text(c) for c in cells]]
        tf = found.get((model, batch, method, "tensorflow"))
        ratios = {e: tf["median"] / found[(model, batch, method, e)]["median"]
                  for e in onnx if tf and "median" in tf and "median" in found.get((model, batch, method, e), {})}
        if "tensorflow" in engines:
            row += [f"{ratios[e]:.2f}×" if e in ratios else "—" for e in onnx]
        forward = {e: found[(model, batch, "forward", e)]["median"] for e in onnx if (model, batch, "forward", e) in found}
        per_forward = {e: t / forward[e] for e, t in zip(engines, times) if e in forward and t is not None}
        row.append(", ".join(f"{per_forward[e]:.2f}×" for e in onnx if e in per_forward) if method != "forward" else "")
        target, met = _target(model, batch, method, per_forward, ratios)
        lines.append(" | ".join([*row, target, met]))
    return lines


def _target(model: str, batch: int, method: str, per_forward: dict, ratios: dict) -> tuple[str, str]:
    """The issue's target for a row and whether the faster onnxsight runtime meets it."""
    if method == "saliency" and batch == 64 and per_forward:
        limit = 2.5 if model == "cnn" else 3.0
        return f"≤ {limit}× forward; ≥ 1.5× tf", _mark(min(per_forward.values()) <= limit and _beats(ratios, 1.5))
    if method != "forward" and batch in (1, 64):
        factor = 3.0 if batch == 1 else 1.5
        return f"≥ {factor}× tf", _mark(_beats(ratios, factor)) if ratios else "—"
    return "", ""


def _beats(ratios: dict, factor: float) -> bool:
    return bool(ratios) and max(ratios.values()) >= factor


def _mark(ok: bool) -> str:
    return "✓" if ok else "✗"


def _text(result: dict | None) -> str:
    if result is None:
        return "—"
    if "skipped" in result:
        return f"skipped ({result['skipped']})"
    return f"{result['median']:.3f} ({result['min']:.3f}–{result['max']:.3f})"


def _names(text: str, known) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown: {', '.join(unknown)}; choose from {', '.join(known)}")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}")
    parser.add_argument("--engines", default="onnxruntime,openvino,tensorflow",
                        help="comma-separated, of onnxruntime, openvino, tensorflow")
    parser.add_argument("--batches", default="1,64", help="comma-separated batch sizes")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per cell, after one warm-up")
    parser.add_argument("--size", type=int, default=96, help="image side of the keras.applications models and the ViT")
    parser.add_argument("--cell-budget", type=float, default=20.0,
                        help="skip a cell whose estimated time (warm-up and repeats) exceeds this many seconds")
    parser.add_argument("--total-budget", type=float, default=780.0,
                        help="seconds for the whole run, model building included (default 13 min, so that a full "
                             "run ends within 15 min); a cell gets at most its share of what is left")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()
    args.models, args.methods = _names(args.models, MODELS), _names(args.methods, METHODS)
    args.engines = _names(args.engines, [*RUNTIMES, "tensorflow"])
    args.runtimes = [e for e in args.engines if e in RUNTIMES]
    args.batches = [int(b) for b in args.batches.split(",")]

    start = time.perf_counter()
    results = []
    budget = Budget(args.cell_budget, args.total_budget, len(args.models) * len(args.batches) * len(args.methods) * len(args.engines))
    for name in args.models:  # a table per model, as soon as it is measured
        rows = measure(name, args, budget)
        engines = [e for e in args.engines if any(r["engine"] == e for r in rows)]
        print("\n".join(table(rows, engines)), flush=True)
        results += rows
    print(f"total time: {time.perf_counter() - start:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
