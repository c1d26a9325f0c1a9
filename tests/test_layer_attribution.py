"""GradientSHAP and Captum's layer and neuron methods against float64 numpy references written from
their definitions (a tanh MLP and the NCHW CNN of tests.foreign_models, whose gradients are written
out by hand), completeness and conservation, seeds, batching and errors."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxsight
from onnxsight.errors import InvalidArgument, UnknownName
from onnxsight.methods import gradient_shap as gs_module
from onnxsight.methods.gradient_shap import gradient_shap
from onnxsight.methods.layer_attribution import (
    layer_conductance, layer_gradient_x_activation, layer_integrated_gradients, neuron_gradient,
    neuron_integrated_gradients,
)
from onnxsight.methods.common import target_scores
from tests.foreign_models import nchw_cnn, reference_forward

RTOL = 2e-5  # float32 gradients summed in float64, relative to the largest value of the map


def assert_close(got, want, what, rtol=RTOL):
    scale = np.abs(want).max()
    error = np.abs(np.asarray(got, np.float64) - want).max() / scale
    assert error <= rtol, f"{what}: max |error| / max |reference| = {error:.2e} > {rtol:.0e}"


# ---- a tanh MLP: x (N, 6) -> hidden = tanh(x W1 + b1) -> tanh(hidden W2 + b2) W3 = logits (N, 3)
D, H, C = 6, 5, 3


class Mlp:
    """The MLP's weights and its float64 forward and hand-written gradients."""

    def __init__(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        f32 = lambda a: a.astype(np.float32).astype(np.float64)  # noqa: E731  the weights the ONNX file holds
        self.W1, self.b1 = f32(rng.normal(0, 0.7, (D, H))), f32(rng.normal(0, 0.1, H))
        self.W2, self.b2 = f32(rng.normal(0, 0.7, (H, H))), f32(rng.normal(0, 0.1, H))
        self.W3 = f32(rng.normal(0, 1.0, (H, C)))

    def proto(self) -> onnx.ModelProto:
        nodes = [helper.make_node("MatMul", ["x", "W1"], ["z1"], name="fc1"),
                 helper.make_node("Add", ["z1", "b1"], ["z1b"], name="fc1_bias"),
                 helper.make_node("Tanh", ["z1b"], ["hidden"], name="hidden"),
                 helper.make_node("MatMul", ["hidden", "W2"], ["z2"], name="fc2"),
                 helper.make_node("Add", ["z2", "b2"], ["z2b"], name="fc2_bias"),
                 helper.make_node("Tanh", ["z2b"], ["v"], name="act2"),
                 helper.make_node("MatMul", ["v", "W3"], ["logits"], name="logits")]
        weights = [numpy_helper.from_array(getattr(self, n).astype(np.float32), n) for n in ("W1", "b1", "W2", "b2", "W3")]
        graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", D])],
                                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", C])], weights)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    def hidden(self, x):
        return np.tanh(x @ self.W1 + self.b1)

    def score(self, a, t):  # the logit t as a function of the hidden layer
        return np.tanh(a @ self.W2 + self.b2) @ self.W3[:, t]

    def grad_hidden(self, a, t):  # d logit_t / d hidden
        v = np.tanh(a @ self.W2 + self.b2)
        return ((1 - v ** 2) * self.W3[:, t]) @ self.W2.T

    def grad_input(self, x, t):  # d logit_t / d x
        a = self.hidden(x)
        return (self.grad_hidden(a, t) * (1 - a ** 2)) @ self.W1.T


def nodes(steps: int, method: str):
    """Quadrature nodes and weights on [0, 1], written out from the definitions (Captum's for GL)."""
    if method == "riemann_trapezoid":
        weights = np.full(steps, 1 / (steps - 1))
        weights[[0, -1]] /= 2
        return np.linspace(0, 1, steps), weights
    x, w = np.polynomial.legendre.leggauss(steps)
    return (x + 1) / 2, w / 2


@pytest.fixture(scope="module")
def mlp():
    return Mlp()


@pytest.fixture(scope="module")
def mlp_model(mlp):
    return onnxsight.load(mlp.proto(), device="cpu")


@pytest.fixture(scope="module")
def xs():
    return np.random.default_rng(1).normal(0, 1, (5, D)).astype(np.float32)


T = np.array([0, 1, 2, 1, 0])


# ---- the engine helper: a gradient of the graph fed at an intermediate tensor
def test_vjp_from_at_the_true_activation_is_the_gradient_with_respect_to_the_layer(mlp, mlp_model, xs):
    a = mlp_model.activations(xs, ["hidden"])["hidden"]
    cotangent = np.eye(C)[T]
    fed = mlp_model.vjp_from("hidden", a, "logits", cotangent)
    np.testing.assert_allclose(fed, mlp_model.gradient(xs, target=T, wrt=["hidden"])["hidden"], rtol=1e-6, atol=1e-7)
    elsewhere = a * 0.5 + 0.1  # any value: the gradient of the rest of the network there
    want = np.stack([mlp.grad_hidden(elsewhere[i].astype(np.float64), t) for i, t in enumerate(T)])
    assert_close(mlp_model.vjp_from("hidden", elsewhere, "logits", cotangent), want, "vjp_from")


# ---- Layer Integrated Gradients
def reference_layer_ig(mlp, x, t, baseline, steps, method):
    alphas, weights = nodes(steps, method)
    a_x, a_b = mlp.hidden(x.astype(np.float64)), mlp.hidden(baseline)
    out = []
    for i in range(len(x)):
        grads = np.stack([mlp.grad_hidden(a_b[i] + al * (a_x[i] - a_b[i]), t[i]) for al in alphas])
        out.append((a_x[i] - a_b[i]) * (weights @ grads))
    return np.stack(out)


@pytest.mark.parametrize("method", ["riemann_trapezoid", "gausslegendre"])
@pytest.mark.parametrize("baseline", ["black", 0.3])
def test_layer_ig_matches_the_numpy_path_integral_in_the_layer_space(mlp, mlp_model, xs, method, baseline):
    got = layer_integrated_gradients(mlp_model, xs, T, layer="hidden", steps=16, method=method, baseline=baseline)
    assert got.shape == (len(xs), H) and got.dtype == np.float32
    start = np.full(xs.shape, 0.0 if baseline == "black" else baseline)
    assert_close(got, reference_layer_ig(mlp, xs, T, start, 16, method), f"layer IG {method} {baseline}")


def test_layer_ig_is_complete_to_quadrature_accuracy(mlp, mlp_model, xs):
    got = layer_integrated_gradients(mlp_model, xs, T, layer="hidden", steps=64, method="gausslegendre")
    a_x, a_b = mlp.hidden(xs.astype(np.float64)), mlp.hidden(np.zeros_like(xs, np.float64))
    change = np.array([mlp.score(a_x[i], t) - mlp.score(a_b[i], t) for i, t in enumerate(T)])
    # a smooth integrand: 64-point Gauss-Legendre is exact to float32 rounding
    np.testing.assert_allclose(got.sum(axis=1), change, rtol=0, atol=1e-5 * np.abs(change).max())


# ---- Layer Conductance
def reference_conductance(mlp, x, t, baseline, steps, method):
    alphas, _ = nodes(steps + 1, method)
    out = []
    for i in range(len(x)):
        points = [baseline[i] + al * (x[i].astype(np.float64) - baseline[i]) for al in alphas]
        acts = np.stack([mlp.hidden(p) for p in points])
        grads = np.stack([mlp.grad_hidden(a, t[i]) for a in acts])
        out.append((grads[:-1] * np.diff(acts, axis=0)).sum(axis=0))
    return np.stack(out)


@pytest.mark.parametrize("method", ["riemann_trapezoid", "gausslegendre"])
def test_conductance_matches_the_numpy_sum_over_input_path_steps(mlp, mlp_model, xs, method):
    got = layer_conductance(mlp_model, xs, T, layer="hidden", steps=20, method=method)
    assert got.shape == (len(xs), H)
    assert_close(got, reference_conductance(mlp, xs, T, np.zeros(xs.shape), 20, method), f"conductance {method}")


def test_conductance_in_memory_bounded_blocks_equals_one_block(mlp_model, xs, monkeypatch):
    from onnxsight.methods import layer_attribution as module

    whole = layer_conductance(mlp_model, xs, T, layer="hidden", steps=9, batch_size=4)
    monkeypatch.setattr(module, "MAX_CHUNK_BYTES", 3 * (2 * xs.nbytes + 16 * H * len(xs)))  # blocks of 3 points
    np.testing.assert_allclose(layer_conductance(mlp_model, xs, T, layer="hidden", steps=9), whole,
                               rtol=1e-6, atol=1e-7 * np.abs(whole).max())


def test_conductance_sums_to_the_score_change_as_steps_grow(mlp, mlp_model, xs):
    a_x, a_b = mlp.hidden(xs.astype(np.float64)), mlp.hidden(np.zeros_like(xs, np.float64))
    change = np.array([mlp.score(a_x[i], t) - mlp.score(a_b[i], t) for i, t in enumerate(T)])
    gaps = {steps: np.abs(layer_conductance(mlp_model, xs, T, layer="hidden", steps=steps).sum(axis=1) - change).max()
            for steps in (50, 800)}
    # a left Riemann sum of the path integral of the layer's gradient: its error falls as 1/steps
    assert 12 < gaps[50] / gaps[800] < 20, gaps
    assert gaps[800] <= 5e-3 * np.abs(change).max(), gaps


# ---- Layer Gradient x Activation
def test_layer_gradient_x_activation_is_the_hand_gradient_times_the_activation(mlp, mlp_model, xs):
    a = mlp.hidden(xs.astype(np.float64))
    want = np.stack([mlp.grad_hidden(a[i], t) * a[i] for i, t in enumerate(T)])
    assert_close(layer_gradient_x_activation(mlp_model, xs, T, layer="hidden"), want, "gradient x activation")
    assert_close(layer_gradient_x_activation(mlp_model, xs, T, layer="hidden", batch_size=2), want, "in runs of 2")


# ---- Neuron Gradient and Neuron Integrated Gradients
def test_neuron_gradient_and_ig_of_a_hidden_unit(mlp, mlp_model, xs):
    x = xs.astype(np.float64)
    a = mlp.hidden(x)
    want = (1 - a[:, 3:4] ** 2) * mlp.W1[:, 3]
    assert_close(neuron_gradient(mlp_model, xs, layer="hidden", neuron=3), want, "neuron gradient (int)")
    assert_close(neuron_gradient(mlp_model, xs, layer="hidden", neuron=(3,)), want, "neuron gradient (tuple)")
    alphas, weights = nodes(32, "gausslegendre")
    integral = sum(w * (1 - mlp.hidden(al * x)[:, 3:4] ** 2) * mlp.W1[:, 3] for al, w in zip(alphas, weights))
    got = neuron_integrated_gradients(mlp_model, xs, layer="hidden", neuron=3, steps=32, method="gausslegendre")
    assert_close(got, x * integral, "neuron IG")
    change = a[:, 3] - mlp.hidden(np.zeros_like(x))[:, 3]
    np.testing.assert_allclose(got.sum(axis=1), change, atol=1e-5 * np.abs(change).max())


@pytest.fixture(scope="module")
def cnn():
    return onnxsight.load(nchw_cnn(), device="cpu")


@pytest.fixture(scope="module")
def cnn_x():
    return np.random.default_rng(2).normal(0, 1, (3, 3, 8, 8)).astype(np.float32)


def linear_gradient(proto, x, value):
    """The gradient of a function linear in x (of reference_forward's tensors), by unit steps."""
    flat = x.reshape(len(x), -1).astype(np.float64)
    base = value(reference_forward(proto, flat.reshape(x.shape)))
    steps = np.stack([value(reference_forward(proto, (flat + np.eye(flat.shape[1])[k]).reshape(x.shape))) - base
                      for k in range(flat.shape[1])], axis=1)
    return steps.reshape(x.shape)


def test_an_int_neuron_is_its_channel_summed_and_a_tuple_one_position(cnn, cnn_x):
    proto = nchw_cnn()
    channel = linear_gradient(proto, cnn_x, lambda t: t["conv1"][:, 2].sum(axis=(1, 2)))
    assert_close(neuron_gradient(cnn, cnn_x, layer="conv1", neuron=2), channel, "channel 2 of conv1 (NCHW)")
    one = linear_gradient(proto, cnn_x, lambda t: t["conv1"][:, 1, 4, 5])
    assert_close(neuron_gradient(cnn, cnn_x, layer="conv1", neuron=(1, 4, 5)), one, "conv1[1, 4, 5]")
    # conv1 is linear in x: IG is (x - b) times that gradient at any number of steps
    assert_close(neuron_integrated_gradients(cnn, cnn_x, layer="conv1", neuron=2, steps=3, method="riemann_middle"),
                 cnn_x * channel, "neuron IG of a linear neuron")


def test_cnn_layer_ig_at_the_pool_is_exact_and_conductance_matches_its_hand_gradient(cnn, cnn_x):
    proto = nchw_cnn()
    w = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in proto.graph.initializer}
    ref, base = reference_forward(proto, cnn_x.astype(np.float64)), reference_forward(proto, np.zeros(cnn_x.shape))
    t = ref["fc"].argmax(axis=1)
    # pool1 -> Flatten -> Gemm is linear: layer IG = (a(x) - a(b)) * the fc row, complete at any step count
    want = (ref["pool1"] - base["pool1"]) * w["fc_w"][t].reshape(-1, 4, 4, 4)
    assert_close(layer_integrated_gradients(cnn, cnn_x, layer="pool1", steps=2), want, "layer IG at pool1")
    # conductance of conv1: d fc_t / d conv1 = relu'(conv1) routed through each 2x2 max to the fc row
    alphas = np.linspace(0, 1, 13)
    acts, grads = [], []
    for al in alphas:
        r = reference_forward(proto, al * cnn_x.astype(np.float64))
        windows = r["relu1"].reshape(-1, 4, 4, 2, 4, 2).transpose(0, 1, 2, 4, 3, 5).reshape(-1, 4, 4, 4, 4)
        first_max = np.eye(4)[windows.argmax(axis=-1)]  # the gradient goes to the window's max
        routed = (first_max * w["fc_w"][t].reshape(-1, 4, 4, 4, 1)).reshape(-1, 4, 4, 4, 2, 2)
        routed = routed.transpose(0, 1, 2, 4, 3, 5).reshape(-1, 4, 8, 8)
        acts.append(r["conv1"])
        grads.append(routed * (r["conv1"] > 0))
    acts, grads = np.stack(acts), np.stack(grads)
    want = (grads[:-1] * np.diff(acts, axis=0)).sum(axis=0)
    assert_close(layer_conductance(cnn, cnn_x, layer="conv1", steps=12), want, "conductance at conv1")


