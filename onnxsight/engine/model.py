"""An ONNX classifier with named layers: load it, run it, read its intermediate tensors."""

from __future__ import annotations

import copy
import difflib
import functools
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar, Union

import numpy as np
import onnx
from onnx import helper

from onnxsight.engine import graph as g
from onnxsight.engine import targets
from onnxsight.engine.augment import Augmented, augment_model
from onnxsight.engine.autodiff import Modifier, build_vjp
from onnxsight.engine.exporters import torch_layer_names
from onnxsight.engine.metadata import ModelMetadata
from onnxsight.engine.session import first_line, open_session, resolve
from onnxsight.errors import InvalidArgument, ModelFileError, OnnxsightError, UnknownName

DEFAULT_BATCH_SIZE = 64
FED = "onnxsight/fed/"  # prefix of the graph input that takes a tensor's place in ``Model.run_from``
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
# Ops that keep a convolution's output channels in place: walked through to find a layer's kernel.
_CHANNELWISE = {"Relu", "LeakyRelu", "Elu", "Selu", "Sigmoid", "Tanh", "Clip", "HardSigmoid", "HardSwish",
                "Softplus", "PRelu", "Add", "Mul", "Identity", "Transpose", "BatchNormalization", "Dropout"}
# A batch for the model: one array for a model with one input, a dict by input name for several.
Inputs = Union[np.ndarray, Mapping[str, np.ndarray]]
T = TypeVar("T")


@dataclass(frozen=True)
class Backward:
    """Gradients keyed by the ``wrt`` names, and activations keyed by the ``outputs`` names."""

    gradients: dict[str, np.ndarray]
    activations: dict[str, np.ndarray]


@dataclass(frozen=True)
class Layer:
    """A named tensor of the model: ``shape`` has None for dynamic dims (the batch)."""

    name: str
    tensor: str
    op: str
    shape: tuple[int | None, ...] | None
    params: int
    kind: str = ""


