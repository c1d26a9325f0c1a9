"""matplotlib figures for the report, rendered off-screen (Agg) to RGB uint8 arrays.

One look everywhere: attribution maps in ``MAP_CMAP`` scaled to [0, 1] with a colour bar,
signed maps in ``SIGNED_CMAP`` centred on 0, ``tab10`` for classes; every axis titled.
matplotlib is imported inside the functions, so ``import onnxsight`` never loads it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from onnxsight.errors import MissingDependency

MAP_CMAP = "jet"  # saliency, CAM, SmoothGrad, IG, class saliency (seed 000/002's choice)
SIGNED_CMAP = "bwr"  # occlusion score drops: blue negative, white 0, red positive
COUNT_CMAP = "Blues"  # confusion matrix
DPI = 100  # a figure of (w, h) inches is exactly (100 w) x (100 h) pixels


def _pyplot_free():
    """matplotlib's Figure and Agg canvas (no pyplot: no global figure state, no GUI backend)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise MissingDependency("matplotlib", "report") from error
    return Figure, FigureCanvasAgg


def new_figure(width: float, height: float):
    """A blank figure of ``width`` x ``height`` inches at ``DPI``."""
    Figure, _ = _pyplot_free()
    return Figure(figsize=(width, height), dpi=DPI)


def render(figure) -> np.ndarray:
    """The figure as an HxWx3 uint8 RGB array of exactly figsize x DPI pixels."""
    _, FigureCanvasAgg = _pyplot_free()
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.array(canvas.buffer_rgba())[..., :3]


