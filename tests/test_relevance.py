"""LRP / Deep Taylor relevance against an independent float64 numpy reference (explicit
contributions x_i·w_ij per output neuron, written from the rules' definitions in Zennit's
documentation), conservation, LRP-0 = Gradient×Input, the strict errors and the explainer."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxsight
from onnxsight.errors import InvalidArgument, UnsupportedOp
from onnxsight.methods.relevance import RULES, lrp

STABILIZER = 1e-6
# float32 relevance against the float64 reference, relative to the map's largest magnitude
TOLERANCE = 2e-5
# the residual CNN's Add/BN shares divide by pre-activations that nearly cancel: with ε = 1e-6 the
# float32 difference is 2.1e-5 (2.2e-6 at ε = 1e-3, 6.6e-7 at 1e-2), so the reference is conditioned, not wrong
RESIDUAL_TOLERANCE = 1e-4


def _keras_model(name: str, seed: int, biases: bool):
    """A seed architecture with random weights; with ``biases``, random biases and batch-norm statistics."""
    import keras

    from onnxsight.demo import architectures

    keras.utils.set_random_seed(seed)
    model = getattr(architectures, name)()
    if biases:
        rng = np.random.default_rng(seed)
        for layer in model.layers:
            weights = layer.get_weights()
            if not weights:
                continue
            if layer.__class__.__name__ == "BatchNormalization":  # gamma, beta, mean, var
                weights = [rng.uniform(0.5, 1.5, w.shape) if i in (0, 3) else rng.normal(0, 0.1, w.shape)
                           for i, w in enumerate(weights)]
            elif len(weights) == 2:
                weights[1] = rng.normal(0, 0.05, weights[1].shape)
            layer.set_weights([w.astype(np.float32) for w in weights])
    return model


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    """{name: loaded onnxsight model}: the seed-000 CNN with and without biases, the residual CNN."""
    folder = tmp_path_factory.mktemp("relevance")
    made = {}
    for key, name in {"mnist": "mnist_cnn", "residual": "residual_cnn"}.items():
        path = onnxsight.convert_keras(_keras_model(name, 0, biases=True), folder / f"{key}.onnx")
        made[key] = onnxsight.load(path, device="cpu")
    made["mnist0"] = onnxsight.load(_without_biases(made["mnist"].proto), device="cpu")
    return made


def _without_biases(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its Conv and Dense biases (1-D initializers) set to zero."""
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    for tensor in copy.graph.initializer:
        value = numpy_helper.to_array(tensor)
        if value.dtype == np.float32 and value.ndim == 1:
            tensor.CopyFrom(numpy_helper.from_array(np.zeros_like(value), tensor.name))
    return copy


@pytest.fixture(scope="module")
def digits(digits_data):
    return digits_data.x_test[:2]


@pytest.fixture(scope="module")
def colours():
    return np.random.default_rng(1).random((2, 32, 32, 3), dtype=np.float32)


# ---- the reference: a float64 interpreter of the ONNX graph, relevance from explicit contributions --------
def _stab(z, eps):
    return z + eps * np.where(z >= 0, 1.0, -1.0)


def _ratio(r, z, eps):
    if eps == 0:
        return np.where(z == 0, 0.0, r / np.where(z == 0, 1.0, z))
    return r / _stab(z, eps)


