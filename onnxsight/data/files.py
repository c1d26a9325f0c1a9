"""Write results (PNG, .npy, JSON) without ever replacing what a user already has."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from onnxsight.errors import InvalidArgument


class OutputDir:
    """A results folder: files are written atomically and existing ones are kept unless ``force``."""

    def __init__(self, path: str | Path, force: bool = False):
        self.path = Path(path)
        self.force = force
        if self.path.exists() and not self.path.is_dir():
            raise InvalidArgument(f"output {self.path} exists and is not a folder")
        self.path.mkdir(parents=True, exist_ok=True)
        self.written: list[Path] = []

    def file(self, name: str) -> Path:
        """The path for ``name`` (made safe for a file system); refuses to replace an existing file."""
        target = self.path / safe_name(name)
        refuse_overwrite(target, self.force)
        self.written.append(target)
        return target

    def png(self, name: str, rgb: np.ndarray) -> Path:
        target = self.file(name)
        ok, encoded = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
        if not ok:
            raise InvalidArgument(f"cannot encode {target} as PNG")
        atomic_write(target, encoded.tobytes())
        return target

    def npy(self, name: str, array: np.ndarray) -> Path:
        target = self.file(name)
        with atomic_open(target) as handle:
            np.save(handle, array, allow_pickle=False)
        return target

    def json(self, name: str, value: Any) -> Path:
        target = self.file(name)
        atomic_write(target, (json.dumps(value, indent=2) + "\n").encode())
        return target


def safe_name(name: str) -> str:
    """A file name from a layer or image name: path separators and odd characters become '_'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "unnamed"


def refuse_overwrite(target: Path, force: bool) -> None:
    if target.exists() and not force:
        raise InvalidArgument(f"{target} already exists; pass --force (overwrite=True in Python) to replace it")


def atomic_write(target: Path, data: bytes) -> None:
    with atomic_open(target) as handle:
        handle.write(data)


def _umask() -> int:
    """The process umask (read by setting it, then restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class atomic_open:
    """Write to a temporary file beside ``target`` and move it into place only on success, with
    the permissions a plain ``open`` would give (the temporary file is private until then).

    A failed write (disk full, read-only folder) leaves ``target`` as it was and no temporary file,
    and raises an OSError naming ``target``, not the temporary file (a failed ``write`` names none).
    """

    def __init__(self, target: Path):
        self.target = Path(target)

    def __enter__(self):
        try:
            fd, self.temp = tempfile.mkstemp(dir=self.target.parent, prefix=f".{self.target.name}.")
        except OSError as error:
            raise _naming(error, self.target)
        self.handle = os.fdopen(fd, "wb")
        return self.handle

    def __exit__(self, kind, value, traceback):
        try:
            self.handle.close()
            if kind is None:
                os.chmod(self.temp, 0o666 & ~_umask())
                os.replace(self.temp, self.target)
        except OSError as error:
            os.unlink(self.temp)
            raise _naming(error, self.target)
        if kind is not None:
            os.unlink(self.temp)
            if issubclass(kind, OSError) and value.filename is None:
                raise _naming(value, self.target)
        return False


def _naming(error: OSError, target: Path) -> OSError:
    """The same error (errno and reason) about ``target``."""
    return OSError(error.errno, error.strerror, str(target)) if error.errno is not None else error
