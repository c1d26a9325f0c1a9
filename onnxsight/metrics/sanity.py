"""Sanity checks (Adebayo et al. 2018): model-parameter randomisation on the ONNX model itself.

The initializers of the weighted layers (Conv, ConvTranspose, Gemm, MatMul with a constant weight,
and the constant bias a MatMul's Add reads) are re-drawn from the top (logits) layer down; every
randomised model is a new :class:`~onnxsight.engine.model.Model` built from an edited copy of the
ModelProto, and the maps it gives are compared with the original ones per image.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from onnxsight.engine import targets
from onnxsight.engine.model import Model
from onnxsight.errors import InvalidArgument
from onnxsight.metrics.robustness import Explain, _explained, _single_image_input

WEIGHTED = {"Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (1, 2), "MatMul": (0, 1)}  # op: weight/bias input slots
SSIM_WINDOW = 7  # scikit-image's default: a uniform 7×7 window
SSIM_K1, SSIM_K2 = 0.01, 0.03  # Wang et al. 2004


def weighted_layers(model: Model) -> list[tuple[str, list[str]]]:
    """(layer name, initializer names) of the weighted layers, from the top (logits) layer down:
    Conv/ConvTranspose/Gemm with their weight and bias, MatMul with its constant weight and the
    constant bias of an Add that follows it. Layer names are the model's own (``model.layers``,
    e.g. Keras' layer names) where the node leads to one, else the node's name."""
    graph = model.proto.graph
    floats = {t.name for t in graph.initializer if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE,
                                                                  onnx.TensorProto.FLOAT16)}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    names: dict[str, str] = {}
    for layer in model.layers:
        names.setdefault(layer.tensor, layer.name)
    found = []
    for node in graph.node:
        slots = WEIGHTED.get(node.op_type)
        if slots is None:
            continue
        if node.op_type == "MatMul":
            weights = [name for name in node.input if name in floats]
            if not weights:
                continue
            following = consumers.get(node.output[0], [])
            if len(following) == 1 and following[0].op_type == "Add":
                weights += [name for name in following[0].input if name in floats]
                outputs = [node.output[0], following[0].output[0]]
            else:
                outputs = [node.output[0]]
        else:
            weights = [node.input[i] for i in slots if i < len(node.input) and node.input[i] in floats]
            outputs = [node.output[0]]
        if not weights or (node.op_type != "MatMul" and node.input[1] not in floats):
            continue
        name = _layer_name(outputs[-1], names, consumers) or node.name or node.output[0]
        found.append((name, weights))
    return found[::-1]


def _layer_name(tensor: str, names: dict[str, str], consumers: dict[str, list[onnx.NodeProto]]) -> str | None:
    """The model's layer name of ``tensor``, or of the first layer tensor that a chain of
    single-consumer, unweighted nodes (bias Add, activation, Transpose, Softmax) leads it to."""
    for _ in range(8):
        if tensor in names:
            return names[tensor]
        following = consumers.get(tensor, [])
        if len(following) != 1 or following[0].op_type in WEIGHTED:
            return None
        tensor = following[0].output[0]
    return None


def randomized_models(
    model: Model, *, cascading: bool = True, layers: Sequence[str] | None = None, seed: int = 0
) -> Iterator[tuple[str, Model]]:
    """(layer name, randomised Model) for each weighted layer (:func:`weighted_layers`), top down.

    cascading (default True): each model keeps the randomisations of the layers above it (Adebayo's
    cascading randomisation); False: only that one layer is randomised (independent randomisation).
    Each initializer is re-drawn from N(0, σ²) with σ the standard deviation of its original values
    (a zero bias stays zero), from ``numpy.random.default_rng([seed, layer position])``, so a layer
    gets the same new values in both modes. The input model is never changed.
    layers: the names of the weighted layers to yield models for (default None: all); a cascading
        model still has every layer above it randomised (a deep model's grid in a few models).
    """
    found = weighted_layers(model)
    if not found:
        raise InvalidArgument(f"model randomisation: {model.source} has no Conv, Gemm or MatMul layer with constant weights")
    known = [name for name, _ in found]
    wanted = set(known if layers is None else [layers] if isinstance(layers, str) else layers)
    unknown = sorted(wanted - set(known))
    if unknown or not wanted:
        raise InvalidArgument(f"model randomisation: no weighted layer {', '.join(map(repr, unknown)) or 'named'}; "
                              f"choose among {', '.join(known)}")
    initializers = {t.name: t for t in model.proto.graph.initializer}
    drawn: dict[str, np.ndarray] = {}
    for position, (name, weights) in enumerate(found):
        rng = np.random.default_rng([seed, position])
        new = {}
        for weight in weights:
            original = numpy_helper.to_array(initializers[weight])
            new[weight] = rng.normal(0.0, float(original.std()), original.shape).astype(original.dtype)
        drawn = {**drawn, **new} if cascading else new
        if name not in wanted:
            continue
        proto = onnx.ModelProto()
        proto.CopyFrom(model.proto)
        for tensor in proto.graph.initializer:
            if tensor.name in drawn:
                tensor.CopyFrom(numpy_helper.from_array(drawn[tensor.name], tensor.name))
        mode = "cascading" if cascading else "independent"
        yield name, Model(proto, f"{model.source} ({mode} randomisation down to {name})", model.device, model.threads)


def model_randomization(
    model: Model,
    x: np.ndarray,
    explain: Explain,
    target: targets.Target = "predicted",
    *,
    of: str = "logits",
    cascading: bool = True,
    layers: Sequence[str] | None = None,
    seed: int = 0,
    batch_size: int = 256,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Adebayo et al.'s model-parameter randomisation test: ``{layer: {"spearman": (N,), "ssim": (N,)}}``
    for each randomised model of :func:`randomized_models` (top layer first; ``layers`` picks them), comparing per image the
    map ``explain(model, x, target)`` of the original model with that of the randomised one.

    spearman: the Spearman rank correlation of the |maps| (ties get their average rank; 0 where a
        map is constant). ssim: :func:`ssim` of the |maps| each min-max scaled to [0, 1]
        (data range 1), for maps of shape (N, H, W); NaN for maps of other shapes.
    target: resolved once on the original model (against ``of``) and kept for the randomised ones,
        as Adebayo explain the originally predicted class. ``explain`` is called once per model on
        the whole batch. ``progress(models done, models in all)``.
    """
    x = _single_image_input(model, x, "model_randomization")
    if not callable(explain):
        raise InvalidArgument(f"model_randomization: explain must be a function (model, x, target) -> maps, got {explain!r}")
    indices = model.resolve_target(x, target, of, batch_size)
    original = np.abs(_explained(explain, model, x, indices, len(x), "model_randomization"))
    total = len(weighted_layers(model)) if layers is None else len([layers] if isinstance(layers, str) else layers)
    scores = {}
    for done, (name, randomized) in enumerate(randomized_models(model, cascading=cascading, layers=layers, seed=seed), 1):
        maps = np.abs(_explained(explain, randomized, x, indices, len(x), "model_randomization"))
        if maps.shape != original.shape:
            raise InvalidArgument(f"model_randomization: explain returned maps of shape {maps.shape} for the "
                                  f"randomised model and {original.shape} for the original one")
        images = original.ndim == 3
        scores[name] = {
            "spearman": spearman(original, maps),
            "ssim": ssim(_unit(original), _unit(maps), data_range=1.0) if images else np.full(len(x), np.nan),
        }
        if progress is not None:
            progress(done, total)
    return scores


def spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's rank correlation per row of two (N, ...) arrays, flattened: Pearson's correlation
    of the average ranks (ties share theirs); 0 where either row is constant. float64 (N,)."""
    a, b = (_ranks(np.asarray(v, np.float64).reshape(len(v), -1)) for v in (a, b))
    a -= a.mean(axis=1, keepdims=True)
    b -= b.mean(axis=1, keepdims=True)
    denominator = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    return np.divide((a * b).sum(axis=1), denominator, out=np.zeros(len(a)), where=denominator > 0)


def ssim(a: np.ndarray, b: np.ndarray, *, data_range: float) -> np.ndarray:
    """The mean structural similarity (Wang et al. 2004) of each pair of (H, W) images of two
    (N, H, W) arrays, as scikit-image's ``structural_similarity`` with its defaults: a uniform 7×7
    window, K1 = 0.01, K2 = 0.03, sample covariances (N − 1), the mean over the windows that fit
    inside the image. float64 (N,)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 3 or min(a.shape[1:]) < SSIM_WINDOW:
        raise InvalidArgument(f"ssim: two (N, H, W) arrays of one shape with H, W >= {SSIM_WINDOW}, got {a.shape} and {b.shape}")
    n = SSIM_WINDOW ** 2
    covariance = n / (n - 1)
    mean_a, mean_b = _window_means(a), _window_means(b)
    var_a = covariance * (_window_means(a * a) - mean_a ** 2)
    var_b = covariance * (_window_means(b * b) - mean_b ** 2)
    cov = covariance * (_window_means(a * b) - mean_a * mean_b)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    index = ((2 * mean_a * mean_b + c1) * (2 * cov + c2)) / ((mean_a ** 2 + mean_b ** 2 + c1) * (var_a + var_b + c2))
    return index.reshape(len(a), -1).mean(axis=1)


def _window_means(a: np.ndarray) -> np.ndarray:
    """Means over every SSIM_WINDOW×SSIM_WINDOW window that fits inside each (H, W) image."""
    windows = np.lib.stride_tricks.sliding_window_view(a, (SSIM_WINDOW, SSIM_WINDOW), axis=(1, 2))
    return windows.mean(axis=(-2, -1))


def _ranks(rows: np.ndarray) -> np.ndarray:
    """Average ranks (1-based) along each row of a 2-D array, ties sharing theirs."""
    count, size = rows.shape
    order = np.argsort(rows, axis=1, kind="stable")
    values = np.take_along_axis(rows, order, axis=1)
    starts = np.ones_like(values, dtype=bool)
    starts[:, 1:] = values[:, 1:] != values[:, :-1]
    starts = starts.ravel()
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    ends = np.r_[first[1:], starts.size]
    average = ((first + ends - 1) / 2 - (first // size) * size + 1)[group]
    ranks = np.empty_like(rows)
    np.put_along_axis(ranks, order, average.reshape(count, size), axis=1)
    return ranks


def _unit(maps: np.ndarray) -> np.ndarray:
    low = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - low
    return np.divide(maps - low, span, out=np.zeros_like(maps), where=span > 0)
