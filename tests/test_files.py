"""Result files: written atomically, never replacing a user's file, readable like any other file."""

import errno
import os
import stat

import numpy as np
import pytest

from onnxsight.data import files
from onnxsight.data.files import OutputDir, atomic_open
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


@pytest.mark.parametrize("fail, code", [("mkstemp", errno.EROFS), ("write", errno.ENOSPC), ("replace", errno.ENOSPC)])
def test_a_refused_write_names_the_target_and_leaves_the_old_file(tmp_path, monkeypatch, fail, code):
    target = tmp_path / "maps.npy"
    target.write_bytes(b"old")

    def refuse(path, *_):  # as the OS refuses: about the temporary file, whose name means nothing to a user
        raise OSError(code, os.strerror(code), str(path))

    if fail == "mkstemp":  # a read-only folder
        monkeypatch.setattr(files.tempfile, "mkstemp", lambda dir, prefix: refuse(os.path.join(dir, prefix + "x1y2")))
    if fail == "replace":
        monkeypatch.setattr(files.os, "replace", refuse)
    with pytest.raises(OSError) as raised:
        with atomic_open(target) as handle:
            handle.write(b"new, half written")
            if fail == "write":
                raise OSError(code, os.strerror(code))  # a full disk: write() names no file
    assert (raised.value.errno, raised.value.filename) == (code, str(target))
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["maps.npy"]
