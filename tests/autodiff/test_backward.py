"""The backward driver's contract: what it walks, sums, skips, names, refuses and returns."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxsight.engine.autodiff import RULES, Modifier, build_vjp
from onnxsight.engine.autodiff.registry import KEPT_GRADIENTS, MODIFIER_RULES
from onnxsight.engine.graph import runtime_compatible
from onnxsight.errors import InternalError, InvalidArgument, UnknownName, UnsupportedOp

from .helpers import ort_run, ref_run, relative_error

F = TensorProto.FLOAT


def make_model(nodes, inputs, outputs, weights=(), opset=18, dtype=F) -> onnx.ModelProto:
    """``inputs``/``outputs``: {name: shape}; ``weights``: {name: array} initializers."""
    graph = helper.make_graph(
        [helper.make_node(op, ins, outs, name=name, **attrs) for name, op, ins, outs, attrs in nodes],
        "test",
        [helper.make_tensor_value_info(n, dtype, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, dtype, s) for n, s in outputs.items()],
        [numpy_helper.from_array(v, n) for n, v in dict(weights).items()],
    )
    return runtime_compatible(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))


def gradients(vjp, feeds, cot, run=ort_run):
    names = list(vjp.gradients.values())
    return dict(zip(vjp.gradients, run(vjp.model, {**feeds, vjp.cotangent: cot}, names)))


RNG = np.random.default_rng(0)
W1 = RNG.standard_normal((4, 6)).astype(np.float32)
W2 = RNG.standard_normal((6, 3)).astype(np.float32)


def relu_mlp() -> onnx.ModelProto:
    return make_model(
        [("fc1", "MatMul", ["x", "W1"], ["h"], {}), ("relu", "Relu", ["h"], ["r"], {}),
         ("fc2", "MatMul", ["r", "W2"], ["y"], {})],
        {"x": ["N", 4]}, {"y": ["N", 3]}, {"W1": W1, "W2": W2})


def small_cnn(dtype=np.float32) -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    weights = {"K": rng.standard_normal((4, 2, 3, 3)), "KB": rng.standard_normal(4),
               "D": rng.standard_normal((4 * 2 * 2, 3)), "DB": rng.standard_normal(3)}
    weights = {k: (0.3 * v).astype(dtype) for k, v in weights.items()}  # logits of order 1: softmax not saturated
    nodes = [("conv", "Conv", ["x", "K", "KB"], ["c"], {"pads": [1, 1, 1, 1], "strides": [2, 2]}),
             ("relu", "Relu", ["c"], ["r"], {}),
             ("pool", "MaxPool", ["r"], ["p"], {"kernel_shape": [2, 2], "strides": [2, 2]}),
             ("flatten", "Flatten", ["p"], ["f"], {}),
             ("dense", "Gemm", ["f", "D", "DB"], ["logits"], {}),
             ("softmax", "Softmax", ["logits"], ["probs"], {})]
    elem = TensorProto.DOUBLE if dtype == np.float64 else F
    return make_model(nodes, {"x": ["N", 2, 8, 8]}, {"probs": ["N", 3]}, weights, dtype=elem)


def test_fan_out_contributions_are_summed():
    # y = x*x + x  ->  dy/dx = 2x + 1
    model = make_model([("square", "Mul", ["x", "x"], ["s"], {}), ("plus", "Add", ["s", "x"], ["y"], {})],
                       {"x": ["N", 3]}, {"y": ["N", 3]})
    vjp = build_vjp(model, "y", ["x"])
    x, cot = RNG.standard_normal((2, 3)).astype(np.float32), RNG.standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_allclose(gradients(vjp, {"x": x}, cot)["x"], cot * (2 * x + 1), rtol=1e-6)


def test_gradient_wrt_an_intermediate_holds_upstream_fixed():
    # a = 3x, y = tanh(a) + x: d/da = cot (1 - tanh(a)^2); the skip from x does not count
    model = make_model([("scale", "Mul", ["x", "three"], ["a"], {}), ("tanh", "Tanh", ["a"], ["b"], {}),
                        ("skip", "Add", ["b", "x"], ["y"], {})],
                       {"x": ["N", 3]}, {"y": ["N", 3]}, {"three": np.array(3.0, np.float32)})
    vjp = build_vjp(model, "y", ["a", "x"])
    x, cot = RNG.standard_normal((2, 3)).astype(np.float32), RNG.standard_normal((2, 3)).astype(np.float32)
    got = gradients(vjp, {"x": x}, cot)
    slope = 1 - np.tanh(3 * x) ** 2
    np.testing.assert_allclose(got["a"], cot * slope, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["x"], cot * (3 * slope + 1), rtol=1e-5, atol=1e-6)


def test_constant_subgraphs_are_never_differentiated():
    # The weight passes through Hardmax and the input's shape through Shape/ConstantOfShape: neither
    # op has a rule, so differentiating a constant would raise. The gradient is W's transpose.
    w = RNG.standard_normal((3, 3)).astype(np.float32)
    model = make_model(
        [("hard", "Hardmax", ["W"], ["Wh"], {}), ("mix", "Add", ["W", "Wh"], ["Wm"], {}),
         ("shape", "Shape", ["x"], ["sx"], {}),
         ("ones", "ConstantOfShape", ["sx"], ["o"], {"value": numpy_helper.from_array(np.array([1.0], np.float32))}),
         ("fc", "MatMul", ["x", "Wm"], ["m"], {}), ("bias", "Add", ["m", "o"], ["y"], {})],
        {"x": ["N", 3]}, {"y": ["N", 3]}, {"W": w})
    vjp = build_vjp(model, "y", ["x"])
    x, cot = RNG.standard_normal((2, 3)).astype(np.float32), RNG.standard_normal((2, 3)).astype(np.float32)
    wm = w + (w == w.max(axis=1, keepdims=True))
    np.testing.assert_allclose(gradients(vjp, {"x": x}, cot)["x"], cot @ wm.T, rtol=1e-5)
    added = [n for n in vjp.model.graph.node if n.name.startswith("onnxsight/")]
    assert not any(n.name.startswith(("onnxsight/vjp/hard/", "onnxsight/vjp/shape/", "onnxsight/vjp/ones/"))
                   for n in added), "a rule ran for a constant node"
    with pytest.raises(InvalidArgument, match="constant"):
        build_vjp(model, "y", ["W"])


def test_unsupported_op_names_the_op_the_node_and_the_wrt_tensors_that_avoid_it():
    model = make_model([("relu", "Relu", ["x"], ["r"], {}), ("hard", "Hardmax", ["r"], ["h"], {}),
                        ("tanh", "Tanh", ["h"], ["y"], {})],
                       {"x": ["N", 3]}, {"y": ["N", 3]})
    with pytest.raises(UnsupportedOp) as error:
        build_vjp(model, "y", ["x", "h"])
    message = str(error.value)
    assert "Hardmax" in message and "'hard'" in message and "wrt=['h']" in message, message
    build_vjp(model, "y", ["h"])  # the suggested retry works


@pytest.mark.parametrize("modifier", [None, "guided", "deconv"])
def test_backprop_modifiers_match_numpy(modifier):
    vjp = build_vjp(relu_mlp(), "y", ["x"], modifier=modifier)
    x, cot = RNG.standard_normal((5, 4)).astype(np.float32), RNG.standard_normal((5, 3)).astype(np.float32)
    h = x @ W1
    g_r = cot @ W2.T
    g_h = {None: g_r * (h > 0), "guided": g_r * (h > 0) * (g_r > 0), "deconv": np.maximum(g_r, 0)}[modifier]
    expected = g_h @ W1.T
    for run in (ort_run, ref_run):
        np.testing.assert_allclose(gradients(vjp, {"x": x}, cot, run)["x"], expected, rtol=1e-5, atol=1e-6,
                                   err_msg=f"modifier={modifier} in {run.__name__}")


def test_a_strict_modifier_keeps_only_the_listed_gradient_rules_and_reads_its_parameters(monkeypatch):
    """A strict modifier keeping MatMul's gradient, with a Relu rule scaled by its ``factor``: the
    parameter reaches the rule, and the Tanh outside both tables is an error naming the modifier."""

    def scaled_relu(g, n):
        return [g.op("Mul", n.gy, g.const(n.options["factor"], like=n.x))]

    monkeypatch.setitem(MODIFIER_RULES, "scaled", {"Relu": scaled_relu})
    monkeypatch.setitem(KEPT_GRADIENTS, "scaled", frozenset({"MatMul"}))
    x, cot = RNG.standard_normal((5, 4)).astype(np.float32), RNG.standard_normal((5, 3)).astype(np.float32)
    vjp = build_vjp(relu_mlp(), "y", ["x"], modifier=Modifier("scaled", factor=0.5))
    np.testing.assert_allclose(gradients(vjp, {"x": x}, cot)["x"], 0.5 * cot @ W2.T @ W1.T, rtol=1e-5, atol=1e-6)
    assert str(Modifier("scaled", factor=0.5)) == "scaled(factor=0.5)"
    assert Modifier("a", p=1, q=2) == Modifier("a", q=2, p=1)  # one cache key whatever the order
    model = make_model([("relu", "Relu", ["x"], ["r"], {}), ("tanh", "Tanh", ["r"], ["y"], {})],
                       {"x": ["N", 3]}, {"y": ["N", 3]})
    build_vjp(model, "y", ["x"])  # Tanh has a gradient rule
    with pytest.raises(UnsupportedOp, match="no scaled rule for op Tanh \\(node 'tanh'\\)"):
        build_vjp(model, "y", ["x"], modifier=Modifier("scaled", factor=1.0))


def test_unknown_modifier_and_unknown_names_are_user_errors():
    with pytest.raises(InvalidArgument, match="guided"):
        build_vjp(relu_mlp(), "y", ["x"], modifier="guidd")
    with pytest.raises(UnknownName, match="did you mean x"):
        build_vjp(relu_mlp(), "y", ["xx"])
    with pytest.raises(UnknownName, match="unknown tensor 'relu_out'"):
        build_vjp(relu_mlp(), "relu_out", ["x"])


def test_input_model_is_not_mutated_and_result_passes_the_full_checker():
    model = small_cnn()
    before = model.SerializeToString()
    vjp = build_vjp(model, "logits", ["x", "r"], keep_outputs=["c"])
    assert model.SerializeToString() == before
    onnx.checker.check_model(vjp.model, full_check=True)
    assert vjp.outputs == ("probs", "c", "logits")
    assert [o.name for o in vjp.model.graph.output] == [*vjp.outputs, *vjp.gradients.values()]
    domains = {n.domain for n in vjp.model.graph.node}
    assert domains <= {"", "ai.onnx"}, domains


def test_node_names_are_deterministic_and_point_at_their_forward_node():
    names = [[n.name for n in build_vjp(small_cnn(), "logits", ["x"]).model.graph.node] for _ in range(2)]
    assert names[0] == names[1]
    forward = {n.name for n in small_cnn().graph.node}
    added = [n for n in names[0] if n not in forward]
    assert added and all(n.startswith("onnxsight/") for n in added), added
    assert any(n.startswith("onnxsight/vjp/conv/") for n in added) and any(n.startswith("onnxsight/vjp/pool/") for n in added)


def test_dynamic_batch_gives_per_sample_gradients():
    vjp = build_vjp(small_cnn(), "logits", ["x"])
    x = RNG.standard_normal((5, 2, 8, 8)).astype(np.float32)
    cot = RNG.standard_normal((5, 3)).astype(np.float32)
    batched = gradients(vjp, {"x": x}, cot)["x"]
    assert batched.shape == x.shape
    for i in range(5):
        single = gradients(vjp, {"x": x[i:i + 1]}, cot[i:i + 1])["x"]
        np.testing.assert_allclose(single[0], batched[i], rtol=1e-5, atol=1e-6)
    assert vjp.model.graph.input[-1].type.tensor_type.shape.dim[0].dim_param, "the cotangent batch should be dynamic"


def test_small_cnn_gradient_matches_finite_differences_and_both_runtimes_agree():
    model64 = small_cnn(np.float64)
    vjp = build_vjp(model64, "probs", ["x"])
    x = RNG.standard_normal((2, 2, 8, 8))
    cot = RNG.standard_normal((2, 3))
    grad = gradients(vjp, {"x": x}, cot, ref_run)["x"]
    v = RNG.standard_normal(x.shape)
    step = 1e-6
    f = lambda t: ref_run(model64, {"x": t})[0]  # noqa: E731
    numeric = np.sum(cot * (f(x + step * v) - f(x - step * v))) / (2 * step)
    analytic = np.sum(grad * v)
    assert abs(numeric - analytic) < 1e-6 * abs(numeric), (numeric, analytic)
    vjp32 = build_vjp(small_cnn(), "probs", ["x", "r"])
    feeds = {"x": x.astype(np.float32), vjp32.cotangent: cot.astype(np.float32)}
    for a, b in zip(ort_run(vjp32.model, feeds), ref_run(vjp32.model, feeds)):
        assert relative_error(a, b) < 1e-5


def test_wrt_that_of_does_not_depend_on_gets_zeros_of_its_shape():
    model = make_model([("a", "Relu", ["x"], ["left"], {}), ("b", "Tanh", ["x"], ["right"], {})],
                       {"x": ["N", 3]}, {"left": ["N", 3], "right": ["N", 3]})
    vjp = build_vjp(model, "left", ["right", "x"])
    x = RNG.standard_normal((4, 3)).astype(np.float32)
    got = gradients(vjp, {"x": x}, np.ones((4, 3), np.float32))
    np.testing.assert_array_equal(got["right"], np.zeros((4, 3), np.float32))
    np.testing.assert_array_equal(got["x"], (x > 0).astype(np.float32))


def test_a_rule_breaking_its_contract_is_an_internal_error(monkeypatch):
    monkeypatch.setitem(RULES, "Relu", lambda g, n: [])
    with pytest.raises(InternalError, match="one entry per input"):
        build_vjp(relu_mlp(), "y", ["x"])


def test_old_opsets_are_upgraded_for_the_gradient_ops():
    model = make_model([("tanh", "Tanh", ["x"], ["t"], {}),  # no ties (a Relu's zeros would tie)
                        ("pool", "MaxPool", ["t"], ["y"], {"kernel_shape": [2, 2]})],
                       {"x": ["N", 1, 4, 4]}, {"y": ["N", 1, 3, 3]}, opset=11)
    vjp = build_vjp(model, "y", ["x"])
    x = RNG.standard_normal((2, 1, 4, 4)).astype(np.float32)
    cot = np.ones((2, 1, 3, 3), np.float32)
    assert vjp.model.opset_import[0].version == 16
    np.testing.assert_allclose(gradients(vjp, {"x": x}, cot)["x"], gradients(vjp, {"x": x}, cot, ref_run)["x"],
                               rtol=1e-5)


def first_maximum_gradient(x: np.ndarray, kernel: tuple[int, ...], gy: np.ndarray) -> np.ndarray:
    """Independent reference: each window of a tiling max pool sends its gradient to the first
    maximum in row-major order (numpy's argmax), the floor-mode remainder gets none."""
    dx = np.zeros_like(x)
    for lead in np.ndindex(*x.shape[:2]):
        for out in np.ndindex(*gy.shape[2:]):
            corner = [o * k for o, k in zip(out, kernel)]
            box = tuple(slice(c, c + k) for c, k in zip(corner, kernel))
            first = np.unravel_index(np.argmax(x[lead][box]), kernel)
            dx[lead][tuple(c + f for c, f in zip(corner, first))] += gy[lead + out]
    return dx


@pytest.mark.parametrize("shape, kernel", [((3, 4, 8, 8), (2, 2)), ((2, 3, 9, 7), (3, 2)), ((2, 3, 7, 5), (2, 2)),
                                           ((2, 3, 10), (3,)), ((2, 2, 4, 7, 5), (2, 3, 2))])
@pytest.mark.parametrize("batch", ["static", "dynamic"])
def test_tiled_max_pool_sends_each_gradient_to_the_first_of_tied_maxima(shape, kernel, batch):
    x = RNG.integers(0, 3, shape).astype(np.float32)  # three values: ties in almost every window
    out = [s // k for s, k in zip(shape[2:], kernel)]
    lead = list(shape[:2]) if batch == "static" else ["N", shape[1]]
    model = make_model([("pool", "MaxPool", ["x"], ["y"], {"kernel_shape": list(kernel), "strides": list(kernel)})],
                       {"x": lead + list(shape[2:])}, {"y": lead + out})
    vjp = build_vjp(model, "y", ["x"])
    gy = RNG.standard_normal([*shape[:2], *out]).astype(np.float32)
    np.testing.assert_array_equal(gradients(vjp, {"x": x}, gy)["x"], first_maximum_gradient(x, kernel, gy))
    np.testing.assert_array_equal(gradients(vjp, {"x": x}, gy, ref_run)["x"], first_maximum_gradient(x, kernel, gy))


def test_a_transpose_before_a_flattened_product_moves_into_the_constant_matrix():
    """Keras' Flatten as tf2onnx converts it (NCHW→NHWC Transpose, Reshape, MatMul): the gradient
    needs no run-time Transpose, and equals the transposed product."""
    w = RNG.standard_normal((24, 5)).astype(np.float32)
    model = make_model([("nhwc", "Transpose", ["x"], ["t"], {"perm": [0, 2, 3, 1]}),
                        ("flat", "Reshape", ["t", "shape"], ["f"], {}), ("dense", "MatMul", ["f", "W"], ["y"], {})],
                       {"x": ["N", 2, 3, 4]}, {"y": ["N", 5]}, {"W": w, "shape": np.array([-1, 24])})
    vjp = build_vjp(model, "y", ["x"])
    moved = [n for n in vjp.model.graph.node if n.op_type == "Transpose" and n.name.startswith("onnxsight/vjp")
             and len(n.attribute[0].ints) == 4]
    assert not moved
    x = RNG.standard_normal((3, 2, 3, 4)).astype(np.float32)
    cot = RNG.standard_normal((3, 5)).astype(np.float32)
    want = (cot @ w.T).reshape(3, 3, 4, 2).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(gradients(vjp, {"x": x}, cot)["x"], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gradients(vjp, {"x": x}, cot, ref_run)["x"], want, rtol=1e-5, atol=1e-6)
