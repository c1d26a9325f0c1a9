"""Iterative attribution methods against their forward-pass limit: the same rows through a plain session.

Each method — Integrated Gradients (50 steps), SmoothGrad (20 samples), Score-CAM and occlusion — is
timed against the runs it cannot avoid: its rows (path points, noisy copies, masked copies, occluded
copies and each clean image) prebuilt and pushed through a plain onnxruntime session of the same graph
(the forward+backward graph of the logit's input gradient for IG and SmoothGrad, the model's logits for
the others), one ``session.run`` per chunk of the method's rows per run (IG, SmoothGrad:
``gradient_batch_size``; Score-CAM 64; occlusion 256), with the engine's session options (same threads, no
spinning). What the method costs beyond that is Python, copies and per-run overhead. Method, limit and
(``--tensorflow``) the same computation as compiled ``tf.function`` (benchmarks/methods_vs_tensorflow.py)
are timed interleaved (each first in turn), median of ``--repeats``; ``inside_run`` is the share of the method's time spent
inside ``session.run``. ``--cpu`` times process CPU seconds (steadier on a shared machine; use it with
``--threads 1``).

Targets (issue 18 §2): occlusion ≥ 80 % of the limit's throughput (ratio ≤ 1.25) at batch 1 and 64; IG,
SmoothGrad and Score-CAM at batch 1 within 1.2× of the limit and faster than tf.function.
Run: .venv/bin/python benchmarks/iterative_limit.py --model cnn --batch 1 64 --threads 1 --cpu --tensorflow
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

import onnxsight
from onnxsight.engine.model import with_outputs
from onnxsight.methods.cam import default_cam_layer
from onnxsight.methods.common import gradient_batch_size
from onnxsight.methods.occlusion import default_window
from runtimes import build  # benchmarks/ is the script's folder

METHODS = ("integrated_gradients_50", "smoothgrad_20", "scorecam", "occlusion")
TARGETS = {"integrated_gradients_50": 1.2, "smoothgrad_20": 1.2, "scorecam": 1.2, "occlusion": 1.25}
CAM_CHUNK, OCCLUSION_CHUNK = 64, 256  # gradcam's and occlusion's default rows per run


class SessionRuns:
    """Wraps onnxruntime's ``InferenceSession.run``: the time spent inside it (and the calls) while
    ``counting``, and the feeds of the runs of ``recording`` output names."""

    def __init__(self, clock):
        self.seconds, self.calls, self.counting = 0.0, 0, False
        self.recording: list[str] | None = None
        self.recorded: list[dict[str, np.ndarray]] = []
        run = ort.InferenceSession.run

        def wrapped(session, output_names, feeds, *args, **kwargs):
            if self.recording is not None and list(output_names or ()) == self.recording:
                self.recorded.append({name: np.array(value) for name, value in feeds.items()})
            if not self.counting:
                return run(session, output_names, feeds, *args, **kwargs)
            start = clock()
            try:
                return run(session, output_names, feeds, *args, **kwargs)
            finally:
                self.seconds += clock() - start
                self.calls += 1

        ort.InferenceSession.run = wrapped

    def rows(self, call, outputs: list[str]) -> dict[str, np.ndarray]:
        """The rows ``call()`` feeds to sessions with these ``outputs``, concatenated by input name."""
        self.recording, self.recorded = outputs, []
        call()
        self.recording = None
        return {name: np.concatenate([feed[name] for feed in self.recorded]) for name in self.recorded[0]}


def plain_session(proto, threads: int) -> ort.InferenceSession:
    """A session with the engine's options (no spinning; ``threads`` intra-op threads, 0: default)."""
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def limit_runs(model, method: str, call, runs: SessionRuns, threads: int):
    """(rows, a function running them): the rows ``call`` feeds to the graph that does the method's work
    (the logit's input gradient for IG and SmoothGrad, the logits for the others), prebuilt, through a plain
    session of that graph in chunks of the method's rows per run."""
    if method in ("integrated_gradients_50", "smoothgrad_20"):
        augmented = model.augmented("logits", ["input"])
        outputs = [augmented.gradients["input"]]
        proto = with_outputs(augmented.model, outputs, model.values | {outputs[0]: model.values[model.input_name]})
        chunk = gradient_batch_size(model)
    else:
        outputs = [model.tensor("logits")]
        proto = with_outputs(model.proto, outputs, model.values)
        chunk = CAM_CHUNK if method == "scorecam" else OCCLUSION_CHUNK
    rows = runs.rows(call, outputs)
    count = len(next(iter(rows.values())))
    feeds = [{name: value[start:start + chunk] for name, value in rows.items()} for start in range(0, count, chunk)]
    session = plain_session(proto, threads)
    return count, lambda: [session.run(outputs, feed) for feed in feeds]


