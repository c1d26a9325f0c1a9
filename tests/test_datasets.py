"""Dataset readers: a CIFAR-10 batches folder written the way the python version is pickled."""

import pickle

import numpy as np
import pytest

from onnxsight.data.datasets import CIFAR10_CLASSES, load_dataset
from onnxsight.errors import ModelFileError


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
