"""Timing shared by the benchmark scripts."""

from __future__ import annotations

import time


def best_of(run, repeats: int) -> float:
    """The fastest of ``repeats`` timed calls of ``run()``, after one warm-up call, in seconds."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)
