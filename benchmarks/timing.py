"""Timing shared by the benchmark scripts."""

from __future__ import annotations

import time

import numpy as np


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


def spread(times: list[float], scale: float = 1.0) -> dict[str, float]:
    """Median, min and max of ``times`` multiplied by ``scale`` (e.g. 1e3 / images: ms per image)."""
    values = np.asarray(times) * scale
    return {"median": float(np.median(values)), "min": float(values.min()), "max": float(values.max())}
