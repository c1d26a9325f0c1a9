"""Batch jobs when things go wrong: data changed under an output folder, a garbled manifest, a file
system that refuses a write, a truncated image. Each ends in one red line and exit code 1, or in a
clean recomputation, never in results from other data or a traceback."""

from __future__ import annotations

import errno
import io
import json
import os
import pickle

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

import onnxsight
from onnxsight.cli.app import app
from onnxsight.data.files import atomic_open
from onnxsight.errors import InvalidArgument
from onnxsight.scale import shards
from onnxsight.scale.sources import open_source


def digit_folder(root, digits_data, suffix=".png"):
    """Six test digits as 8-bit files in class subfolders 0/ and 1/."""
    for i, image in enumerate(digits_data.x_test[:6]):
        (root / str(i % 2)).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / str(i % 2) / f"{i}{suffix}"), np.round(image[..., 0] * 255).astype(np.uint8))
    return root


def batch(*args):
    return CliRunner().invoke(app, ["batch", *map(str, args)])


def one_error_line(result) -> str:
    """The error line that ends stderr (after the progress bar of a job that started)."""
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    lines = result.stderr.strip().splitlines()
    assert [line for line in lines if "error" in line.lower()] == lines[-1:], result.stderr
    assert lines[-1].startswith("error:") and "Traceback" not in result.output, result.stderr
    return lines[-1]


def replace_keeping_size_and_mtime(path, data: bytes) -> None:
    stat = path.stat()
    assert len(data) == stat.st_size
    path.write_bytes(data)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


# ---- data changed under an output folder -----------------------------------------------
def test_a_changed_image_refuses_the_rerun_and_force_recomputes_it(mnist_onnx, digits_data, tmp_path):
    folder = digit_folder(tmp_path / "images", digits_data)
    args = [mnist_onnx, "--data", folder, "--shard-size", "4", "--workers", "1", "-o", tmp_path / "out"]
    assert "2 computed" in batch(*args).stdout
    with np.load(tmp_path / "out" / "shards" / "000000.npz") as shard:
        before = shard["maps"]
    cv2.imwrite(str(folder / "0" / "2.png"), np.full((28, 28), 255, np.uint8))  # the same name, other pixels
    line = one_error_line(batch(*args))
    assert "holds results of the same job on other data" in line and "--force" in line
    forced = batch(*args, "--force")
    assert forced.exit_code == 0 and "2 computed, 0 already done" in forced.stdout
    with np.load(tmp_path / "out" / "shards" / "000000.npz") as shard:
        assert not np.array_equal(shard["maps"][1], before[1]) and np.array_equal(shard["maps"][0], before[0])


def test_an_image_edit_that_keeps_size_and_mtime_changes_the_fingerprint(digits_data, tmp_path):
    folder = digit_folder(tmp_path, digits_data, ".bmp")  # uncompressed: other pixels, same size
    first = open_source(folder)
    limited = open_source(folder, limit=3).fingerprint
    image = folder / "1" / "5.bmp"
    encoded = cv2.imencode(".bmp", 255 - cv2.imread(str(image), cv2.IMREAD_UNCHANGED))[1].tobytes()
    replace_keeping_size_and_mtime(image, encoded)
    assert open_source(folder).fingerprint != first.fingerprint
    assert open_source(folder, limit=3).fingerprint == limited  # the sixth image is not read with limit 3
    (folder / "0" / "0.bmp").rename(folder / "0" / "9.bmp")  # order and names give labels
    assert open_source(folder, limit=3).fingerprint != limited


def _npy(path, x, y):
    np.save(path, x)
    return path


def _npz(path, x, y):
    np.savez(path, x_test=x, y_test=y)
    return path


def _cifar(folder, x, y):
    folder.mkdir()
    with open(folder / "test_batch", "wb") as file:
        pickle.dump({b"data": x.reshape(len(x), -1), b"labels": y.tolist()}, file)
    return folder / "test_batch"


@pytest.mark.parametrize("write, name", [(_npy, "x.npy"), (_npz, "x.npz"), (_cifar, "cifar")])
def test_array_sources_fingerprint_their_values_not_their_file_times(write, name, tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (5, 3, 32, 32), dtype=np.uint8), np.arange(5)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    path = tmp_path / "a" / name
    file = write(path, x, y)
    whole, limited = open_source(path).fingerprint, open_source(path, limit=4).fingerprint
    x[4, 0, 0, 0] ^= 1
    replace_keeping_size_and_mtime(file, write(tmp_path / "b" / name, x, y).read_bytes())
    assert open_source(path).fingerprint != whole
    assert open_source(path, limit=4).fingerprint == limited  # the fifth image is not read with limit 4


