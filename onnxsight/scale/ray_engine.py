"""The Ray engine: Ray Data ``map_batches`` over the shards with a fixed pool of actors, each holding
one model (its onnxruntime sessions, on CPU or one GPU), writing shards to the shared output folder."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import asdict

import numpy as np

from onnxsight.errors import MissingDependency, OnnxsightError
from onnxsight.scale.jobs import Job, ShardWorker
from onnxsight.scale.shards import Shard, ShardRecord


def run_ray(job: Job, shards: list[Shard], workers: int, address: str | None = None,
            gpus_per_worker: float | None = None, connect_timeout: float = 30.0) -> Iterator[ShardRecord]:
    """Compute ``shards`` on ``workers`` Ray actors, yielding records as shards finish.

    Uses the Ray session this process already runs, else connects to the cluster at ``address``,
    else at the ``RAY_ADDRESS`` environment variable (a host:port that does not accept a connection
    within ``connect_timeout`` seconds is an error), else starts a local Ray instance; "auto" joins
    the cluster this node belongs to and "local" always starts one. A session it began is shut
    down at the end. Each actor reserves ``job.threads`` CPUs and, for ``device="cuda"``,
    ``gpus_per_worker`` GPUs (default 1).
    """
    try:
        import ray
        import ray.data
    except ImportError as error:
        raise MissingDependency("ray[data]", "scale") from error
    started = not ray.is_initialized()
    if started:
        cluster = address or os.environ.get("RAY_ADDRESS") or None
        if cluster is not None:
            _probe(cluster, connect_timeout, "--address" if address else "RAY_ADDRESS")
        ray.init(address=cluster, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
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
        except (OnnxsightError, OSError) as failure:  # a full disk, say: one line on the driver
            record, error = {**asdict(shard), "file": "", "sha256": "", "partial": "", "partial_sha256": ""}, str(failure)
        return {key: [value] for key, value in {**record, "error": error}.items()}


def _probe(address: str, timeout: float, origin: str) -> None:
    """Fail within ``timeout`` seconds when nothing accepts a connection at a [ray://]host:port address
    (``ray.init`` would retry for minutes without a word)."""
    host, _, port = address.split("://")[-1].rpartition(":")
    if not port.isdigit():
        return  # "auto" or "local": Ray finds or starts the cluster itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout).close()
    except OSError as error:
        reason = f"no answer within {timeout:g} s" if isinstance(error, TimeoutError) else str(error)
        raise OnnxsightError(f"cannot reach the Ray cluster at {address} (from {origin}): {reason}") from error


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value