def method_call(model, method: str, x: np.ndarray, target: np.ndarray, window, stride):
    """The onnxsight call of ``method`` on ``x``."""
    if method == "integrated_gradients_50":
        return lambda: onnxsight.integrated_gradients(model, x, target=target, steps=50)
    if method == "smoothgrad_20":
        return lambda: onnxsight.saliency(model, x, target=target, smooth_samples=20)
    if method == "scorecam":
        return lambda: onnxsight.gradcam(model, x, target=target, variant="scorecam", normalize=False)
    return lambda: onnxsight.occlusion(model, x, target=target, window=window, stride=stride)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cnn", choices=["cnn", "mobilenetv2"])
    parser.add_argument("--size", type=int, default=96, help="input height and width (not for cnn)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: onnxruntime's default)")
    parser.add_argument("--cpu", action="store_true", help="time process CPU seconds instead of wall seconds")
    parser.add_argument("--tensorflow", action="store_true", help="also time the tf.function versions")
    parser.add_argument("--window", type=int, default=None, help="occlusion window (default: 4 on cnn, size/6)")
    args = parser.parse_args()

    if args.tensorflow and args.threads:  # before TensorFlow initialises (building the Keras model does)
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    keras_model, images = build(args.model, args.size)
    with tempfile.TemporaryDirectory() as folder:
        path = onnxsight.convert_keras(keras_model, Path(folder) / f"{args.model}.onnx")
        model = onnxsight.load(path, device="cpu", threads=args.threads or None)
    height, width = model.input_shape[1:3]
    window, stride = default_window(height, width, args.window or (4 if args.model == "cnn" else height // 6))
    theirs = None
    if args.tensorflow:
        from methods_vs_tensorflow import tensorflow_methods

        theirs = tensorflow_methods(keras_model, default_cam_layer(model), window[0], stride[0])
    clock = time.process_time if args.cpu else time.perf_counter
    runs = SessionRuns(clock)
    classes = model.shapes[model.tensor("logits")][1]
    for batch in args.batch:
        x = np.resize(images, (batch, *images.shape[1:])).astype(np.float32)
        target = np.arange(batch) % classes
        for method in args.methods:
            ours = method_call(model, method, x, target, window, stride)
            rows, limit = limit_runs(model, method, ours, runs, args.threads)
            calls = {"method": ours, "limit": limit}
            if theirs is not None:
                calls["tensorflow"] = lambda: theirs[method](x, target)
            times = {name: [] for name in calls}
            for call in calls.values():
                call()
            runs.seconds, runs.calls = 0.0, 0
            for repeat in range(args.repeats):
                names = list(calls)
                for name in names[repeat % len(names):] + names[:repeat % len(names)]:  # each goes first in turn
                    call = calls[name]
                    runs.counting = name == "method"
                    start = clock()
                    call()
                    times[name].append(clock() - start)
                    runs.counting = False
            ms = {name: 1e3 * statistics.median(t) / batch for name, t in times.items()}
            result = {
                "model": args.model, "method": method, "batch": batch, "rows": rows, "clock": "cpu" if args.cpu else "wall",
                "threads": args.threads or "default", "method_ms_per_image": round(ms["method"], 3),
                "limit_ms_per_image": round(ms["limit"], 3), "ratio": round(ms["method"] / ms["limit"], 3),
                "target_ratio": TARGETS[method], "met": ms["method"] / ms["limit"] <= TARGETS[method],
                "inside_run": round(runs.seconds / sum(times["method"]), 3),
                "runs_per_call": runs.calls / args.repeats,
            }
            if theirs is not None:
                result["tensorflow_ms_per_image"] = round(ms["tensorflow"], 3)
                result["faster_than_tensorflow"] = ms["method"] < ms["tensorflow"]
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
