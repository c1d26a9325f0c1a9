"""Cost of one activation-maximization step, as a multiple of one forward pass of the same batch.

Target (issue: activation maximization): one step of ``onnxsight.maximize`` — forward and VJP
of the objective head in one onnxruntime run, jitter, L2 and total-variation penalties, the
update and its history row; no finite-difference check — costs at most 3.5x one onnxruntime
forward pass of the model on the same batch (10 images, one per class, seed-000 MNIST CNN, CPU).
Each step is timed between two progress callbacks (setup excluded); the fastest step against the
fastest forward pass ("ratio"), and medians against medians ("median_ratio").
Run: .venv/bin/python benchmarks/maximize_step.py

Measured numbers and their history: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

import onnxsight
from onnxsight.demo.architectures import mnist_cnn
from onnxsight.engine.objectives import objective_head
from onnxsight.methods.maximize import Modifiers, Regularizers, _Loop, maximize
from timing import timed  # benchmarks/ is the script's folder

TARGET_RATIO = 3.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=10, help="images (units) optimised at once")
    parser.add_argument("--steps", type=int, default=200, help="steps per run (each one is timed)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        path = onnxsight.convert_keras(mnist_cnn(), Path(folder) / "mnist_cnn.onnx")
        model = onnxsight.load(path, device="cpu")
    units = [i % 10 for i in range(args.batch)]
    options = {"regularizers": {"l2": 1e-3, "tv": 1e-2}, "modifiers": {"jitter": 2}, "check_every": 0}

    def step_times(steps: int) -> np.ndarray:
        """Seconds between consecutive progress callbacks: each one step, setup excluded."""
        stamps = []
        maximize(model, "preds", units, steps=steps, progress=lambda done: stamps.append(time.perf_counter()), **options)
        return np.diff(stamps)

    steps = np.concatenate([step_times(args.steps) for _ in range(args.repeats)])
    t_step, t_step_median = float(steps.min()), float(np.median(steps))

    forward = ort.InferenceSession(model.proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(0, 1, (args.batch, 28, 28, 1)).astype(np.float32)
    forward_times = np.array(timed(lambda: forward.run(None, {model.input_name: x}), args.steps * args.repeats))
    t_forward, t_forward_median = float(forward_times.min()), float(np.median(forward_times))
    # the part of a step that is the engine's: the objective head's forward+VJP graph in onnxruntime
    loop = _Loop(model, objective_head(model, "preds", "logit"), units, Regularizers(), Modifiers(), 3, 1e-3)
    t_vjp = min(timed(lambda: loop.run(x), args.steps * args.repeats))
    result = {
        "model": "seed-000 MNIST CNN", "batch": args.batch, "objective": "logit", **options,
        "forward_ms": round(1e3 * t_forward, 3), "step_ms": round(1e3 * t_step, 3),
        "head_forward_backward_ms": round(1e3 * t_vjp, 3), "head_forward_backward_ratio": round(t_vjp / t_forward, 3),
        "ratio": round(t_step / t_forward, 3), "median_ratio": round(t_step_median / t_forward_median, 3),
        "target_ratio": TARGET_RATIO, "met": t_step / t_forward <= TARGET_RATIO,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
