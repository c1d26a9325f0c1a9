"""The fast paths of the iterative methods equal the plain formulas they replace: occluded copies written
through strided views, Score-CAM's masks, IG's path points written in place, copies built in chunks,
session graphs cut to what their outputs need, and SmoothGrad's kept noise draws."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnxsight
from onnxsight.engine.model import with_outputs
from onnxsight.kernels import attribution as ka
from onnxsight.kernels import cam as kc
from onnxsight.kernels import occlusion as ko
from onnxsight.kernels.colors import normalize_each
from onnxsight.methods import occlusion as occlusion_module
from onnxsight.methods import saliency as saliency_module

# Row-independent float32 runs in batches of other sizes: onnxruntime may pick other GEMM blockings, so
# the same row can differ by a few float32 roundings of its dot products (relative 1e-6 of the largest value).
RUN_SIZE_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def x(digits_data):
    return digits_data.x_test[:3]


# ---- occlusion ------------------------------------------------------------------------------------
@pytest.mark.parametrize("channel_axis", [3, 1])
@pytest.mark.parametrize("part", ["all", "mid-image to mid-image", "one image"])
def test_occluded_copies_equal_a_loop_over_copies(channel_axis, part):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (3, 2, 12, 10)).astype(np.float32)  # N, C, H, W
    fill = rng.uniform(0, 1, images.shape).astype(np.float32)
    rows, cols = ko.grid(12, 10, (4, 3), (3, 2), "cropped")
    windows = np.vstack([np.zeros((1, 4), int), ko.window_bounds(rows, cols)])
    count = len(windows)  # 4 × 5 windows and the copy that hides nothing
    start, stop = {"all": (0, 3 * count), "mid-image to mid-image": (5, 2 * count + 3), "one image": (count, 2 * count)}[part]
    want = []
    for copy in range(start, stop):  # copy r: image r // count with window r % count showing the fill
        image, (top, bottom, left, right) = copy // count, windows[copy % count]
        occluded = images[image].copy()
        occluded[:, top:bottom, left:right] = fill[image][:, top:bottom, left:right]
        want.append(occluded)
    layout = (lambda a: np.moveaxis(a, -3, -1)) if channel_axis == 3 else (lambda a: a)
    got = ko.occlude(np.ascontiguousarray(layout(images)), np.ascontiguousarray(layout(fill)), windows, start, stop,
                     channel_axis)
    np.testing.assert_array_equal(got, layout(np.stack(want)))


def test_window_bounds_are_the_covered_rows_and_columns():
    rows, cols = ko.grid(28, 28, (11, 5), (4, 4), "cropped")
    bounds = ko.window_bounds(rows, cols)
    for (top, bottom, left, right), r, c in zip(bounds, rows, cols):
        assert r[top:bottom].all() and r.sum() == bottom - top and c[left:right].all() and c.sum() == right - left


# ---- Score-CAM's masks ----------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["bilinear", "nearest", "align_corners"])
@pytest.mark.parametrize("channel_axis", [3, 1])
def test_scorecam_masks_equal_normalised_upsampled_maps_times_the_image(mode, channel_axis):
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (3, 20, 16, 3)).astype(np.float32)
    if channel_axis == 1:
        x = np.ascontiguousarray(np.moveaxis(x, 3, 1))
    maps = rng.uniform(-1, 2, (7, 5, 4))
    maps[2] = 0.25  # a constant map masks everything
    images = np.array([0, 0, 0, 1, 1, 2, 2])
    masks = normalize_each(kc.upsample(maps, (20, 16), mode))
    want = x[images] * np.expand_dims(masks, channel_axis)
    got = kc.masked_inputs(x, maps, images, (20, 16), mode, channel_axis)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    assert not got[2].any()


# ---- IG's path points ----------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["riemann_trapezoid", "gausslegendre", "riemann_middle"])
def test_path_points_equal_the_two_sided_broadcast_formula(method):
    rng = np.random.default_rng(2)
    x, start = (rng.uniform(-1, 1, (4, 6, 5, 3)).astype(np.float32) for _ in range(2))
    alphas, _ = ka.path_nodes(9, method)
    shaped = alphas.reshape(-1, 1, 1, 1, 1)
    near = start[None] + shaped.astype(np.float32) * (x - start)[None]
    far = x[None] - (1 - shaped).astype(np.float32) * (x - start)[None]
    got = ka.path_points(start, x, alphas)
    np.testing.assert_array_equal(got, np.where(shaped < 0.5, near, far))
    if method == "riemann_trapezoid":
        np.testing.assert_array_equal(got[0], start)
        np.testing.assert_array_equal(got[-1], x)


def test_integrated_gradients_one_row_per_run_equals_the_default_runs(model, x):
    default = onnxsight.integrated_gradients(model, x, target=[1, 2, 3], steps=12)
    np.testing.assert_allclose(onnxsight.integrated_gradients(model, x, target=[1, 2, 3], steps=12, batch_size=1),
                               default, rtol=RUN_SIZE_TOLERANCE, atol=RUN_SIZE_TOLERANCE * np.abs(default).max())


# ---- perturbed copies built in chunks -------------------------------------------------------------
@pytest.mark.parametrize("method", ["occlusion", "scorecam"])
def test_copies_built_one_run_at_a_time_equal_one_build(model, x, monkeypatch, method):
    def call(progress=None):
        if method == "occlusion":
            return onnxsight.occlusion(model, x, target=[1, 2, 3], window=5, stride=3, batch_size=40, progress=progress)
        return onnxsight.gradcam(model, x, target=[1, 2, 3], variant="scorecam", batch_size=40, progress=progress)

    whole = call()
    monkeypatch.setattr(occlusion_module, "CHUNK_BYTES", 1)  # each chunk is one run of 40 copies
    runs = []
    chunked = call(lambda done, total: runs.append((done, total)))
    np.testing.assert_allclose(chunked, whole, rtol=RUN_SIZE_TOLERANCE, atol=RUN_SIZE_TOLERANCE * np.abs(whole).max())
    total = runs[-1][1]
    assert [done for done, _ in runs] == [*range(40, total, 40), total]  # whole runs, only the last one short


# ---- session graphs -------------------------------------------------------------------------------
def test_a_layers_session_runs_only_the_nodes_it_needs(model, x):
    layer = model.tensor("max_pooling2d_2")
    cut = with_outputs(model.proto, [layer], model.values)
    needed = {n.name for n in model.proto.graph.node if layer in _descendant_outputs(model.proto.graph, n)}
    assert {n.name for n in cut.graph.node} == needed and len(needed) < len(model.proto.graph.node)
    assert {t.name for t in cut.graph.initializer} < {t.name for t in model.proto.graph.initializer}
    whole = onnxsight.load(_with_extra_output(model.proto, layer), device="cpu")
    np.testing.assert_array_equal(model.activations(x, ["max_pooling2d_2"])["max_pooling2d_2"],
                                  whole.run(x, [layer, whole.output_names[0]])[0])


def test_a_graph_with_a_subgraph_is_kept_whole():
    body = helper.make_graph([helper.make_node("Identity", ["outer"], ["y"])], "body", [],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["outer"]), helper.make_node("Neg", ["x"], ["other"]),
         helper.make_node("If", ["cond"], ["z"], then_branch=body, else_branch=body)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1]),
              helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    values = {v.name: v for v in [*graph.input, *graph.output]}
    assert len(with_outputs(proto, ["z"], values).graph.node) == 3  # "outer" is read inside the If only


def test_a_graph_whose_outputs_would_not_read_an_input_is_kept_whole():
    graph = helper.make_graph(
        [helper.make_node("Relu", ["a"], ["y"]), helper.make_node("Neg", ["b"], ["z"])], "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in "ab"],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in "yz"])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    values = {v.name: v for v in [*graph.input, *graph.output]}
    assert len(with_outputs(proto, ["y"], values).graph.node) == 2  # OpenVINO would drop the unread input "b"
    assert len(with_outputs(proto, ["y", "z"], values).graph.node) == 2


def _descendant_outputs(graph: onnx.GraphProto, node: onnx.NodeProto) -> set[str]:
    """Every tensor computed from ``node``'s outputs, and those outputs."""
    reached, changed = set(node.output), True
    while changed:
        changed = False
        for other in graph.node:
            if reached & set(other.input) and not set(other.output) <= reached:
                reached |= set(other.output)
                changed = True
    return reached


