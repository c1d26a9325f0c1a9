"""Mergeable partial results: per-group moments (mean/SEM), top-K per unit, per-unit statistics.

Each shard computes a small partial; partials merge pairwise (Chan et al.'s parallel update for
moments) in a fixed binary tree over the shard order, so the result never needs all maps on one
node and is the same, bit for bit, whichever engine computed the shards.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np

from onnxsight.errors import InvalidArgument


class Partial(Protocol):
    def merge(self, other): ...
    def arrays(self, prefix: str) -> dict[str, np.ndarray]: ...


P = TypeVar("P", bound=Partial)


@dataclass(frozen=True)
class Moments:
    """Count, mean and sum of squared deviations (M2) of values per group (e.g. per class), float64."""

    groups: np.ndarray  # (G,) sorted int64 group ids
    count: np.ndarray  # (G,) int64
    mean: np.ndarray  # (G, ...)
    m2: np.ndarray  # (G, ...)

    @classmethod
    def of(cls, values: np.ndarray, groups: np.ndarray) -> Moments:
        """Moments of ``values`` (N, ...) grouped by ``groups`` (N,) integer ids."""
        values, groups = np.asarray(values, np.float64), np.asarray(groups, np.int64).ravel()
        if len(values) != len(groups):
            raise InvalidArgument(f"{len(groups)} group ids for {len(values)} values")
        ids = np.unique(groups)
        parts = [values[groups == g] for g in ids]
        means = [p.mean(axis=0) for p in parts]
        return cls(ids, np.array([len(p) for p in parts], np.int64), np.stack(means),
                   np.stack([((p - m) ** 2).sum(axis=0) for p, m in zip(parts, means)]))

    def merge(self, other: Moments) -> Moments:
        """The moments of both sets of values (Chan, Golub & LeVeque's pairwise update)."""
        groups = np.union1d(self.groups, other.groups)
        na, ma, sa = self._spread(groups)
        nb, mb, sb = other._spread(groups)
        n = na + nb
        shape = (-1,) + (1,) * (self.mean.ndim - 1)
        delta = mb - ma
        mean = ma + delta * (nb / n).reshape(shape)
        m2 = sa + sb + delta ** 2 * (na * nb / n).reshape(shape)
        return Moments(groups, n, mean, m2)

    def _spread(self, groups: np.ndarray):
        where = np.searchsorted(groups, self.groups)
        count = np.zeros(len(groups), np.int64)
        mean = np.zeros((len(groups), *self.mean.shape[1:]))
        m2 = np.zeros_like(mean)
        count[where], mean[where], m2[where] = self.count, self.mean, self.m2
        return count, mean, m2

    def std(self, ddof: int = 0) -> np.ndarray:
        """Standard deviation per group (NaN where a group has ``ddof`` values or fewer)."""
        shape = (-1,) + (1,) * (self.mean.ndim - 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.sqrt(self.m2 / np.where(self.count > ddof, self.count - ddof, 0).reshape(shape))

    def sem(self) -> np.ndarray:
        """Standard error of each group's mean (ddof=1, as scipy.stats.sem); NaN for single values."""
        shape = (-1,) + (1,) * (self.mean.ndim - 1)
        return self.std(ddof=1) / np.sqrt(self.count).reshape(shape)

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}groups": self.groups, f"{prefix}count": self.count, f"{prefix}mean": self.mean,
                f"{prefix}m2": self.m2}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str) -> Moments:
        return cls(*(np.asarray(arrays[f"{prefix}{key}"]) for key in ("groups", "count", "mean", "m2")))


