"""The dynamic batcher: requests for one served model that arrive close together run as one stacked session run.

Modelled on Triton's dynamic batcher. Requests that can share a run (same model, same outputs asked for,
same inputs with the same non-batch shapes and dtypes) wait in one queue; a queue is due when it holds
the largest preferred batch (or ``max_batch`` rows), or when its oldest request has waited ``max_delay_us``.
A due queue runs as soon as one of the runner's worker threads is free, so batches grow while the
workers are busy. The stacked answers are split back per request; if a stacked run fails, its
requests are rerun one by one so that each gets its own answer. Every run is counted per model
(rows per run and time), as Triton's statistics extension reports them.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from onnxsight.errors import InternalError, InvalidArgument, ModelFileError, OnnxsightError
from onnxsight.serving.explainer import TARGET

if TYPE_CHECKING:
    from onnxsight.serving.repository import ServedModel

CONFIG_FILE = "batching.json"  # per-model policies, next to the served models


@dataclass(frozen=True)
class BatchPolicy:
    """How one model's requests are stacked: at most ``max_batch`` rows per run (0 or 1: never stacked; a
    larger request runs alone), waiting at most ``max_delay_us`` microseconds after the first for more;
    a run starts at once with the largest of the ``preferred_batch`` sizes, and on time-out takes the
    largest preferred size it can form (all it has when none)."""

    max_batch: int = 32
    max_delay_us: int = 0  # still stacks the requests that arrive while the workers are busy
    preferred_batch: tuple[int, ...] = ()

    def __post_init__(self):
        for name in ("max_batch", "max_delay_us"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidArgument(f"batching {name} must be an integer >= 0, got {value!r}")
        object.__setattr__(self, "preferred_batch", tuple(sorted(set(self.preferred_batch))))
        wrong = [size for size in self.preferred_batch if isinstance(size, bool) or not isinstance(size, int)
                 or not 1 <= size <= max(self.max_batch, 1)]
        if wrong:
            raise InvalidArgument(f"batching preferred_batch sizes must be integers from 1 to max_batch "
                                  f"({self.max_batch}), got {wrong}")

    @property
    def enabled(self) -> bool:
        return self.max_batch > 1

    @property
    def full(self) -> int:
        """Rows at which a queue runs without waiting."""
        return self.preferred_batch[-1] if self.preferred_batch else self.max_batch


def read_policies(folder: Path, names: Sequence[str], default: BatchPolicy) -> dict[str, BatchPolicy]:
    """Each served name's policy: ``default``, with the fields given for that name in ``folder/batching.json``
    (``{"NAME": {"max_batch": 16, "max_delay_us": 2000, "preferred_batch": [8, 16]}, ...}``) if there is one."""
    path = folder / CONFIG_FILE
    if not path.is_file():
        return {name: default for name in names}
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ModelFileError(f"cannot read {path}: {error}") from error
    if not isinstance(config, dict) or not all(isinstance(entry, dict) for entry in config.values()):
        raise ModelFileError(f"{path} must map served model names to objects of batching settings")
    unknown = sorted(set(config) - set(names))
    if unknown:
        raise ModelFileError(f"{path} names models this server does not have: {', '.join(unknown)}; "
                             f"it has: {', '.join(names)}")
    known = {f.name for f in fields(BatchPolicy)}
    policies = {}
    for name in names:
        entry = config.get(name, {})
        if set(entry) - known:
            raise ModelFileError(f"{path}: {name!r} has unknown settings {', '.join(sorted(set(entry) - known))}; "
                                 f"known: {', '.join(sorted(known))}")
        settings = {f.name: getattr(default, f.name) for f in fields(BatchPolicy)} | entry
        if not isinstance(settings["preferred_batch"], (list, tuple)):
            raise ModelFileError(f"{path}: {name!r} preferred_batch must be a list of sizes")
        try:
            policies[name] = BatchPolicy(settings["max_batch"], settings["max_delay_us"],
                                         tuple(settings["preferred_batch"]))
        except InvalidArgument as error:
            raise ModelFileError(f"{path}: {name!r}: {error}") from error
    return policies


@dataclass
class ModelStats:
    """One model's requests and successful runs: rows run (``inference_count``), session runs, and per batch
    size the runs and their nanoseconds."""

    requests: int = 0
    inference_count: int = 0
    execution_count: int = 0
    failed_stacks: int = 0  # stacked runs that failed, whose requests were then run one by one
    batches: dict[int, list[int]] = field(default_factory=dict)

    def record(self, runs: list[tuple[int, int] | None]) -> None:
        """Counts the successful ``runs`` (rows, nanoseconds); None marks a failed stacked run."""
        for run in runs:
            if run is None:
                self.failed_stacks += 1
                continue
            rows, nanoseconds = run
            self.inference_count += rows
            self.execution_count += 1
            count_and_time = self.batches.setdefault(rows, [0, 0])
            count_and_time[0] += 1
            count_and_time[1] += nanoseconds

    def report(self, name: str, version: str) -> dict:
        """The entry of Triton's statistics extension (``GET /v2/models/NAME/stats``) for this model."""
        return {"name": name, "version": version, "request_count": self.requests,
                "inference_count": self.inference_count, "execution_count": self.execution_count,
                "failed_stacks": self.failed_stacks,
                "batch_stats": [{"batch_size": rows, "compute_infer": {"count": count, "ns": ns}}
                                for rows, (count, ns) in sorted(self.batches.items())]}


