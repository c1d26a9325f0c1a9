"""Forward+backward cost of an onnxsight gradient graph, as a multiple of the forward pass alone.

The backward graph is the input gradient of one class logit (what ``onnxsight.saliency`` runs).
Forward and forward+backward sessions are timed interleaved (median of ``--repeats``), so that a
loaded machine slows both alike; ``--cpu`` times process CPU seconds instead of wall seconds
(steadier on a shared machine, meaningful with ``--threads 1``). ``--profile`` adds onnxruntime's
per-op-type share of the forward+backward run.

Targets: the seed-000 MNIST CNN at batch 64 (issue 3), and MobileNetV2, EfficientNetB0,
ResNet50 and a small ViT at 96×96, batch 1 and 32 (issue 18): at most 3× the forward pass.
Run: .venv/bin/python benchmarks/vjp_overhead.py --model mobilenetv2 --batch 1 32

Before/after a change to the gradient rules, in one process: ``--save old.onnx`` from the old
checkout writes its forward+backward model; ``--compare old.onnx`` from the new one times that
model interleaved with the new one (same converted weights: converting twice draws new ones, so
the old checkout's ``--save`` must see the same ``--seed``).
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

import onnxsight
from onnxsight.engine.model import with_outputs
from onnxsight.engine.targets import cotangent

TARGET_RATIO = 3.0


def _keras_model(name: str, size: int):
    """The Keras model to convert: the seed MNIST CNN, a keras.applications network with random
    weights, or the tests' small ViT (patches of 8, width 64, depth 4)."""
    if name == "mnist":
        from onnxsight.demo.architectures import mnist_cnn

        return mnist_cnn()
    if name == "vit":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.vit_models import vit

        return vit(image=size, patch=8, width=64, depth=4, heads=4, classes=10)
    import keras

    build = {"mobilenetv2": keras.applications.MobileNetV2, "efficientnetb0": keras.applications.EfficientNetB0,
             "resnet50": keras.applications.ResNet50}[name]
    return build(input_shape=(size, size, 3), weights=None)


def _session(proto, threads: int, profile: bool = False) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = tempfile.mkdtemp() + "/vjp"
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _op_shares(session: ort.InferenceSession, feeds: dict, top: int) -> list[tuple[str, float, int]]:
    """(op type, % of kernel time, nodes) of the ``top`` most expensive op types over three runs."""
    for _ in range(3):
        session.run(None, feeds)
    times, nodes = collections.Counter(), collections.defaultdict(set)
    for event in json.loads(Path(session.end_profiling()).read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            times[event["args"]["op_name"]] += event["dur"]
            nodes[event["args"]["op_name"]].add(event["name"])
    total = sum(times.values())
    return [(op, round(100 * t / total, 1), len(nodes[op])) for op, t in times.most_common(top)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mnist", choices=["mnist", "mobilenetv2", "efficientnetb0", "resnet50", "vit"])
    parser.add_argument("--size", type=int, default=96, help="input height and width (not for mnist)")
    parser.add_argument("--batch", type=int, nargs="+", default=[64])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: onnxruntime's default)")
    parser.add_argument("--cpu", action="store_true", help="time process CPU seconds instead of wall seconds")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="print the N most expensive op types")
    parser.add_argument("--seed", type=int, default=0, help="Keras weight initialisation seed")
    parser.add_argument("--save", type=Path, help="write the forward+backward model here (for --compare elsewhere)")
    parser.add_argument("--compare", type=Path, nargs="+", default=[], metavar="ONNX",
                        help="forward+backward models saved by --save (another checkout) to time interleaved with this one")
    args = parser.parse_args()

    import keras

    keras.utils.set_random_seed(args.seed)
    with tempfile.TemporaryDirectory() as folder:
        path = onnxsight.convert_keras(_keras_model(args.model, args.size), Path(folder) / f"{args.model}.onnx")
        model = onnxsight.load(path, device="cpu")
    augmented = model.augmented("logits", ["input"])
    gradient = augmented.gradients["input"]
    both_proto = with_outputs(augmented.model, [gradient], model.values | {gradient: model.values[model.input_name]})
    if args.save:
        args.save.write_bytes(both_proto.SerializeToString())
    forward, both = _session(model.proto, args.threads), _session(both_proto, args.threads)
    others = [_session(onnx.load(path), args.threads) for path in args.compare]
    clock = time.process_time if args.cpu else time.perf_counter
    classes = model.shapes[model.tensor("logits")][1]
    for batch in args.batch:
        x = np.random.default_rng(0).uniform(0, 1, (batch, *model.shapes[model.input_name][1:])).astype(np.float32)
        feeds = {model.input_name: x}
        with_cotangent = feeds | {augmented.cotangent: cotangent((batch, classes), np.arange(batch) % classes, 1)}
        timed = [(forward, feeds), (both, with_cotangent)] + [(other, with_cotangent) for other in others]
        expected = both.run(None, with_cotangent)[-1]
        for session, feed in timed:
            outputs = session.run(None, feed)
            if session in others and not np.allclose(outputs[-1], expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max()):
                raise SystemExit("a --compare model's gradient differs from this checkout's: not the same weights (--seed)?")
        times = [[] for _ in timed]
        for _ in range(args.repeats):
            for (session, feed), spent in zip(timed, times):
                start = clock()
                session.run(None, feed)
                spent.append(clock() - start)
        t_forward, t_both = (statistics.median(t) for t in times[:2])
        ratio = t_both / t_forward
        result = {
            "model": args.model, "batch": batch, "clock": "cpu" if args.cpu else "wall",
            "forward_ms": round(1e3 * t_forward, 2),
            "forward_backward_ms": round(1e3 * t_both, 2), "ratio": round(ratio, 2),
            "target_ratio": TARGET_RATIO, "met": ratio <= TARGET_RATIO,
        }
        if others:
            result["compare"] = [{"model": str(path), "forward_backward_ms": round(1e3 * statistics.median(t), 2),
                                  "ratio": round(statistics.median(t) / t_forward, 2)}
                                 for path, t in zip(args.compare, times[2:])]
        if args.profile:
            result["profile"] = _op_shares(_session(both_proto, args.threads, profile=True), with_cotangent, args.profile)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
