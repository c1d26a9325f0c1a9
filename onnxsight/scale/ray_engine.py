"""The Ray engine: Ray Data ``map_batches`` over the shards with a fixed pool of actors, each holding
one model (its onnxruntime sessions, on CPU or one GPU), writing shards to the shared output folder."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict

import numpy as np

from onnxsight.errors import MissingDependency, OnnxsightError
from onnxsight.scale.jobs import Job, ShardWorker
from onnxsight.scale.shards import Shard, ShardRecord


def run_ray(job: Job, shards: list[Shard], workers: int, address: str | None = None,
            gpus_per_worker: float | None = None) -> Iterator[ShardRecord]:
    """Compute ``shards`` on ``workers`` Ray actors, yielding records as shards finish.

    Joins the running Ray session, else ``ray.init(address)`` (None starts a local cluster, "auto"
    joins the one this node belongs to) and shuts it down at the end. Each actor reserves
    ``job.threads`` CPUs and, for ``device="cuda"``, ``gpus_per_worker`` GPUs (default 1).
    """
    try:
        import ray
        import ray.data
    except ImportError as error:
        raise MissingDependency("ray[data]", "scale") from error
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the caller shows one progress bar for the whole job
        context.print_on_execution_start = False
        context.execution_options.preserve_order = False
        items = [asdict(shard) for shard in shards]
        gpus = (1.0 if gpus_per_worker is None else gpus_per_worker) if job.device == "cuda" else 0
        dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            ShardActor, fn_constructor_args=(job,), batch_size=1, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=job.threads, num_gpus=gpus,
        )
        for row in dataset.iter_rows():
            if row["error"]:
                raise OnnxsightError(f"shard {row['index']}: {row['error']}")
            yield ShardRecord(**{key: _plain(row[key]) for key in ShardRecord.__dataclass_fields__})
    finally:
        if started:
            ray.shutdown()


class ShardActor:
    """A Ray Data actor: one ShardWorker; a batch is one shard; user errors come back as a field."""

    def __init__(self, job: Job):
        self.worker = ShardWorker(job)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        shard = Shard(*(int(batch[key][0]) for key in ("index", "start", "stop")))
        try:
            record, error = asdict(self.worker(shard)), ""
        except OnnxsightError as failure:
            record, error = {**asdict(shard), "file": "", "sha256": "", "partial": "", "partial_sha256": ""}, str(failure)
        return {key: [value] for key, value in {**record, "error": error}.items()}


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value