class Model:
    """A loaded ONNX model: layers by name, batched inference, one cached session per output set.

    Several inputs: ``input_names`` in graph order; ``input_name`` (the alias "input") is the
    primary one, the first image-like float input, which image methods perturb and upsample to.
    Several outputs (heads): the aliases "output" and "logits" refer to ``head``, the first
    classification head unless a view from ``with_output`` chose another.
    """

    def __init__(self, proto: onnx.ModelProto, source: str, device: str = "auto", threads: int | None = None):
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise InvalidArgument(f"threads must be a positive integer (or None: one per core), got {threads!r}")
        self.proto = g.runtime_compatible(proto)
        self.source = source
        self.runtime = resolve(device)
        self.threads = threads
        self.metadata = ModelMetadata.read(proto)
        graph = proto.graph
        inputs = g.data_inputs(graph)
        if not inputs:
            raise ModelFileError(f"{source}: the graph has no data input")
        self.input_names = [v.name for v in inputs]
        self.output_names = [v.name for v in graph.output]
        self.values = g.value_infos(self.proto)
        self.shapes = {n: s for n, s in ((n, g.shape_of(v)) for n, v in self.values.items()) if s is not None}
        for name in self.input_names:
            if not self.shapes.get(name):
                raise ModelFileError(f"{source}: input {name!r} has no known shape")
        self.input_name = _primary_input(self.input_names, self.shapes, self.values)
        self.input_shape = self.shapes[self.input_name]
        recorded = self.metadata.input_layouts or {self.input_name: self.metadata.input_layout}
        self.input_layouts = {name: recorded.get(name) or _guess_layout(self.shapes[name]) for name in self.input_names}
        self.input_layout = self.input_layouts[self.input_name]
        self._head: str | None = None
        self.layers = self._read_layers()
        self._by_name = {layer.name: layer for layer in self.layers}
        self._sessions: dict[tuple, object] = {}
        self._augmented: dict[tuple, Augmented] = {}

    @property
    def device(self) -> str:
        """The resolved device: "cpu", "cuda" or "openvino"."""
        return self.runtime.device

    # ---- names -------------------------------------------------------------------------
    @property
    def head(self) -> str:
        """The graph output that "output" and "logits" refer to: the one chosen by ``with_output``,
        else the first that ends in a Softmax, else the first 2-D one, else the first."""
        return self._default_head if self._head is None else self._head

    @functools.cached_property
    def _default_head(self) -> str:
        softmax = [name for name in self.output_names if self._softmax_inputs[name] != name]
        flat = [name for name in self.output_names if len(self.shapes.get(name) or ()) == 2]
        return [*softmax, *flat, self.output_names[0]][0]

    @functools.cached_property
    def _softmax_inputs(self) -> dict[str, str]:
        """Each graph output's ``graph.softmax_input``, found once (targets resolve it on every call)."""
        return {name: g.softmax_input(self.proto.graph, name) for name in self.output_names}

    @property
    def logits(self) -> str:
        """The head's pre-softmax tensor (keras-vis' "swap softmax for linear"), else the head."""
        return self.logits_of(self.head)

    def logits_of(self, output: str) -> str:
        """The pre-softmax tensor of the graph output ``output``, else ``output`` itself."""
        recorded = self.metadata.heads.get(output)
        if recorded:
            return recorded
        if output == self.output_names[0] and self.metadata.logits:
            return self.metadata.logits
        return self._softmax_inputs[output] if output in self._softmax_inputs else g.softmax_input(self.proto.graph, output)

    def with_output(self, output: str | None) -> "Model":
        """This model with "output", "logits" and every method's default ``of`` referring to the head
        ``output`` (a graph output, or the layer that makes one); None: the model itself. The view
        shares the model's sessions and caches."""
        if output is None:
            return self
        layer = self._by_name.get(output)
        tensor = output if output in self.output_names else layer.tensor if layer is not None else None
        if tensor not in self.output_names:
            heads = [*self.output_names, *(layer.name for layer in self.layers if layer.tensor in self.output_names)]
            raise UnknownName("output", output, list(dict.fromkeys(heads)))
        view = copy.copy(self)
        view._head = tensor
        return view

    def tensor(self, name: str) -> str:
        """Resolve a layer name, "input", "output", "logits" or a tensor name to a tensor name.

        Layers of nested Keras models are named by path (``base/block_16_project``); the end of
        a path alone (``block_16_project``) works when it names one layer only."""
        if name in self._by_name:
            return self._by_name[name].tensor
        aliases = {"input": self.input_name, "output": self.head, "logits": self.logits}
        if name in aliases:
            return aliases[name]
        if name in self.values:
            return name
        return self.layer(name).tensor

    def layer(self, name: str) -> Layer:
        """The layer called ``name``: its full path, or the end of one path (UnknownName lists
        the near misses, or every match of an ambiguous name)."""
        if name in self._by_name:
            return self._by_name[name]
        matches = [layer for layer in self.layers if _path_ends_with(layer.name, name)]
        if len(matches) == 1:
            return matches[0]
        known = [layer.name for layer in self.layers]
        if not matches:
            raise _unknown_layer(name, known)
        error = UnknownName("layer", name, known)
        error.args = (f"layer name {name!r} is ambiguous: it ends {len(matches)} layer paths "
                      f"({', '.join(layer.name for layer in matches[:10])}{' ...' if len(matches) > 10 else ''}); "
                      f"give the full path",)
        raise error

    def channel_axis(self, name: str) -> int:
        """The channel axis of a layer's output: image layers follow the input layout."""
        shape = self.shapes.get(self.tensor(name))
        return 3 if shape is not None and len(shape) == 4 and self.input_layout == "NHWC" else 1

    def kernel(self, name: str) -> np.ndarray:
        """Weights (Cout, Cin/groups, kh, kw) of the convolution that produces layer ``name``."""
        graph, producer = self.proto.graph, g.producers(self.proto.graph)
        tensor = self.tensor(name)
        dependent = g.dependent_tensors(graph, self.input_names)
        node = producer.get(tensor)
        while node is not None and node.op_type in _CHANNELWISE:
            node = producer.get(next((i for i in node.input if i in dependent), ""))
        if node is not None and node.op_type in ("Conv", "ConvTranspose"):
            weights = g.constant_value(graph, node.input[1])
            if weights is not None:
                return weights if node.op_type == "Conv" else weights.swapaxes(0, 1)
        convs = [layer.name for layer in self.layers if layer.op == "Conv" or layer.kind.startswith("Conv")]
        raise InvalidArgument(f"layer {name!r} is not a convolution with constant weights; conv layers: {', '.join(convs) or 'none'}")

    # ---- running -----------------------------------------------------------------------
    def predict(self, x: Inputs, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """The model's output (its ``head``) for a batch ``x`` of shape (N, ...)."""
        return self.run(x, [self.head], batch_size=batch_size)[0]

    def activations(
        self, x: Inputs, layers: Sequence[str], batch_size: int = DEFAULT_BATCH_SIZE
    ) -> dict[str, np.ndarray]:
        """Outputs of the named layers (or tensors) for a batch ``x``."""
        if isinstance(layers, str):
            layers = [layers]
        tensors = [self.tensor(name) for name in layers]
        return dict(zip(layers, self.run(x, tensors, batch_size=batch_size)))

    def gradient(
        self,
        x: Inputs,
        of: str = "logits",
        target: targets.Target = None,
        wrt: Sequence[str] = ("input",),
        modifier: str | Modifier | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> dict[str, np.ndarray]:
        """Gradients of the target score of ``of`` with respect to each ``wrt``, batched.

        ``target``: a class (2-D ``of``) or channel (N-D ``of``: score = that channel's mean),
        one per image, "predicted", or None (the sum of the whole tensor). ``modifier``: None,
        "guided" or "deconv" (keras-vis backprop modifiers). Results are keyed by the names
        in ``wrt``, each in its tensor's own layout.
        """
        return self.backward(x, of, target, wrt, modifier, batch_size=batch_size).gradients

    def backward(
        self,
        x: Inputs,
        of: str = "logits",
        target: targets.Target = None,
        wrt: Sequence[str] = ("input",),
        modifier: str | Modifier | None = None,
        outputs: Sequence[str] = (),
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> Backward:
        """Gradients as in ``gradient``, and the activations named in ``outputs``, from one run."""
        x = self.check_input(x)
        indices = self.resolve_target(x, target, of, batch_size)
        tensor = self.tensor(of)
        static = self.shapes.get(tensor)
        shape = (rows(x), *static[1:]) if static is not None and None not in static[1:] else \
            (rows(x), *self._run(take(x, slice(0, 1)), [tensor])[0].shape[1:])
        cotangent = targets.cotangent(shape, indices, self.channel_axis(of), self.dtype_of(tensor))
        return self._vjp(x, of, cotangent, wrt, modifier, outputs, batch_size)

    def vjp(
        self,
        x: Inputs,
        of: str,
        cotangent: np.ndarray,
        wrt: Sequence[str] = ("input",),
        modifier: str | Modifier | None = None,
        outputs: Sequence[str] = (),
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> Backward:
        """``d(sum(of * cotangent))/d(wrt)`` for an explicit ``cotangent`` shaped like ``of``."""
        return self._vjp(self.check_input(x), of, cotangent, wrt, modifier, outputs, batch_size)

    def _vjp(self, x: Inputs, of: str, cotangent: np.ndarray, wrt: Sequence[str], modifier: str | Modifier | None,
             outputs: Sequence[str], batch_size: int) -> Backward:
        """``vjp`` of a checked batch."""
        augmented = self.augmented(of, wrt, modifier, outputs)
        if len(cotangent) != rows(x):
            raise InvalidArgument(f"cotangent has {len(cotangent)} rows for {rows(x)} images")
        tensors = [*augmented.gradients.values(), *augmented.activations.values()]
        cotangent = np.ascontiguousarray(cotangent, dtype=self.dtype_of(augmented.of))
        results = self._run(x, tensors, batch_size, augmented.model, {augmented.cotangent: cotangent})
        count = len(augmented.gradients)
        return Backward(dict(zip(augmented.gradients, results[:count])), dict(zip(augmented.activations, results[count:])))

    def resolve_target(
        self, x: Inputs, target: targets.Target, of: str = "logits", batch_size: int = DEFAULT_BATCH_SIZE
    ) -> targets.Resolved:
        """The target per image: a class/channel index of ``of``, weights (a Region or an explicit
        cotangent), or None for "the whole tensor" (see ``targets.resolve``).

        "predicted" and a Region without a mask run the model on ``x``; resolve once on clean
        images and pass the result on to noisy copies or path points (``targets.tile``), so that
        they keep their image's target.
        """
        tensor = self.tensor(of)
        static = self.shapes.get(tensor)
        values = None
        if targets.needs_values(target) or static is None or None in static[1:]:
            values = self.run(x, [tensor], batch_size=batch_size)[0]
        shape = values.shape if values is not None else (rows(x), *static[1:])
        return targets.resolve(target, shape, self.channel_axis(of), values)

    def augmented(
        self, of: str, wrt: Sequence[str], modifier: str | Modifier | None = None, outputs: Sequence[str] = ()
    ) -> Augmented:
        """The augmented model for these names, built once and cached."""
        wrt, outputs = ([n] if isinstance(n, str) else list(n) for n in (wrt, outputs))
        key = (self.tensor(of), tuple(wrt), modifier, tuple(outputs))
        if key not in self._augmented:
            self._augmented[key] = augment_model(self, of, wrt, modifier, outputs)
        return self._augmented[key]

    def memo(self, key: tuple, compute: Callable[[], T]) -> T:
        """``compute()``, computed once per ``key`` for this model (and its ``with_output`` views): for
        facts found by walking the graph (a default layer) that methods would otherwise redo per call.
        The key must name everything the fact depends on besides the graph (e.g. ``self.head``)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    @functools.cached_property
    def _memo(self) -> dict[tuple, object]:
        return {}

    @functools.cached_property
    def bytes_per_row(self) -> int:
        """Bytes one batch row takes in every batched tensor of static shape (float32), what a forward
        pass keeps per row for its backward pass."""
        return sum(4 * int(np.prod(shape[1:])) for shape in self.shapes.values()
                   if len(shape) > 1 and shape[0] is None and None not in shape[1:])

    def dtype_of(self, tensor: str) -> np.dtype:
        """The numpy dtype of a tensor of the model."""
        if tensor not in self._dtypes:
            self._dtypes[tensor] = np.dtype(helper.tensor_dtype_to_np_dtype(self.values[tensor].type.tensor_type.elem_type))
        return self._dtypes[tensor]

    @functools.cached_property
    def _dtypes(self) -> dict[str, np.dtype]:
        return {}

    def run(
        self,
        x: Inputs,
        outputs: Sequence[str],
        batch_size: int = DEFAULT_BATCH_SIZE,
        proto: onnx.ModelProto | None = None,
        feeds: Mapping[str, np.ndarray] | None = None,
    ) -> list[np.ndarray]:
        """Run ``outputs`` (tensor names) batched; ``feeds`` are per-sample extra inputs.

        ``proto`` is an augmented version of this model (same data inputs); sessions are
        cached per (model, outputs). A model with a fixed batch size runs in chunks of it.
        """
        return self._run(self.check_input(x), outputs, batch_size, proto, feeds)

    def _run(
        self, x: Inputs, outputs: Sequence[str], batch_size: int = DEFAULT_BATCH_SIZE,
        proto: onnx.ModelProto | None = None, feeds: Mapping[str, np.ndarray] | None = None,
    ) -> list[np.ndarray]:
        """``run`` of a checked batch."""
        count = rows(x)
        feeds = {**self.input_feeds(x), **(feeds or {})}
        for name, value in feeds.items():
            if len(value) != count:
                raise InvalidArgument(f"{name}: {len(value)} rows for {count} images")
        session = self._session(tuple(outputs), proto)
        fixed = self.input_shape[0]
        step = fixed if isinstance(fixed, int) else _positive(batch_size, "batch_size")
        chunks = []
        for start in range(0, count, step):
            batch = {k: v[start:start + step] for k, v in feeds.items()}
            chunks.append(self._run_chunk(session, list(outputs), batch, fixed))
        return [parts[0] if len(parts) == 1 else np.concatenate(parts) for parts in zip(*chunks)]  # one run: no copy

    def run_from(
        self, tensor: str, value: np.ndarray, outputs: Sequence[str], x: Inputs | None = None,
        images: np.ndarray | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> list[np.ndarray]:
        """Run ``outputs`` with ``value`` (rows, ...) in place of the tensor ``tensor``: the graph from
        there on (``graph.fed_at``; its session cached). Where that part still reads the model's inputs
        (another input, a shape), row r gets row ``images[r]`` (default r) of the batch ``x``."""
        key = (FED + tensor, tuple(outputs))
        if key not in self._sessions:
            proto = g.fed_at(self.proto, tensor, FED + tensor, outputs, self.values)
            feed = next(v for v in proto.graph.input if v.name == FED + tensor)
            feed.type.CopyFrom(self.values[tensor].type)  # its rank: OpenVINO compiles no input of unknown rank
            self._sessions[key] = open_session(proto, self.runtime, self.source, self.threads)
        return self._run_fed(self._sessions[key], tensor, list(outputs), {FED + tensor: value}, x, images, batch_size)

    def vjp_from(
        self, tensor: str, value: np.ndarray, of: str, cotangent: np.ndarray, x: Inputs | None = None,
        images: np.ndarray | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> np.ndarray:
        """``d(sum(of * cotangent))/d(tensor)`` at ``value`` (rows, ...) fed in place of the tensor
        ``tensor`` (the graph from there on, as ``run_from``; the augmented model and its session
        cached). Where that part still reads the model's inputs, row r gets row ``images[r]``
        (default r) of the batch ``x``."""
        tensor, of = self.tensor(tensor), self.tensor(of)
        key = (FED + tensor, "vjp", of)
        if key not in self._sessions:
            fed = g.fed_at(self.proto, tensor, FED + tensor, [of], self.values)
            feed = next(v for v in fed.graph.input if v.name == FED + tensor)
            feed.type.CopyFrom(self.values[tensor].type)  # its rank: the rules need it
            if of not in g.dependent_tensors(fed.graph, [FED + tensor]):
                raise InvalidArgument(f"{of!r} does not depend on {tensor!r}: nothing to differentiate")
            vjp = build_vjp(fed, of, [FED + tensor])
            self._sessions[key] = (open_session(with_outputs(vjp.model, [vjp.gradients[FED + tensor]],
                                                             g.value_infos(vjp.model)),
                                                self.runtime, self.source, self.threads), vjp)
        session, vjp = self._sessions[key]
        if len(cotangent) != len(value):
            raise InvalidArgument(f"cotangent has {len(cotangent)} rows for {len(value)} values of {tensor!r}")
        rows = {FED + tensor: np.ascontiguousarray(value, dtype=self.dtype_of(tensor)),
                vjp.cotangent: np.ascontiguousarray(cotangent, dtype=self.dtype_of(of))}
        return self._run_fed(session, tensor, [vjp.gradients[FED + tensor]], rows, x, images, batch_size)[0]

    def _run_fed(
        self, session, tensor: str, outputs: list[str], rows: dict[str, np.ndarray], x: Inputs | None,
        images: np.ndarray | None, batch_size: int,
    ) -> list[np.ndarray]:
        """``outputs`` of a session of the graph fed at ``tensor``, given its fed ``rows`` (arrays of one
        length by input name); inputs of the model it still reads come from row ``images[r]`` (default r)
        of ``x``, run in chunks of ``batch_size`` rows (the model's fixed batch, if it has one)."""
        read = {i.name for i in session.get_inputs()} - set(rows)
        if read and x is None:
            raise InvalidArgument(f"the graph from {tensor!r} on also reads {', '.join(sorted(read))}: pass x")
        context = {n: v for n, v in self.input_feeds(self.check_input(x)).items() if n in read} if read else {}
        fixed = self.input_shape[0]
        step = fixed if isinstance(fixed, int) else _positive(batch_size, "batch_size")
        count = len(next(iter(rows.values())))
        chunks = []
        for start in range(0, count, step):
            run = slice(start, start + step)
            picked = run if images is None else images[run]
            batch = {**{n: v[run] for n, v in rows.items()}, **{n: v[picked] for n, v in context.items()}}
            chunks.append(self._run_chunk(session, outputs, batch, fixed))
        return [np.concatenate(parts) for parts in zip(*chunks)]

    def check_input(self, x: Inputs) -> Inputs:
        """``x`` in the model's input dtypes — one array for a one-input model, a dict by input name
        for several — or a clear error naming the input and its expected type, shape or values."""
        if len(self.input_names) == 1:
            if isinstance(x, Mapping):
                if set(x) != {self.input_name}:
                    raise InvalidArgument(f"{self.source} has one input, {self.input_name!r}; got inputs {sorted(x)}")
                x = x[self.input_name]
            return self.check_array(self.input_name, x)
        names = ", ".join(self.input_names)
        if not isinstance(x, Mapping):
            raise InvalidArgument(f"{self.source} has {len(self.input_names)} inputs ({names}): "
                                  f"pass x as a dict {{input name: array}}")
        unknown = [name for name in x if name not in self.input_names]
        missing = [name for name in self.input_names if name not in x]
        if unknown or missing:
            raise InvalidArgument(f"{self.source} has the inputs {names}; "
                                  + "; ".join(f"{what} {', '.join(map(repr, n))}" for what, n in
                                              (("unknown", unknown), ("missing", missing)) if n))
        arrays = {name: self.check_array(name, x[name]) for name in self.input_names}
        counts = {name: len(a) for name, a in arrays.items()}
        if len(set(counts.values())) != 1:
            raise InvalidArgument(f"inputs have different batch sizes: {counts}")
        return arrays

    def input_feeds(self, x: Inputs) -> dict[str, np.ndarray]:
        """A checked batch as onnxruntime feeds, by input name."""
        return dict(x) if isinstance(x, Mapping) else {self.input_name: x}

    def differentiable_inputs(self) -> list[str]:
        """The float inputs, those a gradient can be taken with respect to."""
        return [name for name in self.input_names if np.issubdtype(self.dtype_of(name), np.floating)]

    @property
    def input_dtype(self) -> np.dtype:
        return self.dtype_of(self.input_name)

    def check_array(self, name: str, x: np.ndarray) -> np.ndarray:
        """One input's batch ``x`` in its dtype, or a clear error about its type, shape or values."""
        x = np.asarray(x)
        shape, dtype = self.shapes[name], self.dtype_of(name)
        label = "input" if len(self.input_names) == 1 else f"input {name!r}"
        expected = "(N, " + ", ".join("?" if d is None else str(d) for d in shape[1:]) + ")"
        if np.issubdtype(dtype, np.floating) and not np.issubdtype(x.dtype, np.floating):
            raise InvalidArgument(
                f"{label} must be a floating-point array, got {x.dtype}; scale integer images first (e.g. x / 255)"
            )
        if np.issubdtype(dtype, np.integer) and not np.issubdtype(x.dtype, np.integer):
            raise InvalidArgument(f"{label} must be an integer array ({dtype}), got {x.dtype}")
        if x.ndim != len(shape):
            hint = "; add a batch axis (x[None])" if x.ndim == len(shape) - 1 else ""
            raise InvalidArgument(f"{label} has shape {x.shape} but {self.source} expects {expected}{hint}")
        for got, want in zip(x.shape[1:], shape[1:]):
            if want is not None and got != want:
                raise InvalidArgument(f"{label} has shape {x.shape} but {self.source} expects {expected}")
        if len(x) == 0:
            raise InvalidArgument(f"{label} batch is empty")
        if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
            raise InvalidArgument(f"{label} contains NaN or Inf values")
        return np.ascontiguousarray(x, dtype=dtype)

    # ---- internals ---------------------------------------------------------------------
    def _session(self, outputs: tuple[str, ...], proto: onnx.ModelProto | None):
        key = (id(proto) if proto is not None else None, outputs)
        if key not in self._sessions:
            base = proto if proto is not None else self.proto
            values = self.values if proto is None else g.value_infos(proto)
            self._sessions[key] = open_session(with_outputs(base, outputs, values), self.runtime, self.source, self.threads)
        return self._sessions[key]

    def _run_chunk(self, session, outputs, batch, fixed) -> list[np.ndarray]:
        count = len(next(iter(batch.values())))
        if isinstance(fixed, int) and count < fixed:  # pad the last chunk of a fixed-batch model
            batch = {k: np.concatenate([v, np.zeros((fixed - count, *v.shape[1:]), v.dtype)]) for k, v in batch.items()}
        try:
            results = session.run(outputs, batch)
        except Exception as error:  # noqa: BLE001 - onnxruntime raises several unrelated types
            raise OnnxsightError(f"{self.runtime.name} failed on {self.source}: {first_line(error)}") from error
        return [r[:count] for r in results]

    def _read_layers(self) -> list[Layer]:
        if self.metadata.layers:
            named = [(r.name, r.tensor, r.kind, r.params) for r in self.metadata.layers]
        else:  # foreign files: PyTorch's module names, else every data-dependent node output named after its node
            dependent = g.dependent_tensors(self.proto.graph, self.input_names)
            torch_names = torch_layer_names(self.proto, dependent)
            named, seen = [] if torch_names is None else [(n, t, k, None) for n, t, k in torch_names], set()
            for node in self.proto.graph.node if torch_names is None else []:
                for tensor in node.output:
                    if tensor in dependent and tensor not in seen:
                        name = node.name if node.name and node.name not in seen and len(node.output) == 1 else tensor
                        seen.update((name, tensor))
                        named.append((name, tensor, "", None))
        producer = g.producers(self.proto.graph)
        counts = _parameters_per_layer(self.proto.graph, [tensor for _, tensor, _, _ in named])
        return [
            Layer(name, tensor, producer[tensor].op_type if tensor in producer else "Input", self.shapes.get(tensor),
                  count if params is None else params, kind)
            for (name, tensor, kind, params), count in zip(named, counts)
        ]


def _parameters_per_layer(graph: onnx.GraphProto, tensors: Sequence[str]) -> list[int]:
    """Float weights per layer, in order: those read by the nodes computing each layer's tensor
    that no earlier layer already counted. Used when the file does not record the framework's
    own counts (converters may fold or drop weights, e.g. an all-zero bias)."""
    producer = g.producers(graph)
    weights = {t.name: int(np.prod(t.dims)) for t in graph.initializer if t.data_type in _FLOAT_TYPES}
    visited: set[str] = set()
    counts = []
    for tensor in tensors:
        count, stack = 0, [tensor]
        while stack:
            name = stack.pop()
            if name in visited:
                continue
            visited.add(name)
            count += weights.get(name, 0)
            node = producer.get(name)
            stack.extend(i for i in (node.input if node is not None else []) if i)
        counts.append(count)
    return counts


def load(model: str | os.PathLike | onnx.ModelProto, device: str = "auto", threads: int | None = None) -> Model:
    """Load an ONNX classifier from a path (or a ModelProto) onto "auto" (CUDA when it really works,
    else onnxruntime's CPU), "cpu", "cuda" or "openvino" (OpenVINO's CPU plugin, float32);
    ``threads``: intra-op threads per session (default: one per core)."""
    if isinstance(model, onnx.ModelProto):
        return Model(model, "<in-memory model>", device, threads)
    path = Path(model)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    try:
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
    except Exception as error:  # noqa: BLE001 - protobuf and onnx raise many types
        raise ModelFileError(f"{path} is not a valid ONNX model: {first_line(error)}") from error
    return Model(proto, str(path), device, threads)


def with_outputs(
    model: onnx.ModelProto, outputs: Sequence[str], values: Mapping[str, onnx.ValueInfoProto]
) -> onnx.ModelProto:
    """A copy of ``model`` whose graph outputs are exactly ``outputs``, typed from ``values``, without the
    nodes and weights no output needs (onnxruntime runs every node: a layer's activations would cost the
    whole forward pass, a 1-row run to the seed CNN's last pooling layer 3× the cut graph's)."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    kept = g.live_nodes(graph.node, set(outputs))
    read = {name for node in kept for name in node.input} | set(outputs)
    # kept whole: a subgraph's outer-scope reads are no node inputs; an input no node would read any more
    # (OpenVINO drops it, and then refuses its feed)
    if not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute) \
            and all(v.name in read for v in g.data_inputs(graph)):
        read |= {v.name for v in graph.input}
        weights = [t for t in graph.initializer if t.name in read]
        for field, items in ((graph.node, kept), (graph.initializer, weights)):
            del field[:]
            field.extend(items)
    del result.graph.output[:]
    for name in dict.fromkeys(outputs):
        if name not in values:
            raise UnknownName("tensor", name, list(values))
        info = values[name]
        result.graph.output.append(helper.make_tensor_value_info(name, info.type.tensor_type.elem_type, None))
    return result


def _path_ends_with(path: str, name: str) -> bool:
    """Whether the "/"-separated layer ``path`` ends with ``name``'s parts; a part of ``name``
    without a call index (``base``) matches any call of it (``base@1``)."""
    parts, wanted = path.split("/"), name.split("/")
    if len(wanted) > len(parts) or not all(wanted):
        return False
    return all(w == p or ("@" not in w and w == p.partition("@")[0]) for w, p in zip(wanted, parts[-len(wanted):]))


def _unknown_layer(name: str, known: list[str]) -> UnknownName:
    """UnknownName whose near misses also compare the last part of nested layer paths."""
    if "/" not in "".join(known):
        return UnknownName("layer", name, known)
    leaf = name.rpartition("/")[2]
    by_leaf: dict[str, list[str]] = {}
    for path in known:
        by_leaf.setdefault(path.rpartition("/")[2], []).append(path)
    close = [*difflib.get_close_matches(name, known, n=3, cutoff=0.5),
             *(path for near in difflib.get_close_matches(leaf, list(by_leaf), n=3, cutoff=0.6) for path in by_leaf[near])]
    return UnknownName("layer", name, known, list(dict.fromkeys(close))[:5])


def rows(x: Inputs) -> int:
    """The batch size of a checked batch."""
    return len(next(iter(x.values())) if isinstance(x, Mapping) else x)


def take(x: Inputs, index) -> Inputs:
    """Rows ``index`` (a slice or an index array) of every input of a batch."""
    return {name: value[index] for name, value in x.items()} if isinstance(x, Mapping) else x[index]


def _primary_input(names: list[str], shapes: Mapping, values: Mapping) -> str:
    """The first float input of rank >= 3 (an image), else the first float input, else the first."""
    floats = [n for n in names
              if np.issubdtype(helper.tensor_dtype_to_np_dtype(values[n].type.tensor_type.elem_type), np.floating)]
    images = [n for n in floats if len(shapes[n]) >= 3]
    return [*images, *floats, names[0]][0]


def _guess_layout(shape: tuple) -> str:
    if len(shape) != 4:
        return "NC" if len(shape) == 2 else f"rank{len(shape)}"
    return "NCHW" if shape[1] in (1, 3, 4) and shape[3] not in (1, 3, 4) else "NHWC"


def _positive(value: int, name: str) -> int:
    if int(value) < 1:
        raise InvalidArgument(f"{name} must be at least 1, got {value}")
    return int(value)
