"""Milliseconds per image of every peer method onnxsight offers (issue 16), at batch 1 and 64.

The seed-000 MNIST CNN (random weights: timing does not depend on training), digits from
scikit-learn, best of ``--repeats`` calls after a warm-up, in one process. Run:
.venv/bin/python benchmarks/peer_methods.py [--repeats 3] [--only lrp,rise]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

import onnxsight
from onnxsight.data.datasets import digits
from onnxsight.demo.architectures import mnist_cnn
from timing import best_of  # benchmarks/ is the script's folder

METHODS = {
    "saliency": lambda m, x: onnxsight.saliency(m, x),
    "integrated_gradients(50)": lambda m, x: onnxsight.integrated_gradients(m, x, steps=50),
    "ig captum_trapezoid(50)": lambda m, x: onnxsight.integrated_gradients(m, x, steps=50, method="captum_trapezoid"),
    "gradcam": lambda m, x: onnxsight.gradcam(m, x),
    "gradcam pytorch-grad-cam gradcam++": lambda m, x: onnxsight.gradcam(m, x, variant="gradcam++",
                                                                         convention="pytorch-grad-cam"),
    "eigencam": lambda m, x: onnxsight.gradcam(m, x, variant="eigencam"),
    "eigengradcam": lambda m, x: onnxsight.gradcam(m, x, variant="eigengradcam"),
    "gradcamelementwise": lambda m, x: onnxsight.gradcam(m, x, variant="gradcamelementwise"),
    "ablationcam": lambda m, x: onnxsight.gradcam(m, x, variant="ablationcam"),
    "kpcacam": lambda m, x: onnxsight.gradcam(m, x, variant="kpcacam"),
    "fullgrad": lambda m, x: onnxsight.gradcam(m, x, variant="fullgrad"),
    "gradcam aug_smooth": lambda m, x: onnxsight.gradcam(m, x, aug_smooth=True),
    "occlusion cropped": lambda m, x: onnxsight.occlusion(m, x, last_window="cropped"),
    "gradient_shap(5)": lambda m, x: onnxsight.gradient_shap(m, x, samples=5),
    "layer_integrated_gradients(50)": lambda m, x: onnxsight.layer_integrated_gradients(m, x, layer="conv2d_2"),
    "layer_conductance(50)": lambda m, x: onnxsight.layer_conductance(m, x, layer="conv2d_2"),
    "layer_gradient_x_activation": lambda m, x: onnxsight.layer_gradient_x_activation(m, x, layer="conv2d_2"),
    "neuron_gradient": lambda m, x: onnxsight.neuron_gradient(m, x, layer="conv2d_2", neuron=5),
    "neuron_integrated_gradients(50)": lambda m, x: onnxsight.neuron_integrated_gradients(m, x, layer="conv2d_2",
                                                                                          neuron=5),
    **{f"lrp {rule}": (lambda m, x, rule=rule: onnxsight.lrp(m, x, rule=rule))
       for rule in ("epsilon", "zplus", "alphabeta", "gamma", "flat", "wsquare", "zbox", "epsilon-plus",
                    "epsilon-plus-flat", "epsilon-gamma-box", "deeptaylor")},
    "deeplift": lambda m, x: onnxsight.deeplift(m, x),
    "deeplift_shap(8 references)": lambda m, x: onnxsight.deeplift_shap(m, x, baselines=REFERENCES),
    "feature_ablation(grid 49)": lambda m, x: onnxsight.feature_ablation(m, x),
    "shapley_value_sampling(25)": lambda m, x: onnxsight.shapley_value_sampling(m, x),
    "shapley_values(9 features)": lambda m, x: onnxsight.shapley_values(m, x),
    "kernel_shap(500)": lambda m, x: onnxsight.kernel_shap(m, x),
    "lime(500)": lambda m, x: onnxsight.lime(m, x),
    "rise(4000)": lambda m, x: onnxsight.rise(m, x),
}
REFERENCES = np.random.default_rng(0).random((8, 28, 28, 1), dtype=np.float32) * 0.2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated method names (default: all)")
    args = parser.parse_args()
    chosen = [name for name in METHODS if not args.only or name in args.only.split(",")]
    folder = Path(tempfile.mkdtemp())
    onnxsight.convert_keras(mnist_cnn(), folder / "cnn.onnx")
    model = onnxsight.load(folder / "cnn.onnx", device="cpu")
    images = digits().x_test[:64]
    results = {}
    for name in chosen:
        method = METHODS[name]
        results[name] = {f"batch {n} ms/image": round(1000 * best_of(lambda: method(model, images[:n]), args.repeats) / n, 3)
                         for n in (1, 64)}
        print(json.dumps({name: results[name]}), flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
