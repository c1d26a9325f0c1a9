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


def torch_style_resnet(exporter: str, seed: int = 0) -> onnx.ModelProto:
    """A one-block ResNet (conv1, relu, layer1.0 = conv1, relu, conv2, add, relu again, avgpool, fc)
    named the way ``torch.onnx.export`` names it: ``exporter="torchscript"`` writes scopes into
    node names (``/layer1/layer1.0/relu_1/Relu``), ``"dynamo"`` names nodes ``node_relu_1`` and
    writes ``pkg.torch.onnx.name_scopes``/``class_hierarchy`` metadata (one scope for both calls
    of ``layer1.0.relu``). Input (batch, 3, 8, 8), 5 logits."""
    rng = np.random.default_rng(seed)
    weights = {
        "conv1.weight": rng.normal(0, 0.4, (4, 3, 3, 3)), "layer1.0.conv1.weight": rng.normal(0, 0.4, (4, 4, 3, 3)),
        "layer1.0.conv2.weight": rng.normal(0, 0.4, (4, 4, 3, 3)), "fc.weight": rng.normal(0, 0.4, (5, 4)),
        "fc.bias": rng.normal(0, 0.1, 5),
    }
    main, block, relu, conv = "__main__.Net", "__main__.BasicBlock", "torch.nn.modules.activation.ReLU", "torch.nn.modules.conv.Conv2d"
    # (op, inputs, output, TorchScript name, dynamo scopes [(module, class)...], FX node name, attributes)
    rows = [
        ("Conv", ["x", "conv1.weight"], "c1", "/conv1/Conv", [("conv1", conv)], "conv2d", {"pads": [1, 1, 1, 1]}),
        ("Relu", ["c1"], "r1", "/relu/Relu", [("relu", relu)], "relu", {}),
        ("Conv", ["r1", "layer1.0.conv1.weight"], "c2", "/layer1/layer1.0/conv1/Conv",
         [("layer1", "torch.nn.modules.container.Sequential"), ("layer1.0", block), ("layer1.0.conv1", conv)], "conv2d_1",
         {"pads": [1, 1, 1, 1]}),
        ("Relu", ["c2"], "r2", "/layer1/layer1.0/relu/Relu",
         [("layer1", ""), ("layer1.0", block), ("layer1.0.relu", relu)], "relu_1", {}),
        ("Conv", ["r2", "layer1.0.conv2.weight"], "c3", "/layer1/layer1.0/conv2/Conv",
         [("layer1", ""), ("layer1.0", block), ("layer1.0.conv2", conv)], "conv2d_2", {"pads": [1, 1, 1, 1]}),
        ("Add", ["c3", "r1"], "a", "/layer1/layer1.0/Add", [("layer1", ""), ("layer1.0", block)], "add", {}),
        ("Relu", ["a"], "r3", "/layer1/layer1.0/relu_1/Relu",
         [("layer1", ""), ("layer1.0", block), ("layer1.0.relu", relu)], "relu_2", {}),
        ("GlobalAveragePool", ["r3"], "p", "/avgpool/GlobalAveragePool",
         [("avgpool", "torch.nn.modules.pooling.AdaptiveAvgPool2d")], "mean", {}),
        ("Flatten", ["p"], "f", "/Flatten", [], "view", {}),
        ("Gemm", ["f", "fc.weight", "fc.bias"], "logits", "/fc/Gemm", [("fc", "torch.nn.modules.linear.Linear")], "linear",
         {"transB": 1}),
    ]
    nodes = []
    for op, inputs, output, script_name, scopes, fx_name, attrs in rows:
        if exporter == "torchscript":
            nodes.append(helper.make_node(op, inputs, [f"{script_name}_output_0" if output != "logits" else output],
                                          name=script_name, **attrs))
            continue
        node = helper.make_node(op, inputs, [output], name=f"node_{fx_name}", **attrs)
        names = ["", *(m for m, _ in scopes), fx_name]
        classes = [main, *(c or "torch.nn.modules.container.Sequential" for _, c in scopes), f"aten.{op.lower()}.default"]
        node.metadata_props.add(key="pkg.torch.onnx.name_scopes", value=repr(names))
        node.metadata_props.add(key="pkg.torch.onnx.class_hierarchy", value=repr(classes))
        nodes.append(node)
    if exporter == "torchscript":  # inputs are the previous nodes' outputs, renamed as TorchScript names them
        renamed = {out: node.output[0] for (_, _, out, *_), node in zip(rows, nodes)}
        for node in nodes:
            node.input[:] = [renamed.get(name, name) for name in node.input]
    graph = helper.make_graph(
        nodes, "torch_style_resnet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 5])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="pytorch")
    return runtime_compatible(model)


def photo_cnn(size: int = 224, classes: int = 5, seed: int = 0) -> onnx.ModelProto:
    """A small photo-sized classifier with He-initialised random weights, input (N, 3, size, size):
    Conv(3->8, 7x7, stride 4) -> Relu -> Conv(8->32, 3x3, stride 2) -> Relu -> GlobalAveragePool
    -> Flatten -> Gemm(32->classes) -> Softmax."""
    rng = np.random.default_rng(seed)
    weights = {
        "conv1_w": rng.normal(0, np.sqrt(2 / 147), (8, 3, 7, 7)).astype(np.float32),
        "conv1_b": np.zeros(8, np.float32),
        "conv2_w": rng.normal(0, np.sqrt(2 / 72), (32, 8, 3, 3)).astype(np.float32),
        "conv2_b": np.zeros(32, np.float32),
        "fc_w": rng.normal(0, np.sqrt(1 / 32), (classes, 32)).astype(np.float32),
        "fc_b": np.zeros(classes, np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["data", "conv1_w", "conv1_b"], ["conv1"], name="conv1", strides=[4, 4], pads=[3, 3, 3, 3]),
        helper.make_node("Relu", ["conv1"], ["relu1"], name="relu1"),
        helper.make_node("Conv", ["relu1", "conv2_w", "conv2_b"], ["conv2"], name="conv2", strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv2"], ["relu2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["relu2"], ["pool"], name="pool"),
        helper.make_node("Flatten", ["pool"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["fc"], name="fc", transB=1),
        helper.make_node("Softmax", ["fc"], ["prob"], name="softmax", axis=1),
    ]
    graph = helper.make_graph(
        nodes, "photo_cnn", [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    return runtime_compatible(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))


def resnet_like_224(classes: int = 1000, width: int = 8, seed: int = 0) -> onnx.ModelProto:
    """An ImageNet-shaped ResNet with random weights, narrow to run fast: input (N, 3, 224, 224);
    conv 7×7/2, max-pool 3×3/2, a residual block, conv 3×3/2 to 2·width channels, a second block,
    global average pool, Flatten, Gemm to ``classes`` logits, Softmax."""
    rng = np.random.default_rng(seed)
    weights, nodes = {}, []

    def conv(name: str, source: str, cin: int, cout: int, kernel: int, stride: int = 1) -> str:
        weights[f"{name}.weight"] = rng.normal(0, np.sqrt(2 / (cin * kernel * kernel)), (cout, cin, kernel, kernel))
        weights[f"{name}.bias"] = np.zeros(cout)
        nodes.append(helper.make_node("Conv", [source, f"{name}.weight", f"{name}.bias"], [name], name=name,
                                      pads=[kernel // 2] * 4, strides=[stride, stride]))
        return name

    def relu(name: str, source: str) -> str:
        nodes.append(helper.make_node("Relu", [source], [name], name=name))
        return name

    def block(name: str, source: str, channels: int) -> str:
        inner = conv(f"{name}.conv2", relu(f"{name}.relu1", conv(f"{name}.conv1", source, channels, channels, 3)),
                     channels, channels, 3)
        nodes.append(helper.make_node("Add", [inner, source], [f"{name}.add"], name=f"{name}.add"))
        return relu(f"{name}.relu2", f"{name}.add")

    stem = relu("relu", conv("conv1", "x", 3, width, 7, 2))
    nodes.append(helper.make_node("MaxPool", [stem], ["maxpool"], name="maxpool", kernel_shape=[3, 3], strides=[2, 2],
                                  pads=[1, 1, 1, 1]))
    trunk = block("layer1", "maxpool", width)
    trunk = block("layer2", relu("down.relu", conv("down", trunk, width, 2 * width, 3, 2)), 2 * width)
    weights["fc.weight"] = rng.normal(0, np.sqrt(1 / (2 * width)), (classes, 2 * width))
    weights["fc.bias"] = np.zeros(classes)
    nodes += [helper.make_node("GlobalAveragePool", [trunk], ["avgpool"], name="avgpool"),
              helper.make_node("Flatten", ["avgpool"], ["flatten"], name="flatten"),
              helper.make_node("Gemm", ["flatten", "fc.weight", "fc.bias"], ["fc"], name="fc", transB=1),
              helper.make_node("Softmax", ["fc"], ["prob"], name="softmax", axis=1)]
    graph = helper.make_graph(
        nodes, "resnet_like_224", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()],
    )
    return runtime_compatible(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