def test_a_changed_npy_refuses_to_resume_in_the_python_api(mnist_onnx, digits_data, tmp_path):
    x = digits_data.x_test[:6].copy()
    np.save(tmp_path / "x.npy", x)
    job = dict(shard_size=3, workers=1)
    onnxsight.run_batch(mnist_onnx, tmp_path / "x.npy", "saliency", tmp_path / "out", **job)
    x[5, 0, 0, 0] = 1.0
    edited = io.BytesIO()
    np.save(edited, x)
    replace_keeping_size_and_mtime(tmp_path / "x.npy", edited.getvalue())
    with pytest.raises(InvalidArgument, match="other data.*--force"):
        onnxsight.run_batch(mnist_onnx, tmp_path / "x.npy", "saliency", tmp_path / "out", **job)


# ---- a garbled manifest -----------------------------------------------------------------
@pytest.mark.parametrize("garbled", [b'{"format": "onnxsight-batch/1", "opt', b"\x89PNG\x00\xff", b"[1, 2]",
                                     b'{"job": {}, "shards": [{"index": 0}]}'])
def test_a_garbled_manifest_is_one_line_and_force_starts_over(mnist_onnx, digits_data, tmp_path, garbled):
    np.save(tmp_path / "x.npy", digits_data.x_test[:6])
    args = [mnist_onnx, "--data", tmp_path / "x.npy", "--shard-size", "3", "--workers", "1", "-o", tmp_path / "out"]
    assert batch(*args).exit_code == 0
    (tmp_path / "out" / "manifest.json").write_bytes(garbled)
    line = one_error_line(batch(*args))
    assert f"{tmp_path / 'out' / 'manifest.json'} is not a readable batch manifest" in line and "--force" in line
    forced = batch(*args, "--force")
    assert forced.exit_code == 0, forced.output
    assert "2 computed, 0 already done" in forced.stdout
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["complete"]


# ---- the file system refuses a write ----------------------------------------------------
def test_an_output_below_a_file_is_one_line_naming_the_path_and_errno(mnist_onnx, digits_data, tmp_path):
    np.save(tmp_path / "x.npy", digits_data.x_test[:4])
    (tmp_path / "notes.txt").write_text("not a folder")
    line = one_error_line(batch(mnist_onnx, "--data", tmp_path / "x.npy", "-o", tmp_path / "notes.txt" / "out"))
    assert line == f"error: {tmp_path / 'notes.txt' / 'out'}: [Errno {errno.ENOTDIR}] Not a directory"


def test_a_full_disk_mid_job_is_one_line_and_keeps_the_finished_shards(mnist_onnx, digits_data, tmp_path,
                                                                       monkeypatch):
    np.save(tmp_path / "x.npy", digits_data.x_test[:6])
    args = [mnist_onnx, "--data", tmp_path / "x.npy", "--shard-size", "2", "--workers", "1", "-o", tmp_path / "out"]
    written = shards.atomic_write

    def full_at_third_shard(target, data):
        if target.name == "000002.npz":
            with atomic_open(target) as handle:  # write() fails the way a full disk makes it fail
                handle.write(data[:100])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written(target, data)

    monkeypatch.setattr(shards, "atomic_write", full_at_third_shard)
    line = one_error_line(batch(*args))
    assert line == f"error: {tmp_path / 'out' / 'shards' / '000002.npz'}: [Errno {errno.ENOSPC}] No space left on device"
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [s["index"] for s in manifest["shards"]] == [0, 1] and not manifest["complete"]
    assert sorted(p.name for p in (tmp_path / "out" / "shards").iterdir()) == ["000000.npz", "000001.npz"]
    monkeypatch.undo()
    assert "1 computed, 2 already done" in batch(*args).stdout


# ---- a truncated image --------------------------------------------------------------------
def test_a_truncated_jpeg_in_an_image_folder_stops_the_job_naming_the_file(mnist_onnx, digits_data, tmp_path):
    folder = digit_folder(tmp_path / "images", digits_data, ".jpg")
    damaged = folder / "1" / "3.jpg"
    damaged.write_bytes(damaged.read_bytes()[:-40])
    line = one_error_line(batch(mnist_onnx, "--data", folder, "--workers", "1", "-o", tmp_path / "out"))
    assert line == (f"error: image {damaged} is truncated (its JPEG data ends before the end-of-image marker)")
