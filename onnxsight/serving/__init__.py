"""Serving explanations: explainer ONNX models, Triton repository entries, an Open Inference Protocol server.

``server`` needs the ``serve`` extra (FastAPI, uvicorn) and is imported only where it is used.
"""

from onnxsight.serving.explainer import METHODS, export_explainer

__all__ = ["METHODS", "export_explainer"]
