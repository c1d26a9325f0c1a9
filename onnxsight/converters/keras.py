"""Keras models (.keras, .h5, SavedModel, in memory) to one ONNX file with a layer map.

Naming in the written graph: the only graph input is ``input`` (float32, dynamic batch) and
the only graph output is ``output`` (the model's output as Keras returns it, e.g. softmax
scores). A model with several inputs or outputs keeps Keras' names for them instead (its input
layers' names; its output layers' names, in Keras' flat order), each head's logits are
recorded in ``onnxsight.heads`` and each input's layout in ``onnxsight.input_layouts``. Every layer's output tensor, nested models' layers included (named by path, see
"nested Keras models" below), is renamed to the layer's name when that name is free;
otherwise (the last layer, whose tensor is ``output``, a Dropout whose tensor is its
predecessor's, a nested model and its last layer) the layer maps to the tensor it shares. The input of a final Softmax is
``logits`` unless a layer already names it. ``metadata_props`` record the layer map, the
logits tensor, the input layout and the source (see ``onnxsight.engine.metadata``).

TensorFlow, Keras and tf2onnx are imported inside the functions that need them.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from onnxsight.converters import rewrites
from onnxsight.data.files import atomic_write, refuse_overwrite
from onnxsight.engine.graph import data_inputs, producers, rename_tensor, runtime_compatible, tensor_names
from onnxsight.engine.metadata import LayerRecord, ModelMetadata
from onnxsight.errors import (
    ConversionError, InternalError, InvalidArgument, MissingDependency, ModelFileError, OnnxsightError,
)

MIN_OPSET = 17
PARITY_BATCH = 8
PARITY_SEED = 0


@dataclass
class Conversion:
    """What a conversion wrote and how faithful it is."""

    path: Path
    max_abs_diff: float  # over the final output, Keras versus onnxruntime on a random batch
    layers: list[LayerRecord]
    logits: str
    input_layout: str | None
    source: str


@dataclass
class _Input:
    """One model input as the ONNX graph names it."""

    name: str
    shape: tuple[int, ...]  # without the batch dimension
    dtype: Any  # a tf.DType
    layout: str | None


@dataclass
class _Traced:
    """A tf.function of the inputs returning the model outputs first, then one tensor per layer."""

    function: Any
    inputs: list[_Input]
    outputs: list[str]  # ONNX names of the model outputs
    layers: list[tuple[str, str, int | None]]  # (name, kind, params) per extra output; empty: take scopes
    source: str

    @property
    def layout(self) -> str | None:
        return self.inputs[0].layout


def convert_keras(
    model_or_path: Any, output_path: str | os.PathLike, *, opset: int = MIN_OPSET,
    tolerance: float = 1e-4, overwrite: bool = False,
) -> Path:
    """Convert a Keras model or model file to ONNX at ``output_path``; returns that path."""
    return convert_keras_model(
        model_or_path, output_path, opset=opset, tolerance=tolerance, overwrite=overwrite
    ).path


def convert_keras_model(
    model_or_path: Any, output_path: str | os.PathLike, *, opset: int = MIN_OPSET,
    tolerance: float = 1e-4, overwrite: bool = False,
) -> Conversion:
    """Convert, check parity with Keras on a random batch, and write atomically.

    ``model_or_path``: a Keras 3 or tf_keras model, or the path of a ``.keras`` or ``.h5``
    file or a SavedModel folder. Raises ConversionError when the graph would hold ops that
    are not ONNX or when the outputs differ by more than ``tolerance``.
    """
    output = Path(output_path)
    _check_output(output, overwrite)
    if opset < MIN_OPSET:
        raise InvalidArgument(f"opset must be >= {MIN_OPSET}, got {opset}")
    traced = _trace(model_or_path)
    model, tf_outputs, names = _tf2onnx(traced, opset)
    layers, heads = _name_tensors(model, tf_outputs, traced.outputs, names)
    logits = next((found for head, found in heads.items() if found != head), next(iter(heads.values())))
    _guard_padded_max_pools(model.graph)
    several = len(traced.inputs) > 1 or len(heads) > 1
    meta = ModelMetadata(layers, logits, traced.layout, traced.source, heads if len(heads) > 1 else {},
                         {i.name: i.layout for i in traced.inputs if i.layout} if several else {})
    meta.write(model)
    onnx.checker.check_model(runtime_compatible(model), full_check=True)
    diff = _parity(model, traced)
    if not diff <= tolerance:
        raise ConversionError(
            f"ONNX output differs from Keras by {diff:.3g} (max abs) on a random batch, "
            f"above the tolerance {tolerance:g}"
        )
    _write(model, output, overwrite)
    return Conversion(output, diff, layers, logits, traced.layout, traced.source)


def _check_output(output: Path, overwrite: bool) -> None:
    if output.is_dir():
        raise InvalidArgument(f"{output} is a directory, not a file name")
    refuse_overwrite(output, overwrite)


def import_keras() -> Any:
    """Keras on TensorFlow, imported quietly (no C++ log lines about absent GPUs)."""
    _modules()
    import keras

    return keras


def _modules() -> tuple[Any, Any]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow reads it when first imported
    try:
        with _silenced_stderr():  # absl prints oneDNN/CUDA notices before any log level applies
            import tensorflow as tf
            import tf2onnx
    except ImportError as error:
        raise MissingDependency(error.name or "tensorflow", "keras") from error
    tf.get_logger().setLevel(logging.ERROR)  # tf2onnx calls TF1 APIs that log deprecations
    return tf, tf2onnx


@contextmanager
def _silenced_stderr():
    """Point file descriptor 2 at /dev/null for the duration (C++ writes bypass sys.stderr)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _tf_keras() -> Any:
    try:
        import tf_keras
    except ImportError as error:
        raise MissingDependency("tf_keras", "keras") from error
    return tf_keras


