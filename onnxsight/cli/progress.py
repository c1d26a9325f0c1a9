"""Progress bars with rate and time left on stderr, and the estimate printed before long work."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text

from onnxsight.cli.options import err, out

DryRun = Annotated[bool, typer.Option("--dry-run", help="Only print the number of passes and the time estimate, then exit.")]
TIMED_ROWS = 8  # rows of the one timed pass, at most (a run of several rows costs less per row than one row alone)


class Rate(ProgressColumn):
    """Work done per second over the run so far."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        return Text(f"{task.speed or 0:,.1f} {self.unit}/s", style="cyan")


def bar(unit: str, transient: bool = True) -> Progress:
    """A progress bar on stderr: description, bar, done/total, rate in ``unit``/s, time left; ``transient``
    (default) removes it when done."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), Rate(unit),
                    TimeRemainingColumn(), console=err, transient=transient)


@contextmanager
def tracked(description: str, unit: str = "passes") -> Iterator[Callable[[int, int], None]]:
    """Show a bar while the block runs; yields the ``progress(done, total)`` callback the methods call."""
    with bar(unit) as progress:
        task = progress.add_task(description, total=None)
        yield lambda done, total: progress.update(task, completed=done, total=total)


@dataclass(frozen=True)
class Plan:
    """A job's size: ``passes`` model passes of one ``kind`` ("forward" or "gradient"), ``run(rows)``
    doing ``rows`` of them at once (``rows``: as many as the job runs at once, timed on at most
    ``TIMED_ROWS``), and what else it does that is not timed (``extra``, e.g. checks)."""

    passes: int
    kind: str
    run: Callable[[int], object]
    rows: int = TIMED_ROWS
    extra: str = ""

    def estimate(self, job: str) -> str:
        """One line: the passes and the time they take at the rate of one timed run (after a first run
        that opens the session the job then uses)."""
        rows = max(1, min(self.passes, self.rows, TIMED_ROWS))
        self.run(rows)
        start = time.perf_counter()
        self.run(rows)
        each = (time.perf_counter() - start) / rows
        extra = f", plus {self.extra}" if self.extra else ""
        return (f"{job}: {self.passes:,} {self.kind} passes{extra}; about {duration(self.passes * each)} "
                f"({each * 1000:,.1f} ms per pass, timed on {rows})")


def announce(job: str, plan: Plan, dry_run: bool) -> None:
    """Print the plan's estimate on stderr before the work; with ``dry_run`` on stdout, and stop (exit 0)."""
    line = plan.estimate(job)
    if dry_run:
        out.print(line, soft_wrap=True)
        raise typer.Exit(0)
    err.print(line, soft_wrap=True)


def duration(seconds: float) -> str:
    """``seconds`` as "0.4 s", "12 s", "3 min 5 s" or "2 h 10 min"."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"
