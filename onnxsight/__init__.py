"""onnxsight: activations, gradients and attribution maps for any ONNX classifier."""

from onnxsight.engine.model import Layer, Model, load
from onnxsight.errors import OnnxsightError

__version__ = "0.1.0"

__all__ = ["Layer", "Model", "OnnxsightError", "load", "__version__"]
