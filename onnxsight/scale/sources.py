"""Streaming dataset readers: any index range of an image folder, a .npy (memory-mapped), a .npz,
an MNIST .npz, a CIFAR-10 batches folder or the bundled digits, without loading the whole set."""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from onnxsight.data.datasets import cifar10_batch, digits
from onnxsight.data.images import IMAGE_SUFFIXES, check_complete, read_images
from onnxsight.errors import InvalidArgument, ModelFileError

SPLITS = ("test", "train")
# Keys tried in a .npz, in order: MNIST-style per split, then generic names.
_IMAGE_KEYS = {"test": ("x_test", "x", "images"), "train": ("x_train", "x", "images")}
_LABEL_KEYS = {"test": ("y_test", "y", "labels"), "train": ("y_train", "y", "labels")}
_BLOCK_BYTES = 2**26  # read at a time while fingerprinting an array source


@dataclass(frozen=True)
class Chunk:
    """Images ``start``..``stop`` of a source: an (n, ...) array or a list of differently sized
    images (image folders), and their integer labels when the source has them."""

    start: int
    stop: int
    images: np.ndarray | list[np.ndarray]
    labels: np.ndarray | None


@dataclass
class Source:
    """A dataset readable by index range; small and picklable (workers re-open the files)."""

    kind: str
    path: str
    split: str
    count: int
    has_labels: bool
    fingerprint: str = ""  # sha256 of what a job reads (see ``fingerprint``), set by ``open_source``
    files: list[str] = field(default_factory=list)  # image folder files or CIFAR-10 batch files
    file_counts: list[int] = field(default_factory=list)  # images per CIFAR-10 batch file
    keys: tuple[str | None, str | None] = (None, None)  # .npz image and label keys
    _cache: dict = field(default_factory=dict, repr=False)

    def __getstate__(self):
        return {**self.__dict__, "_cache": {}}

    def read(self, start: int, stop: int) -> Chunk:
        """Images ``start``..``stop`` (stop exclusive) and their labels."""
        if not 0 <= start < stop <= self.count:
            raise InvalidArgument(f"range {start}..{stop} is outside the {self.count} images of {self.path}")
        images, labels = _READERS[self.kind](self, start, stop)
        return Chunk(start, stop, images, None if labels is None else np.asarray(labels, np.int64).ravel())

    def _arrays(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The whole set as (possibly memory-mapped) arrays, opened once per process."""
        if "arrays" not in self._cache:
            self._cache["arrays"] = _OPENERS[self.kind](self)
        return self._cache["arrays"]


def chunks(source: Source, size: int, start: int = 0) -> Iterator[Chunk]:
    """Consecutive chunks of at most ``size`` images from ``start`` to the end of ``source``."""
    if size < 1:
        raise InvalidArgument(f"chunk size must be at least 1, got {size}")
    for first in range(start, source.count, size):
        yield source.read(first, min(source.count, first + size))


def open_source(spec: str | Path, split: str = "test", limit: int | None = None) -> Source:
    """The source named by ``spec``: "digits", a folder of images (class subfolders give labels), a
    CIFAR-10 batches folder, a .npy array, or a .npz (MNIST-style x_test/y_test, x/y, images/labels,
    or a single array). ``split`` picks test or train where the data has both; ``limit`` keeps the
    first images. Reads the whole (limited) set once to fingerprint its contents."""
    if split not in SPLITS:
        raise InvalidArgument(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if limit is not None and limit < 1:
        raise InvalidArgument(f"limit must be at least 1, got {limit}")
    source = _open(str(spec), split)
    if source.count == 0:
        raise InvalidArgument(f"{spec} holds no images")
    if limit is not None and limit < source.count:
        source.count = limit
    source.fingerprint = fingerprint(source)
    return source


def fingerprint(source: Source) -> str:
    """A sha256 of the data a job on ``source`` reads, so that any change to it, even one that keeps
    sizes and modification times, makes a different job: the bytes of the first ``count`` files of an
    image folder with the names of all of them (they give the labels), else the images and labels
    as arrays (dtype, shape and values), whatever file they come from."""
    digest = hashlib.sha256(f"{source.kind}:{source.split}:{source.count}\n".encode())
    if source.kind == "folder":
        for i, file in enumerate(map(Path, source.files)):
            digest.update(f"{file.relative_to(source.path)}\n".encode())
            if i < source.count:
                data = file.read_bytes()
                check_complete(file, data)
                digest.update(hashlib.sha256(data).digest())
        return digest.hexdigest()
    rows = max(1, _BLOCK_BYTES // source.read(0, 1).images[0].nbytes)
    for first in range(0, source.count, rows):
        chunk = source.read(first, min(source.count, first + rows))
        for array in (chunk.images, chunk.labels):
            if array is not None:
                digest.update(f"{array.dtype.str}{array.shape}".encode())
                digest.update(np.ascontiguousarray(array))
    return digest.hexdigest()


def _open(spec: str, split: str) -> Source:
    if spec == "digits":
        count = len(_digits_split(split)[0])
        return Source("digits", "digits", split, count, True)
    path = Path(spec)
    if path.is_dir():
        batches = sorted(path.glob("data_batch_*")) if split == "train" else [path / "test_batch"]
        if (path / "test_batch").is_file() and all(f.is_file() for f in batches):
            return _cifar(path, split, batches)
        return _folder(path, split)
    if not path.is_file():
        raise ModelFileError(f"data not found: {path}")
    if path.suffix.lower() == ".npy":
        images = _load_npy(path)
        return Source("npy", str(path), split, len(images), False)
    if path.suffix.lower() == ".npz":
        return _npz(path, split)
    raise InvalidArgument(
        f"--data takes 'digits', an image or CIFAR-10 folder, a .npy or a .npz file, got {spec}"
    )


# ---- the bundled digits ----------------------------------------------------------------
def _digits_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    data = digits()
    return (data.x_test, data.y_test) if split == "test" else (data.x_train, data.y_train)


def _read_arrays(source: Source, start: int, stop: int):
    images, labels = source._arrays()
    return np.asarray(images[start:stop]), None if labels is None else labels[start:stop]


# ---- .npy and .npz -----------------------------------------------------------------------
def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ModelFileError(f"{path} is not a readable .npy file: {error}") from error


def _npz(path: Path, split: str) -> Source:
    try:
        with np.load(path, allow_pickle=False) as data:
            names = list(data.files)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise ModelFileError(f"{path} is not a readable .npz file: {error}") from error
    image_key = next((k for k in _IMAGE_KEYS[split] if k in names), names[0] if len(names) == 1 else None)
    if image_key is None:
        raise InvalidArgument(
            f"{path}: cannot tell which array holds the images ({', '.join(names)}); "
            f"use one of {', '.join(_IMAGE_KEYS[split])} (and {', '.join(_LABEL_KEYS[split])} for labels)"
        )
    label_key = next((k for k in _LABEL_KEYS[split] if k in names), None)
    source = Source("npz", str(path), split, 0, label_key is not None, keys=(image_key, label_key))
    images, labels = source._arrays()
    if labels is not None and len(labels) != len(images):
        raise InvalidArgument(f"{path}: {len(labels)} labels ({label_key}) for {len(images)} images ({image_key})")
    source.count = len(images)
    return source


def _npz_member(path: Path, key: str) -> np.ndarray:
    """A member of a .npz memory-mapped when it is stored uncompressed, else loaded."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(f"{key}.npy")
        if info.compress_type == zipfile.ZIP_STORED:
            with path.open("rb") as file:
                file.seek(info.header_offset + 26)
                name_length, extra_length = np.frombuffer(file.read(4), "<u2")
                file.seek(info.header_offset + 30 + int(name_length) + int(extra_length))
                version = np.lib.format.read_magic(file)
                header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, fortran, dtype = header(file)
                if not dtype.hasobject:
                    order = "F" if fortran else "C"
                    return np.memmap(path, dtype, mode="r", offset=file.tell(), shape=shape, order=order)
    with np.load(path, allow_pickle=False) as data:
        return data[key]


def _open_npz(source: Source):
    image_key, label_key = source.keys
    path = Path(source.path)
    if label_key is None:
        return _npz_member(path, image_key), None
    with np.load(path, allow_pickle=False) as data:
        return _npz_member(path, image_key), data[label_key]


# ---- CIFAR-10 ----------------------------------------------------------------------------
def _cifar(path: Path, split: str, batches: list[Path]) -> Source:
    counts = [len(cifar10_batch(f)[1]) for f in batches]
    return Source("cifar10", str(path), split, sum(counts), True, files=[str(f) for f in batches], file_counts=counts)


def _read_cifar(source: Source, start: int, stop: int):
    images, labels, offset = [], [], 0
    for file, count in zip(source.files, source.file_counts):
        low, high = max(start, offset), min(stop, offset + count)
        if low < high:
            if source._cache.get("file") != file:  # one batch file (30 MB) held per process
                source._cache.update(file=file, batch=cifar10_batch(file))
            x, y = source._cache["batch"]
            images.append(x[low - offset:high - offset])
            labels.append(y[low - offset:high - offset])
        offset += count
    return np.concatenate(images), np.concatenate(labels)


# ---- image folders -----------------------------------------------------------------------
def _folder(path: Path, split: str) -> Source:
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InvalidArgument(f"{path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    relative = [f.relative_to(path) for f in files]
    labelled = all(len(r.parts) == 2 for r in relative)
    return Source("folder", str(path), split, len(files), labelled, files=[str(f) for f in files])


def _read_folder(source: Source, start: int, stop: int):
    paths = [Path(f) for f in source.files[start:stop]]
    images, _ = read_images(paths)
    if not source.has_labels:
        return images, None
    if "classes" not in source._cache:
        source._cache["classes"] = {name: i for i, name in enumerate(class_names(source))}
    return images, [source._cache["classes"][p.parent.name] for p in paths]


def class_names(source: Source) -> list[str] | None:
    """The class of each label: sorted subfolder names of an image folder; None where labels are plain numbers."""
    if source.kind == "folder" and source.has_labels:
        return sorted({Path(f).parent.name for f in source.files})
    return None


_OPENERS = {
    "digits": lambda s: _digits_split(s.split),
    "npy": lambda s: (_load_npy(Path(s.path)), None),
    "npz": _open_npz,
}
_READERS = {"digits": _read_arrays, "npy": _read_arrays, "npz": _read_arrays, "cifar10": _read_cifar, "folder": _read_folder}
