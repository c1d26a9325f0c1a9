"""Every explainer method on one model: export time, session start, ms per image at batch 8 and the
largest difference of its heatmap from the library's (both min-max scaled per image).

Default model: the seed-000 CNN (untrained, 28x28x1); ``--mobilenet`` uses keras' MobileNetV2 at
96x96x3, weights=None, 10 classes; ``--model`` any ONNX classifier. Images are uniform noise in [0, 1].
Each method's explainer runs ``--repeats`` times (after a warm-up) on one batch; the median is
reported, and the library is timed on the same batch the same way, interleaved. Output: one JSON
line per method. Memory: the SmoothGrad and IG explainers hold batch × samples (steps) rows at once;
occlusion runs its windows in Loop steps of about 256 MB of activations per image (``--window`` and
``--stride`` change its windows, default the library's). Run: .venv/bin/python benchmarks/explainer_methods.py [--mobilenet] [--methods ig ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

import onnxsight
from onnxsight.kernels.colors import normalize_each
from onnxsight.serving.explainer import ALL_METHODS, RELEVANCE_METHODS, export_explainer

# method -> the library's heatmap with the explainer's default options
LIBRARY = {
    "saliency": lambda m, x: onnxsight.saliency(m, x, normalize=True),
    "guided": lambda m, x: onnxsight.saliency(m, x, modifier="guided", normalize=True),
    "gradient-x-input": lambda m, x: normalize_each(onnxsight.saliency(m, x, times_input=True, absolute=False,
                                                                        reduce="sum")),
    **{v: (lambda v: lambda m, x: onnxsight.gradcam(m, x, variant=v))(v)
       for v in ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam")},
    "guided-gradcam": lambda m, x: onnxsight.gradcam(m, x, guided=True),
    "smoothgrad": lambda m, x: onnxsight.saliency(m, x, normalize=True, smooth_samples=20),
    "ig": lambda m, x: normalize_each(onnxsight.integrated_gradients(m, x, reduce="sum")),
    "occlusion": lambda m, x, **window: normalize_each(onnxsight.occlusion(m, x, **window)),
    "deeplift": lambda m, x: normalize_each(onnxsight.deeplift(m, x, reduce="sum")),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="ONNX classifier (default: the seed-000 CNN, untrained)")
    parser.add_argument("--mobilenet", action="store_true", help="keras MobileNetV2 96x96, weights=None")
    parser.add_argument("--methods", nargs="*", default=[m for m in ALL_METHODS if m not in RELEVANCE_METHODS])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--window", type=int, help="occlusion's window (default: the library's)")
    parser.add_argument("--stride", type=int, help="occlusion's stride (default: the library's)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        model = onnxsight.load(args.model or _keras_model(args.mobilenet, Path(folder)), device="cpu")
        shape = [args.batch if d is None else d for d in model.input_shape]
        x = np.random.default_rng(0).uniform(0, 1, shape).astype(np.float32)
        for method in args.methods:
            window = {"window": args.window, "stride": args.stride} if method == "occlusion" else {}
            print(json.dumps(_measure(model, method, x, args.repeats, window)), flush=True)


def _keras_model(mobilenet: bool, folder: Path) -> Path:
    if mobilenet:
        import keras

        keras_model = keras.applications.MobileNetV2(input_shape=(96, 96, 3), weights=None, classes=10)
    else:
        from onnxsight.demo.architectures import mnist_cnn

        keras_model = mnist_cnn()
    return onnxsight.convert_keras(keras_model, folder / "model.onnx")


def _measure(model, method: str, x: np.ndarray, repeats: int, options: dict) -> dict:
    start = time.perf_counter()
    proto = export_explainer(model, method, **options)
    exported = time.perf_counter()
    quiet = ort.SessionOptions()
    quiet.log_severity_level = 3
    session = ort.InferenceSession(proto.SerializeToString(), quiet, providers=["CPUExecutionProvider"])
    opened = time.perf_counter()
    run = lambda: session.run(["heatmap"], {"image": x})[0]  # noqa: E731
    library = lambda: LIBRARY[method](model, x, **options)  # noqa: E731
    heatmap, want = run(), library()  # warm-up
    graph_times, library_times = [], []
    for _ in range(repeats):  # interleaved, so that load on the machine hits both alike
        for fn, times in ((run, graph_times), (library, library_times)):
            begin = time.perf_counter()
            fn()
            times.append(time.perf_counter() - begin)
    per_image = 1000 / len(x)
    return {"method": method, "export_s": round(exported - start, 2), "session_s": round(opened - exported, 2),
            "graph_ms_per_image": round(statistics.median(graph_times) * per_image, 2),
            "library_ms_per_image": round(statistics.median(library_times) * per_image, 2),
            "max_abs_difference": float(np.abs(heatmap - want).max()), "batch": len(x), **options}


if __name__ == "__main__":
    main()