# --- loading and tracing -----------------------------------------------------------------

def _trace(model_or_path: Any) -> _Traced:
    if not isinstance(model_or_path, (str, os.PathLike)):
        return _trace_keras(model_or_path, f"in-memory model {getattr(model_or_path, 'name', '?')!r}")
    path = Path(model_or_path)
    if not path.exists():
        raise ModelFileError(f"model file not found: {path}")
    if path.is_dir():
        return _trace_saved_model(path)
    return _trace_keras(_load_file(path), str(path))


def _load_file(path: Path) -> Any:
    _modules()  # Keras 3 must run on TensorFlow here
    import keras

    try:
        return keras.models.load_model(path, compile=False)
    except Exception as keras3_error:  # noqa: BLE001 - any failure means: try the Keras 2 reader
        try:
            return _tf_keras().models.load_model(path, compile=False)
        except Exception as keras2_error:  # noqa: BLE001 - reported with both causes
            raise ModelFileError(
                f"cannot read Keras model {path}: {keras3_error}; tf_keras: {keras2_error}"
            ) from keras2_error


def _trace_saved_model(path: Path) -> _Traced:
    tf, _ = _modules()
    if (path / "keras_metadata.pb").exists():  # written by tf_keras: a Keras model inside
        return _trace_keras(_tf_keras().models.load_model(path, compile=False), str(path))
    try:
        loaded = tf.saved_model.load(str(path))
    except (OSError, ValueError) as error:
        raise ModelFileError(f"cannot read SavedModel {path}: {error}") from error
    signature = loaded.signatures.get("serving_default")
    if signature is None:
        raise ConversionError(f"SavedModel {path} has no serving_default signature")
    args = signature.structured_input_signature[1]
    outputs = signature.structured_outputs
    if len(args) != 1 or len(outputs) != 1:
        raise ConversionError(
            f"SavedModel {path}: only models with one input and one output are supported, "
            f"its signature has inputs {sorted(args)} and outputs {sorted(outputs)}"
        )
    (arg, spec), (key,) = next(iter(args.items())), outputs
    shape = _input_shape(spec.shape[1:], "input")

    @tf.function(input_signature=[tf.TensorSpec((None, *shape), tf.float32, name="input")])
    def function(x):  # reads the signature through ``loaded``, which owns the variables
        return [loaded.signatures["serving_default"](**{arg: tf.cast(x, spec.dtype)})[key]]

    inputs = [_Input("input", shape, tf.float32, _layout(len(shape) + 1, channels_first=False))]
    return _Traced(function, inputs, ["output"], [], str(path))


