"""The rules of unary.py, rearrange.py and norms.py on whole models: Keras models whose conversion
emits them (against TensorFlow's own gradient and finite differences), the onnx wheel's
pytorch-operator models, DeepLIFT through them, and the configurations the case table cannot hold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxsight
from onnxsight.engine.autodiff import RULES, build_vjp
from onnxsight.engine.graph import runtime_compatible
from onnxsight.errors import UnsupportedOp

from .helpers import ort_run, relative_error

# onnxruntime's float32 gradient against TensorFlow's float32 one through ~30 ops: each side rounds
# at 6e-8 per op, the models' sums have at most a few hundred terms; 1e-4 is far below a wrong rule.
FLOAT32_TOLERANCE = 1e-4


def _save(tmp_path: Path, name: str, nodes, inputs, output, inits=(), opset=18) -> Path:
    graph = helper.make_graph(nodes, name, inputs, [output], list(inits))
    model = runtime_compatible(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))
    onnx.checker.check_model(model, full_check=True)
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, path)
    return path


def _ops(path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def _tf_gradient(keras_model, x, target):
    import tensorflow as tf

    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        score = tf.reduce_sum(keras_model(x, training=False) * tf.one_hot(target, keras_model.output_shape[-1]))
    return tape.gradient(score, x).numpy()


# -- Keras models whose tf2onnx conversion emits the new ops ----------------------------------------------
def _keras_cnn():
    """Conv → Mish (x·tanh(softplus x)) → space_to_depth → GroupNormalization → depth_to_space →
    softsign + sin → cumsum → tile → pooling → l2_normalize → Dense."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(8, 3, padding="same")(inp)
    h = keras.layers.Activation(lambda t: t * tf.tanh(tf.math.softplus(t)), name="mish")(h)
    h = keras.layers.Lambda(lambda t: tf.nn.space_to_depth(t, 2), name="s2d")(h)
    h = keras.layers.GroupNormalization(groups=4, name="gn")(h)
    h = keras.layers.Lambda(lambda t: tf.nn.depth_to_space(t, 2), name="d2s")(h)
    h = keras.layers.Lambda(lambda t: tf.nn.softsign(t) + tf.sin(t), name="soft")(h)
    h = keras.layers.Lambda(lambda t: tf.math.cumsum(t, axis=1), name="cumsum")(h)
    h = keras.layers.Lambda(lambda t: tf.tile(t, [1, 1, 1, 2]), name="tile")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    h = keras.layers.Lambda(lambda t: tf.math.l2_normalize(t, axis=-1), name="l2n")(h)
    return keras.Model(inp, keras.layers.Dense(5, name="logits")(h))


