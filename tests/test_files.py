"""Result files: written atomically, never replacing a user's file, readable like any other file."""

import os
import stat

import numpy as np
import pytest

from onnxsight.data.files import OutputDir
from onnxsight.errors import InvalidArgument


def test_results_get_the_permissions_of_a_plain_open_and_are_never_replaced(tmp_path):
    mask = os.umask(0o027)
    try:
        written = OutputDir(tmp_path).npy("maps.npy", np.zeros(3))
    finally:
        os.umask(mask)
    assert stat.S_IMODE(written.stat().st_mode) == 0o640  # not mkstemp's private 0600
    with pytest.raises(InvalidArgument, match="already exists"):
        OutputDir(tmp_path).npy("maps.npy", np.ones(3))
    np.testing.assert_array_equal(np.load(written), np.zeros(3))
    assert [p.name for p in tmp_path.iterdir()] == ["maps.npy"]  # no temporary file left behind
