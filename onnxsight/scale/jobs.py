"""A batch job: which method runs on each shard and how, as one picklable spec and one worker that
both engines run (so a shard's results do not depend on the engine that computed it)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from onnxsight.data.files import safe_name
from onnxsight.engine.model import Model, load
from onnxsight.errors import InvalidArgument
from onnxsight.kernels import images as image_kernels
from onnxsight.methods.cam import gradcam
from onnxsight.methods.dataset import unit_scores
from onnxsight.methods.integrated_gradients import integrated_gradients
from onnxsight.methods.occlusion import occlusion
from onnxsight.methods.saliency import saliency
from onnxsight.scale.reductions import Moments, TopK, UnitStats
from onnxsight.scale.shards import Shard, ShardRecord, write_shard
from onnxsight.scale.sources import Chunk, Source

# method name -> (function(model, x, target=..., **options), whether it takes a noise seed)
ATTRIBUTIONS: dict[str, tuple[Callable[..., np.ndarray], bool]] = {
    "saliency": (saliency, True),
    "gradcam": (gradcam, False),
    "occlusion": (occlusion, False),
    "ig": (integrated_gradients, False),
}
METHODS = (*ATTRIBUTIONS, "activations")
TARGETS = ("predicted", "label")


@dataclass(frozen=True)
class Job:
    """Everything a worker needs, picklable; ``description()`` is what makes two runs the same job."""

    model: str  # path of the ONNX file
    model_sha256: str
    source: Source
    output: str
    method: str
    target: str | int = "predicted"  # "predicted", "label" (the dataset's labels) or a class/channel index
    of: str = "logits"
    options: dict = field(default_factory=dict)  # keyword arguments of the method
    layers: tuple[str, ...] = ()  # activations: the layers whose units are scored
    k: int = 10  # activations: top-K images per unit
    seed: int = 0  # noise seed; shard i uses SeedSequence([seed, i])
    batch_size: int | None = None  # rows per onnxruntime run (None: the method's default)
    scale: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    shard_size: int = 1024
    device: str = "cpu"  # resolved: "cpu", "cuda" or "openvino"
    threads: int = 1  # onnxruntime intra-op threads per session (results do not depend on it)

    def __post_init__(self):
        if self.method not in METHODS:
            raise InvalidArgument(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if isinstance(self.target, str) and self.target not in TARGETS:
            raise InvalidArgument(f"target must be 'predicted', 'label' or an index, got {self.target!r}")
        if self.target == "label" and not self.source.has_labels:
            raise InvalidArgument(f"target 'label' needs labels, and {self.source.path} has none")
        if self.method == "activations" and not self.layers:
            raise InvalidArgument("method 'activations' needs at least one layer (--layer)")
        if self.method != "activations" and self.layers:
            raise InvalidArgument(f"layers are for method 'activations'; {self.method} takes its layer as an option")
        keys = [unit_key(layer) for layer in self.layers]
        if len(set(keys)) != len(keys):
            raise InvalidArgument(f"layers {list(self.layers)} repeat or clash as file keys {keys}")
        if self.k < 1 or self.threads < 1:
            raise InvalidArgument(f"k and threads must be at least 1, got {self.k} and {self.threads}")

    def description(self) -> dict:
        """What determines the results (not where they go, nor threads and engine, which do not change them)."""
        skipped = ("output", "threads", "source", "model")
        described = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skipped}
        described["data"] = {"kind": self.source.kind, "split": self.source.split, "images": self.source.count,
                             "fingerprint": self.source.fingerprint}
        return described


def unit_key(layer: str) -> str:
    """The file key of a layer's arrays: its name made safe for .npz members."""
    return safe_name(layer)


def shard_seed(seed: int, shard: int) -> int:
    """The noise seed of one shard: independent streams per shard, the same on every engine."""
    return int(np.random.SeedSequence([seed, shard]).generate_state(1)[0])


def model_input(model: Model, images: np.ndarray | list[np.ndarray], job: Job) -> np.ndarray:
    """A chunk's images in the model's input form; float arrays already shaped like the input are used as they are."""
    shape = tuple(model.input_shape[1:])
    if isinstance(images, np.ndarray) and np.issubdtype(images.dtype, np.floating) and images.shape[1:] == shape:
        return model.check_input(images)
    prepared = image_kernels.prepare(list(images), model.input_shape, model.input_layout, job.scale, job.mean, job.std)
    return model.check_input(prepared)


def compute(model: Model, job: Job, chunk: Chunk, shard: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A shard's results (``index``, ``label``, then ``maps`` and ``target``, or ``units.<layer>``)
    and its partial reductions (``class.*`` moments of the maps per target, or ``topk.<layer>.*``
    and ``stats.<layer>.*``)."""
    x = model_input(model, chunk.images, job)
    index = np.arange(chunk.start, chunk.stop, dtype=np.int64)
    results: dict[str, np.ndarray] = {"index": index}
    if chunk.labels is not None:
        results["label"] = chunk.labels
    batch = {} if job.batch_size is None else {"batch_size": job.batch_size}
    partials: dict[str, np.ndarray] = {}
    if job.method == "activations":
        values = model.activations(x, list(job.layers), **batch)
        for layer in job.layers:
            scores = unit_scores(model, layer, values[layer])
            key = unit_key(layer)
            results[f"units.{key}"] = scores
            partials.update(TopK.of(scores, index, job.k).arrays(f"topk.{key}."))
            partials.update(UnitStats.of(scores).arrays(f"stats.{key}."))
        return results, partials
    method, seeded = ATTRIBUTIONS[job.method]
    if job.target == "label":
        targets = chunk.labels
    else:
        targets = model.resolve_target(x, job.target, job.of, **batch)
    options = {**job.options, **({"seed": shard_seed(job.seed, shard)} if seeded else {})}
    maps = method(model, x, target=targets, of=job.of, **batch, **options)
    results.update(target=np.asarray(targets, np.int64), maps=maps)
    partials.update(Moments.of(maps, targets).arrays("class."))
    return results, partials


class ShardWorker:
    """Holds one model (its onnxruntime sessions with ``job.threads`` threads); computes and writes shards."""

    def __init__(self, job: Job):
        self.job = job
        self.model = load(job.model, job.device, job.threads)

    def __call__(self, shard: Shard) -> ShardRecord:
        chunk = self.job.source.read(shard.start, shard.stop)
        results, partials = compute(self.model, self.job, chunk, shard.index)
        return write_shard(Path(self.job.output), shard, results, partials)