def _keras_dense():
    """Dense → (N, 4, 4) → gather_nd, reduce_prod + atan, cumsum (band_part) → Dense."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(1)
    inp = keras.Input((16,))
    s = keras.layers.Reshape((4, 4))(keras.layers.Dense(16)(inp))
    upper = keras.layers.Lambda(lambda t: tf.linalg.band_part(t, 0, -1), name="triu")(s)
    norm = keras.layers.Lambda(lambda t: tf.sqrt(tf.reduce_sum(t * t, axis=-1) + 1.0), name="norm")(upper)
    prod = keras.layers.Lambda(lambda t: tf.math.atan(tf.reduce_prod(t, axis=-1)), name="prod")(s)
    picked = keras.layers.Lambda(lambda t: tf.transpose(tf.gather_nd(tf.transpose(t, [1, 2, 0]), [[0, 1], [2, 3]])),
                                 name="gnd")(s)
    joined = keras.layers.Concatenate()([norm, prod, picked])
    return keras.Model(inp, keras.layers.Dense(3, name="logits")(joined))


@pytest.mark.parametrize("build, emitted, shape", [
    (_keras_cnn, {"DepthToSpace", "SpaceToDepth", "Tile", "CumSum", "Softsign", "Sin"}, (8, 8, 3)),
    (_keras_dense, {"GatherND", "ReduceProd", "Atan", "CumSum"}, (16,)),
], ids=["cnn", "dense"])
def test_keras_model_matches_tensorflow_gradient_and_gradcheck(tmp_path, build, emitted, shape):
    keras_model = build()
    path = onnxsight.convert_keras(keras_model, tmp_path / "model.onnx")
    assert emitted <= _ops(path), f"tf2onnx no longer emits {sorted(emitted - _ops(path))}: the test proves less"
    model = onnxsight.load(path, device="cpu")
    x = np.random.default_rng(0).standard_normal((4, *shape)).astype(np.float32)
    target = np.array([0, 1, 2, 1])
    ours = model.gradient(x, of="logits", target=target)["input"]
    theirs = _tf_gradient(keras_model, x, target)
    assert relative_error(ours, theirs) < FLOAT32_TOLERANCE
    if len(shape) == 3:
        saliency = onnxsight.saliency(model, x, target=target)
        np.testing.assert_allclose(saliency, np.abs(ours).max(axis=-1), rtol=1e-6)
    report = onnxsight.gradcheck(model, x[:2], directions=3)
    assert report.passed, report.rows


# -- the onnx wheel's pytorch-operator models --------------------------------------------------------------
OPERATORS = Path(onnx.__file__).parent / "backend" / "test" / "data" / "pytorch-operator"
OPERATOR_FOLDERS = sorted(p for p in OPERATORS.iterdir() if (p / "model.onnx").is_file())


def _operator_inputs(folder: Path) -> dict[str, np.ndarray]:
    model = onnx.load(str(folder / "model.onnx"))
    weights = {t.name for t in model.graph.initializer}
    names = [v.name for v in model.graph.input if v.name not in weights]
    arrays = []
    for k in range(len(names)):
        tensor = onnx.TensorProto()
        tensor.ParseFromString((folder / "test_data_set_0" / f"input_{k}.pb").read_bytes())
        arrays.append(numpy_helper.to_array(tensor))
    return dict(zip(names, arrays))


def _not_run(folder: Path) -> str | None:
    """Why onnxsight cannot take this model's inputs as a batch (None: it can)."""
    inputs = _operator_inputs(folder)
    if any(v.dtype != np.float32 for v in inputs.values()):
        return f"{', '.join(sorted({str(v.dtype) for v in inputs.values()}))} inputs (onnxsight feeds float32)"
    if len({v.shape[:1] for v in inputs.values()}) > 1:
        return "inputs of unrelated first dims (no batch axis)"
    if folder.name == "test_operator_sqrt" and (inputs["0"] < 0).any():
        return "its test input is partly negative: sqrt is NaN there"
    return None


NOT_RUN = {p.name: _not_run(p) for p in OPERATOR_FOLDERS if _not_run(p)}
RUN = [p for p in OPERATOR_FOLDERS if p.name not in NOT_RUN]


def test_every_pytorch_operator_model_has_its_rules():
    missing = {p.name: sorted(_ops(p / "model.onnx") - set(RULES) - {"Constant"}) for p in OPERATOR_FOLDERS}
    assert not any(missing.values()), {name: ops for name, ops in missing.items() if ops}
    print(f"\npytorch-operator models run: {len(RUN)} of {len(OPERATOR_FOLDERS)}; not run: {NOT_RUN}")


@pytest.mark.parametrize("folder", RUN, ids=[p.name for p in RUN])
def test_pytorch_operator_model_passes_gradcheck(folder):
    """As shipped (opsets 6-9, upgraded); Tile: test_operator_repeat*."""
    model = onnxsight.load(folder / "model.onnx", device="cpu")
    inputs = _operator_inputs(folder)
    x = inputs if len(inputs) > 1 else next(iter(inputs.values()))
    report = onnxsight.gradcheck(model, x, of="output", wrt=list(inputs), directions=4)
    assert report.passed, f"{folder.name}: {report.rows}"


# -- what the case table cannot hold -----------------------------------------------------------------------
def _vjp_of(path, x, wrt="x"):
    model = onnx.load(str(path))
    vjp = build_vjp(model, model.graph.output[0].name, [wrt])
    y = ort_run(model, {wrt: x})[0]
    cot = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
    return y, cot, ort_run(vjp.model, {wrt: x, vjp.cotangent: cot}, [vjp.gradients[wrt]])[0]


def test_celu_matches_float64_finite_differences(tmp_path):
    """ONNX has no float64 Celu: float32 onnxruntime against central differences of numpy's float64 Celu."""
    alpha = 0.7

    def celu(v):
        return np.maximum(v, 0) + np.minimum(0, alpha * (np.exp(v / alpha) - 1))

    path = _save(tmp_path, "celu", [helper.make_node("Celu", ["x"], ["y"], alpha=alpha)],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6])],
                 helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 6]))
    x = np.random.default_rng(0).standard_normal((3, 6)).astype(np.float32)
    _, cot, grad = _vjp_of(path, x)
    step, x64 = 1e-6, x.astype(np.float64)
    numeric = cot * (celu(x64 + step) - celu(x64 - step)) / (2 * step)  # elementwise: one difference per element
    assert relative_error(grad, numeric) < 1e-6  # float32 rounding of exp and the product (~1e-7)


