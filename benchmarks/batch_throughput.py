"""Throughput of ``onnxsight batch`` (images/s, end to end: checks, workers' start-up, shards, reductions).

10,000 digits (the 1,797 bundled ones tiled) through the seed-000 CNN, saliency and seed 003's
occlusion (window 11, stride 4), on the local engine (1 and 2 worker processes, and 1 process with
2 onnxruntime threads) and on Ray (a local cluster, 1 and 2 actors). Every run's shards are
checked to be identical to the first run's. Run: .venv/bin/python benchmarks/batch_throughput.py
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

METHODS = {"saliency": {}, "occlusion": {"window": 11, "stride": 4}}
# (engine, workers, threads per worker)
CONFIGS = [("local", 1, 1), ("local", 2, 1), ("local", 1, 2), ("ray", 1, 1), ("ray", 2, 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    args = parser.parse_args()

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        model = onnxsight.convert_keras(mnist_cnn(), folder / "mnist_cnn.onnx")
        data = digits()
        pool = np.concatenate([data.x_train, data.x_test])
        np.save(folder / "digits.npy", np.resize(pool, (args.images, *pool.shape[1:])))
        for method in args.methods:
            reference = None
            for engine, workers, threads in CONFIGS:
                out = folder / f"{method}-{engine}-{workers}x{threads}"
                result = onnxsight.run_batch(model, folder / "digits.npy", method, out, options=METHODS[method],
                                             shard_size=args.shard_size, engine=engine, workers=workers, threads=threads)
                shards = json.loads((out / "manifest.json").read_text())["shards"]
                reference = reference or shards
                rows.append({"method": method, "engine": engine, "workers": workers, "threads": threads,
                             "seconds": round(result.seconds, 2), "images_per_s": round(result.images / result.seconds, 1),
                             "same_shards_as_first": shards == reference})
    ray.shutdown()
    print(json.dumps({"images": args.images, "shard_size": args.shard_size, "runs": rows}, indent=2))


if __name__ == "__main__":
    main()