# ---- the seed-000 CNN (NHWC, trained): conservation on a real model
def test_seed_cnn_layer_ig_and_conductance_conserve_the_score_change(model, digits_data):
    x = digits_data.x_test[:4]
    layer = [layer.name for layer in model.layers if layer.shape is not None and len(layer.shape) == 4][-1]
    change = target_scores(model, x, model.resolve_target(x, "predicted")) - \
        target_scores(model, np.zeros_like(x), model.resolve_target(x, "predicted"))
    ig = layer_integrated_gradients(model, x, layer=layer, steps=64)
    assert ig.shape == (4, *model.layer(layer).shape[1:])
    gap = np.abs(ig.reshape(4, -1).sum(axis=1) - change)
    assert (gap <= 0.01 * np.abs(change)).all(), f"layer IG gap / |change| = {gap / np.abs(change)}"
    conductance = layer_conductance(model, x, layer=layer, steps=64)
    gap = np.abs(conductance.reshape(4, -1).sum(axis=1) - change)
    assert (gap <= 0.03 * np.abs(change)).all(), f"conductance gap / |change| = {gap / np.abs(change)}"
    # an int neuron of an NHWC layer is its channel (last axis) summed: the mean's gradient times H*W
    shape = model.layer(layer).shape
    mean = model.gradient(x, of=layer, target=1)["input"]
    np.testing.assert_allclose(neuron_gradient(model, x, layer=layer, neuron=1), mean * shape[1] * shape[2],
                               rtol=1e-5, atol=1e-6 * np.abs(mean).max() * shape[1] * shape[2])