def _with_extra_output(proto: onnx.ModelProto, tensor: str) -> onnx.ModelProto:
    """``proto`` with ``tensor`` as a second graph output: the whole graph still runs."""
    result = onnx.ModelProto()
    result.CopyFrom(proto)
    result.graph.output.append(helper.make_tensor_value_info(tensor, TensorProto.FLOAT, None))
    return result


# ---- SmoothGrad's kept noise ----------------------------------------------------------------------
def test_kept_noise_draws_give_the_maps_of_fresh_draws(model, x, monkeypatch):
    first = onnxsight.saliency(model, x, target=1, smooth_samples=6, seed=3)
    kept = model.memo(("smoothgrad unit noise",), dict)
    assert any(key[1:3] == (6, 3) for key in kept)
    np.testing.assert_array_equal(onnxsight.saliency(model, x, target=1, smooth_samples=6, seed=3), first)
    for seed in range(10, 10 + 2 * saliency_module.KEPT_NOISE_SETS):
        onnxsight.saliency(model, x[:1], target=1, smooth_samples=2, seed=seed)
    assert 0 < len(kept) <= saliency_module.KEPT_NOISE_SETS
    monkeypatch.setattr(saliency_module, "KEPT_NOISE_BYTES", 0)  # nothing kept: drawn anew
    kept.clear()
    np.testing.assert_array_equal(onnxsight.saliency(model, x, target=1, smooth_samples=6, seed=3), first)
    assert not kept
