"""Captum's layer and neuron attributions: Layer Integrated Gradients, Layer Conductance, Layer
Gradient×Activation, Neuron Gradient and Neuron Integrated Gradients."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from onnxsight.engine import targets
from onnxsight.engine.model import Inputs, Model, rows, take
from onnxsight.errors import InvalidArgument
from onnxsight.kernels import attribution as k
from onnxsight.methods.common import (
    Tally, attributed_inputs, gradient_batch_size, gradients_in_runs, per_input, repeat_rows, rows_of, rows_per_run,
)
from onnxsight.methods.integrated_gradients import baselines, integrated_gradients
from onnxsight.methods.saliency import MAX_CHUNK_BYTES

def layer_integrated_gradients(
    model: Model,
    x: Inputs,
    target: targets.Target = "predicted",
    *,
    layer: str,
    of: str = "logits",
    output: str | None = None,
    steps: int = 50,
    method: str = "riemann_trapezoid",
    baseline="black",
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Integrated Gradients in the activation space of ``layer`` (Captum's LayerIntegratedGradients):
    ``(a(x) − a(b)) × ∫₀¹ ∂f/∂a at a(b) + α(a(x) − a(b)) dα``, the layer's path points fed to the
    rest of the network (``Model.vjp_from``). Returns float32 in the layer's shape (N, ...).

    Where every path from the input to ``of`` passes through the layer, the attributions sum to
    f(x) − f(b) up to the quadrature's error; parts of the network that bypass the layer see ``x``.
    target, of, output, steps, method, baseline: as for
    :func:`~onnxsight.methods.integrated_gradients.integrated_gradients` (Captum's default method is
    "gausslegendre"). progress: (path points done, path points in all).
    """
    alphas, weights = k.path_nodes(steps, method)
    model = model.with_output(output)
    inputs = model.input_feeds(model.check_input(x))
    tensor = layer_tensor(model, layer)
    batch_size = batch_size or gradient_batch_size(model)
    wrt = attributed_inputs(model)
    start = {**inputs, **baselines(model, inputs, baseline, wrt)}
    indices = model.resolve_target(inputs, target, of, batch_size)
    ends = model.run(inputs, [tensor], batch_size=batch_size)[0]
    starts = model.run(start, [tensor], batch_size=batch_size)[0]
    count = len(ends)
    cotangent = _cotangent(model, inputs, of, indices, batch_size)
    chunk = k.sample_chunk(len(alphas), 2 * ends.nbytes, MAX_CHUNK_BYTES)
    integral = np.zeros(ends.shape, np.float64)
    tally = Tally(len(alphas) * count, progress)
    for first in range(0, len(alphas), chunk):
        a, w = alphas[first:first + chunk], weights[first:first + chunk]
        points = k.path_points(starts, ends, a).reshape(-1, *ends.shape[1:])
        images = np.tile(np.arange(count), len(a))
        cotangents = repeat_rows(cotangent, len(a))
        grads = np.concatenate([
            model.vjp_from(tensor, points[run], of, cotangents[run], inputs, images[run], batch_size)
            for run in tally.runs(len(points), rows_per_run(model, batch_size))])
        integral += np.tensordot(w, grads.reshape(len(a), *ends.shape).astype(np.float64), axes=1)
    return ((ends.astype(np.float64) - starts) * integral).astype(np.float32)


