"""One self-contained HTML page: PNGs embedded as base64, inline CSS, no scripts, no network.

The page's Content-Security-Policy forbids every external resource, so a browser proves it
needs none: anything that tried to load would be reported as a violation.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

import cv2
import numpy as np

from onnxsight.errors import InvalidArgument

POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1d2330; background: #f6f7f9; }
header, main, footer { max-width: 1180px; margin: 0 auto; padding: 0 24px; }
header { padding-top: 24px; }
h1 { margin: 0 0 4px; font-size: 26px; }
h2 { margin: 0 0 4px; font-size: 20px; }
.facts { color: #4a5263; margin: 0 0 12px; }
nav { background: #fff; border: 1px solid #dde1e8; border-radius: 6px; padding: 8px 16px; margin-bottom: 16px; }
nav ol { columns: 3; margin: 6px 0; padding-left: 22px; }
nav a, footer a { color: #1f5fbf; text-decoration: none; }
section { background: #fff; border: 1px solid #dde1e8; border-radius: 6px; padding: 16px 20px; margin-bottom: 16px; }
.caption { margin: 0 0 12px; color: #374052; }
figure { margin: 0 0 14px; overflow-x: auto; }
figure img { max-width: 100%; height: auto; image-rendering: pixelated; border: 1px solid #eef0f3; }
figcaption { font-size: 13px; color: #5a6275; }
table { border-collapse: collapse; font-size: 13px; margin-bottom: 8px; }
th, td { border-bottom: 1px solid #e3e6ec; padding: 3px 10px; text-align: left; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
footer { color: #5a6275; font-size: 13px; padding-bottom: 24px; }
"""


@dataclass(frozen=True)
class Figure:
    """An RGB uint8 picture and what it shows."""

    image: np.ndarray
    caption: str = ""


@dataclass(frozen=True)
class Table:
    """A header row and rows of cells (numbers are right-aligned)."""

    header: Sequence[str]
    rows: Sequence[Sequence[object]]


@dataclass(frozen=True)
class Section:
    """One part of the report: an anchor ``id``, a title, a one-sentence caption, tables and figures."""

    id: str
    title: str
    caption: str
    figures: Sequence[Figure] = field(default_factory=tuple)
    tables: Sequence[Table] = field(default_factory=tuple)


def png_data_uri(rgb: np.ndarray) -> str:
    """An RGB uint8 image as a ``data:image/png;base64`` URI."""
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise InvalidArgument(f"cannot encode an image of shape {rgb.shape} as PNG")
    return "data:image/png;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")


def _cell(value: object) -> str:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return f'<td class="number">{value:,}</td>'
    if isinstance(value, (float, np.floating)):
        return f'<td class="number">{value:.3g}</td>'
    return f"<td>{escape(str(value))}</td>"


def _table(table: Table) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in table.header)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in table.rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(figure: Figure) -> str:
    height, width = figure.image.shape[:2]
    alt = escape(figure.caption or "figure", quote=True)
    caption = f"<figcaption>{escape(figure.caption)}</figcaption>" if figure.caption else ""
    return (f'<figure><img src="{png_data_uri(figure.image)}" width="{width}" height="{height}" alt="{alt}">'
            f"{caption}</figure>")


def page(title: str, facts: str, sections: Sequence[Section], footer: str) -> str:
    """The whole HTML document: title, facts line, table of contents, the sections, a footer."""
    toc = "".join(f'<li><a href="#{s.id}">{escape(s.title)}</a></li>' for s in sections)
    body = "".join(
        f'<section id="{s.id}"><h2>{number}. {escape(s.title)}</h2><p class="caption">{escape(s.caption)}</p>'
        + "".join(_table(t) for t in s.tables) + "".join(_figure(f) for f in s.figures) + "</section>"
        for number, s in enumerate(sections, start=1)
    )
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{POLICY}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n<body>"
        f'<header><h1>{escape(title)}</h1><p class="facts">{escape(facts)}</p>'
        f"<nav><strong>Contents</strong><ol>{toc}</ol></nav></header>\n"
        f"<main>{body}</main>\n<footer>{escape(footer)}</footer></body></html>\n"
    )
