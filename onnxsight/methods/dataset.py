"""Dataset-level views: class saliency with its uncertainty, top-K images per unit, 2-D embeddings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from onnxsight.engine.model import Model
from onnxsight.engine.targets import channel_means
from onnxsight.errors import InvalidArgument, MissingDependency
from onnxsight.kernels import stats
from onnxsight.methods.saliency import saliency


@dataclass(frozen=True)
class ClassSaliency:
    """Seed 000's class saliency map: the mean of per-image maps, its standard error, and marginals."""

    cls: int
    indices: np.ndarray  # the images of the class that were used
    mean: np.ndarray  # (H, W)
    sem: np.ndarray  # (H, W), ddof=1
    marginals: dict[str, np.ndarray]  # column/row sums of mean and sem
    maps: np.ndarray  # (count, H, W) the per-image maps


def class_saliency(
    model: Model, x: np.ndarray, labels: np.ndarray, cls: int, *, count: int = 100,
    modifier: str | None = "guided", **options,
) -> ClassSaliency:
    """Mean saliency of class ``cls`` over its first ``count`` images in ``x`` (labels given).

    Defaults follow seed 000: guided backprop of the class logit, |gradient| max over channels.
    Other ``saliency`` options pass through (e.g. ``modifier=None``, ``smooth_samples``).
    """
    labels = np.asarray(labels).ravel()
    if len(labels) != len(x):
        raise InvalidArgument(f"{len(labels)} labels for {len(x)} images")
    chosen = np.flatnonzero(labels == cls)[:count]
    if len(chosen) < 2:
        raise InvalidArgument(f"class {cls} has {len(chosen)} images; a class saliency map needs at least 2")
    maps = saliency(model, x[chosen], target=int(cls), modifier=modifier, **options)
    if maps.ndim != 3:
        raise InvalidArgument(f"class saliency needs 2-D maps per image, got shape {maps.shape[1:]}; use reduce")
    mean, sem = stats.mean_and_sem(maps)
    return ClassSaliency(int(cls), chosen, mean, sem, stats.marginals(mean, sem), maps)


@dataclass(frozen=True)
class TopK:
    """Seed 003: for each unit of a layer, the images of a dataset that activate it most."""

    layer: str
    units: np.ndarray  # (U,)
    indices: np.ndarray  # (K, U) image indices, largest activation first
    scores: np.ndarray  # (K, U) the activations (channel means for conv layers)


def top_k_images(
    model: Model, x: np.ndarray, layer: str, *, k: int = 10, units: Sequence[int] | None = None,
    batch_size: int = 64,
) -> TopK:
    """The ``k`` images of ``x`` with the largest activation of each unit of ``layer``.

    A unit's activation is its mean over space for conv (4-D) layers, else each flattened value.
    """
    scores = unit_scores(model, layer, model.activations(x, [layer], batch_size=batch_size)[layer])
    chosen = np.arange(scores.shape[1]) if units is None else np.asarray(units)
    if chosen.size == 0 or chosen.min() < 0 or chosen.max() >= scores.shape[1]:
        raise InvalidArgument(f"units must be in 0..{scores.shape[1] - 1} for layer {layer!r}, got {list(chosen)}")
    indices, best = stats.top_k(scores[:, chosen], k)
    return TopK(layer, chosen, indices, best)


def unit_scores(model: Model, layer: str, values: np.ndarray) -> np.ndarray:
    """(N, U) unit activations of ``layer``'s ``values``: channel means of 4-D layers, else flattened."""
    return channel_means(values, model.channel_axis(layer)) if values.ndim == 4 else values.reshape(len(values), -1)


EMBEDDINGS = ("auto", "tsne", "pca")


@dataclass(frozen=True)
class Embedding:
    """2-D points for the images, and the method that made them."""

    points: np.ndarray  # (N, 2)
    method: str  # "tsne" or "pca"


def embedding(
    model: Model, x: np.ndarray, layer: str, *, method: str = "auto", perplexity: float = 30.0,
    seed: int = 0, batch_size: int = 64,
) -> Embedding:
    """Seed 003's map of a layer's features: t-SNE (scikit-learn) or PCA of the flattened activations.

    ``method``: "auto" (t-SNE when scikit-learn is installed, else PCA), "tsne" or "pca".
    t-SNE's perplexity is capped below the number of images.
    """
    if method not in EMBEDDINGS:
        raise InvalidArgument(f"unknown embedding method {method!r}; choose one of {', '.join(EMBEDDINGS)}")
    features = model.activations(x, [layer], batch_size=batch_size)[layer].reshape(len(x), -1)
    if len(features) < 3:
        raise InvalidArgument(f"an embedding needs at least 3 images, got {len(features)}")
    if method == "pca":
        return Embedding(stats.pca_2d(features), "pca")
    try:
        from sklearn.manifold import TSNE
    except ImportError as error:
        if method == "tsne":
            raise MissingDependency("scikit-learn", "demo") from error
        return Embedding(stats.pca_2d(features), "pca")
    tsne = TSNE(n_components=2, perplexity=min(perplexity, (len(features) - 1) / 3), init="pca", random_state=seed)
    return Embedding(tsne.fit_transform(features.astype(np.float64)), "tsne")
