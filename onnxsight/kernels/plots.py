"""Simple plots drawn with opencv: a labelled scatter of 2-D points, line curves."""

from __future__ import annotations

import cv2
import numpy as np

# Ten distinct colours (RGB), the categorical palette of matplotlib's tab10.
PALETTE = np.array([
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
], np.uint8)


def scatter(points: np.ndarray, labels: np.ndarray | None = None, size: int = 512, margin: int = 24) -> np.ndarray:
    """(N, 2) points as coloured dots on a white square, one colour per label, with a legend."""
    points = np.asarray(points, np.float64)
    canvas = np.full((size, size, 3), 255, np.uint8)
    low, high = points.min(axis=0), points.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    pixels = margin + (points - low) / span * (size - 2 * margin)
    pixels[:, 1] = size - pixels[:, 1]  # y grows upwards
    classes = np.zeros(len(points), int) if labels is None else np.asarray(labels).astype(int)
    for (px, py), c in zip(np.rint(pixels).astype(int), classes):
        cv2.circle(canvas, (int(px), int(py)), 3, PALETTE[c % len(PALETTE)].tolist(), -1, cv2.LINE_AA)
    if labels is not None:
        for row, c in enumerate(np.unique(classes)):
            y = 14 + 14 * row
            cv2.circle(canvas, (size - 40, y - 4), 4, PALETTE[c % len(PALETTE)].tolist(), -1, cv2.LINE_AA)
            cv2.putText(canvas, str(c), (size - 30, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def line_plot(series: np.ndarray, title: str, width: int = 360, height: int = 240, margin: int = 28) -> np.ndarray:
    """(steps, N) values as N coloured polylines on a white canvas, titled, with the y range printed."""
    series = np.asarray(series, np.float64)
    canvas = np.full((height, width, 3), 255, np.uint8)
    finite = series[np.isfinite(series)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    span = high - low if high > low else 1.0
    steps = len(series)
    xs = margin + np.arange(steps) * (width - 2 * margin) / max(steps - 1, 1)
    cv2.rectangle(canvas, (margin, margin), (width - margin, height - margin), (200, 200, 200), 1)
    for column in range(series.shape[1]):
        ys = height - margin - (series[:, column] - low) / span * (height - 2 * margin)
        points = np.stack([xs, ys], axis=1)[np.isfinite(ys)]
        color = PALETTE[column % len(PALETTE)].tolist()
        cv2.polylines(canvas, [np.rint(points).astype(np.int32).reshape(-1, 1, 2)], False, color, 1, cv2.LINE_AA)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(canvas, title, (margin, 18), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(canvas, f"{high:.3g}", (2, margin + 4), font, 0.3, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(canvas, f"{low:.3g}", (2, height - margin), font, 0.3, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(canvas, f"step {steps}", (width - margin - 50, height - 8), font, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas
