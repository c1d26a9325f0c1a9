"""Dataset-scale jobs on the local engine: streaming sources, mergeable reductions against the
in-memory dataset views, shards and manifest, resumption after an interruption, the CLI."""

from __future__ import annotations

import json
import pickle

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

import onnxsight
from onnxsight.cli.app import app
from onnxsight.errors import InvalidArgument
from onnxsight.kernels import stats
from onnxsight.kernels.images import prepare
from onnxsight.methods.dataset import class_saliency, top_k_images
from onnxsight.scale.reductions import Moments, TopK, UnitStats, tree_merge
from onnxsight.scale.shards import npz_bytes
from onnxsight.scale.sources import chunks, class_names, open_source


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def digits_npz(digits_data, tmp_path_factory):
    """The first 120 test digits and labels as an MNIST-style .npz of uint8 pixels."""
    path = tmp_path_factory.mktemp("data") / "mnist.npz"
    pixels = np.round(digits_data.x_test[:120, ..., 0] * 255).astype(np.uint8)
    np.savez(path, x_test=pixels, y_test=digits_data.y_test[:120], x_train=pixels[:4], y_train=digits_data.y_test[:4])
    return path


def shard_hashes(folder):
    manifest = json.loads((folder / "manifest.json").read_text())
    return [(s["index"], s["sha256"], s["partial_sha256"]) for s in manifest["shards"]], manifest


# ---- sources -------------------------------------------------------------------------
def test_npy_is_memory_mapped_and_read_by_range(tmp_path):
    images = np.random.default_rng(0).random((10, 28, 28, 1), dtype=np.float32)
    np.save(tmp_path / "x.npy", images)
    source = open_source(tmp_path / "x.npy")
    assert isinstance(source._arrays()[0], np.memmap) and not source.has_labels
    parts = list(chunks(source, 4))
    assert [(c.start, c.stop) for c in parts] == [(0, 4), (4, 8), (8, 10)]
    np.testing.assert_array_equal(np.concatenate([c.images for c in parts]), images)


def test_stored_npz_members_are_memory_mapped_and_compressed_ones_loaded(tmp_path):
    images, labels = np.arange(2 * 5 * 3, dtype=np.uint8).reshape(5, 2, 3), np.arange(5)
    np.savez(tmp_path / "plain.npz", x=images, y=labels)
    np.savez_compressed(tmp_path / "packed.npz", images=images, labels=labels)
    for name, mapped in (("plain.npz", True), ("packed.npz", False)):
        source = open_source(tmp_path / name, limit=4)
        assert isinstance(source._arrays()[0], np.memmap) == mapped and source.count == 4
        chunk = source.read(1, 3)
        np.testing.assert_array_equal(chunk.images, images[1:3])
        assert chunk.labels.tolist() == [1, 2]


def test_mnist_npz_splits_cifar_batches_and_labelled_image_folders(digits_npz, tmp_path):
    assert open_source(digits_npz).count == 120 and open_source(digits_npz, "train").count == 4
    rng = np.random.default_rng(1)
    batches = {"data_batch_1": 3, "data_batch_2": 2, "test_batch": 2}
    written = {}
    for name, count in batches.items():
        written[name] = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
        rows = written[name].transpose(0, 3, 1, 2).reshape(count, -1)
        with open(tmp_path / name, "wb") as file:
            pickle.dump({b"data": rows, b"labels": list(range(count))}, file)
    train = open_source(tmp_path, "train")
    chunk = train.read(2, 5)  # spans both training batch files
    np.testing.assert_array_equal(chunk.images, np.concatenate([written["data_batch_1"][2:], written["data_batch_2"]]) / np.float32(255))
    assert chunk.labels.tolist() == [2, 0, 1] and open_source(tmp_path).count == 2
    folder = tmp_path / "folder"
    for cls, count in (("cat", 2), ("dog", 1)):
        (folder / cls).mkdir(parents=True)
        for i in range(count):
            cv2.imwrite(str(folder / cls / f"{i}.png"), np.full((5, 7), 40 * i, np.uint8))
    source = open_source(folder)
    assert class_names(source) == ["cat", "dog"] and source.read(0, 3).labels.tolist() == [0, 0, 1]
    assert [im.shape for im in source.read(1, 3).images] == [(5, 7), (5, 7)]


def test_unknown_npz_layout_and_bad_limit_are_user_errors(tmp_path):
    np.savez(tmp_path / "two.npz", a=np.zeros((2, 3)), b=np.zeros((2, 3)))
    with pytest.raises(InvalidArgument, match="which array holds the images"):
        open_source(tmp_path / "two.npz")
    with pytest.raises(InvalidArgument, match="limit"):
        open_source("digits", limit=0)


# ---- reductions ----------------------------------------------------------------------
def test_moments_merged_in_a_tree_equal_the_mean_and_sem_of_all_maps():
    rng = np.random.default_rng(0)
    maps, groups = rng.normal(3.0, 2.0, (200, 5, 4)), rng.integers(0, 4, 200)
    cuts = [0, 7, 8, 50, 51, 120, 200]
    merged = tree_merge(Moments.of(maps[a:b], groups[a:b]) for a, b in zip(cuts, cuts[1:]))
    for i, g in enumerate(merged.groups):
        mean, sem = stats.mean_and_sem(maps[groups == g])
        np.testing.assert_allclose(merged.mean[i], mean, rtol=1e-12)
        np.testing.assert_allclose(merged.sem()[i], sem, rtol=1e-10)
        assert merged.count[i] == (groups == g).sum()


def test_top_k_merge_equals_a_stable_sort_of_everything_ties_included():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 5, (90, 3)).astype(np.float32)  # many ties
    parts = [TopK.of(scores[a:a + 20], np.arange(a, min(90, a + 20)), 6) for a in range(0, 90, 20)]
    merged = tree_merge(parts)
    indices, best = stats.top_k(scores, 6)
    np.testing.assert_array_equal(merged.indices, indices)
    np.testing.assert_array_equal(merged.scores, best)