def layer_conductance(
    model: Model,
    x: Inputs,
    target: targets.Target = "predicted",
    *,
    layer: str,
    of: str = "logits",
    output: str | None = None,
    steps: int = 50,
    method: str = "riemann_trapezoid",
    baseline="black",
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Conductance of each unit of ``layer`` (Dhamdhere et al.; Captum's LayerConductance):
    ``Σₖ ∂f/∂a(xₖ) · (a(xₖ₊₁) − a(xₖ))`` over ``steps + 1`` input path points
    ``xₖ = b + αₖ(x − b)``, αₖ the nodes of ``method`` for ``steps + 1`` points, as Captum
    (default "riemann_trapezoid": ``linspace(0, 1, steps + 1)``, so the ends are b and x and the
    conductances of a layer every path passes through sum to f(x) − f(b) up to the left Riemann
    sum's error; Captum's default is "gausslegendre", whose nodes miss both ends).

    target, of, output, baseline: as for :func:`~onnxsight.methods.integrated_gradients.integrated_gradients`
    (several inputs: every float input moves along the path). Each path point's gradient and
    activation come from one batched backward run. Returns float32 in the layer's shape (N, ...).
    progress: (path points done, path points in all).
    """
    alphas, _ = k.path_nodes(steps + 1, method)
    model = model.with_output(output)
    inputs = model.input_feeds(model.check_input(x))
    tensor = layer_tensor(model, layer)
    wrt = attributed_inputs(model)
    batch_size = batch_size or gradient_batch_size(model)
    starts = baselines(model, inputs, baseline, wrt)
    indices = model.resolve_target(inputs, target, of, batch_size)
    count = len(inputs[model.input_name])
    shape = model.shapes[tensor][1:]
    if None in shape:
        shape = model.run(take(inputs, slice(0, 1)), [tensor])[0].shape[1:]
    per_point = 2 * sum(a.nbytes for a in inputs.values()) + 16 * int(np.prod(shape)) * count  # float64 grads, acts
    chunk = k.sample_chunk(len(alphas), per_point, MAX_CHUNK_BYTES)
    tally = Tally(len(alphas) * count, progress)
    total, previous = 0.0, None  # previous: the gradient and activation at the last point of the last chunk
    first = 0
    while first < len(alphas):
        a = alphas[first:first + chunk]
        path = {name: k.path_points(starts[name], inputs[name], a).reshape(-1, *inputs[name].shape[1:]) for name in wrt}
        path.update({name: repeat_rows(value, len(a)) for name, value in inputs.items() if name not in path})
        grads, acts = backward_in_runs(model, path, of, targets.tile(indices, len(a)), tensor, batch_size, tally)
        grads = grads.reshape(len(a), count, *grads.shape[1:]).astype(np.float64)
        acts = acts.reshape(len(a), count, *acts.shape[1:]).astype(np.float64)
        if previous is not None:
            grads, acts = np.concatenate([previous[0], grads]), np.concatenate([previous[1], acts])
        total = total + (grads[:-1] * np.diff(acts, axis=0)).sum(axis=0)
        previous = grads[-1:], acts[-1:]
        first += len(a)
    return np.asarray(total, np.float32)


def layer_gradient_x_activation(
    model: Model,
    x: Inputs,
    target: targets.Target = "predicted",
    *,
    layer: str,
    of: str = "logits",
    output: str | None = None,
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """``∂f/∂a × a`` at ``layer`` (Captum's LayerGradientXActivation), from one batched backward
    run per ``batch_size`` images. Returns float32 in the layer's shape (N, ...)."""
    model = model.with_output(output)
    inputs = model.input_feeds(model.check_input(x))
    tensor = layer_tensor(model, layer)
    batch_size = batch_size or gradient_batch_size(model)
    indices = model.resolve_target(inputs, target, of, batch_size)
    tally = Tally(rows(inputs), progress)
    grads, acts = backward_in_runs(model, inputs, of, indices, tensor, batch_size, tally)
    return (grads.astype(np.float64) * acts).astype(np.float32)


def neuron_gradient(
    model: Model,
    x: Inputs,
    *,
    layer: str,
    neuron,
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray | dict[str, np.ndarray]:
    """Gradient of one neuron of ``layer`` with respect to the input (Captum's NeuronGradient).

    neuron: a tuple indexing the layer's output without the batch axis, in the layer's own layout
        (Captum's neuron_selector), or an int: that channel (on the layer's channel axis; a unit of
        a 2-D layer), summed over the other axes. Returns float32 in the input's shape (a dict by
        input name for a model with several inputs).
    """
    inputs = model.input_feeds(model.check_input(x))
    weights = neuron_cotangent(model, inputs, layer, neuron)
    wrt = attributed_inputs(model)
    batch_size = batch_size or gradient_batch_size(model)
    tally = Tally(rows(inputs), progress)
    grads = gradients_in_runs(model, inputs, layer_tensor(model, layer), weights, wrt, None, batch_size, tally)
    return per_input(model, {name: g.astype(np.float32) for name, g in grads.items()})


def neuron_integrated_gradients(
    model: Model,
    x: Inputs,
    *,
    layer: str,
    neuron,
    steps: int = 50,
    method: str = "riemann_trapezoid",
    baseline="black",
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray | dict[str, np.ndarray]:
    """Integrated Gradients of one neuron of ``layer`` (Captum's NeuronIntegratedGradients):
    :func:`~onnxsight.methods.integrated_gradients.integrated_gradients` of the neuron's value
    (``neuron`` as for :func:`neuron_gradient`); attributions sum to the neuron's value at x minus
    at the baseline. steps, method (Captum's default "gausslegendre"), baseline: as for IG."""
    inputs = model.input_feeds(model.check_input(x))
    weights = neuron_cotangent(model, inputs, layer, neuron)
    return integrated_gradients(model, x, weights, of=layer_tensor(model, layer), steps=steps, baseline=baseline,
                                method=method, batch_size=batch_size, progress=progress)


def layer_tensor(model: Model, layer: str) -> str:
    """The tensor of ``layer`` (a layer or tensor name), checked to depend on the model's input."""
    if not isinstance(layer, str) or not layer:
        raise InvalidArgument(f"layer must be a layer name (see Model.layers), got {layer!r}")
    tensor = model.tensor(layer)
    shape = model.shapes.get(tensor)
    if not shape or len(shape) < 2 or not np.issubdtype(model.dtype_of(tensor), np.floating):
        raise InvalidArgument(f"layer {layer!r} (tensor {tensor!r}, shape {shape}) is not a batched float "
                              "activation (N, ...) to attribute to")
    return tensor


def neuron_cotangent(model: Model, inputs: dict[str, np.ndarray], layer: str, neuron) -> np.ndarray:
    """Weights (N, ...) on ``layer``'s output for a batch ``inputs`` that pick ``neuron``: a one-hot at
    an index tuple, or ones on a channel (an int) — the neuron's value is the weighted sum."""
    tensor = layer_tensor(model, layer)
    shape = model.shapes[tensor][1:]
    if None in shape:
        shape = model.run(take(inputs, slice(0, 1)), [tensor])[0].shape[1:]
    weights = np.zeros((1, *shape))
    if isinstance(neuron, (int, np.integer)) and not isinstance(neuron, bool):
        axis = model.channel_axis(tensor) if len(shape) > 1 else 1
        if not 0 <= neuron < shape[axis - 1]:
            raise InvalidArgument(f"neuron {int(neuron)} out of range: layer {layer!r} has {shape[axis - 1]} channels "
                                  f"(output shape (N, {', '.join(map(str, shape))}), channel axis {axis})")
        np.moveaxis(weights, axis, 0)[neuron] = 1.0
    elif (isinstance(neuron, (tuple, list)) and all(isinstance(i, (int, np.integer)) and not isinstance(i, bool)
                                                   for i in neuron) and len(neuron) == len(shape)
          and all(-d <= i < d for i, d in zip(neuron, shape))):
        weights[(0, *neuron)] = 1.0
    else:
        raise InvalidArgument(f"neuron must be a channel (int) or an index tuple into layer {layer!r}'s output "
                              f"shape ({', '.join(map(str, shape))}) without the batch axis, got {neuron!r}")
    return np.repeat(weights, rows(inputs), axis=0)


def backward_in_runs(
    model: Model, batch: dict[str, np.ndarray], of: str, target: targets.Resolved, tensor: str, batch_size: int,
    tally: Tally,
) -> tuple[np.ndarray, np.ndarray]:
    """The gradient of the target score with respect to ``tensor`` and ``tensor``'s activation for a
    batch (inputs by name), one backward run of ``rows_per_run`` rows at a time, counted in ``tally``."""
    grads, acts = [], []
    for run in tally.runs(rows(batch), rows_per_run(model, batch_size)):
        result = model.backward(take(batch, run), of, rows_of(target, run), [tensor], outputs=[tensor],
                                batch_size=batch_size)
        grads.append(result.gradients[tensor])
        acts.append(result.activations[tensor])
    return np.concatenate(grads), np.concatenate(acts)


def _cotangent(model: Model, inputs: dict[str, np.ndarray], of: str, indices: targets.Resolved,
               batch_size: int) -> np.ndarray:
    """The cotangent of ``of`` whose dot product with each row is that image's target score."""
    tensor = model.tensor(of)
    static = model.shapes.get(tensor)
    count = rows(inputs)
    shape = (count, *static[1:]) if static is not None and None not in static[1:] else \
        (count, *model.run(take(inputs, slice(0, 1)), [tensor])[0].shape[1:])
    return targets.cotangent(shape, indices, model.channel_axis(of), np.float64)
