"""Images in: paths, PIL images or arrays -> RGB uint8 arrays -> model pixels."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import UsageError, WorkError

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]


def load_image(image: ImageInput) -> tuple[np.ndarray, str]:
    """An RGB uint8 array (H, W, 3) as people see the image, and a label for it.

    Paths and PIL images are turned upright by their EXIF orientation and converted
    to RGB (palette, grey, CMYK, 16-bit, alpha dropped); arrays must already be
    (H, W, 3) or (H, W) uint8.
    """
    if isinstance(image, (str, os.PathLike)):
        return _from_pil(_open(Path(image))), str(image)
    if isinstance(image, Image.Image):
        return _from_pil(image), getattr(image, "filename", "") or "image"
    if isinstance(image, np.ndarray):
        return _from_array(image), "array"
    raise UsageError(f"expected an image path, PIL.Image or HxWx3 uint8 array, got {type(image).__name__}")


def _open(path: Path) -> Image.Image:
    if not path.exists():
        raise UsageError(f"image not found: {path}")
    if path.is_dir():
        raise UsageError(f"{path} is a folder; expected an image file")
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy() if getattr(img, "n_frames", 1) == 1 else _first_frame(img)
    except UnidentifiedImageError:
        raise WorkError(f"{path} is not an image PIL can read (empty, truncated or another format)") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise WorkError(f"{path} could not be read as an image: {err}") from None


def _first_frame(img: Image.Image) -> Image.Image:
    img.seek(0)
    return img.copy()


def _from_pil(img: Image.Image) -> np.ndarray:
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        arr = np.clip(arr / (65535.0 if arr.max() > 255 else 255.0) * 255.0, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr)
    return np.array(img.convert("RGB"), dtype=np.uint8)


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