# ---- GradientSHAP
def linear_model(w: np.ndarray, c: np.ndarray) -> onnxsight.Model:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["mm"], name="mm"), helper.make_node("Add", ["mm", "c"], ["y"], name="y")],
        "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", w.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", w.shape[1]])],
        [numpy_helper.from_array(w.astype(np.float32), "w"), numpy_helper.from_array(c.astype(np.float32), "c")])
    return onnxsight.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), device="cpu")


def test_gradient_shap_on_a_linear_model_is_w_times_x_minus_the_mean_baseline():
    rng = np.random.default_rng(3)
    w, c = rng.normal(size=(D, C)), rng.normal(size=C)
    m = linear_model(w, c)
    x = rng.normal(size=(4, D)).astype(np.float32)
    w32 = w.astype(np.float32).astype(np.float64)
    t = np.array([2, 0, 1, 2])
    one = rng.normal(size=D)
    # one baseline, no noise: exactly w ⊙ (x − b), whatever α
    assert_close(gradient_shap(m, x, t, baselines=one, samples=3), w32[:, t].T * (x - one.astype(np.float32)),
                 "one baseline")
    # K baselines: the expectation over the uniform draw is w ⊙ (x − mean b); noise averages out
    many = rng.normal(size=(3, D))
    samples = 4000
    got = gradient_shap(m, x, t, baselines=many, samples=samples, stdevs=0.2)
    want = w32[:, t].T * (x - many.mean(axis=0))
    spread = np.abs(w32[:, t].T) * np.sqrt(many.var(axis=0) + 0.2 ** 2)  # std of one sample's attribution
    assert (np.abs(got - want) <= 5 * spread / np.sqrt(samples)).all()