def test_unit_statistics_merge_to_the_statistics_of_all_scores():
    scores = np.random.default_rng(2).normal(size=(77, 6)).astype(np.float32)
    merged = tree_merge(UnitStats.of(scores[a:a + 10]) for a in range(0, 77, 10))
    np.testing.assert_allclose(merged.moments.mean[0], scores.astype(np.float64).mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(merged.moments.std()[0], scores.astype(np.float64).std(axis=0), rtol=1e-10)
    np.testing.assert_array_equal(merged.minimum, scores.min(axis=0))
    np.testing.assert_array_equal(merged.maximum, scores.max(axis=0))


def test_npz_bytes_depend_only_on_the_arrays(tmp_path):
    arrays = {"maps": np.arange(6, dtype=np.float32).reshape(2, 3), "k": np.int64(3)}
    assert npz_bytes(arrays) == npz_bytes(dict(arrays))
    (tmp_path / "a.npz").write_bytes(npz_bytes(arrays))
    with np.load(tmp_path / "a.npz") as loaded:
        np.testing.assert_array_equal(loaded["maps"], arrays["maps"])
        assert loaded["k"].shape == ()


# ---- jobs against the in-memory views ------------------------------------------------
def test_class_saliency_from_shards_equals_the_in_memory_class_saliency(mnist_onnx, model, digits_data, tmp_path):
    result = onnxsight.run_batch(mnist_onnx, "digits", "saliency", tmp_path / "out", target="label",
                                 options={"modifier": "guided"}, shard_size=64, workers=1)
    assert result.shards == 8 and result.computed == 8 and result.images == len(digits_data.x_test)
    for cls in (0, 7):
        ours = class_saliency(model, digits_data.x_test, digits_data.y_test, cls, count=10_000)
        row = result.reductions["classes"].tolist().index(cls)
        assert result.reductions["count"][row] == len(ours.indices)
        np.testing.assert_allclose(result.reductions["mean"][row], ours.mean, rtol=1e-9, atol=1e-15)
        np.testing.assert_allclose(result.reductions["sem"][row], ours.sem, rtol=1e-9, atol=1e-15)
    with np.load(tmp_path / "out" / "shards" / "000001.npz") as shard:
        assert shard["index"].tolist() == list(range(64, 128))
        np.testing.assert_array_equal(shard["target"], digits_data.y_test[64:128])
        assert shard["maps"].shape == (64, 28, 28)


def test_activation_top_k_and_statistics_equal_the_in_memory_views(mnist_onnx, model, digits_npz, tmp_path):
    result = onnxsight.run_batch(mnist_onnx, digits_npz, "activations", tmp_path / "out", layers=["conv2d_2", "dense_1"],
                                 k=5, shard_size=50, workers=1)
    with np.load(digits_npz) as data:  # the uint8 digits, scaled as every image input is
        x = prepare(list(data["x_test"]), model.input_shape, model.input_layout)
    for layer in ("conv2d_2", "dense_1"):
        expected = top_k_images(model, x, layer, k=5)
        np.testing.assert_array_equal(result.reductions[f"{layer}.top_k_indices"], expected.indices)
        np.testing.assert_array_equal(result.reductions[f"{layer}.top_k_scores"], expected.scores)
    values = model.activations(x, ["dense_1"])["dense_1"].astype(np.float64)
    np.testing.assert_allclose(result.reductions["dense_1.mean"], values.mean(axis=0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(result.reductions["dense_1.std"], values.std(axis=0), rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(result.reductions["dense_1.max"], values.max(axis=0).astype(np.float32))


def test_two_worker_processes_write_the_same_bytes_as_one(mnist_onnx, digits_npz, tmp_path):
    options = {"smooth_samples": 3}  # noise seeded per shard, not per worker
    for workers in (1, 2):
        onnxsight.run_batch(mnist_onnx, digits_npz, "saliency", tmp_path / f"w{workers}", options=options,
                            shard_size=30, workers=workers)
    one, manifest = shard_hashes(tmp_path / "w1")
    two, other = shard_hashes(tmp_path / "w2")
    assert one == two and len(one) == 4 and manifest["reductions"] == other["reductions"]
    with np.load(tmp_path / "w1" / "shards" / "000000.npz") as a, np.load(tmp_path / "w1" / "shards" / "000001.npz") as b:
        assert not np.array_equal(a["maps"][:1], b["maps"][:1])


# ---- interruption, resumption, refusal -----------------------------------------------
def test_an_interrupted_run_resumes_without_losing_or_redoing_finished_shards(mnist_onnx, digits_npz, tmp_path):
    job = dict(options={"window": 7, "stride": 7}, target="label", shard_size=20, workers=1)
    onnxsight.run_batch(mnist_onnx, digits_npz, "occlusion", tmp_path / "whole", **job)
    seen = []

    def stop_after_two(record):
        seen.append(record.index)
        if len(seen) == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        onnxsight.run_batch(mnist_onnx, digits_npz, "occlusion", tmp_path / "cut", on_shard=stop_after_two, **job)
    finished, manifest = shard_hashes(tmp_path / "cut")
    assert [i for i, _, _ in finished] == [0, 1] and not manifest["complete"]
    (tmp_path / "cut" / "shards" / ".000002.npz.tmp123").write_bytes(b"half a shard")  # a write killed midway
    resumed = []
    result = onnxsight.run_batch(mnist_onnx, digits_npz, "occlusion", tmp_path / "cut",
                                 on_shard=lambda r: resumed.append(r.index), **job)
    assert resumed == [2, 3, 4, 5] and (result.computed, result.skipped) == (4, 2)
    assert shard_hashes(tmp_path / "cut")[0] == shard_hashes(tmp_path / "whole")[0]
    assert (tmp_path / "cut" / "reductions.npz").read_bytes() == (tmp_path / "whole" / "reductions.npz").read_bytes()


def test_a_damaged_shard_is_recomputed_and_a_different_job_is_refused_unless_forced(mnist_onnx, digits_npz, tmp_path):
    job = dict(shard_size=40, workers=1)
    onnxsight.run_batch(mnist_onnx, digits_npz, "gradcam", tmp_path, **job)
    before = shard_hashes(tmp_path)[0]
    (tmp_path / "shards" / "000001.npz").write_bytes(b"damaged")
    redone = []
    onnxsight.run_batch(mnist_onnx, digits_npz, "gradcam", tmp_path, on_shard=lambda r: redone.append(r.index), **job)
    assert redone == [1] and shard_hashes(tmp_path)[0] == before
    with pytest.raises(InvalidArgument, match="different job.*--force"):
        onnxsight.run_batch(mnist_onnx, digits_npz, "gradcam", tmp_path, options={"variant": "gradcam++"}, **job)
    result = onnxsight.run_batch(mnist_onnx, digits_npz, "gradcam", tmp_path, options={"variant": "gradcam++"},
                                 force=True, **job)
    assert result.computed == 3 and shard_hashes(tmp_path)[0] != before


def test_bad_jobs_fail_before_anything_is_written(mnist_onnx, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((4, 28, 28, 1), np.float32))
    with pytest.raises(InvalidArgument, match="needs labels"):
        onnxsight.run_batch(mnist_onnx, tmp_path / "x.npy", "saliency", tmp_path / "a", target="label")
    with pytest.raises(InvalidArgument, match="unknown layer 'conv9'"):
        onnxsight.run_batch(mnist_onnx, tmp_path / "x.npy", "activations", tmp_path / "b", layers=["conv9"])
    with pytest.raises(InvalidArgument, match="unknown method"):
        onnxsight.run_batch(mnist_onnx, tmp_path / "x.npy", "lime", tmp_path / "c")
    assert not any((tmp_path / name).exists() for name in "abc")


# ---- CLI -----------------------------------------------------------------------------
def test_batch_command_writes_shards_and_reductions_and_resumes(mnist_onnx, digits_npz, tmp_path):
    runner = CliRunner()
    args = ["batch", str(mnist_onnx), "--data", str(digits_npz), "--method", "ig", "--steps", "4",
            "--shard-size", "60", "--workers", "1", "-o", str(tmp_path / "ig")]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "2 computed, 0 already done" in first.stdout
    with np.load(tmp_path / "ig" / "shards" / "000000.npz") as shard:
        assert shard["maps"].shape == (60, 28, 28)  # ig's channels summed by default
    again = runner.invoke(app, args)
    assert "0 computed, 2 already done" in again.stdout
    wrong = runner.invoke(app, [*args[:-2], "--window", "3", "-o", str(tmp_path / "x")])
    assert wrong.exit_code == 1 and "--window applies to occlusion, not to ig" in wrong.output
