"""Deletion AUC (100 steps, MoRF, fill 0) of 64 digits on the seed-000 CNN against (a) the batched
forward passes it needs — the same 64 × 101 rows, prebuilt, through ``Model.run`` — and (b) a
straightforward per-step loop (one ``Model.run`` per step per image). Also ms/image at batch 1 and 64
of every faithfulness metric with its defaults.

Target (issue 17): deletion ≤ ~1.3× (a). Run: .venv/bin/python benchmarks/deletion_speed.py
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

import onnxsight
from onnxsight.data.datasets import digits
from onnxsight.demo.architectures import mnist_cnn
from onnxsight.metrics import confidence_change, deletion, insertion, mufidelity, road
from timing import best_of  # benchmarks/ is the script's folder

TARGET_RATIO = 1.3
STEPS = 100


def per_step_loop(model, x, maps, indices):
    """Deletion AUCs the plain way: per image, per step, delete the next pixels and run the model on one row."""
    output = model.tensor("output")
    areas = []
    for image, pixel_map, target in zip(x, maps, indices):
        order = np.argsort(-pixel_map.reshape(-1), kind="stable")
        scores = []
        for k in range(STEPS + 1):
            deleted = image.reshape(-1, image.shape[-1]).copy()
            deleted[order[:k * len(order) // STEPS]] = 0.0
            scores.append(model.run(deleted.reshape(1, *image.shape), [output])[0][0, target])
        scores = np.asarray(scores, np.float64)
        areas.append((scores[:-1] + scores[1:]).sum() / (2 * STEPS))
    return np.asarray(areas)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        path = onnxsight.convert_keras(mnist_cnn(), Path(folder) / "mnist_cnn.onnx")
        model = onnxsight.load(path, device="cpu")
    x = digits().x_test[:args.images]
    maps = onnxsight.saliency(model, x)
    indices = model.run(x, [model.tensor("output")])[0].argmax(axis=1)

    rows = np.repeat(x, STEPS + 1, axis=0)  # as many rows as deletion runs, prebuilt
    # interleaved, the fastest of each: on a shared machine the load changes between back-to-back series
    t_forward, t_deletion = np.min([[best_of(lambda: model.run(rows, [model.tensor("output")], batch_size=256), 1),
                                     best_of(lambda: deletion(model, x, maps, steps=STEPS), 1)]
                                    for _ in range(args.repeats)], axis=0)
    t_loop = best_of(lambda: per_step_loop(model, x, maps, indices), 1)
    same = np.abs(deletion(model, x, maps, steps=STEPS) - per_step_loop(model, x, maps, indices)).max()

    per_image = {}
    for metric in (deletion, insertion, road, mufidelity, confidence_change):
        one = best_of(lambda: metric(model, x[:1], maps[:1]), args.repeats)
        full = best_of(lambda: metric(model, x, maps), 1)
        per_image[metric.__name__] = {"batch_1_ms": round(1e3 * one, 2), f"batch_{len(x)}_ms": round(1e3 * full / len(x), 2)}

    t_forward, t_deletion = float(t_forward), float(t_deletion)
    ratio = t_deletion / t_forward
    print(json.dumps({
        "model": "seed-000 MNIST CNN", "images": len(x), "steps": STEPS, "rows": len(rows),
        "forward_ms": round(1e3 * t_forward, 1), "deletion_ms": round(1e3 * t_deletion, 1),
        "per_step_loop_ms": round(1e3 * t_loop, 1), "ratio_to_forward": round(ratio, 3),
        "speedup_over_loop": round(t_loop / t_deletion, 1), "max_auc_difference_to_loop": float(same),
        "target_ratio": TARGET_RATIO, "met": ratio <= TARGET_RATIO, "ms_per_image": per_image,
    }, indent=2))


if __name__ == "__main__":
    main()