def _trace_keras(model: Any, source: str) -> _Traced:
    tf, _ = _modules()
    api = _keras_api(model)
    for tensor in model.inputs:
        _refuse_input(tensor, source)
    names = _io_names(model, source)
    specs = [tf.TensorSpec((None, *_input_shape(t.shape[1:], name)), _tf_dtype(tf, t.dtype), name=name)
             for t, name in zip(model.inputs, names.inputs)]
    graph = _graph_of(model) if api.__name__ == "keras" else None
    if graph is not None:
        calls = _layer_calls(graph, "")

        @tf.function(input_signature=specs, autograph=False)
        def function(*xs):
            recorded: dict[str, Any] = {}
            outputs = _execute(graph, list(xs), "", recorded)
            missing = [call.path for call in calls if call.path not in recorded]
            if missing:  # a nested model run whole (called with a mask or other inputs than its own)
                raise ConversionError(f"{source}: the layers {', '.join(missing[:5])} of a nested model "
                                      f"called with a mask or with inputs unlike its own cannot be mapped")
            return [*outputs, *(recorded[call.path] for call in calls)]

        layers = [call.layer for call in calls]
        records = [(call.path, type(call.layer).__name__, call.layer.count_params()) for call in calls]
    else:  # tf_keras and subclassed models: the top-level layers of the Keras graph
        layers = [
            layer for layer in model.layers
            if not isinstance(layer, api.layers.InputLayer) and _single_output(layer)
        ]
        probe = api.Model(model.inputs, [*model.outputs, *(_outer_output(layer) for layer in layers)])

        @tf.function(input_signature=specs, autograph=False)
        def function(*xs):
            return probe(list(xs) if len(xs) > 1 else xs[0], training=False)

        records = [(layer.name, type(layer).__name__, layer.count_params()) for layer in layers]
    channels_first = any(getattr(layer, "data_format", None) == "channels_first" for layer in layers)
    inputs = [_Input(spec.name, tuple(spec.shape[1:]), spec.dtype, _layout(spec.shape.rank, channels_first))
              for spec in specs]
    return _Traced(function, inputs, names.outputs, records, f"{api.__name__} {api.__version__} {source}")


@dataclass
class _Names:
    inputs: list[str]
    outputs: list[str]


def _io_names(model: Any, source: str) -> _Names:
    """ONNX names of the model's inputs and outputs: ``input`` and ``output`` when there is one
    of each kind, else Keras' own (input layer names; output layer names, in its flat order)."""
    inputs = ["input"] if len(model.inputs) == 1 else \
        list(getattr(model, "input_names", None) or [t.name for t in model.inputs])
    outputs = ["output"] if len(model.outputs) == 1 else list(model.output_names)
    for kind, names in (("input", inputs), ("output", outputs)):
        bad = [n for n in names if not re.fullmatch(r"[A-Za-z0-9.][A-Za-z0-9_.\-]*", n)]
        if bad or len(set(names)) != len(names):
            raise ConversionError(f"{source}: {kind} names {names} must be distinct and made of letters, "
                                  f"digits, '.', '_' and '-'")
    return _Names(inputs, outputs)


def _tf_dtype(tf: Any, dtype: Any) -> Any:
    """The TensorFlow dtype of a Keras input: floats are traced as float32, integers kept."""
    dtype = tf.as_dtype(dtype)
    return dtype if dtype.is_integer else tf.float32


def _refuse_input(tensor: Any, source: str) -> None:
    """Ragged and sparse inputs have no ONNX tensor type: one line naming the input layer."""
    for kind in ("ragged", "sparse"):
        if getattr(tensor, kind, False):
            history = getattr(tensor, "_keras_history", None)
            layer = history[0] if history is not None else None
            name = getattr(layer, "name", getattr(tensor, "name", "?"))
            raise ConversionError(
                f"{source}: input layer {name!r} ({type(layer).__name__}) is {kind}; "
                f"only dense inputs can be converted to ONNX"
            )


# --- nested Keras models: layer paths ----------------------------------------------------
#
# A layer inside a nested model (functional or Sequential, any depth) is named by its path
# from the top model, "/"-separated: ``mobilenetv2_1.00_64/block_16_project``. A layer or
# model called more than once in the same graph (a siamese base) names each call ``name@k``,
# k = 0, 1, ... in the order the calls were made when the model was built (Keras' node order):
# ``base@0/conv``, ``base@1/conv``. Top-level layers called once keep their plain names.

