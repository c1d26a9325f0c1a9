"""Attribution methods: plain functions ``(model, x, target=..., **options) -> array``."""

from onnxsight.methods.cam import VARIANTS as CAM_VARIANTS
from onnxsight.methods.cam import default_cam_layer, gradcam
from onnxsight.methods.dataset import class_saliency, embedding, top_k_images
from onnxsight.methods.integrated_gradients import completeness_gap, integrated_gradients
from onnxsight.methods.occlusion import occlusion
from onnxsight.methods.saliency import saliency

__all__ = [
    "CAM_VARIANTS", "class_saliency", "completeness_gap", "default_cam_layer", "embedding", "gradcam",
    "integrated_gradients", "occlusion", "saliency", "top_k_images",
]
