"""Training captions for the synthetic birds, each with the attributes it asserts.

A caption names all three attributes (a class name in a template), or a random subset of
them in a random order, either as name words ("a blue-tailed bird") or as part phrases
("a bird with a blue tail"). The subset captions teach the text tower what each word
binds to, which is what lets it compose class names it never saw (held-out classes).
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from .taxonomy import ATTRIBUTE_PARTS, PART_VALUES, class_name, name_fragment

# Templates for class names; the zero-shot head averages over all of them.
TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a picture of a {}.",
    "a drawing of a {}.",
    "a {}.",
    "a photo of the {}.",
)
_ARTICLE = {"head": "a ", "tail": "a ", "wings": ""}
UNCONSTRAINED = -1


def attrs_from_index(idx: Sequence[int]) -> dict[str, str]:
    """Attribute dict from one value index per part (order `ATTRIBUTE_PARTS`)."""
    return {p: PART_VALUES[p][int(i)] for p, i in zip(ATTRIBUTE_PARTS, idx)}


def attrs_to_index(attrs: dict[str, str]) -> tuple[int, ...]:
    """One value index per part (order `ATTRIBUTE_PARTS`)."""
    return tuple(PART_VALUES[p].index(attrs[p]) for p in ATTRIBUTE_PARTS)


def phrase_caption(parts: list[str], attrs: dict[str, str]) -> str:
    """'a bird with a red head and striped wings.' for the given parts, in that order."""
    bits = [f"{_ARTICLE[p]}{attrs[p]} {p}" for p in parts]
    return "a bird with " + " and ".join(bits) + "."


def sample_caption(idx: Sequence[int], rng: np.random.Generator) -> tuple[str, tuple[int, ...]]:
    """A random true caption of a bird and the attribute constraint it expresses.

    Returns:
        (text, constraint) where constraint has one value index per part, or
        `UNCONSTRAINED` (-1) for parts the caption does not mention.
    """
    attrs = attrs_from_index(idx)
    mode = rng.random()
    if mode < 0.45:
        return TEMPLATES[rng.integers(len(TEMPLATES))].format(class_name(attrs)), tuple(idx)
    k = int(rng.integers(1, 4)) if mode >= 0.75 else int(rng.integers(1, 3))
    parts = [ATTRIBUTE_PARTS[i] for i in rng.permutation(len(ATTRIBUTE_PARTS))[:k]]
    constraint = tuple(int(i) if p in parts else UNCONSTRAINED for p, i in zip(ATTRIBUTE_PARTS, idx))
    if mode >= 0.75:
        return phrase_caption(parts, attrs), constraint
    words = " ".join(name_fragment(p, attrs[p]) for p in parts)
    return TEMPLATES[rng.integers(len(TEMPLATES))].format(words + " bird"), constraint


def caption_words() -> list[str]:
    """Every word a training caption can hold, sorted: the toy model's whole vocabulary."""
    texts = [*TEMPLATES, phrase_caption(list(ATTRIBUTE_PARTS), attrs_from_index([0] * len(ATTRIBUTE_PARTS)))]
    for part in ATTRIBUTE_PARTS:
        texts += [f"{name_fragment(part, v)} {_ARTICLE[part]}{v} {part}" for v in PART_VALUES[part]]
    return sorted({w for text in texts for w in re.findall(r"[a-z]+", text.lower())} | {"bird"})


def positives(image_idx: np.ndarray, constraints: np.ndarray) -> np.ndarray:
    """Bool (n_images, n_captions): caption j is true of image i.

    Args:
        image_idx: (n_images, n_parts) value indices of each image.
        constraints: (n_captions, n_parts) value indices or -1 for "any".
    """
    ok = (constraints[None, :, :] == UNCONSTRAINED) | (constraints[None, :, :] == image_idx[:, None, :])
    return ok.all(axis=-1)