@dataclass
class _Call:
    """One call of a layer in the (flattened) Keras graph and its path name."""

    path: str
    layer: Any


def _graph_of(layer: Any) -> Any:
    """The functional graph a nested model runs (Functional itself, a Sequential's own), else None."""
    if getattr(layer, "_nodes_by_depth", None) is not None and getattr(layer, "inputs", None):
        return layer
    inner = getattr(layer, "_functional", None)
    return inner if inner is not None and getattr(inner, "_nodes_by_depth", None) is not None else None


def _graph_nodes(graph: Any) -> list[Any]:
    """The nodes of ``graph`` that call an operation, in execution order (deepest first)."""
    by_depth = graph._nodes_by_depth  # noqa: SLF001 - Keras 3 keeps its graph there
    return [
        node for depth in sorted(by_depth, reverse=True) for node in by_depth[depth]
        if node.operation is not None and not node.is_input
    ]


def _call_names(graph: Any) -> dict[int, str]:
    """id(node) -> the name of that call within ``graph``: the layer's name, with ``@k`` if called again."""
    calls: dict[int, list[Any]] = {}
    for node in _graph_nodes(graph):
        calls.setdefault(id(node.operation), []).append(node)
    names = {}
    for nodes in calls.values():
        layer = nodes[0].operation
        order = {id(node): index for index, node in enumerate(layer._inbound_nodes)}  # noqa: SLF001
        nodes.sort(key=lambda node: order.get(id(node), len(order)))
        for k, node in enumerate(nodes):
            names[id(node)] = layer.name if len(nodes) == 1 else f"{layer.name}@{k}"
    return names


def _layer_calls(graph: Any, prefix: str) -> list[_Call]:
    """Every single-output layer call of ``graph`` and of the models nested in it, in model order:
    a nested model right before its own layers; the order of ``graph.layers``, calls of one
    layer in their ``@k`` order."""
    names = _call_names(graph)
    nodes: dict[int, list[Any]] = {}
    for node in _graph_nodes(graph):
        nodes.setdefault(id(node.operation), []).append(node)
    calls = []
    for layer in graph.layers:
        for node in sorted(nodes.get(id(layer), []), key=lambda n: names[id(n)]):
            path = prefix + names[id(node)]
            if len(node.outputs) == 1:
                calls.append(_Call(path, layer))
            inner = _graph_of(layer)
            if inner is not None:
                calls += _layer_calls(inner, path + "/")
    return calls


def _execute(graph: Any, inputs: list[Any], prefix: str, recorded: dict[str, Any]) -> list[Any]:
    """Run ``graph`` on tensors the way Keras' Functional does, in inference mode, stepping into
    nested models; every single-output call's tensor is stored in ``recorded`` by its path.
    Returns the graph's outputs, flat."""
    from keras import tree

    names = _call_names(graph)
    values = {id(x): y for x, y in zip(graph.inputs, inputs)}
    for node in _graph_nodes(graph):
        if any(id(x) not in values for x in node.input_tensors):
            continue  # not computable from the inputs, as in Keras
        layer, path = node.operation, prefix + names[id(node)]
        args, kwargs = node.arguments.fill_in(values)
        inner = _graph_of(layer)
        flat_args = tree.flatten(args)
        try:
            if inner is not None and not kwargs.get("mask") and len(flat_args) == len(inner.inputs):
                outputs = _execute(inner, flat_args, path + "/", recorded)
            else:
                if getattr(layer, "_call_has_training_arg", False):
                    kwargs["training"] = False
                outputs = tree.flatten(layer(*args, **kwargs))
        except OnnxsightError:
            raise
        except Exception as error:  # noqa: BLE001 - any failure to trace names the layer, once
            raise ConversionError(
                f"layer {path!r} ({type(layer).__name__}) cannot be traced to a TensorFlow graph: "
                f"{_first_line(error)}"
            ) from error
        if len(node.outputs) == 1:
            recorded[path] = outputs[0]
        for x, y in zip(node.outputs, outputs):
            values[id(x)] = y
    return [values[id(x)] for x in graph.outputs]