def _depth_to_space_crd(x: np.ndarray, b: int) -> np.ndarray:
    """The ONNX spec's CRD formula."""
    n, c, h, w = x.shape
    t = x.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    return t.reshape(n, c // (b * b), h * b, w * b)


def test_depth_to_space_crd_with_dynamic_spatial_dims(tmp_path):
    """Unknown H, W: the gradient reads the block shape at run time; a permutation's gradient is
    the cotangent permuted back."""
    path = _save(tmp_path, "d2s", [helper.make_node("DepthToSpace", ["x"], ["y"], blocksize=2, mode="CRD")],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8, "h", "w"])],
                 helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2, "h2", "w2"]))
    x = np.random.default_rng(0).standard_normal((2, 8, 3, 5)).astype(np.float32)
    y, cot, grad = _vjp_of(path, x)
    np.testing.assert_array_equal(y, _depth_to_space_crd(x, 2))
    positions = _depth_to_space_crd(np.arange(x.size).reshape(x.shape), 2)
    expected = np.zeros(x.size, np.float32)
    expected[positions.ravel()] = cot.ravel()
    np.testing.assert_array_equal(grad, expected.reshape(x.shape))


def test_lp_pool_ceil_mode_equals_explicit_end_padding(tmp_path):
    """ceil_mode's partial windows sum what lies inside the input, as zero end padding does
    (onnx.reference's LpPool disagrees with onnxruntime there, so the table has no ceil row)."""
    x = np.random.default_rng(0).standard_normal((2, 3, 7, 6)).astype(np.float32)
    grads = []
    for name, attrs in (("ceil", {"ceil_mode": 1}), ("padded", {"pads": [0, 0, 1, 1]})):
        path = _save(tmp_path, name, [helper.make_node("LpPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], p=2,
                                                       **attrs)],
                     [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 7, 6])],
                     helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, 3, 3]))
        y, cot, grad = _vjp_of(path, x)
        grads.append((y, grad))
    (y_ceil, g_ceil), (y_padded, g_padded) = grads
    assert y_ceil.shape == y_padded.shape == (2, 3, 3, 3)
    np.testing.assert_allclose(y_ceil, y_padded, rtol=1e-6)
    np.testing.assert_allclose(g_ceil, g_padded, rtol=1e-6)


@pytest.mark.parametrize("op, opset, mode", [("Upsample", 9, "linear"), ("Upsample", 9, "nearest"),
                                             ("Resize", 10, "linear")])
def test_old_upsampling_is_differentiated_as_the_model_computes_it(tmp_path, op, opset, mode):
    """Upsample (opsets 7-9) and Resize-10 need no rule: the upgrade to the autodiff opset turns them into
    Resize, with their asymmetric coordinates. The map is linear, so the gradient is Σᵢ eᵢ·<cotangent, y(eᵢ)>
    over the basis images eᵢ, run through the model as shipped."""
    scales = numpy_helper.from_array(np.array([1, 1, 2, 3], np.float32), "scales")
    path = _save(tmp_path, "upsample", [helper.make_node(op, ["x", "scales"], ["y"], mode=mode)],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, 3, 3])],
                 helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2, 6, 9]), [scales], opset=opset)
    x = np.random.default_rng(0).standard_normal((1, 2, 3, 3)).astype(np.float32)
    _, cot, grad = _vjp_of(path, x)
    basis = np.eye(x.size, dtype=np.float32).reshape(x.size, *x.shape[1:])
    columns = ort_run(onnx.load(str(path)), {"x": basis})[0]
    expected = np.einsum("bchw,kchw->k", cot, columns).reshape(x.shape)
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)  # sums of <= 6 float32 products


