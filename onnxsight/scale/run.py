"""Run a batch job: plan shards, skip finished ones, compute the rest on an engine, record each in
the manifest as it lands, then merge the per-shard partials into ``reductions.npz``."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxsight.data.files import atomic_write
from onnxsight.engine.model import load
from onnxsight.engine.session import resolve
from onnxsight.errors import InvalidArgument
from onnxsight.scale import reductions as r
from onnxsight.scale.jobs import Job, compute, unit_key
from onnxsight.scale.shards import REDUCTIONS, Manifest, ShardRecord, npz_bytes, plan, sha256_of
from onnxsight.scale.sources import open_source

ENGINES = ("local", "ray")
_RESERVED = ("target", "of", "seed", "batch_size")  # job fields, not method options


@dataclass(frozen=True)
class BatchResult:
    """What a run did: shards computed now and found finished, and the merged reductions."""

    output: Path
    images: int
    shards: int
    computed: int
    skipped: int
    seconds: float
    reductions: dict[str, np.ndarray]


def run_batch(
    model: str | os.PathLike, data: str | os.PathLike, method: str, output: str | os.PathLike, *,
    target: str | int = "predicted", of: str = "logits", options: dict | None = None, layers: Sequence[str] = (),
    k: int = 10, split: str = "test", limit: int | None = None, shard_size: int = 1024, engine: str = "local",
    workers: int | None = None, threads: int = 1, address: str | None = None, connect_timeout: float = 30.0,
    gpus_per_worker: float | None = None,
    device: str = "cpu", batch_size: int | None = None, seed: int = 0, scale: float | None = None,
    mean: Sequence[float] | None = None, std: Sequence[float] | None = None, force: bool = False,
    on_start: Callable[[int, int], None] | None = None, on_shard: Callable[[ShardRecord], None] | None = None,
) -> BatchResult:
    """Run ``method`` (saliency, gradcam, occlusion, ig or activations) over a whole dataset.

    data: "digits", an image folder (class subfolders give labels), a CIFAR-10 folder, a .npy or a
        .npz (``split`` test/train where it has both; ``limit`` keeps the first images).
    target: "predicted", "label" (the dataset's labels; seed 000's class view) or an index.
    options: the method's keyword arguments (e.g. ``{"modifier": "guided"}``, ``{"window": 11}``);
        ``layers`` and ``k``: for "activations", the layers whose units are scored and ranked.
    The dataset is cut into shards of ``shard_size`` images; each is written to ``output`` as
    ``shards/NNNNNN.npz`` (results) and ``partials/NNNNNN.npz`` (partial reductions), then listed
    with its sha256 in ``manifest.json``. A rerun skips finished shards; a different job in the same
    folder (other model, data contents or options) is refused; ``force`` deletes earlier results and starts over.
    ``engine`` "local" runs ``workers`` processes (default: one per core), "ray" as many Ray actors on
    the cluster at ``address``, else at ``RAY_ADDRESS``, else a new local one (``connect_timeout``:
    seconds a cluster has to accept a connection); every session uses ``threads``
    onnxruntime threads (local processes are spawned: a script calling this with ``workers`` > 1 needs
    the usual ``if __name__ == "__main__":`` guard). ``on_start(done, total)`` is called with the images already finished once
    the job is checked, ``on_shard(record)`` after each shard is recorded.
    Returns the run's counts and the reductions also saved as ``reductions.npz``.
    """
    began = time.perf_counter()
    if engine not in ENGINES:
        raise InvalidArgument(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    clash = sorted(set(options or {}) & set(_RESERVED))
    if clash:
        raise InvalidArgument(f"options {clash} are arguments of run_batch itself, not method options")
    if workers is not None and workers < 1:
        raise InvalidArgument(f"workers must be at least 1, got {workers}")
    if connect_timeout <= 0:
        raise InvalidArgument(f"connect_timeout must be positive, got {connect_timeout}")
    checked = load(model, device="cpu")
    source = open_source(data, split, limit)
    resolved = resolve(device).device
    job = Job(
        str(Path(model).resolve()), sha256_of(Path(model)), source, str(output), method, target, of,
        dict(options or {}), tuple(layers), k, seed, batch_size, scale, _floats(mean), _floats(std), shard_size,
        resolved, threads,
    )
    compute(checked, job, source.read(0, min(2, source.count)), 0)  # a bad option fails here, in one line
    shards = plan(source.count, shard_size)
    manifest = Manifest(output, job.description(), force)
    pending = manifest.pending(shards)
    count = workers if workers is not None else (max(1, len(os.sched_getaffinity(0)) // threads) if resolved != "cuda" else 1)
    if on_start is not None:
        on_start(source.count - sum(s.stop - s.start for s in pending), source.count)
    for record in _engine(engine, job, pending, min(count, max(1, len(pending))), address, connect_timeout,
                          gpus_per_worker):
        manifest.add(record)
        if on_shard is not None:
            on_shard(record)
    summary = reduce_outputs(Path(output), manifest.records(), job)
    encoded = npz_bytes(summary)
    atomic_write(Path(output) / REDUCTIONS, encoded)
    manifest.finish({"file": REDUCTIONS, "sha256": hashlib.sha256(encoded).hexdigest()})
    return BatchResult(Path(output), source.count, len(shards), len(pending), len(shards) - len(pending),
                       time.perf_counter() - began, summary)


def _engine(engine: str, job: Job, pending, workers: int, address, connect_timeout, gpus_per_worker) -> Iterator[ShardRecord]:
    if not pending:
        return iter(())
    if engine == "ray":
        from onnxsight.scale.ray_engine import run_ray

        return run_ray(job, pending, workers, address, gpus_per_worker, connect_timeout)
    from onnxsight.scale.local import run_local

    return run_local(job, pending, workers)


def reduce_outputs(folder: Path, records: list[ShardRecord], job: Job) -> dict[str, np.ndarray]:
    """Merge the shards' partials (read one at a time, in shard order, as a binary tree) into the
    job's reductions: per-class moments of the maps, or top-K and statistics per unit of each layer."""
    if job.method == "activations":
        kinds = {}
        for layer in job.layers:
            key = unit_key(layer)
            kinds.update({f"topk.{key}.": r.TopK, f"stats.{key}.": r.UnitStats})
    else:
        kinds = {"class.": r.Moments}

    def bundles() -> Iterator[r.Bundle]:
        for record in records:
            with np.load(folder / record.partial, allow_pickle=False) as arrays:
                yield r.Bundle({prefix: kind.from_arrays(arrays, prefix) for prefix, kind in kinds.items()})

    merged = r.tree_merge(bundles()).parts
    if job.method != "activations":
        return r.class_summary(merged["class."])
    summary = {}
    for layer in job.layers:
        key = unit_key(layer)
        summary.update(r.unit_summary(merged[f"stats.{key}."], merged[f"topk.{key}."], f"{key}."))
    return summary


def _floats(values: Sequence[float] | None) -> tuple[float, ...] | None:
    return None if values is None else tuple(float(v) for v in values)