def dense_relevance(x, w, b, r, rule, o, low=None, high=None, ones=None):
    """Relevance of the inputs x (N, I) of z = x·W + b (W: I×J) from the relevance r (N, J) of z;
    ``ones``: the all-ones input of flat and w² (zeros where a convolution pads)."""
    b = np.zeros(w.shape[1]) if b is None else b
    pos, neg = (lambda a: np.maximum(a, 0)), (lambda a: np.minimum(a, 0))
    xi = x[:, :, None]
    s = o["stabilizer"]
    if rule == "epsilon":
        c = xi * w
        return (c * _ratio(r, c.sum(1) + b, o["epsilon"])[:, None]).sum(2)
    if rule in ("zplus", "alphabeta"):
        cp = pos(xi) * pos(w) + neg(xi) * neg(w)
        rp = (cp * _ratio(r, cp.sum(1) + pos(b), s)[:, None]).sum(2)
        if rule == "zplus":
            return rp
        cn = pos(xi) * neg(w) + neg(xi) * pos(w)
        rn = (cn * _ratio(r, cn.sum(1) + neg(b), s)[:, None]).sum(2)
        return o["alpha"] * rp - o["beta"] * rn
    if rule == "gamma":
        g = o["gamma"]
        z = (xi * w).sum(1) + b
        cp = pos(xi) * (w + g * pos(w)) + neg(xi) * (w + g * neg(w))
        cn = pos(xi) * (w + g * neg(w)) + neg(xi) * (w + g * pos(w))
        rp = (cp * _ratio(r * (z > 0), cp.sum(1) + b + g * pos(b), s)[:, None]).sum(2)
        rn = (cn * _ratio(r * (z < 0), cn.sum(1) + b + g * neg(b), s)[:, None]).sum(2)
        return rp + rn
    one = np.ones_like(xi) if ones is None else ones[:, :, None]
    if rule == "flat":
        c = one * np.ones_like(w)
        return (c * _ratio(r, c.sum(1), s)[:, None]).sum(2)
    if rule == "wsquare":
        c = one * w ** 2
        return (c * _ratio(r, c.sum(1) + b ** 2, s)[:, None]).sum(2)
    if rule == "zbox":
        c = xi * w - low[:, :, None] * pos(w) - high[:, :, None] * neg(w)
        return (c * _ratio(r, c.sum(1), s)[:, None]).sum(2)
    raise AssertionError(rule)