def reference_gradient_shap(mlp, x, t, references, samples, stdevs, seed):
    """Captum's GradientShap written out with the draws gradient_shap documents, in float64."""
    rng = np.random.default_rng(seed)
    picked = rng.integers(0, len(references), size=(samples, len(x)))
    alphas = rng.uniform(0.0, 1.0, size=(samples, len(x)))
    noisy = x[None] + rng.normal(0.0, stdevs, size=(samples, *x.shape)) if stdevs else np.broadcast_to(x, (samples, *x.shape))
    total = np.zeros(x.shape)
    for s in range(samples):
        b = references[picked[s]]
        points = b + alphas[s][:, None] * (noisy[s] - b)
        grads = np.stack([mlp.grad_input(points[i:i + 1], t[i])[0] for i in range(len(x))])
        total += grads * (noisy[s] - b)
    return total / samples


def test_gradient_shap_matches_the_numpy_definition_with_the_same_draws(mlp, mlp_model, xs, monkeypatch):
    references = np.random.default_rng(4).normal(0, 0.5, (4, D))
    want = reference_gradient_shap(mlp, xs.astype(np.float64), T, references, 7, 0.1, seed=5)
    got = gradient_shap(mlp_model, xs, T, baselines=references, samples=7, stdevs=0.1, seed=5)
    assert got.shape == xs.shape and got.dtype == np.float32
    assert_close(got, want, "GradientSHAP", rtol=1e-4)  # the noisy input is rounded to float32 first
    monkeypatch.setattr(gs_module, "MAX_CHUNK_BYTES", 1)  # one sample at a time, the same draws unless noise
    no_noise = reference_gradient_shap(mlp, xs.astype(np.float64), T, references, 7, 0.0, seed=5)
    assert_close(gradient_shap(mlp_model, xs, T, baselines=references, samples=7, seed=5, batch_size=3), no_noise,
                 "GradientSHAP in chunks and runs of 3")


