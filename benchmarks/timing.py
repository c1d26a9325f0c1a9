"""Timing shared by the benchmark scripts."""

from __future__ import annotations

import time


def timed(run, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``run()``, after one warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def best_of(run, repeats: int) -> float:
    """The fastest of ``repeats`` timed calls of ``run()``, in seconds."""
    return min(timed(run, repeats))