def _patches(x, kernel, pads, strides):
    """im2col of an NCHW batch: (N, L, C·kh·kw) and the flat input index of every patch element (-1: padding)."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw) = kernel, strides
    top, left, bottom, right = pads[0], pads[1], pads[2], pads[3]
    index = np.pad(np.arange(c * h * w).reshape(c, h, w), ((0, 0), (top, bottom), (left, right)), constant_values=-1)
    rows, cols = (index.shape[1] - kh) // sh + 1, (index.shape[2] - kw) // sw + 1
    where = np.stack([index[:, i * sh:i * sh + kh, j * sw:j * sw + kw].reshape(-1)
                      for i in range(rows) for j in range(cols)])  # (L, K)
    flat = np.concatenate([x.reshape(n, -1), np.zeros((n, 1))], axis=1)
    return flat[:, where], where, (rows, cols)


def conv_relevance(x, w, b, r, rule, o, pads, low=None, high=None):
    """A Conv as one dense layer per output position (its receptive field); relevance scattered back."""
    n = len(x)
    m = w.shape[0]
    px, where, _ = _patches(x, w.shape[2:], pads, (1, 1))
    extra = {}
    if rule in ("flat", "wsquare"):
        extra = {"ones": _patches(np.ones_like(x), w.shape[2:], pads, (1, 1))[0].reshape(-1, where.shape[1])}
    if rule == "zbox":  # bounds are images too: padding is 0 for them as for x
        extra = {"low": _patches(low, w.shape[2:], pads, (1, 1))[0].reshape(-1, where.shape[1]),
                 "high": _patches(high, w.shape[2:], pads, (1, 1))[0].reshape(-1, where.shape[1])}
    rp = dense_relevance(px.reshape(-1, where.shape[1]), w.reshape(m, -1).T, b, r.reshape(n, m, -1).transpose(0, 2, 1).reshape(-1, m),
                         rule, o, **extra)
    out = np.zeros((n, x[0].size + 1))
    rp = rp.reshape(n, -1)
    for i in range(n):
        np.add.at(out[i], np.where(where.reshape(-1) >= 0, where.reshape(-1), x[0].size), rp[i])
    return out[:, :-1].reshape(x.shape)


def conv_forward(x, w, b, pads):
    px, where, (rows, cols) = _patches(x, w.shape[2:], pads, (1, 1))
    z = px @ w.reshape(w.shape[0], -1).T + (0 if b is None else b)
    return z.transpose(0, 2, 1).reshape(len(x), w.shape[0], rows, cols)


WEIGHTED = ("Conv", "MatMul")


def reference(model: onnxsight.Model, x: np.ndarray, target: np.ndarray, rule: str, start: str = "score", **options):
    """Relevance of x for the target logit, from the ONNX graph's nodes run in float64 numpy."""
    o = {"epsilon": 1e-6, "stabilizer": STABILIZER, "gamma": 0.25, "alpha": 2.0, "beta": 1.0, **options}
    composites = {"epsilon-plus": ("zplus", "epsilon", None), "epsilon-plus-flat": ("zplus", "epsilon", "flat"),
                  "epsilon-alpha2-beta1": ("alphabeta", "epsilon", None),
                  "epsilon-alpha2-beta1-flat": ("alphabeta", "epsilon", "flat"),
                  "epsilon-gamma-box": ("gamma", "epsilon", "zbox"), "deeptaylor": ("zplus", "zplus", "zbox")}
    conv_rule, dense_rule, first_rule = composites.get(rule, (rule, rule, None))
    graph = model.proto.graph
    consts = {t.name: numpy_helper.to_array(t).astype(np.float64) if numpy_helper.to_array(t).dtype.kind == "f"
              else numpy_helper.to_array(t) for t in graph.initializer}
    values = {model.input_name: x.astype(np.float64), **consts}
    nodes = []
    for node in graph.node:
        a = {at.name: helper.get_attribute_value(at) for at in node.attribute}
        i = [values.get(name) for name in node.input]
        op = node.op_type
        if op == "Softmax":
            break
        if op == "Conv":
            pads = a.get("pads", [0, 0, 0, 0])
            y = conv_forward(i[0], i[1], i[2] if len(i) > 2 else None, pads)
        elif op == "Relu":
            y = np.maximum(i[0], 0)
        elif op == "Transpose":
            y = i[0].transpose(a["perm"])
        elif op == "Reshape":
            shape = [d if d != 0 else i[0].shape[k] for k, d in enumerate(i[1])]
            y = i[0].reshape(shape)
        elif op == "MaxPool":
            n_, c_, h_, w_ = i[0].shape
            y = i[0][:, :, :h_ // 2 * 2, :w_ // 2 * 2].reshape(n_, c_, h_ // 2, 2, w_ // 2, 2).max(axis=(3, 5))
        elif op == "MatMul":
            y = i[0] @ i[1]
        elif op in ("Add", "Mul"):
            y = i[0] + i[1] if op == "Add" else i[0] * i[1]
        elif op == "GlobalAveragePool":
            y = i[0].mean(axis=(2, 3), keepdims=True)
        elif op == "Squeeze":
            y = i[0].reshape(i[0].shape[:2])
        elif op == "Shape":
            y = np.array(i[0].shape, np.int64)
        elif op == "Gather":
            y = i[0][i[1]]
        elif op == "Cast":
            y = i[0].astype(np.int64) if a["to"] == TensorProto.INT64 else i[0]
        elif op == "Slice":
            y = i[0][int(i[1][0]):int(i[2][0])]
        elif op == "Concat":
            y = np.concatenate(i, axis=a["axis"])
        else:
            raise AssertionError(f"reference has no {op}")
        values[node.output[0]] = y
        nodes.append((node, a))
    logits = values[model.tensor("logits")]
    relevance = {model.tensor("logits"): np.eye(logits.shape[1])[target] * (logits if start == "score" else 1.0)}
    producers = {node.output[0]: node for node, _ in nodes}
    data = {model.input_name}
    for node, _ in nodes:
        if any(name in data for name in node.input) and node.op_type not in ("Shape",):
            data.add(node.output[0])

    def first(node):
        stack = [node.input[0]]
        while stack:
            t = stack.pop()
            p = producers.get(t)
            if p is None or t not in data:
                continue
            if p.op_type in WEIGHTED:
                return False
            stack.extend(p.input)
        return True

    bias_of = {}  # MatMul/Conv output -> the constant Add after it
    for node, _ in nodes:
        if node.op_type == "Add" and sum(name in data for name in node.input) == 1:
            src = next(name for name in node.input if name in data)
            if src in producers and producers[src].op_type in WEIGHTED:
                bias_of[src] = node
    for node, a in reversed(nodes):
        out = node.output[0]
        if out not in relevance or node.op_type in ("Shape", "Gather", "Cast", "Slice", "Concat"):
            continue
        r = relevance.pop(out)
        xs = [values[name] for name in node.input]
        op = node.op_type

        def give(name, value):
            relevance[name] = relevance.get(name, 0) + value

        if op in WEIGHTED:
            chosen = first_rule if first_rule and first(node) else (conv_rule if op == "Conv" else dense_rule)
            add = bias_of.get(out)
            bias = values[next(n for n in add.input if n != out)].reshape(-1) if add is not None else (
                xs[2] if len(xs) > 2 else None)
            x0 = xs[0]
            bounds = {}
            if chosen == "zbox":
                lo = o.get("low", None)
                hi = o.get("high", None)
                axes = tuple(range(1, x0.ndim))
                bounds = {"low": np.broadcast_to(x0.min(axis=axes, keepdims=True) if lo is None else lo, x0.shape),
                          "high": np.broadcast_to(x0.max(axis=axes, keepdims=True) if hi is None else hi, x0.shape)}
            if op == "Conv":
                give(node.input[0], conv_relevance(x0, xs[1], bias, r, chosen, o, a.get("pads", [0] * 4), **bounds))
            else:
                give(node.input[0], dense_relevance(x0, xs[1], bias, r, chosen, o, **bounds))
        elif op == "Add" and any(bias_of.get(src) is node for src in node.input):
            give(next(n for n in node.input if n in data), r)  # the weighted op below counts this bias
        elif op in ("Add", "Mul"):  # proportional: each data operand's share of y
            y = values[out]
            ratio = _ratio(r, y, o["stabilizer"])
            for name, value in zip(node.input, xs):
                if name in data:
                    share = value * ratio if op == "Add" else y * ratio
                    give(name, share.reshape(value.shape) if share.shape == value.shape else share)
        elif op == "GlobalAveragePool":
            xin = xs[0]
            give(node.input[0], xin / xin[0, 0].size * _ratio(r, values[out], o["stabilizer"]))
        elif op == "Relu":
            give(node.input[0], r)
        elif op == "Transpose":
            give(node.input[0], r.transpose(np.argsort(a["perm"])))
        elif op in ("Reshape", "Squeeze"):
            give(node.input[0], r.reshape(xs[0].shape))
        elif op == "MaxPool":  # winner takes all: the first maximum of each 2×2 window
            xin = xs[0]
            n_, c_, h_, w_ = xin.shape
            win = xin[:, :, :h_ // 2 * 2, :w_ // 2 * 2].reshape(n_, c_, h_ // 2, 2, w_ // 2, 2).transpose(0, 1, 2, 4, 3, 5)
            win = win.reshape(n_, c_, h_ // 2, w_ // 2, 4)
            hit = np.eye(4)[win.argmax(-1)] * r[..., None]
            back = np.zeros_like(xin)
            back[:, :, :h_ // 2 * 2, :w_ // 2 * 2] = hit.reshape(n_, c_, h_ // 2, w_ // 2, 2, 2).transpose(
                0, 1, 2, 4, 3, 5).reshape(n_, c_, h_ // 2 * 2, w_ // 2 * 2)
            give(node.input[0], back)
        else:
            raise AssertionError(f"reference has no relevance rule for {op}")
    return relevance[model.input_name]


def relative(got, want):
    return float(np.abs(got - want).max() / np.abs(want).max())


# ---- the tests -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", RULES)
def test_every_rule_equals_the_numpy_reference_on_the_seed_cnn_with_biases(nets, digits, rule):
    model = nets["mnist"]
    target = np.array([3, 7])
    got = lrp(model, digits, target, rule=rule)
    want = reference(model, digits, target, rule)
    assert got.shape == digits.shape
    assert relative(got, want) <= TOLERANCE, f"{rule}: relative difference {relative(got, want):.2e}"


@pytest.mark.parametrize(("rule", "options"), [("epsilon", {"epsilon": 0.25}), ("gamma", {"gamma": 1.0}),
                                               ("zbox", {"low": -0.5, "high": 1.5}), ("alphabeta", {"alpha": 1.0, "beta": 0.0}),
                                               ("epsilon-gamma-box", {"low": 0.0, "high": 1.0})])
def test_rule_parameters_reach_the_rules(nets, digits, rule, options):
    model = nets["mnist"]
    got = lrp(model, digits, 5, rule=rule, **options)
    want = reference(model, digits, np.array([5, 5]), rule, **options)
    assert relative(got, want) <= TOLERANCE, f"{rule} {options}: {relative(got, want):.2e}"


@pytest.mark.parametrize("rule", ["epsilon", "zplus", "epsilon-gamma-box", "epsilon-plus-flat", "deeptaylor"])
def test_residual_block_with_batch_norm_equals_the_reference(nets, colours, rule):
    """Add of two data tensors shares in proportion, BN's Mul/Add are linear with their shift absorbed."""
    model = nets["residual"]
    target = np.array([1, 4])
    got = lrp(model, colours, target, rule=rule)
    want = reference(model, colours, target, rule)
    assert relative(got, want) <= RESIDUAL_TOLERANCE, f"{rule}: relative difference {relative(got, want):.2e}"


@pytest.mark.parametrize("rule", ["epsilon", "zplus", "gamma", "epsilon-plus", "epsilon-gamma-box", "deeptaylor"])
def test_relevance_sums_to_the_logit_on_a_bias_free_relu_network(nets, digits, rule):
    """(αβ is left out: a neuron whose contributions all have one sign gives α or β times its relevance.)"""
    model = nets["mnist0"]
    logits = model.run(digits, [model.tensor("logits")])[0]
    target = logits.argmax(axis=1)
    got = lrp(model, digits, rule=rule, epsilon=1e-9).reshape(len(digits), -1).sum(axis=1)
    want = logits[np.arange(len(digits)), target]
    np.testing.assert_allclose(got, want, rtol=1e-4, err_msg=rule)


def test_lrp_0_on_a_bias_free_relu_network_is_gradient_times_input(nets, digits):
    model = nets["mnist0"]
    got = lrp(model, digits, 2, rule="epsilon", epsilon=0.0)
    want = model.gradient(digits, target=2)["input"] * digits
    assert relative(got, want) <= 1e-5


def test_start_one_is_the_score_start_divided_by_the_logit(nets, digits):
    """Every rule is linear in the relevance it starts from: the one-hot start is the score start / logit."""
    model = nets["mnist"]
    logits = model.run(digits, [model.tensor("logits")])[0]
    for rule in ("epsilon-plus", "zbox"):
        one, score = (lrp(model, digits, 6, rule=rule, start=s) for s in ("one", "score"))
        assert relative(one * logits[:, 6, None, None, None], score) <= 1e-5, rule
    want = reference(model, digits, np.array([6, 6]), "epsilon-plus", start="one")
    assert relative(lrp(model, digits, 6, rule="epsilon-plus", start="one"), want) <= TOLERANCE


def test_batches_equal_single_images_and_a_hidden_layer_can_be_explained(nets, digits):
    model = nets["mnist0"]
    whole = lrp(model, digits, 1, rule="epsilon-plus", batch_size=1)
    np.testing.assert_allclose(whole, np.concatenate([lrp(model, digits[i:i + 1], 1, rule="epsilon-plus")
                                                      for i in range(2)]), rtol=0, atol=1e-6 * np.abs(whole).max())
    hidden = model.run(digits, [model.tensor("dense_1")])[0]
    relevance = lrp(model, digits, 7, rule="zplus", of="dense_1").reshape(2, -1).sum(axis=1)
    np.testing.assert_allclose(relevance, hidden[:, 7], rtol=1e-4)


def _graph_model(nodes, extra=()):
    """A tiny NCHW model: x (N, 2, 4, 4) -> Conv -> ... -> Flatten -> Gemm -> logits -> Softmax."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(2, 2, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(size=(32, 3)).astype(np.float32), "d"), *extra]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), *nodes,
         helper.make_node("Flatten", ["h"], ["f"]), helper.make_node("Gemm", ["f", "d"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    return onnxsight.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), device="cpu")


@pytest.mark.parametrize(("nodes", "op"), [
    ([helper.make_node("Softmax", ["c"], ["h"], axis=1)], "Softmax"),
    ([helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Mul", ["c", "r"], ["h"])], "Mul"),
    ([helper.make_node("Div", ["c", "c"], ["h"])], "Div"),
])
def test_an_op_without_a_relevance_rule_is_an_error_naming_it(nodes, op):
    x = np.random.default_rng(0).random((1, 2, 4, 4), dtype=np.float32)
    with pytest.raises(UnsupportedOp, match=f"no lrp-epsilon rule for op {op}"):
        lrp(_graph_model(nodes), x)


@pytest.mark.parametrize("gate", ["swish", "squeeze-excite"])
def test_swish_and_a_sigmoid_gate_pass_all_relevance_to_the_signal(gate):
    """x·σ(x) (Swish/SiLU) is one activation and Mul(x, σ(s)) gives nothing to the gate σ(s)
    (signal-take-all): the reference is the ε rule of the Gemm and the Conv with R_c = R_h between."""
    rng = np.random.default_rng(0)
    x = rng.random((2, 2, 4, 4), dtype=np.float32) - 0.5
    if gate == "swish":
        nodes, extra = [helper.make_node("Sigmoid", ["c"], ["s"])], []
    else:  # GlobalAveragePool -> Sigmoid -> Reshape (as tf2onnx writes Keras' squeeze-and-excitation) -> Mul
        nodes = [helper.make_node("GlobalAveragePool", ["c"], ["p"]), helper.make_node("Sigmoid", ["p"], ["q"]),
                 helper.make_node("Reshape", ["q", "shape"], ["s"])]
        extra = [numpy_helper.from_array(np.array([0, 2, 1, 1], np.int64), "shape")]
    model = _graph_model([*nodes, helper.make_node("Mul", ["c", "s"], ["h"])], extra)
    w, d = (numpy_helper.to_array(t).astype(np.float64) for t in model.proto.graph.initializer[:2])
    c = conv_forward(x.astype(np.float64), w, None, [1, 1, 1, 1])
    s = 1 / (1 + np.exp(-(c if gate == "swish" else c.mean(axis=(2, 3), keepdims=True))))
    f = (c * s).reshape(2, -1)
    o = {"epsilon": 1e-6, "stabilizer": STABILIZER}
    logits = f @ d
    r_h = dense_relevance(f, d, None, np.eye(3)[[0, 0]] * logits, "epsilon", o).reshape(c.shape)
    want = conv_relevance(x.astype(np.float64), w, None, r_h, "epsilon", o, [1, 1, 1, 1])
    assert relative(lrp(model, x, 0, rule="epsilon"), want) <= TOLERANCE


def test_bad_options_are_one_line_errors(nets, digits):
    model = nets["mnist"]
    for kwargs, message in [({"rule": "lrp"}, "unknown LRP rule"), ({"rule": "alphabeta", "alpha": 3.0}, "alpha - beta"),
                            ({"start": "zero"}, "start must be"), ({"epsilon": -1.0}, "epsilon must be"),
                            ({"low": 1.0, "high": 0.0}, "low")]:
        with pytest.raises(InvalidArgument, match=message):
            lrp(model, digits, **kwargs)


def test_explainer_export_equals_the_method(nets, digits):
    import onnxruntime as ort

    from onnxsight.serving.explainer import export_explainer

    model = nets["mnist"]
    for method, rule in (("lrp-epsilon-plus", "epsilon-plus"), ("lrp-zplus", "zplus")):
        proto = export_explainer(model, method)
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        heatmap, classes = session.run(["heatmap", "target_class"], {"image": digits, "target": np.array([4, 9])})
        want = lrp(model, digits, np.array([4, 9]), rule=rule).sum(axis=3)
        np.testing.assert_array_equal(classes, [4, 9])
        assert relative(heatmap, want) <= 1e-5, method