def _first_line(error: BaseException) -> str:
    """The error's first informative line (Keras opens with "Exception encountered when calling
    ..." and bolds the cause with terminal escapes)."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(error).splitlines()]
    lines = [line for line in lines if line and not line.startswith("Exception encountered when calling")]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def _keras_api(model: Any) -> Any:
    import keras

    if isinstance(model, keras.Model):
        if keras.backend.backend() != "tensorflow":
            raise ConversionError(f"converting needs the Keras TensorFlow backend, not {keras.backend.backend()!r}")
        return keras
    tf_keras = sys.modules.get("tf_keras")  # a tf_keras model implies it is imported
    if tf_keras is not None and isinstance(model, tf_keras.Model):
        return tf_keras
    raise InvalidArgument(f"expected a Keras model or a model path, got {type(model).__name__}")


def _single_output(layer: Any) -> bool:
    """Whether the layer has one output tensor (layers with several are not mapped)."""
    try:
        output = _outer_output(layer)
    except (AttributeError, ValueError):  # a layer never called in this model
        return False
    return not isinstance(output, (list, tuple, dict))


def _outer_output(layer: Any) -> Any:
    """The layer's output in the graph that calls it: a nested tf_keras model's ``output`` is its
    own inner graph's, disconnected from the outer inputs; its call's output is not."""
    nodes = getattr(layer, "inbound_nodes", None)
    if hasattr(layer, "get_output_at") and hasattr(layer, "layers") and nodes is not None and len(nodes) == 1:
        return layer.get_output_at(0)
    return layer.output


def _input_shape(shape: Any, name: str) -> tuple[int, ...]:
    dims = tuple(shape)
    if any(d is None for d in dims):
        raise ConversionError(f"the shape of input {name!r} must be known except for the batch size, got {dims}")
    return tuple(int(d) for d in dims)


def _layout(rank: int, channels_first: bool) -> str | None:
    if rank == 2:
        return "NC"
    if not 3 <= rank <= 5:
        return None
    spatial = "DHW"[5 - rank:]
    return f"NC{spatial}" if channels_first else f"N{spatial}C"


# --- TensorFlow graph to ONNX ------------------------------------------------------------

def _tf2onnx(traced: _Traced, opset: int) -> tuple[onnx.ModelProto, list[str], list[tuple[str, str, int | None]]]:
    """Convert; returns the model, the TF names of its outputs (model output first), the layers."""
    _, tf2onnx = _modules()
    graph_def, tf_inputs, tf_outputs = _frozen(traced.function)
    layers = traced.layers
    if not layers:
        scoped = _scoped_layers(graph_def)
        layers = [(name, "", None) for name, _ in scoped]
        tf_outputs += [tensor for _, tensor in scoped]
    with _quiet("tf2onnx"), _shared_walk(tf2onnx):  # it logs ops it cannot convert; they are rewritten or refused below
        model, _ = tf2onnx.convert.from_graph_def(
            graph_def, input_names=tf_inputs, output_names=tf_outputs, opset=opset,
            tensors_to_rename={tf_name: i.name for tf_name, i in zip(tf_inputs, traced.inputs)},
        )
    rewrites.replace_erfc(model)
    _refuse_foreign_ops(model, layers)
    names = [v.name for v in data_inputs(model.graph)]
    if names != [i.name for i in traced.inputs]:
        raise ConversionError(f"expected the graph inputs {[i.name for i in traced.inputs]}, the converted graph has {names}")
    return model, tf_outputs, layers


@contextmanager
def _quiet(logger_name: str):
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextmanager
def _shared_walk(tf2onnx: Any):
    """tf2onnx's ``extract_sub_graph_nodes`` walks the ancestors of each graph output anew, after
    each of its ~45 optimizer passes: with one output per layer that is quadratic (DenseNet121's
    431 layers: 90 of its 150 s). The same union of ancestor sets, from one walk with one visited
    set, for the duration of a conversion."""
    graph_class = tf2onnx.graph.Graph
    original = graph_class.extract_sub_graph_nodes

    def extract_sub_graph_nodes(self, outputs_name, input_checker=None, remove_unused_inputs=True):
        wanted = list(outputs_name)
        if not remove_unused_inputs:
            wanted += [node.output[0] for node in self.inputs]
        found: set[Any] = set()
        stack = [self.get_node_by_output(name, search_in_parent_graphs=False) for name in wanted]
        stack = [node for node in stack if node and (input_checker is None or input_checker(node) is not False)]
        while stack:
            node = stack.pop()
            if node in found:
                continue
            found.add(node)
            for name in [*node.input, *node.get_implicit_inputs()]:
                source = self.get_node_by_output(name, search_in_parent_graphs=False)
                if source and source not in found and (input_checker is None or input_checker(source) is not False):
                    stack.append(source)
        return list(found)

    graph_class.extract_sub_graph_nodes = extract_sub_graph_nodes
    try:
        yield
    finally:
        graph_class.extract_sub_graph_nodes = original


def _frozen(function: Any) -> tuple[Any, list[str], list[str]]:
    """Frozen GraphDef of ``function`` with XLA-only calls made inlinable; input/output names."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    concrete = function.get_concrete_function()
    # Captured constants (e.g. a Normalization layer's mean and variance) become Const nodes
    # here; left as captures they would be dangling graph inputs.
    frozen = convert_variables_to_constants_v2(concrete, lower_control_flow=False, aggressive_inlining=True)
    graph_def = frozen.graph.as_graph_def(add_shapes=True)
    # Keras runs grouped convolutions as jit_compile functions, which grappler never
    # inlines; without these marks tf2onnx inlines them like any other function.
    functions = graph_def.library.function
    nodes = [*graph_def.node, *(node for function_def in functions for node in function_def.node_def)]
    for attrs in [*(node.attr for node in nodes), *(function_def.attr for function_def in functions)]:
        for key in ("_XlaMustCompile", "_noinline"):
            attrs.pop(key, None)
    return graph_def, [tensor.name for tensor in frozen.inputs], [tensor.name for tensor in frozen.outputs]


