"""Keras models to ONNX via tf2onnx, with the layer map stored in the model."""

from onnxsight.converters.keras import Conversion, convert_keras, convert_keras_model

__all__ = ["Conversion", "convert_keras", "convert_keras_model"]