@dataclass
class _Request:
    inputs: dict[str, np.ndarray]
    rows: int
    arrived: float
    answer: asyncio.Future


@dataclass
class _Queue:
    served: ServedModel
    outputs: list[str]
    requests: list[_Request] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None

    @property
    def rows(self) -> int:
        return sum(request.rows for request in self.requests)


class Batcher:
    """Runs requests on ``runner``'s worker threads (``runner.call``, ``runner.workers``), stacking those that
    can share a run; lives on one event loop. ``stats`` holds each model's :class:`ModelStats` by name."""

    def __init__(self, runner):
        self._runner = runner
        self._queues: dict[tuple, _Queue] = {}
        self._due: deque[tuple] = deque()
        self._busy = 0  # runs handed to the workers and not finished
        self._tasks: set[asyncio.Task] = set()
        self.stats: dict[str, ModelStats] = {}

    async def infer(self, served: ServedModel, inputs: dict[str, np.ndarray],
                    outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """The ``outputs`` of ``served`` for one validated request (``served.check`` passed); the caller holds a
        runner slot. Raises the request's own error (an OnnxsightError for a failed run)."""
        outputs = list(outputs)
        self.stats.setdefault(served.name, ModelStats()).requests += 1
        policy, stacked = served.batching, _per_row(served, inputs)
        if stacked is None or not policy.enabled or stacked[1] >= policy.max_batch:
            return await self._alone(served, inputs, outputs)
        rows_inputs, rows = stacked
        key = (served.name, tuple(outputs),
               tuple(sorted((name, array.shape[1:], array.dtype.str) for name, array in rows_inputs.items())))
        loop = asyncio.get_running_loop()
        request = _Request(rows_inputs, rows, loop.time(), loop.create_future())
        queue = self._queues.setdefault(key, _Queue(served, outputs))
        queue.requests.append(request)
        if queue.rows >= policy.full:
            self._make_due(key)
        elif queue.timer is None and key not in self._due:
            queue.timer = loop.call_at(request.arrived + policy.max_delay_us / 1e6, self._make_due, key)
        self._dispatch()
        return await request.answer

    def _make_due(self, key: tuple) -> None:
        queue = self._queues[key]
        if queue.timer is not None:
            queue.timer.cancel()
            queue.timer = None
        if key not in self._due:
            self._due.append(key)
        self._dispatch()

    def _dispatch(self) -> None:
        """Starts the due queues' runs while workers are free."""
        while self._due and self._busy < self._runner.workers:
            key = self._due.popleft()
            queue = self._queues[key]
            if queue.timer is not None:
                queue.timer.cancel()
                queue.timer = None
            policy = queue.served.batching
            batch = _take(queue.requests, policy)
            del queue.requests[:len(batch)]
            if not queue.requests:
                del self._queues[key]
            else:
                loop = asyncio.get_running_loop()
                deadline = queue.requests[0].arrived + policy.max_delay_us / 1e6
                if queue.rows >= policy.full or deadline <= loop.time():
                    self._due.append(key)
                else:
                    queue.timer = loop.call_at(deadline, self._make_due, key)
            self._busy += 1  # now, not when the task starts: this loop may start another run
            task = asyncio.get_running_loop().create_task(self._run(queue.served, queue.outputs, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, served: ServedModel, outputs: list[str], batch: list[_Request]) -> None:
        """Runs ``batch`` (counted busy by ``_dispatch``) and answers each of its requests."""
        try:
            answers, runs = await self._runner.call(_run_stacked, served, [r.inputs for r in batch], outputs)
        except Exception as error:  # noqa: BLE001 - not swallowed: each request of the batch gets it (503 at shutdown)
            for request in batch:
                if not request.answer.done():
                    request.answer.set_exception(error)
            return
        finally:
            self._busy -= 1
            self._dispatch()
        self.stats[served.name].record(runs)
        for request, answer in zip(batch, answers):
            if request.answer.done():  # its client has gone
                continue
            if isinstance(answer, Exception):
                request.answer.set_exception(answer)
            else:
                request.answer.set_result(answer)

    async def _alone(self, served: ServedModel, inputs: dict[str, np.ndarray],
                     outputs: list[str]) -> dict[str, np.ndarray]:
        self._busy += 1
        try:
            answer, run = await self._runner.call(_run_alone, served, inputs, outputs)
        finally:
            self._busy -= 1
            self._dispatch()
        self.stats[served.name].record([run] if run else [])
        if isinstance(answer, Exception):
            raise answer
        return answer


def _per_row(served: ServedModel, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int] | None:
    """The request's inputs with an explainer's one-value target repeated for every image, and its rows;
    None when it cannot be stacked (the model cannot, or its inputs disagree on the rows)."""
    if not served.stackable:
        return None
    per_row = {name: array for name, array in inputs.items() if not (served.explainer and name == TARGET)}
    rows = {array.shape[0] for array in per_row.values()}
    if len(rows) != 1:
        return None
    (count,) = rows
    if served.explainer and TARGET in inputs:
        per_row[TARGET] = np.broadcast_to(inputs[TARGET], (count,))  # served.check allowed 1 or ``count`` values
    return per_row, count


def _take(requests: list[_Request], policy: BatchPolicy) -> list[_Request]:
    """The first requests that fit in ``max_batch`` rows; with preferred sizes, the longest such run whose rows
    are a preferred size, if there is one."""
    taken, total, preferred_end = [], 0, 0
    for request in requests:
        if taken and total + request.rows > policy.max_batch:
            break
        taken.append(request)
        total += request.rows
        if total in policy.preferred_batch:
            preferred_end = len(taken)
    return taken[:preferred_end] if preferred_end else taken


def _run_stacked(served: ServedModel, requests: list[dict[str, np.ndarray]], outputs: list[str]):
    """On a worker thread: each request's answer (or its OnnxsightError), and the runs as (rows, ns)."""
    if len(requests) == 1:
        answer, run = _run_alone(served, requests[0], outputs)
        return [answer], [run] if run else []
    rows = [len(next(iter(request.values()))) for request in requests]
    stacked = {name: np.concatenate([request[name] for request in requests]) for name in requests[0]}
    start = time.perf_counter_ns()
    try:
        results = served.run(stacked, outputs)
        answers = _split(results, rows)
    except (OnnxsightError, InternalError):  # one request spoiled the run: each gets its own answer
        alone = [_run_alone(served, request, outputs) for request in requests]
        return [answer for answer, _ in alone], [None] + [run for _, run in alone if run is not None]
    return answers, [(sum(rows), time.perf_counter_ns() - start)]


def _run_alone(served: ServedModel, inputs: dict[str, np.ndarray], outputs: list[str]):
    """On a worker thread: the answer and the run as (rows, ns); or its OnnxsightError and None."""
    rows = next((array.shape[0] for array in inputs.values() if array.ndim), 1)
    start = time.perf_counter_ns()
    try:
        answer = served.run(inputs, outputs)
    except OnnxsightError as error:
        return error, None
    return answer, (rows, time.perf_counter_ns() - start)


def _split(results: dict[str, np.ndarray], rows: list[int]) -> list[dict[str, np.ndarray]]:
    """Stacked outputs cut back into each request's rows."""
    total = sum(rows)
    wrong = [name for name, array in results.items() if array.ndim == 0 or array.shape[0] != total]
    if wrong:
        raise InternalError(f"outputs {', '.join(wrong)} do not have one row per stacked input row ({total})")
    ends = np.cumsum(rows)[:-1]
    pieces = {name: np.split(array, ends) for name, array in results.items()}
    return [{name: pieces[name][k] for name in results} for k in range(len(rows))]
