"""onnxsight: activations, gradients and attribution maps for any ONNX classifier."""

__version__ = "0.1.0"