def test_deeplift_sums_to_delta_through_the_new_ops(tmp_path):
    """Conv → Mish → DepthToSpace → Softsign → Tile → CumSum → Sin → Round+x → Gemm: every rule is
    rescaled or kept, so the attributions sum to score(x) − score(0)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 2, 3, 3)).astype(np.float32) * 0.5, "w"),
             numpy_helper.from_array(np.array([1, 1, 1, 2], np.int64), "repeats"),
             numpy_helper.from_array(np.array(3, np.int64), "axis"),
             numpy_helper.from_array(rng.standard_normal((64, 3)).astype(np.float32) * 0.3, "dense")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Mish", ["c"], ["m"]),
             helper.make_node("DepthToSpace", ["m"], ["d"], blocksize=2),
             helper.make_node("Softsign", ["d"], ["s"]),
             helper.make_node("Tile", ["s", "repeats"], ["t"]),
             helper.make_node("CumSum", ["t", "axis"], ["u"]),
             helper.make_node("Sin", ["u"], ["v"]),
             helper.make_node("Round", ["v"], ["r"]),
             helper.make_node("Add", ["v", "r"], ["a"]),
             helper.make_node("Flatten", ["a"], ["f"]),
             helper.make_node("MatMul", ["f", "dense"], ["logits"])]
    path = _save(tmp_path, "mlp", nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, 2, 2])],
                 helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 3]), inits)
    model = onnxsight.load(path, device="cpu")
    x = rng.standard_normal((3, 2, 2, 2)).astype(np.float32)
    attributions = onnxsight.deeplift(model, x, target=[0, 1, 2])
    scores = model.predict(x)[np.arange(3), [0, 1, 2]] - model.predict(np.zeros_like(x))[np.arange(3), [0, 1, 2]]
    # float32: the sums of 8 terms and the scores carry ~1e-6 relative rounding
    np.testing.assert_allclose(attributions.reshape(3, -1).sum(axis=1), scores, rtol=1e-4, atol=1e-5)


def test_lrp_conserves_relevance_through_the_new_rearrangements(tmp_path):
    """Bias-free Conv → Relu → DepthToSpace → Tile → SpaceToDepth → Trilu → Flatten → MatMul: the
    rearrangements keep their exact gradient under LRP, so LRP-ε's relevance sums to the logit."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 2, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([1, 1, 2, 1], np.int64), "repeats"),
             numpy_helper.from_array(rng.standard_normal((64, 3)).astype(np.float32), "dense")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("DepthToSpace", ["r"], ["d"], blocksize=2, mode="CRD"),
             helper.make_node("Tile", ["d", "repeats"], ["t"]),
             helper.make_node("SpaceToDepth", ["t"], ["s"], blocksize=2),
             helper.make_node("Trilu", ["s"], ["u"]),
             helper.make_node("Flatten", ["u"], ["f"]),
             helper.make_node("MatMul", ["f", "dense"], ["logits"])]
    path = _save(tmp_path, "lrp", nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, 2, 2])],
                 helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 3]), inits)
    model = onnxsight.load(path, device="cpu")
    x = rng.standard_normal((3, 2, 2, 2)).astype(np.float32)
    relevance = onnxsight.lrp(model, x, target=[0, 1, 2], rule="epsilon", epsilon=1e-9)
    logits = model.predict(x)[np.arange(3), [0, 1, 2]]
    # float32 sums of a few hundred terms; ε = 1e-9 takes nothing measurable
    np.testing.assert_allclose(relevance.reshape(3, -1).sum(axis=1), logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("node, shape, opset, message", [
    (helper.make_node("ScatterElements", ["x", "i", "x"], ["y"], reduction="mul"), [2, 2], 18, "reduction=mul"),
    (helper.make_node("LpNormalization", ["x"], ["y"], p=3), [2, 2], 18, "p=3"),
    (helper.make_node("ReduceL2", ["x"], ["y"], noop_with_empty_axes=1), [2, 2], 18, "noop_with_empty_axes"),
    (helper.make_node("GroupNormalization", ["x", "s", "s"], ["y"], num_groups=2), [1, 2, 2], 18, "before opset 21"),
], ids=["scatter-mul", "lp-normalization-p3", "reduce-noop", "group-normalization-opset18"])
def test_unsupported_configurations_name_the_problem(node, shape, opset, message):
    inits = [numpy_helper.from_array(np.array([[0, 1], [1, 0]], np.int64), "i"),
             numpy_helper.from_array(np.ones(2, np.float32), "s")]
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = runtime_compatible(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))
    with pytest.raises(UnsupportedOp, match=message):
        build_vjp(model, "y", ["x"])
