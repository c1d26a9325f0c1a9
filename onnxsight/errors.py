"""One error hierarchy: what a user can fix versus what is a bug in onnxsight."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class OnnxsightError(Exception):
    """A problem the user can fix; the CLI prints it as one line and exits with code 1."""


class InvalidArgument(OnnxsightError, ValueError):
    """An argument, option or input array is not acceptable."""


class ModelFileError(OnnxsightError):
    """A model file is missing, unreadable or not a valid model."""


class UnknownName(InvalidArgument, KeyError):
    """A layer or tensor name that the model does not have."""

    def __init__(self, kind: str, name: str, known: Iterable[str], close: Iterable[str] | None = None):
        """``close``: the near misses to suggest; default the closest of ``known`` by spelling."""
        known = list(known)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5) if close is None else list(close)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        listing = ", ".join(known[:40]) + (" ..." if len(known) > 40 else "")
        super().__init__(f"unknown {kind} {name!r}; {hint}known: {listing}")
        self.name = name

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class UnsupportedOp(OnnxsightError):
    """An operator that onnxsight cannot differentiate or convert.

    ``upstream``: for a gradient, the tensors the failing node depends on; gradients with
    respect to any other tensor on the way to the differentiated one still work.
    """

    def __init__(self, message: str, upstream: frozenset[str] | set[str] = frozenset()):
        super().__init__(message)
        self.upstream = frozenset(upstream)


class GradientCheckFailed(OnnxsightError):
    """A gradient disagreed with its finite-difference check beyond the tolerance: no result
    computed with it may be trusted (activation maximization stops rather than draw a picture)."""


class ConversionError(OnnxsightError):
    """A model could not be converted to a faithful ONNX file."""


class MissingDependency(OnnxsightError, ImportError):
    """An optional dependency is not installed; the message carries the pip command."""

    def __init__(self, package: str, extra: str):
        super().__init__(f"{package} is required for this; install it with: pip install 'onnxsight[{extra}]'")


class InternalError(RuntimeError):
    """A broken internal contract: a bug in onnxsight, never the user's fault."""
