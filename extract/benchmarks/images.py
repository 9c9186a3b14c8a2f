"""Image loading for benchmark loaders: decoded late and fully, so a broken image fails its sample only."""

from __future__ import annotations

import base64
import binascii
import io
from functools import partial
from pathlib import Path

from PIL import Image

from attnwh.core.errors import first_line

MAX_PIXELS = 64_000_000  # larger images are refused (decompression bombs), not decoded


class ImageLoadError(Exception):
    """An image that is missing, truncated, undecodable or too large."""


def _decode(handle, label: str) -> Image.Image:
    try:
        with Image.open(handle) as image:
            if image.width * image.height > MAX_PIXELS:
                raise ImageLoadError(f"{label}: {image.width}×{image.height} pixels is more than {MAX_PIXELS}")
            image.load()  # decode now: a truncated file fails here, not later inside the processor
            return image.convert("RGB")  # grayscale, palette, RGBA (alpha dropped, as LLaVA does), CMYK
    except ImageLoadError:
        raise
    except Exception as exc:  # noqa: BLE001  Pillow's plugins raise many types on corrupt data (struct.error, EOFError, IndexError, ...)
        raise ImageLoadError(f"{label}: cannot decode image ({type(exc).__name__}: {first_line(exc, 300)})") from exc


def open_image_file(path: Path) -> Image.Image:
    path = Path(path)
    if path.is_dir():  # an image name that is empty or names a folder: "not found" sent people looking for a missing file
        raise ImageLoadError(f"{path}: a folder, not an image file")
    if not path.is_file():
        raise ImageLoadError(f"{path}: image file not found")
    if path.stat().st_size == 0:
        raise ImageLoadError(f"{path}: image file is empty")
    with open(path, "rb") as handle:
        return _decode(handle, str(path))


def open_image_bytes(data: bytes, label: str) -> Image.Image:
    if not data:
        raise ImageLoadError(f"{label}: image bytes are empty")
    return _decode(io.BytesIO(data), label)


def open_image_base64(text: str, label: str) -> Image.Image:
    try:
        data = base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise ImageLoadError(f"{label}: image is not valid base64 ({exc})") from exc
    return open_image_bytes(data, label)


def file_loader(path: Path):
    """A ``Sample.load_image`` for an image file."""
    return partial(open_image_file, Path(path))


def bytes_loader(data: bytes, label: str):
    return partial(open_image_bytes, data, label)


def base64_loader(text: str, label: str):
    return partial(open_image_base64, text, label)
