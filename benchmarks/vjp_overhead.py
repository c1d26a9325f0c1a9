"""Forward+backward cost of an onnxsight gradient graph, as a multiple of the forward pass alone.

Target (issue 3): forward+backward for the seed-000 MNIST CNN at batch 64 costs at most 3x
the forward pass in onnxruntime on CPU. Run: .venv/bin/python benchmarks/vjp_overhead.py
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

import onnxsight
from onnxsight.demo.architectures import mnist_cnn
from onnxsight.engine.model import with_outputs
from onnxsight.engine.targets import cotangent
from timing import best_of  # benchmarks/ is the script's folder

TARGET_RATIO = 3.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        path = onnxsight.convert_keras(mnist_cnn(), Path(folder) / "mnist_cnn.onnx")
        model = onnxsight.load(path, device="cpu")
    x = np.random.default_rng(0).uniform(0, 1, (args.batch, 28, 28, 1)).astype(np.float32)
    augmented = model.augmented("logits", ["input"])
    cot = cotangent((args.batch, 10), np.arange(args.batch) % 10, 1)

    forward = ort.InferenceSession(model.proto.SerializeToString(), providers=["CPUExecutionProvider"])
    both = ort.InferenceSession(
        with_outputs(augmented.model, [augmented.gradients["input"]], model.values | {
            augmented.gradients["input"]: model.values[model.input_name]}).SerializeToString(),
        providers=["CPUExecutionProvider"],
    )
    t_forward = best_of(lambda: forward.run(None, {model.input_name: x}), args.repeats)
    t_both = best_of(lambda: both.run(None, {model.input_name: x, augmented.cotangent: cot}), args.repeats)
    result = {
        "model": "seed-000 MNIST CNN", "batch": args.batch, "forward_ms": round(1e3 * t_forward, 3),
        "forward_backward_ms": round(1e3 * t_both, 3), "ratio": round(t_both / t_forward, 3),
        "target_ratio": TARGET_RATIO, "met": t_both / t_forward <= TARGET_RATIO,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
