"""The Ray engine on a local two-CPU Ray cluster writes exactly what the local engine writes."""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest
import ray

import onnxsight
from onnxsight.errors import OnnxsightError


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray session for the module (starting one takes seconds)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def digits_npy(digits_data, tmp_path_factory):
    path = tmp_path_factory.mktemp("ray-data") / "digits.npy"
    np.save(path, digits_data.x_test[:90])
    return path


def outputs(folder):
    manifest = json.loads((folder / "manifest.json").read_text())
    return manifest["shards"], manifest["reductions"], (folder / "reductions.npz").read_bytes()


@pytest.mark.parametrize("method, job", [
    ("saliency", {"options": {"smooth_samples": 3, "modifier": "guided"}}),
    ("activations", {"layers": ["conv2d_1", "dense_1"], "k": 4}),
])
def test_ray_and_local_engines_write_the_same_bytes(ray_cluster, mnist_onnx, digits_npy, tmp_path, method, job):
    for engine in ("local", "ray"):
        result = onnxsight.run_batch(mnist_onnx, digits_npy, method, tmp_path / engine, engine=engine, workers=2,
                                     shard_size=25, **job)
        assert (result.computed, result.shards) == (4, 4)
    local, remote = outputs(tmp_path / "local"), outputs(tmp_path / "ray")
    assert local[0] == remote[0]  # every shard's results and partials, by sha256
    assert local[1:] == remote[1:]
    assert ray.is_initialized()  # a session the caller started is left running


def test_a_failing_shard_is_one_user_error_on_both_engines(ray_cluster, mnist_onnx, digits_data, tmp_path):
    x = digits_data.x_test[:40].copy()
    x[33, 0, 0, 0] = np.nan  # after the first shard, which the driver checks the job on
    np.save(tmp_path / "bad.npy", x)
    for engine in ("local", "ray"):
        with pytest.raises(OnnxsightError, match="NaN"):
            onnxsight.run_batch(mnist_onnx, tmp_path / "bad.npy", "gradcam", tmp_path / engine, engine=engine,
                                workers=2, shard_size=20)
        finished = json.loads((tmp_path / engine / "manifest.json").read_text())["shards"]
        assert [s["index"] for s in finished] in ([], [0])


def test_a_refused_write_is_one_line_naming_the_path_on_both_engines(ray_cluster, mnist_onnx, digits_npy, tmp_path):
    for engine, kind in (("local", OSError), ("ray", OnnxsightError)):
        (tmp_path / engine).mkdir()
        (tmp_path / engine / "shards").write_text("a file where the shards folder goes")
        with pytest.raises(kind) as raised:
            onnxsight.run_batch(mnist_onnx, digits_npy, "gradcam", tmp_path / engine, engine=engine, workers=2,
                                shard_size=45)
        message = str(raised.value)
        assert f"[Errno {errno.EEXIST}] File exists: '{tmp_path / engine / 'shards'}'" in message
        assert "\n" not in message
