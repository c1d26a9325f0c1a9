"""onnxsight: activations, gradients and attribution maps for any ONNX classifier."""

from onnxsight.engine.augment import augment
from onnxsight.engine.gradcheck import GradcheckReport, gradcheck
from onnxsight.engine.model import Layer, Model, load
from onnxsight.engine.targets import Region
from onnxsight.errors import OnnxsightError
from onnxsight.methods.cam import gradcam
from onnxsight.methods.dataset import class_saliency, embedding, top_k_images
from onnxsight.methods.deeplift import deeplift, deeplift_gap, deeplift_shap, deeplift_shap_gap
from onnxsight.methods.feature_ablation import feature_ablation
from onnxsight.methods.gradient_shap import gradient_shap
from onnxsight.methods.integrated_gradients import completeness_gap, integrated_gradients
from onnxsight.methods.layer_attribution import (
    layer_conductance, layer_gradient_x_activation, layer_integrated_gradients, neuron_gradient,
    neuron_integrated_gradients,
)
from onnxsight.methods.lime import kernel_shap, lime
from onnxsight.methods.maximize import Maximization, maximize
from onnxsight.methods.occlusion import occlusion
from onnxsight.methods.relevance import lrp
from onnxsight.methods.rise import rise
from onnxsight.methods.rollout import attention_rollout
from onnxsight.methods.saliency import saliency
from onnxsight.methods.shapley import shapley_value_sampling, shapley_values
from onnxsight.methods.superpixels import superpixels
from onnxsight.report import ReportData, ReportOptions, write_report
from onnxsight.scale.run import BatchResult, run_batch
from onnxsight.serving.explainer import export_explainer

__version__ = "0.1.0"


def convert_keras(model_or_path, output_path, **options):
    """Convert a Keras model (object, .keras, .h5 or SavedModel folder) to ONNX; returns the path."""
    from onnxsight.converters.keras import convert_keras as convert

    return convert(model_or_path, output_path, **options)


__all__ = [
    "BatchResult", "GradcheckReport", "Layer", "Maximization", "Model", "OnnxsightError", "ReportData",
    "ReportOptions", "Region", "attention_rollout", "augment", "class_saliency", "completeness_gap", "convert_keras", "embedding",
    "deeplift", "deeplift_gap", "deeplift_shap", "deeplift_shap_gap",
    "export_explainer", "gradcam", "gradcheck", "integrated_gradients", "load", "maximize", "occlusion",
    "run_batch", "saliency", "top_k_images", "write_report", "__version__",
    "gradient_shap", "layer_conductance", "layer_gradient_x_activation", "layer_integrated_gradients",
    "neuron_gradient", "neuron_integrated_gradients",
    "feature_ablation", "kernel_shap", "lime", "rise", "shapley_value_sampling", "shapley_values", "superpixels",
    "lrp",
]
