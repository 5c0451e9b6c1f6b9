"""Objective values with patch tokens removed, batched: what per-map faithfulness is computed from.

For each image the sequences are: per level and map, its top tokens removed (deletion levels) and
kept alone (insertion levels, unless the mode is "deletion"); per level, DRAWS random sets removed or
kept alone, shared by every map; and one with every token kept, for O(all). They run through `Backend.encode_kept` (tokens dropped after the position embedding), grouped by length
so that one pass serves every sequence of a length (insertion sequences are short, deletion ones
nearly full), in chunks of at most `max_tokens` tokens. The objective of every map is then
evaluated on every sequence's logits (no logit bias: the objective the map was made from), and
`core.faithfulness.score` turns the values into a number per map.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from . import faithfulness as faith
from .engine import logits
from .objectives import Objective, objective_scores

if TYPE_CHECKING:
    from ..backends import Backend

MAX_TOKENS = 1 << 15  # tokens per encode_kept pass (sets x kept tokens): bounds activation memory
LEVELS = {"insertion": faith.INSERTION_LEVELS, "deletion": faith.DELETION_LEVELS}


def faithfulness(backend: Backend, pixels: torch.Tensor, text: torch.Tensor, objectives: Sequence[Sequence[Objective]],
                 maps: np.ndarray, mode: str = "both", *,
                 max_tokens: int = MAX_TOKENS) -> list[list[faith.Faithfulness]]:
    """The faithfulness of every map (one list per image).

    Args:
        pixels: (B, 3, H, W) the images as the model sees them.
        text: (K, E) the head the objectives index.
        objectives: B lists of M objectives, map m of image b made from objectives[b][m].
        maps: (B, M, N) the maps on the flattened patch grid (raw or normalised: only the order counts).
        mode: one of `faithfulness.MODES`.
    """
    if mode not in faith.MODES:
        raise ValueError(f"unknown faithfulness mode {mode!r}; choose one of: {', '.join(faith.MODES)}")
    return [_image(backend, pixels[b:b + 1], text, objectives[b], maps[b], mode, max_tokens)
            for b in range(len(objectives))]


def _image(backend, pixels, text, objectives, maps, mode, max_tokens) -> list[faith.Faithfulness]:
    """Faithfulness of the M maps (M, N) of one image. O(all) comes from the same path as every
    other value (`encode_kept` with every token kept), so the precision the tower runs in (an
    autocast on CUDA) enters both sides of each difference alike."""
    patches = maps.shape[-1]
    kinds = ["deletion"] if mode == "deletion" else ["deletion", "insertion"]
    sizes = sorted({n for kind in kinds for n in faith.counts(patches, LEVELS[kind])})
    seed = faith.image_seed(pixels.cpu().numpy())
    draws = dict(zip(sizes, faith.random_sets(patches, sizes, seed=seed)))  # a size's draws serve both kinds
    tops = [faith.top_sets(m, sizes, seed=seed) for m in maps]
    kept = {"insertion": np.sort, "deletion": lambda idx: np.setdiff1d(np.arange(patches), idx)}
    sets, where = [], {}  # keep sets in order; (kind, size, m) -> its row, (kind, size) -> the draws' rows
    for kind in kinds:
        for size in faith.counts(patches, LEVELS[kind]):
            where[kind, size] = list(range(len(sets), len(sets) + len(draws[size])))
            sets += [kept[kind](idx) for idx in draws[size]]
            for m, top in enumerate(tops):
                if top is not None:
                    where[kind, size, m] = len(sets)
                    sets.append(kept[kind](top[sizes.index(size)]))
    values = _objective_values(backend, pixels, text, objectives, [*sets, np.arange(patches)], max_tokens)
    full = values[-1]  # (M,): O(all), every token kept

    def curve(kind: str, m: int) -> tuple[list[float], list[np.ndarray]]:
        counts = faith.counts(patches, LEVELS[kind])
        return [values[where[kind, n, m], m] for n in counts], [values[where[kind, n], m] for n in counts]

    return [faith.empty(mode) if tops[m] is None else
            faith.score(full[m], *curve("deletion", m), *(curve("insertion", m) if "insertion" in kinds else ()))
            for m in range(len(tops))]


def _objective_values(backend, pixels, text, objectives, sets: list[np.ndarray], max_tokens: int) -> np.ndarray:
    """O of every objective (columns) on the image run with each keep set (rows): (len(sets), M)."""
    embeddings = kept_embeddings(backend, pixels, sets, max_tokens)
    z = logits(embeddings, text, backend.logit_scale)[:, None].expand(-1, len(objectives), -1)
    return objective_scores(z, [objectives] * len(sets)).cpu().numpy()


def kept_embeddings(backend: Backend, pixels: torch.Tensor, sets: list[np.ndarray],
                    max_tokens: int = MAX_TOKENS) -> torch.Tensor:
    """(len(sets), E) embeddings of one image (pixels (1, 3, H, W)) run on each keep set: sets of one
    length share `encode_kept` passes of at most `max_tokens` tokens."""
    out: list[torch.Tensor | None] = [None] * len(sets)
    by_length: dict[int, list[int]] = {}
    for i, s in enumerate(sets):
        by_length.setdefault(len(s), []).append(i)
    for length, rows in by_length.items():
        step = max(1, max_tokens // max(length, 1))
        for start in range(0, len(rows), step):
            chunk = rows[start:start + step]
            keep = torch.as_tensor(np.stack([sets[i] for i in chunk]), dtype=torch.long, device=pixels.device)
            for i, e in zip(chunk, backend.encode_kept(pixels, keep[None])[0]):
                out[i] = e
    return torch.stack(out)
