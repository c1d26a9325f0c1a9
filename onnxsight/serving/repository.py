"""The models a server offers, loaded once at start-up from one path and never from a request.

A path is an ONNX file or a folder of ``.onnx`` files (not searched recursively). Each classifier
``<stem>.onnx`` is served as ``<stem>`` (its own inputs and outputs) and, per explainer method,
as ``<stem>.<method>`` (e.g. ``mnist_cnn.gradcam``), built with :func:`export_explainer`. A file
that already is an explainer (written by ``onnxsight export``) is served as it is, as ``<stem>``.
Each served model has a dynamic batching policy: the server's default, or its entry in a
``batching.json`` next to the models (see :func:`onnxsight.serving.batching.read_policies`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from onnxsight.engine.dynamic_batch import with_dynamic_batch
from onnxsight.engine.model import load
from onnxsight.engine.session import Runtime, first_line, open_session
from onnxsight.errors import InvalidArgument, ModelFileError
from onnxsight.serving.batching import BatchPolicy, read_policies
from onnxsight.serving.explainer import ALL_METHODS, CAM_METHODS, EXPLAINER, METHODS, TARGET, export_explainer
from onnxsight.serving.protocol import ONNX_TYPES, ProtocolError, TensorSpec

VERSION = "1"
PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "openvino": "openvino"}  # Triton's platform names, by runtime


@dataclass
class ServedModel:
    """One named model: a session (thread-safe ``run``), its protocol tensors and batching policy."""

    name: str
    session: object  # an onnxruntime or OpenVINO session (engine/session.py)
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    explainer: dict | None = None  # the explainer's description (metadata), None for a plain model
    batching: BatchPolicy = BatchPolicy()
    platform: str = PLATFORMS["onnxruntime"]  # the runtime that serves it, as Triton names it

    @property
    def stackable(self) -> bool:
        """Whether requests may be stacked into one run: every tensor has a dynamic batch axis (a row's answer never
        depends on the other rows: SmoothGrad gives every image the same unit noise, wherever it sits)."""
        return all(spec.shape and spec.shape[0] == -1 for spec in self.inputs + self.outputs)

    def metadata(self) -> dict:
        """The protocol's model metadata response."""
        return {"name": self.name, "versions": [VERSION], "platform": self.platform,
                "inputs": [s.metadata() for s in self.inputs], "outputs": [s.metadata() for s in self.outputs]}

    def check(self, inputs: dict[str, np.ndarray]) -> None:
        """What the tensor specs cannot say: an explainer's target count and class range."""
        if self.explainer is None or TARGET not in inputs:
            return
        target, rows = inputs[TARGET], len(next(a for n, a in inputs.items() if n != TARGET))
        if len(target) not in (1, rows):
            raise ProtocolError(400, f"input 'target' has {len(target)} values for {rows} images; give 1 or {rows}")
        classes = self.explainer.get("classes")
        if classes is not None and (target >= classes).any():
            raise ProtocolError(400, f"input 'target' has a class >= {classes}; the model has {classes} classes "
                                     "(a negative target explains the predicted class)")

    def run(self, inputs: dict[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """Runs the session; the runtime's failure becomes an InvalidArgument naming the model."""
        try:
            results = self.session.run(list(outputs), inputs)
        except Exception as error:  # noqa: BLE001 - the runtimes raise several unrelated types
            raise InvalidArgument(f"inference failed on model {self.name!r}: {first_line(error)}") from error
        return dict(zip(outputs, results))


def load_models(path: str | Path, methods: Sequence[str] = METHODS, layer: str | None = None,
                device: str = "cpu", samples: int = 20, noise: float = 0.15, seed: int = 0,
                batching: BatchPolicy = BatchPolicy()) -> dict[str, ServedModel]:
    """Every model under ``path`` and its explainer variants, by served name; each batched by ``batching`` unless
    ``batching.json`` in the models' folder says otherwise."""
    for method in methods:
        if method not in ALL_METHODS:
            raise InvalidArgument(f"unknown explainer method {method!r}; choose from {', '.join(ALL_METHODS)}")
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.glob("*.onnx") if p.is_file())
        if not files:
            raise ModelFileError(f"no .onnx files in {path}")
    elif path.is_file():
        files = [path]
    else:
        raise ModelFileError(f"model path not found: {path}")
    served: dict[str, ServedModel] = {}
    for file in files:
        model = load(file, device=device)
        described = _explainer_description(model.proto)
        protos = {file.stem: (model.proto, described)}
        if described is None:
            explained = with_dynamic_batch(model) if methods else model  # once, not per method
            for method in methods:
                cam_layer = layer if method in (*CAM_METHODS, "guided-gradcam") else None
                explainer = export_explainer(explained, method, layer=cam_layer, samples=samples, noise=noise, seed=seed)
                protos[f"{file.stem}.{method}"] = (explainer, _explainer_description(explainer))
        for name, (proto, description) in protos.items():
            if name in served:
                raise ModelFileError(f"two models would be served as {name!r}; rename one of the files")
            served[name] = _served(name, proto, description, model.runtime, str(file))
    policies = read_policies(path if path.is_dir() else path.parent, list(served), batching)
    for name, model in served.items():
        model.batching = policies[name]
    return served


def _served(name: str, proto: onnx.ModelProto, description: dict | None, runtime: Runtime,
            source: str) -> ServedModel:
    session = open_session(proto, runtime, source)
    optional = set(description.get("optional_inputs", [])) if description else set()
    inputs = [_spec(v) for v in session.get_inputs()]
    inputs += [_spec(v, optional=True) for v in session.get_overridable_initializers() if v.name in optional]
    return ServedModel(name, session, inputs, [_spec(v) for v in session.get_outputs()], description,
                       platform=PLATFORMS[runtime.name])


def _spec(value, optional: bool = False) -> TensorSpec:
    if value.type not in ONNX_TYPES:
        raise ModelFileError(f"tensor {value.name!r} has type {value.type}, which this server does not carry")
    shape = tuple(d if isinstance(d, int) else -1 for d in value.shape)
    return TensorSpec(value.name, ONNX_TYPES[value.type], shape, optional)


def _explainer_description(proto: onnx.ModelProto) -> dict | None:
    for prop in proto.metadata_props:
        if prop.key == EXPLAINER:
            return json.loads(prop.value)
    return None
