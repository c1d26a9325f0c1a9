"""Sharded results on disk: deterministic .npz shards written atomically, and a manifest of the
finished ones (with sha256) that makes a run resumable and refuses to mix different jobs."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from onnxsight.data.files import atomic_write
from onnxsight.errors import InvalidArgument

FORMAT = "onnxsight-batch/1"
MANIFEST = "manifest.json"
REDUCTIONS = "reductions.npz"
SHARDS, PARTIALS = "shards", "partials"
_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed zip timestamps: equal arrays give equal bytes


@dataclass(frozen=True)
class Shard:
    """Images ``start``..``stop`` (exclusive) of the dataset, the ``index``-th shard."""

    index: int
    start: int
    stop: int


@dataclass(frozen=True)
class ShardRecord:
    """A finished shard: its result and partial files (relative to the output folder) and their sha256."""

    index: int
    start: int
    stop: int
    file: str
    sha256: str
    partial: str
    partial_sha256: str


def plan(count: int, size: int) -> list[Shard]:
    """Shards of ``size`` images (the last one shorter) covering ``count`` images."""
    if size < 1:
        raise InvalidArgument(f"shard size must be at least 1, got {size}")
    return [Shard(i, start, min(count, start + size)) for i, start in enumerate(range(0, count, size))]


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """An uncompressed .npz of ``arrays`` (readable by ``np.load``) whose bytes depend only on them."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            with archive.open(zipfile.ZipInfo(f"{name}.npy", _EPOCH), "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def write_shard(folder: Path, shard: Shard, results: Mapping[str, np.ndarray],
                partials: Mapping[str, np.ndarray]) -> ShardRecord:
    """Write a shard's results and partials (each atomically: temp file, then rename); its record."""
    names = []
    for kind, arrays in ((SHARDS, results), (PARTIALS, partials)):
        data = npz_bytes(arrays)
        name = f"{kind}/{shard.index:06d}.npz"
        (folder / kind).mkdir(parents=True, exist_ok=True)
        atomic_write(folder / name, data)
        names += [name, hashlib.sha256(data).hexdigest()]
    return ShardRecord(shard.index, shard.start, shard.stop, *names)


def _plain(value):
    """numpy values in a job's options (an IG baseline array, a numpy int) as JSON."""
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _read_manifest(path: Path) -> dict:
    """A previous run's manifest, checked to be one: a JSON object whose shards are shard records."""
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest, dict) or not isinstance(manifest.get("job"), dict):
            raise ValueError("not a JSON object with a job")
        for entry in manifest.get("shards", []):
            ShardRecord(**entry)
    except (OSError, ValueError, TypeError) as error:
        raise InvalidArgument(
            f"{path} is not a readable batch manifest ({error}); pass --force (force=True) to delete the "
            "results in its folder and start over"
        ) from error
    return manifest


def _differences(old: dict, new: dict) -> list[str]:
    """The job fields whose values differ (compared as JSON), e.g. ``["data"]`` when the data changed."""
    new = json.loads(json.dumps(new, default=_plain))
    return sorted(key for key in old.keys() | new.keys() if old.get(key) != new.get(key))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


class Manifest:
    """``manifest.json`` of an output folder: the job, its options hash, and the finished shards.

    Opening validates what a previous run of the same job left: shards whose files are missing or
    whose sha256 differs are dropped (and recomputed). A different job (other model, data contents
    or options) or an unreadable manifest is refused; ``force`` deletes the previous results (of any
    job) without reading them and starts over. Every change is written atomically.
    """

    def __init__(self, folder: str | Path, job: dict, force: bool = False):
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise InvalidArgument(f"output {self.folder} exists and is not a folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.job = job
        self.options_hash = hashlib.sha256(json.dumps(job, sort_keys=True, default=_plain).encode()).hexdigest()
        self.done: dict[int, ShardRecord] = {}
        previous = None if force or not self.path.is_file() else _read_manifest(self.path)
        if force:
            self._clear()
        elif previous is not None and previous.get("options_hash") == self.options_hash:
            self._adopt(previous)
        elif previous is not None or self._leftovers():
            changed = _differences(previous["job"], job) if previous is not None else []
            if previous is None:
                what = "batch results without a manifest"
            elif changed == ["data"]:
                what = "results of the same job on other data (the images or labels it reads changed)"
            else:
                what = f"a different job (differs: {', '.join(changed) or 'options hash'})"
            raise InvalidArgument(
                f"{self.folder} holds {what}; pass --force (force=True) "
                "to delete those results and start over, or choose another output folder"
            )
        self._save()

    @property
    def path(self) -> Path:
        return self.folder / MANIFEST

    def pending(self, shards: list[Shard]) -> list[Shard]:
        """The shards of ``shards`` that are not finished yet."""
        return [s for s in shards if s.index not in self.done]

    def add(self, record: ShardRecord) -> None:
        """Record a finished shard (its files are already in place)."""
        self.done[record.index] = record
        self._save()

    def finish(self, reductions: dict) -> None:
        """Mark the job complete, with the reductions file's name and sha256."""
        self._save(complete=True, reductions=reductions)

    def records(self) -> list[ShardRecord]:
        return [self.done[i] for i in sorted(self.done)]

    def _adopt(self, previous: dict) -> None:
        for entry in previous.get("shards", []):
            record = ShardRecord(**entry)
            if all((self.folder / f).is_file() and sha256_of(self.folder / f) == h
                   for f, h in ((record.file, record.sha256), (record.partial, record.partial_sha256))):
                self.done[record.index] = record

    def _leftovers(self) -> bool:
        return (self.folder / REDUCTIONS).exists() or any(
            any((self.folder / kind).glob("*.npz")) for kind in (SHARDS, PARTIALS))

    def _clear(self) -> None:
        for kind in (SHARDS, PARTIALS):
            for file in (self.folder / kind).glob("[0-9]*.npz"):
                file.unlink()
        for name in (REDUCTIONS, MANIFEST):
            (self.folder / name).unlink(missing_ok=True)

    def _save(self, complete: bool = False, reductions: dict | None = None) -> None:
        manifest = {"format": FORMAT, "options_hash": self.options_hash, "job": self.job, "complete": complete,
                    "shards": [asdict(r) for r in self.records()]}
        if reductions is not None:
            manifest["reductions"] = reductions
        atomic_write(self.path, (json.dumps(manifest, indent=1, default=_plain) + "\n").encode())
