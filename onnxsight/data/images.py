"""Read images from PNG/JPEG files (opencv) and .npy arrays."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from onnxsight.errors import InvalidArgument, ModelFileError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def read_images(paths: Sequence[str | Path]) -> tuple[list[np.ndarray], list[str]]:
    """Images (HxW or HxWxC, RGB order, file dtype) and a name for each; a .npy may hold a batch."""
    images, names = [], []
    for path in map(Path, paths):
        if not path.is_file():
            raise ModelFileError(f"image file not found: {path}")
        if path.suffix.lower() == ".npy":
            array = read_npy(path)
            batch = array if array.ndim == 4 or (array.ndim == 3 and array.shape[-1] not in (1, 3, 4)) else array[None]
            images.extend(batch)
            names.extend(f"{path.stem}_{i}" if len(batch) > 1 else path.stem for i in range(len(batch)))
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            images.append(read_image(path))
            names.append(path.stem)
        else:
            raise InvalidArgument(f"{path}: unsupported image type; use .npy or one of {', '.join(sorted(IMAGE_SUFFIXES))}")
    if not images:
        raise InvalidArgument("no images given")
    return images, _unique(names)


def read_image(path: Path) -> np.ndarray:
    """One image file (HxW or HxWxC, RGB order, file dtype); a cut-short or undecodable file is refused."""
    data = path.read_bytes()
    check_complete(path, data)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if image is None:
        raise ModelFileError(f"cannot decode image {path} (damaged, cut short or not an image)")
    if image.ndim == 3:
        code = cv2.COLOR_BGRA2RGBA if image.shape[2] == 4 else cv2.COLOR_BGR2RGB
        image = cv2.cvtColor(image, code)
    return image


def check_complete(path: Path, data: bytes) -> None:
    """Refuse a JPEG whose last scan (FFDA) has no end-of-image marker (FFD9) after it: libjpeg decodes
    a cut-short file with its missing rows grey and only a warning; the other formats' decoders fail."""
    if data.startswith(b"\xff\xd8") and data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
        raise ModelFileError(f"image {path} is truncated (its JPEG data ends before the end-of-image marker)")


def read_npy(path: Path) -> np.ndarray:
    """An .npy array (no pickles), or a one-line error naming the file."""
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ModelFileError(f"{path} is not a readable .npy file: {error}") from error


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    result = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        result.append(name if seen[name] == 1 else f"{name}_{seen[name] - 1}")
    return result
