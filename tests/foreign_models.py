"""Small ONNX classifiers written with onnx.helper, shaped like PyTorch and model-zoo exports."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxsight.engine.graph import runtime_compatible


def nchw_cnn(batch: int | str = "N", weights_as_inputs: bool = False, seed: int = 0) -> onnx.ModelProto:
    """Conv(3->4, 3x3, pad 1) -> Relu -> MaxPool 2 -> Flatten -> Gemm(64->5) -> Softmax, input (batch, 3, 8, 8).

    ``weights_as_inputs`` lists the initializers as graph inputs too, like old model-zoo files;
    an int ``batch`` fixes the batch dimension with a Reshape to it, like old exports.
    """
    rng = np.random.default_rng(seed)
    weights = {
        "conv_w": rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32),
        "conv_b": rng.normal(0, 0.1, 4).astype(np.float32),
        "fc_w": rng.normal(0, 0.3, (5, 64)).astype(np.float32),
        "fc_b": rng.normal(0, 0.1, 5).astype(np.float32),
        "flat_shape": np.array([batch if isinstance(batch, int) else -1, 64], np.int64),
    }
    nodes = [
        helper.make_node("Conv", ["data", "conv_w", "conv_b"], ["conv1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv1"], ["relu1"], name="relu1"),
        helper.make_node("MaxPool", ["relu1"], ["pool1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Reshape", ["pool1", "flat_shape"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["fc"], name="fc", transB=1),
        helper.make_node("Softmax", ["fc"], ["prob"], name="softmax", axis=1),
    ]
    initializers = [numpy_helper.from_array(v, k) for k, v in weights.items()]
    inputs = [helper.make_tensor_value_info("data", TensorProto.FLOAT, [batch, 3, 8, 8])]
    if weights_as_inputs:
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in initializers]
    graph = helper.make_graph(
        nodes, "nchw_cnn", inputs, [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [batch, 5])], initializers
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    return runtime_compatible(model)


def reference_forward(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every tensor of ``nchw_cnn`` computed in numpy, independently of onnxruntime."""
    w = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))  # N,C,8,8,3,3
    conv = np.einsum("nchwij,ocij->nohw", windows, w["conv_w"]) + w["conv_b"][None, :, None, None]
    relu = np.maximum(conv, 0)
    pool = relu.reshape(len(x), 4, 4, 2, 4, 2).max(axis=(3, 5))
    fc = pool.reshape(len(x), -1) @ w["fc_w"].T + w["fc_b"]
    e = np.exp(fc - fc.max(axis=1, keepdims=True))
    return {"conv1": conv, "relu1": relu, "pool1": pool, "fc": fc, "prob": e / e.sum(axis=1, keepdims=True)}