@dataclass(frozen=True)
class UnitStats:
    """Mean, standard deviation, minimum and maximum of each unit over all images seen."""

    moments: Moments  # one group
    minimum: np.ndarray  # (U,)
    maximum: np.ndarray

    @classmethod
    def of(cls, scores: np.ndarray) -> UnitStats:
        """Statistics of (N, U) unit scores."""
        scores = np.asarray(scores)
        return cls(Moments.of(scores, np.zeros(len(scores), np.int64)), scores.min(axis=0), scores.max(axis=0))

    def merge(self, other: UnitStats) -> UnitStats:
        return UnitStats(self.moments.merge(other.moments), np.minimum(self.minimum, other.minimum),
                         np.maximum(self.maximum, other.maximum))

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {**self.moments.arrays(prefix), f"{prefix}min": self.minimum, f"{prefix}max": self.maximum}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str) -> UnitStats:
        return cls(Moments.from_arrays(arrays, prefix), np.asarray(arrays[f"{prefix}min"]),
                   np.asarray(arrays[f"{prefix}max"]))


@dataclass(frozen=True)
class TopK:
    """The ``k`` largest scores of each unit and the dataset indices of their images, largest first;
    ties go to the smaller index (as a stable sort over the whole set)."""

    k: int
    indices: np.ndarray  # (k' <= k, U) int64
    scores: np.ndarray  # (k', U)

    @classmethod
    def of(cls, scores: np.ndarray, indices: np.ndarray, k: int) -> TopK:
        """Top ``k`` of (N, U) ``scores`` whose rows are the images ``indices`` (N,)."""
        if k < 1:
            raise InvalidArgument(f"k must be at least 1, got {k}")
        scores, indices = np.asarray(scores), np.asarray(indices, np.int64)
        return cls(k, np.repeat(indices[:, None], scores.shape[1], axis=1), scores)._best()

    def merge(self, other: TopK) -> TopK:
        return TopK(self.k, np.concatenate([self.indices, other.indices]), np.concatenate([self.scores, other.scores]))._best()

    def _best(self) -> TopK:
        order = np.lexsort((self.indices, -self.scores.astype(np.float64)), axis=0)[:self.k]
        return TopK(self.k, np.take_along_axis(self.indices, order, 0), np.take_along_axis(self.scores, order, 0))

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}k": np.int64(self.k), f"{prefix}indices": self.indices, f"{prefix}scores": self.scores}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str) -> TopK:
        return cls(int(arrays[f"{prefix}k"]), np.asarray(arrays[f"{prefix}indices"]), np.asarray(arrays[f"{prefix}scores"]))


def tree_merge(partials: Iterable[P]) -> P:
    """Merge partials pairwise in a balanced binary tree over their order, holding O(log n) at once.

    Leaves are combined like a binary counter: two subtrees of equal size merge as soon as both
    exist; what is left merges right to left. The tree depends only on the number of partials.
    """
    stack: list[tuple[int, P]] = []
    for partial in partials:
        size, node = 1, partial
        while stack and stack[-1][0] == size:
            left_size, left = stack.pop()
            size, node = left_size + size, left.merge(node)
        stack.append((size, node))
    if not stack:
        raise InvalidArgument("nothing to merge: no partial results")
    _, node = stack.pop()
    while stack:
        node = stack.pop()[1].merge(node)
    return node


@dataclass(frozen=True)
class Bundle:
    """Several named partials merged together (one per reduction of a job)."""

    parts: dict[str, Partial]

    def merge(self, other: Bundle) -> Bundle:
        return Bundle({name: part.merge(other.parts[name]) for name, part in self.parts.items()})


def class_summary(moments: Moments) -> dict[str, np.ndarray]:
    """Seed 000's view per class: ``classes``, ``count``, ``mean`` and ``sem`` (NaN for a single map)."""
    return {"classes": moments.groups, "count": moments.count, "mean": moments.mean, "sem": moments.sem()}


def unit_summary(stats: UnitStats, top: TopK, prefix: str) -> dict[str, np.ndarray]:
    """Per unit: top-K image indices and scores (K, U), and count, mean, std (ddof=0), min, max (U,)."""
    return {f"{prefix}top_k_indices": top.indices, f"{prefix}top_k_scores": top.scores,
            f"{prefix}count": stats.moments.count[0], f"{prefix}mean": stats.moments.mean[0],
            f"{prefix}std": stats.moments.std()[0], f"{prefix}min": stats.minimum, f"{prefix}max": stats.maximum}