def _scoped_layers(graph_def: Any) -> list[tuple[str, str]]:
    """Layers of a plain SavedModel from node name scopes: (scope, tensor read outside it)."""
    scope_of = {}
    for node in graph_def.node:
        parts = [p for p in node.name.split("/") if p != "StatefulPartitionedCall"]
        if len(parts) >= 3 and parts[0] != "Func" and node.op != "Const":
            scope_of[node.name] = parts[1]
    leaving: dict[str, str] = {}
    for node in graph_def.node:
        for name in node.input:
            if name.startswith("^"):
                continue
            source = name.split(":")[0]
            scope = scope_of.get(source)
            if scope is not None and scope_of.get(node.name) != scope:
                leaving[scope] = name if ":" in name else f"{name}:0"
    return list(leaving.items())


def _refuse_foreign_ops(model: onnx.ModelProto, layers: list[tuple[str, str, int | None]]) -> None:
    foreign = rewrites.foreign_nodes(model)
    if not foreign:
        return
    ops = sorted({node.op_type for node in foreign})
    named = sorted({_layer_of(node.name, layers) for node in foreign})
    raise ConversionError(
        f"TensorFlow ops with no ONNX conversion: {', '.join(ops)}; in layers: {', '.join(named)}"
    )


def _layer_of(node_name: str, layers: list[tuple[str, str, int | None]]) -> str:
    """The layer a TF node name belongs to, as ``path (Class)`` (Keras 3 scopes add a ``_1``
    suffix; a nested layer's scope is its own name, without the path)."""
    known: dict[str, str] = {}
    for path, kind, _ in layers:
        label = f"{path} ({kind})" if kind else path
        known.setdefault(path, label)
        known.setdefault(path.rpartition("/")[2].partition("@")[0], label)
    for part in node_name.split("/"):
        if part in known:
            return known[part]
        stem = part.rpartition("_")[0]
        if stem in known:
            return known[stem]
    return node_name


# --- naming ------------------------------------------------------------------------------

