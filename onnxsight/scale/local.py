"""The local engine: a pool of worker processes, each holding one model (its onnxruntime sessions)."""

from __future__ import annotations

import itertools
import multiprocessing
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

from onnxsight.scale.jobs import Job, ShardWorker
from onnxsight.scale.shards import Shard, ShardRecord

_worker: ShardWorker | None = None  # the one worker of a pool process, set by its initializer


def run_local(job: Job, shards: list[Shard], workers: int) -> Iterator[ShardRecord]:
    """Compute ``shards`` on ``workers`` processes (in this process when 1), yielding records as shards finish.

    At most two shards per worker are queued, so a run over millions of images holds little; a
    consumer that stops early (an interruption) cancels what is queued and waits for what runs.
    """
    if workers == 1:
        worker = ShardWorker(job)
        yield from map(worker, shards)
        return
    context = multiprocessing.get_context("spawn")  # no fork of a process that runs onnxruntime threads
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start, initargs=(job,)) as pool:
        queue, running = iter(shards), set()
        try:
            while True:
                running |= _submit(pool, queue, 2 * workers - len(running))
                if not running:
                    return
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    yield future.result()
        finally:
            for future in running:
                future.cancel()


def _submit(pool: ProcessPoolExecutor, queue: Iterator[Shard], room: int) -> set[Future]:
    return {pool.submit(_run, shard) for shard in itertools.islice(queue, max(0, room))}


def _start(job: Job) -> None:
    global _worker
    _worker = ShardWorker(job)


def _run(shard: Shard) -> ShardRecord:
    return _worker(shard)
