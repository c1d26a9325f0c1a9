"""Keras models to ONNX via tf2onnx, with the layer map stored in the model."""
