"""Image pools and tensors for training the toy model (numpy in, torch out)."""
from __future__ import annotations

import multiprocessing as mp

import numpy as np
import torch
from PIL import Image

from .captions import attrs_to_index
from .draw import make_sample, sample_seeds
from .taxonomy import list_classes

# OpenAI CLIP normalisation, so the toy model's preprocessing is the standard one.
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)

# Half the training images are rendered larger and downsized (bicubic, as CLIP
# preprocessing does), so the model also knows smooth edges, not only hard pixels.
RENDER_SCALES = (1.0, 1.5)


def _render_one(job: tuple[str, int, int, int]) -> np.ndarray:
    name, seed, render_size, size = job
    image = make_sample(name, seed, render_size).image
    if render_size != size:
        image = image.resize((size, size), Image.BICUBIC)
    return np.asarray(image)


def render_pool(n: int, seed: int, size: int, split: str = "train", workers: int = 1):
    """Render `n` training images (balanced over the classes of `split`).

    Returns:
        (images uint8 (n, size, size, 3), attribute indices int (n, 3)); deterministic in
        (n, seed, size, split), whatever `workers` is.
    """
    names = list_classes(split)
    seeds = sample_seeds(n, seed)
    # Alternate render scales per pass over the classes, so every class gets each scale.
    scales = [RENDER_SCALES[(k // len(names)) % len(RENDER_SCALES)] for k in range(n)]
    jobs = [(names[k % len(names)], s, int(round(size * sc)), size)
            for k, (s, sc) in enumerate(zip(seeds, scales))]
    if workers > 1:
        with mp.get_context("fork").Pool(workers) as pool:
            images = pool.map(_render_one, jobs, chunksize=256)
    else:
        images = [_render_one(j) for j in jobs]
    from .taxonomy import parse_class

    idx = np.array([attrs_to_index(parse_class(j[0])) for j in jobs], dtype=np.int64)
    return np.stack(images), idx


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> normalised float NCHW."""
    x = torch.from_numpy(np.array(images, dtype=np.uint8)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def augment(x: torch.Tensor, rng: np.random.Generator, max_shift: int = 4) -> torch.Tensor:
    """Label-preserving augmentation: random horizontal flip and a small shift (edge padded)."""
    n, _, h, w = x.shape
    flip = torch.from_numpy(rng.random(n) < 0.5)
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(-1), x)
    pad = torch.nn.functional.pad(x, (max_shift,) * 4, mode="replicate")
    dx, dy = rng.integers(0, 2 * max_shift + 1, size=(2, n))
    return torch.stack([pad[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
