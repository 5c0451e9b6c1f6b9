"""Images in: paths, PIL images or arrays -> RGB uint8 arrays -> model pixels."""
from __future__ import annotations

import contextlib
import os
import threading
import warnings
from pathlib import Path
from typing import Iterator, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import UsageError, WorkError
from ..options import DEFAULT_MAX_PIXELS

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]

_PIL_LIMIT = threading.Lock()  # held while _pil_limit has raised PIL's global limit (the rare case only)
_PIL_SAVED: list[int | None] = []  # PIL's own limit while _pil_limit has raised it, else empty


def check_max_pixels(max_pixels: int | None) -> int | None:
    """`max_pixels` validated: a positive integer, or None for no limit."""
    if max_pixels is None:
        return None
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or max_pixels < 1:
        raise UsageError(f"max_pixels must be a positive integer or None (no limit), got {max_pixels!r}")
    return int(max_pixels)


def load_image(image: ImageInput, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, str]:
    """An RGB uint8 array (H, W, 3) as people see the image, and a label for it.

    Paths and PIL images are turned upright by their EXIF orientation and converted
    to RGB (palette, grey, CMYK, 16-bit, alpha dropped); arrays must already be
    (H, W, 3) or (H, W) uint8. Of an animated file only the first frame is used
    (with a warning).

    Args:
        image: a file path, a PIL image or a uint8 array.
        max_pixels: files with more pixels (width x height) than this are refused
            before they are decoded, a guard against decompression bombs; None: no
            limit. Applies to paths only: a PIL image or array is already decoded.

    Raises:
        UsageError: the path is missing or a folder, or the object is not an image.
        WorkError: the file is empty, truncated, not an image, or over `max_pixels`.
    """
    max_pixels = check_max_pixels(max_pixels)
    if isinstance(image, (str, os.PathLike)):
        return _from_pil(_open(Path(image), max_pixels), str(image), WorkError), str(image)
    if isinstance(image, Image.Image):
        label = getattr(image, "filename", "") or "image"
        return _from_pil(image, label, UsageError), label
    if isinstance(image, np.ndarray):
        return _from_array(image), "array"
    raise UsageError(f"expected an image path, PIL.Image or HxWx3 uint8 array, got {type(image).__name__}")


def _open(path: Path, max_pixels: int | None) -> Image.Image:
    if not path.exists():
        raise UsageError(f"image not found: {path}; check the path")
    if path.is_dir():
        raise UsageError(f"{path} is a folder; expected an image file (zsfinercam batch takes folders)")
    try:
        with _pil_limit(max_pixels), Image.open(path) as img:
            _check_pixels(path, img.size, max_pixels)
            animated = bool(getattr(img, "is_animated", False))
            img.seek(0)
            img.load()
            first = img.copy()
    except UnidentifiedImageError:
        raise WorkError(f"{path} is not an image PIL can read (empty, truncated or another format); "
                        f"check the file") from None
    except Image.DecompressionBombError:
        raise WorkError(_too_big(path, None, max_pixels)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise WorkError(f"{path} could not be read as an image ({err}); check the file") from None
    if animated:
        warnings.warn(f"{path} has several frames (animated); only the first frame is used", stacklevel=3)
    return first


@contextlib.contextmanager
def _pil_limit(max_pixels: int | None) -> Iterator[None]:
    """Keep PIL's own bomb check (run inside `Image.open`) from refusing a file we accept.

    PIL warns above its global limit L (`Image.MAX_IMAGE_PIXELS`) and refuses above 2 L; our
    own check (`_check_pixels`, on the size in the header, before decoding) decides.

    Common case, `max_pixels` <= L (our default is PIL's default L): PIL refuses only files
    we refuse too, so nothing is changed: no global write, no lock, no warning filter, and
    other threads' `Image.open` is never affected. (For a file between `max_pixels` and 2 L,
    PIL's DecompressionBombWarning may come before our error.)

    Rare case, `max_pixels` above L, or None: PIL would warn about or refuse files we accept,
    and it has no per-call limit, so for this one open and decode, under a lock, its global
    is RAISED to `max_pixels` (never lowered) and its warning silenced (`catch_warnings`,
    process-wide), then restored. Meanwhile other threads' PIL opens get the higher limit.
    """
    own = _PIL_SAVED[0] if _PIL_SAVED else Image.MAX_IMAGE_PIXELS  # L, even while another call raised it
    if own is None or (max_pixels is not None and max_pixels <= own):
        yield
        return
    with _PIL_LIMIT, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        _PIL_SAVED.append(Image.MAX_IMAGE_PIXELS)
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = _PIL_SAVED.pop()


def _check_pixels(path: Path, size: tuple[int, int], max_pixels: int | None) -> None:
    w, h = size
    if w < 1 or h < 1:
        raise WorkError(f"{path} declares an empty image ({w} x {h} pixels); check the file")
    if max_pixels is not None and w * h > max_pixels:
        raise WorkError(_too_big(path, size, max_pixels))


def _too_big(path: Path, size: tuple[int, int] | None, max_pixels: int | None) -> str:
    what = f"{size[0]} x {size[1]} = {size[0] * size[1]:,} pixels" if size else "too many pixels"
    return (f"{path} has {what}, over the limit of {max_pixels:,} pixels (a guard against decompression "
            f"bombs); if you trust the file, raise the limit with --max-pixels N (API: max_pixels=N)")


def _from_pil(img: Image.Image, label: str, mode_error: type[Exception]) -> np.ndarray:
    """RGB uint8, upright; an unconvertible mode raises `mode_error` (a file's fault or the caller's)."""
    try:
        img = ImageOps.exif_transpose(img)
        if img.mode.startswith("I;16"):
            img = Image.fromarray((np.asarray(img, dtype=np.float64) / 257.0).round().astype(np.uint8))
        elif img.mode == "I":
            arr = np.asarray(img, dtype=np.float64)
            arr = np.clip(arr / (65535.0 if arr.max() > 255 else 255.0) * 255.0, 0, 255).astype(np.uint8)
            img = Image.fromarray(arr)
        return np.array(img.convert("RGB"), dtype=np.uint8)
    except ValueError as err:
        raise mode_error(f"cannot convert {label} (mode {img.mode}) to RGB: {err}; "
                         f"convert it to RGB first") from None
    except OSError as err:
        raise WorkError(f"{label} could not be decoded ({err}); check the file") from None


def _from_array(arr: np.ndarray) -> np.ndarray:
    if arr.dtype != np.uint8:
        raise UsageError(f"expected a uint8 image array, got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] != 3 or min(arr.shape[:2]) < 1:
        raise UsageError(f"expected an image array of shape (H, W, 3), got {arr.shape}")
    return np.ascontiguousarray(arr)


def to_pixels(images: list[np.ndarray], size: tuple[int, int], mean, std) -> torch.Tensor:
    """Model input (B, 3, H, W): each image resized to `size` whole (no crop), then normalised.

    The whole image is kept, not CLIP's centre crop, so the map covers every pixel
    the user sees; the aspect ratio is not preserved.
    """
    h, w = size
    batch = [np.asarray(Image.fromarray(img).resize((w, h), Image.BICUBIC), dtype=np.float32) for img in images]
    x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2) / 255.0
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - mean_t) / std_t
