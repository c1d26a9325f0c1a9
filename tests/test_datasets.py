"""Dataset readers: a CIFAR-10 batches folder written the way the python version is pickled; image files cut short."""

import pickle

import cv2
import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from onnxsight.cli.app import app
from onnxsight.data.datasets import CIFAR10_CLASSES, load_dataset
from onnxsight.data.images import read_images
from onnxsight.errors import ModelFileError
from tests.foreign_models import nchw_cnn


def _write_batch(path, images_nhwc, labels):
    rows = images_nhwc.transpose(0, 3, 1, 2).reshape(len(images_nhwc), -1)
    with open(path, "wb") as file:
        pickle.dump({b"data": rows, b"labels": list(labels), b"batch_label": b"x"}, file)


def test_cifar10_folder_reads_channels_last_images_in_unit_range(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)
    for k in range(1, 3):
        _write_batch(tmp_path / f"data_batch_{k}", images[2 * (k - 1): 2 * k], [k, k + 1])
    _write_batch(tmp_path / "test_batch", images[4:], [7, 9])
    data = load_dataset(tmp_path)
    assert data.x_train.shape == (4, 32, 32, 3) and data.x_test.shape == (2, 32, 32, 3)
    np.testing.assert_array_equal(data.x_test, images[4:] / np.float32(255))
    assert data.y_train.tolist() == [1, 2, 2, 3] and data.y_test.tolist() == [7, 9]
    assert data.class_names == CIFAR10_CLASSES


def test_cifar10_folder_without_test_batch_names_what_is_missing(tmp_path):
    with pytest.raises(ModelFileError, match="test_batch"):
        load_dataset(tmp_path)


def test_a_file_that_is_not_a_pickled_batch_is_a_model_file_error(tmp_path):
    (tmp_path / "data_batch_1").write_bytes(b"not a pickle")
    (tmp_path / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(ModelFileError, match="not a CIFAR-10 python batch"):
        load_dataset(tmp_path)


def test_a_batch_file_that_would_run_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("ran",))

    with open(tmp_path / "data_batch_1", "wb") as file:
        pickle.dump({b"data": Payload(), b"labels": [0]}, file)
    _write_batch(tmp_path / "test_batch", np.zeros((1, 32, 32, 3), np.uint8), [0])
    with pytest.raises(ModelFileError, match="refusing to load builtins.print"):
        load_dataset(tmp_path)


# ---- image files --------------------------------------------------------------------------
@pytest.fixture()
def jpeg():
    """A 64x48 colour JPEG's bytes."""
    picture = cv2.resize((np.random.default_rng(0).random((6, 8, 3)) * 255).astype(np.uint8), (48, 64))
    return cv2.imencode(".jpg", picture)[1].tobytes()


def test_a_truncated_jpeg_is_refused_and_bytes_after_its_end_marker_are_not(tmp_path, jpeg):
    (tmp_path / "padded.jpg").write_bytes(jpeg + b"\0" * 32)
    assert read_images([tmp_path / "padded.jpg"])[0][0].shape == (64, 48, 3)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(jpeg[: len(jpeg) * 2 // 3])  # libjpeg would fill the missing rows and only warn
    with pytest.raises(ModelFileError, match=f"image {cut} is truncated"):
        read_images([cut])


def test_a_truncated_png_is_refused_naming_the_file(tmp_path):
    data = cv2.imencode(".png", np.arange(64 * 48, dtype=np.uint16).reshape(64, 48))[1].tobytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[:-20])
    with pytest.raises(ModelFileError, match=f"cannot decode image {cut}"):
        read_images([cut])


def test_commands_that_read_images_refuse_a_truncated_jpeg_in_one_line(tmp_path, jpeg):
    onnx.save(nchw_cnn(), tmp_path / "model.onnx")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(jpeg[:-200])
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "model.onnx"), str(cut)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines() == [
        f"error: image {cut} is truncated (its JPEG data ends before the end-of-image marker)"]
