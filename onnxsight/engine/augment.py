"""Augment a model with activations and gradient outputs, addressed by layer names."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import onnx

from onnxsight.engine.autodiff import Modifier, build_vjp
from onnxsight.engine.graph import ancestors
from onnxsight.engine.metadata import AUGMENTED, set_props
from onnxsight.errors import UnsupportedOp

if TYPE_CHECKING:
    from onnxsight.engine.model import Model

MODIFIERS = (None, "guided", "deconv")


@dataclass(frozen=True)
class Augmented:
    """An augmented model and, by the names the caller used, its added inputs and outputs."""

    model: onnx.ModelProto
    of: str  # tensor differentiated
    cotangent: str  # input fed with the cotangent of ``of``
    gradients: dict[str, str]  # wrt name -> output tensor
    activations: dict[str, str]  # activation name -> output tensor


def augment_model(
    model: "Model",
    of: str = "logits",
    wrt: Sequence[str] = ("input",),
    modifier: str | Modifier | None = None,
    activations: Sequence[str] = (),
) -> Augmented:
    """The model plus a cotangent input for ``of`` and outputs ``d(of · cotangent)/d(w)`` per ``w``.

    Names are layer names, "input", "output", "logits" or tensor names. The augmented model
    documents its inputs and outputs in ``metadata_props`` (key ``onnxsight.augmented``).
    """
    wrt = [wrt] if isinstance(wrt, str) else list(wrt)
    activations = [activations] if isinstance(activations, str) else list(activations)
    of_tensor = model.tensor(of)
    wrt_tensors = {name: model.tensor(name) for name in wrt}
    kept = {name: model.tensor(name) for name in activations}
    try:
        vjp = build_vjp(model.proto, of_tensor, list(wrt_tensors.values()), modifier=modifier,
                        keep_outputs=list(kept.values()), infos=model.values)
    except UnsupportedOp as error:
        if not error.upstream:
            raise
        reachable = ancestors(model.proto.graph, of_tensor) - error.upstream
        still = [layer.name for layer in model.layers if layer.tensor in reachable]
        raise UnsupportedOp(f"{error}; layers still differentiable: {', '.join(still) or 'none'}",
                            error.upstream) from error
    gradients = {name: vjp.gradients[tensor] for name, tensor in wrt_tensors.items()}
    description = {
        "of": of, "of_tensor": of_tensor, "cotangent_input": vjp.cotangent,
        "modifier": None if modifier is None else str(modifier),
        "data_input": model.input_name, "gradients": gradients, "activations": kept,
        "meaning": "each gradient output is d(sum(of * cotangent))/d(wrt), in wrt's own layout",
    }
    set_props(vjp.model, {AUGMENTED: json.dumps(description)})
    return Augmented(vjp.model, of_tensor, vjp.cotangent, gradients, kept)


def augment(
    model: "Model",
    of: str = "logits",
    wrt: Sequence[str] = ("input",),
    modifier: str | Modifier | None = None,
    activations: Sequence[str] = (),
) -> onnx.ModelProto:
    """A new standalone ONNX model with the gradient outputs (see ``augment_model``)."""
    return augment_model(model, of, wrt, modifier, activations).model