def _hide_ticks(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def image_grid(
    cells: Sequence[Sequence[np.ndarray]],
    column_titles: Sequence[str],
    row_labels: Sequence[str] | None = None,
    cmap: str = MAP_CMAP,
    value_range: tuple[float, float] = (0.0, 1.0),
    colorbar_label: str = "normalised value",
    cell: float = 1.4,
) -> np.ndarray:
    """Rows of images under shared column titles and one colour bar.

    A cell is an HxWx3 uint8 picture (shown as it is) or an HxW map (shown in ``cmap`` over
    ``value_range``, which the colour bar explains).
    """
    rows, columns = len(cells), len(column_titles)
    width, height = cell * columns + 1.3, cell * rows + 0.35  # inches: room for row labels, bar and its ticks
    figure = new_figure(width, height)
    grid = figure.add_gridspec(rows, columns + 1, width_ratios=[1] * columns + [0.08],
                               left=0.3 / width, right=1 - 0.75 / width, top=1 - 0.3 / height,
                               bottom=0.05 / height, wspace=0.08, hspace=0.12)
    mappable = None
    for r, row in enumerate(cells):
        for c, image in enumerate(row):
            ax = figure.add_subplot(grid[r, c])
            _hide_ticks(ax)
            if image.ndim == 3:
                ax.imshow(image, interpolation="nearest")
            else:
                mappable = ax.imshow(image, cmap=cmap, vmin=value_range[0], vmax=value_range[1], interpolation="nearest")
            if r == 0:
                ax.set_title(column_titles[c], fontsize=9)
            if c == 0 and row_labels:
                ax.set_ylabel(row_labels[r], fontsize=8)
    if mappable is None:  # only pictures: the bar still documents the colormap of overlays
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        mappable = ScalarMappable(Normalize(*value_range), cmap=cmap)
    bar = figure.colorbar(mappable, cax=figure.add_subplot(grid[:, columns]))
    bar.set_label(colorbar_label, fontsize=8)
    bar.ax.tick_params(labelsize=7)
    return render(figure)


def labelled_pictures(pictures: Sequence[np.ndarray], titles: Sequence[str], good: Sequence[bool],
                      columns: int = 10, cell: float = 1.0) -> np.ndarray:
    """Pictures in a grid, each titled; titles of ``good`` items green, the others red."""
    rows = -(-len(pictures) // columns)
    figure = new_figure(cell * columns, (cell + 0.25) * rows)
    grid = figure.add_gridspec(rows, columns, left=0.01, right=0.99, top=0.99 - 0.2 / ((cell + 0.25) * rows),
                               bottom=0.01, wspace=0.05, hspace=0.35)
    for i, (picture, title, ok) in enumerate(zip(pictures, titles, good)):
        ax = figure.add_subplot(grid[divmod(i, columns)])
        _hide_ticks(ax)
        ax.imshow(picture, interpolation="nearest")
        ax.set_title(title, fontsize=7, color="tab:green" if ok else "tab:red")
    return render(figure)


def confusion(matrix: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    """A confusion matrix (true class rows, predicted columns) with counts written in the cells."""
    size = len(class_names)
    figure = new_figure(1.6 + 0.45 * size, 1.2 + 0.45 * size)
    ax = figure.add_axes((0.12, 0.12, 0.7, 0.8))
    shown = ax.imshow(matrix, cmap=COUNT_CMAP)
    ax.set_xticks(range(size), class_names, rotation=90 if max(map(len, class_names)) > 2 else 0, fontsize=7)
    ax.set_yticks(range(size), class_names, fontsize=7)
    ax.set_xlabel("predicted class", fontsize=8)
    ax.set_ylabel("true class", fontsize=8)
    ax.set_title("confusion matrix", fontsize=9)
    peak = matrix.max() or 1
    for (i, j), count in np.ndenumerate(matrix):
        if count:
            ax.text(j, i, str(count), ha="center", va="center", fontsize=6,
                    color="white" if count > peak / 2 else "black")
    bar = figure.colorbar(shown, cax=figure.add_axes((0.85, 0.12, 0.03, 0.8)))
    bar.set_label("images", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    return render(figure)


def class_saliency(mean: np.ndarray, sem: np.ndarray, title: str, colorbar_label: str) -> np.ndarray:
    """Seed 000's figure: the mean map with a colour bar, column sums below and row sums left, ± SEM shaded.

    The band is sum ± (sum of SEM) / 2 per column and row, drawn as steps, as in the seed.
    """
    height, width = mean.shape
    figure = new_figure(5.0, 5.0)
    ax_i = figure.add_axes((0.2, 0.2, 0.65, 0.7))
    ax_h = figure.add_axes((0.2, 0.04, 0.65, 0.15), sharex=ax_i)
    ax_v = figure.add_axes((0.04, 0.2, 0.15, 0.7), sharey=ax_i)
    ax_c = figure.add_axes((0.87, 0.2, 0.03, 0.7))
    shown = ax_i.imshow(mean, aspect="auto", cmap=MAP_CMAP, interpolation="nearest")
    ax_i.set_title(title, fontsize=9)
    ax_i.tick_params(labelbottom=False, labelleft=False)
    columns, rows = mean.sum(axis=0), mean.sum(axis=1)
    half_c, half_r = sem.sum(axis=0) / 2, sem.sum(axis=1) / 2
    xs, ys = np.arange(width), np.arange(height)
    ax_h.step(xs, columns, "k-", where="mid", linewidth=1)
    ax_h.fill_between(xs, columns - half_c, columns + half_c, step="mid", color="tab:red", alpha=0.5, linewidth=0)
    ax_h.tick_params(labelsize=6, labelleft=False)
    ax_v.step(rows, ys, "k-", where="mid", linewidth=1)
    ax_v.fill_betweenx(ys, rows - half_r, rows + half_r, step="mid", color="tab:red", alpha=0.5, linewidth=0)
    ax_v.tick_params(labelsize=6, labelbottom=False)
    bar = figure.colorbar(shown, cax=ax_c)
    bar.set_label(colorbar_label, fontsize=8)
    bar.ax.tick_params(labelsize=7)
    return render(figure)


def curves(series: Mapping[str, np.ndarray], labels: Sequence[str], title: str) -> np.ndarray:
    """One panel per entry of ``series`` ((steps, N) arrays), one line per column, a shared legend."""
    figure = new_figure(4.2 * len(series), 3.2)
    axes = figure.subplots(1, len(series), squeeze=False)[0]
    figure.subplots_adjust(left=0.07, right=0.86, bottom=0.15, top=0.84, wspace=0.3)
    for ax, (name, values) in zip(axes, series.items()):
        for column, label in enumerate(labels):
            ax.plot(np.arange(len(values)), values[:, column], color=f"C{column % 10}", linewidth=1, label=label)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    figure.suptitle(title, fontsize=10)
    return render(figure)


def scatter(points: np.ndarray, labels: np.ndarray | None, class_names: Sequence[str], title: str) -> np.ndarray:
    """2-D points coloured by class (tab10), with a legend of class names."""
    figure = new_figure(6.0, 5.0)
    ax = figure.add_axes((0.08, 0.08, 0.68, 0.84))
    classes = np.zeros(len(points), int) if labels is None else np.asarray(labels).astype(int)
    for c in np.unique(classes):
        chosen = classes == c
        name = class_names[c] if labels is not None and c < len(class_names) else "images"
        ax.scatter(points[chosen, 0], points[chosen, 1], s=8, color=f"C{c % 10}", label=name, alpha=0.8, linewidths=0)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False, markerscale=2)
    return render(figure)