def test_gradient_shap_seeds_repeat_and_differ(mlp_model, xs):
    references = np.random.default_rng(4).normal(0, 0.5, (4, D))
    first = gradient_shap(mlp_model, xs, T, baselines=references, samples=4, stdevs=0.1, seed=1)
    np.testing.assert_array_equal(gradient_shap(mlp_model, xs, T, baselines=references, samples=4, stdevs=0.1, seed=1),
                                  first)
    assert not np.allclose(gradient_shap(mlp_model, xs, T, baselines=references, samples=4, stdevs=0.1, seed=2), first)


def test_gradient_shap_on_images_reduces_channels(model, digits_data):
    x = digits_data.x_test[:3]
    full = gradient_shap(model, x, samples=2, baselines=np.zeros((2, 28, 28, 1)), stdevs=0.1)
    assert full.shape == x.shape
    summed = gradient_shap(model, x, samples=2, baselines=np.zeros((2, 28, 28, 1)), stdevs=0.1, reduce="sum")
    np.testing.assert_allclose(summed, full.sum(axis=3), rtol=1e-5, atol=1e-6 * np.abs(summed).max())


# ---- errors
@pytest.mark.parametrize("call,error,message", [
    (lambda m, x: layer_integrated_gradients(m, x, 0, layer="hiden"), UnknownName, "hiden"),
    (lambda m, x: layer_conductance(m, x, 0, layer="hidden", steps=0), InvalidArgument, "steps"),
    (lambda m, x: layer_integrated_gradients(m, x, 0, layer="v", of="hidden"), InvalidArgument,
     "'hidden' does not depend on 'v'"),
    (lambda m, x: neuron_gradient(m, x, layer="hidden", neuron=5), InvalidArgument,
     r"neuron 5 out of range: layer 'hidden' has 5 channels \(output shape \(N, 5\)"),
    (lambda m, x: neuron_gradient(m, x, layer="hidden", neuron=(1, 2)), InvalidArgument,
     r"index tuple into layer 'hidden'.s output shape \(5\)"),
    (lambda m, x: neuron_integrated_gradients(m, x, layer="hidden", neuron="a"), InvalidArgument, "neuron"),
    (lambda m, x: gradient_shap(m, x, 0, baselines=np.zeros((2, D + 1))), InvalidArgument,
     r"baselines for input 'x' must have shape \(K, 6\), got \(2, 7\)"),
    (lambda m, x: gradient_shap(m, x, 0, samples=0), InvalidArgument, "samples"),
    (lambda m, x: gradient_shap(m, x, 0, stdevs=-1.0), InvalidArgument, "stdevs"),
    (lambda m, x: gradient_shap(m, x, 0, baselines="grey"), InvalidArgument, "baselines"),
])
def test_bad_layers_neurons_and_options_are_named(mlp_model, xs, call, error, message):
    with pytest.raises(error, match=message):
        call(mlp_model, xs)