def _name_tensors(
    model: onnx.ModelProto, tf_outputs: list[str], heads: list[str], layers: list[tuple[str, str, int | None]]
) -> tuple[list[LayerRecord], dict[str, str]]:
    """Keep the model outputs (named ``heads``) as the only graph outputs and name the layer tensors.

    ``tf_outputs`` are the heads', then one per layer of ``layers`` (name, kind, params). Returns
    the layer records and, per head, its logits tensor (the head itself without a final Softmax).
    """
    graph = model.graph
    outputs = {value.name: value for value in graph.output}
    missing = [name for name in tf_outputs if name not in outputs]
    if missing:
        raise InternalError(f"tf2onnx dropped the outputs {missing[:5]}")
    finals = []
    for name, head in zip(tf_outputs, heads):
        finals.append(onnx.ValueInfoProto())
        finals[-1].CopyFrom(outputs[name])
        finals[-1].name = head
    sources = [rewrites.identity_source(graph, name) for name in tf_outputs]
    del graph.output[:]
    rewrites.drop_unused_identities(graph)
    inputs = [v.name for v in data_inputs(graph)]
    named = {name: name for name in inputs}
    for source, head in zip(sources, heads):
        if source in named:  # one tensor returned twice, or an input returned as it is
            what = "input" if named[source] in inputs else "output"
            raise ConversionError(f"output {head!r} is the {what} {named[source]!r} returned as it is; "
                                  f"each output must be a different computed tensor")
        named[source] = head
        _rename(graph, source, head)
    records = []
    for (name, kind, params), source in zip(layers, sources[len(heads):]):
        depth = name.count("/")  # Keras forbids "/" in layer names: only paths have it
        if source not in named:
            named[source] = name if _free(graph, name) else source
            _rename(graph, source, named[source])
        rewrites.route_through(graph, named[source])
        records.append(LayerRecord(name, named[source], kind, params, depth))
    rewrites.toposort(graph)
    graph.output.extend(finals)
    logits = {}
    for head in heads:
        found = rewrites.pre_softmax(graph, head)
        name = "logits" if len(heads) == 1 else f"{head}_logits"
        if found is not None and found not in named.values() and _free(graph, name):
            _rename(graph, found, name)
            found = name
        logits[head] = found or head
    return records, logits


def _free(graph: onnx.GraphProto, name: str) -> bool:
    return name not in tensor_names(graph)


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    if old != new:
        rename_tensor(graph, old, new)


def _guard_padded_max_pools(graph: onnx.GraphProto) -> None:
    """Give a MaxPool that reads a constant Pad (Keras' ZeroPadding2D before MaxPooling2D, as in
    ResNet50V2) its optional Indices output, unused. onnxruntime's Pad_Fusion otherwise folds the
    Pad into the MaxPool's own padding, which pads with -inf instead of zeros: a window over
    negative values and padding gives its largest value instead of 0 (ResNet50V2's softmax moved
    by 2.3e-3). The fusion only takes a single-output MaxPool."""
    producer = producers(graph)
    for node in graph.node:
        if node.op_type != "MaxPool" or len(node.output) != 1:
            continue
        source = producer.get(node.input[0])
        while source is not None and source.op_type == "Transpose":
            source = producer.get(source.input[0])
        mode = next((helper.get_attribute_value(a) for a in source.attribute if a.name == "mode"), b"constant") \
            if source is not None and source.op_type == "Pad" else None
        if mode in (b"constant", "constant"):
            node.output.append(f"{node.name}/onnxsight_unfused_indices")


# --- parity and writing ------------------------------------------------------------------

def _parity(model: onnx.ModelProto, traced: _Traced) -> float:
    """Max abs difference over the model outputs, Keras versus onnxruntime (CPU), on random inputs
    (uniform [0, 1) floats; integer inputs 0 or 1, valid for any embedding or lookup)."""
    rng = np.random.default_rng(PARITY_SEED)
    batch = [rng.random((PARITY_BATCH, *i.shape), dtype=np.float32) if i.dtype.is_floating
             else rng.integers(0, 2, (PARITY_BATCH, *i.shape)).astype(i.dtype.as_numpy_dtype) for i in traced.inputs]
    expected = [t.numpy() for t in traced.function(*batch)[:len(traced.outputs)]]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    actual = session.run(traced.outputs, {i.name: b for i, b in zip(traced.inputs, batch)})
    worst = 0.0
    for name, ours, theirs in zip(traced.outputs, actual, expected):
        if ours.shape != theirs.shape:
            raise ConversionError(f"ONNX output {name!r} has shape {ours.shape}, Keras' {theirs.shape}")
        worst = max(worst, float(np.max(np.abs(ours.astype(np.float64) - theirs))))
    return worst


def _write(model: onnx.ModelProto, output: Path, overwrite: bool) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    _check_output(output, overwrite)
    atomic_write(output, model.SerializeToString())
