"""The ``metadata_props`` onnxsight writes into a model and reads back."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import onnx

LAYERS = "onnxsight.layers"          # JSON list of LayerRecord fields in model order (nested: by path)
LOGITS = "onnxsight.logits"          # tensor name of the pre-softmax logits
INPUT_LAYOUT = "onnxsight.input_layout"  # "NHWC" | "NCHW" | "NC" ...
SOURCE = "onnxsight.source"          # what the model was converted from
AUGMENTED = "onnxsight.augmented"    # JSON description of added inputs/outputs
HEADS = "onnxsight.heads"            # several outputs: JSON {output tensor: its logits tensor}
INPUT_LAYOUTS = "onnxsight.input_layouts"  # several inputs: JSON {input name: layout}


@dataclass
class LayerRecord:
    """One named layer as the training framework called it."""

    name: str
    tensor: str
    kind: str = ""  # the framework's layer class, e.g. "Conv2D"
    params: int | None = None  # the framework's own parameter count (Keras' summary())
    depth: int = 0  # nesting: 0 for the model's own layers, 1 inside a nested model, ...


@dataclass
class ModelMetadata:
    """Everything onnxsight keeps in ``metadata_props``."""

    layers: list[LayerRecord] = field(default_factory=list)
    logits: str | None = None
    input_layout: str | None = None
    source: str | None = None
    heads: dict[str, str] = field(default_factory=dict)
    input_layouts: dict[str, str] = field(default_factory=dict)

    @classmethod
    def read(cls, model: onnx.ModelProto) -> "ModelMetadata":
        props = {p.key: p.value for p in model.metadata_props}
        layers = [LayerRecord(**entry) for entry in json.loads(props.get(LAYERS, "[]"))]
        return cls(layers, props.get(LOGITS), props.get(INPUT_LAYOUT), props.get(SOURCE),
                   json.loads(props.get(HEADS, "{}")), json.loads(props.get(INPUT_LAYOUTS, "{}")))

    def write(self, model: onnx.ModelProto) -> None:
        """Store into ``model.metadata_props`` in place, replacing earlier onnxsight keys."""
        values = {
            LAYERS: json.dumps([asdict(layer) for layer in self.layers]),
            LOGITS: self.logits,
            INPUT_LAYOUT: self.input_layout,
            SOURCE: self.source,
            HEADS: json.dumps(self.heads) if self.heads else None,
            INPUT_LAYOUTS: json.dumps(self.input_layouts) if self.input_layouts else None,
        }
        set_props(model, {k: v for k, v in values.items() if v is not None})


def set_props(model: onnx.ModelProto, values: dict[str, str]) -> None:
    """Set metadata properties in place, replacing existing keys."""
    kept = [p for p in model.metadata_props if p.key not in values]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in values.items():
        model.metadata_props.add(key=key, value=value)
