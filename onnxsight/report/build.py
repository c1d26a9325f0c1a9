"""Run the sections, time them, and write the page atomically."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from onnxsight.data.files import atomic_write, refuse_overwrite
from onnxsight.engine.model import Model
from onnxsight.errors import InvalidArgument
from onnxsight.report.html import Section, page
from onnxsight.report.sections import SECTIONS, Context, ReportData, ReportOptions


@dataclass(frozen=True)
class Report:
    """The written page and what went into it."""

    path: Path
    sections: list[str]  # ids, in page order
    timings: dict[str, float] = field(default_factory=dict)  # seconds per section id


def build_sections(
    model: Model, data: ReportData, options: ReportOptions | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[list[Section], dict[str, float]]:
    """Every chosen section (labelled ones only with labels) and the seconds each took.

    ``progress(stage, done, total)`` is called with stage "report" after each section.
    """
    options = options or ReportOptions()
    chosen = list(options.sections or SECTIONS)
    unknown = [name for name in chosen if name not in SECTIONS]
    if unknown:
        raise InvalidArgument(f"unknown report section {unknown[0]!r}; choose from {', '.join(SECTIONS)}")
    context = Context(model, data, options)
    chosen = [name for name in chosen if context.labels is not None or not SECTIONS[name][1]]
    sections, timings = [], {}
    for done, name in enumerate(chosen, start=1):
        started = time.perf_counter()
        sections.append(SECTIONS[name][0](context))
        timings[name] = time.perf_counter() - started
        if progress is not None:
            progress("report", done, len(chosen))
    return sections, timings


def write_report(
    model: Model, data: ReportData, output: str | Path, options: ReportOptions | None = None, *,
    title: str | None = None, force: bool = False, progress: Callable[[str, int, int], None] | None = None,
) -> Report:
    """Compute the sections for ``data`` and write one self-contained HTML file to ``output``.

    An existing file is kept unless ``force``.
    """
    from onnxsight import __version__

    output = Path(output)
    refuse_overwrite(output, force)
    if not output.parent.is_dir():
        raise InvalidArgument(f"the folder of {output} does not exist")
    sections, timings = build_sections(model, data, options, progress)
    facts = (f"{Path(model.source).name} · {data.name}, {len(data.x)} images · "
             f"{datetime.now().strftime('%Y-%m-%d %H:%M')}")
    spent = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items())
    footer = f"Made with onnxsight {__version__} from ONNX and onnxruntime alone. Time per section: {spent}."
    document = page(title or f"onnxsight report: {Path(model.source).name}", facts, sections, footer)
    atomic_write(output, document.encode("utf-8"))
    return Report(output, [s.id for s in sections], timings)
