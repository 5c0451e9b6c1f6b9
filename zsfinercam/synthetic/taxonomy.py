"""Classes of the synthetic bird benchmark: part attributes, names, phrases and splits.

A class is one value per attribute part (head colour, tail colour, wing pattern), so
two classes that differ in one attribute differ in exactly one part of the bird. The
body colour is a nuisance (it varies within every class). A fixed set of attribute
combinations is held out of training for compositional zero-shot evaluation.
"""
from __future__ import annotations

import itertools
from typing import Mapping, Union

# Attribute parts, in the order they appear in a class name.
ATTRIBUTE_PARTS: tuple[str, ...] = ("head", "tail", "wings")

# Every part the renderer draws a mask for (attribute parts plus body and beak).
PARTS: tuple[str, ...] = ("body", "tail", "wings", "head", "beak")

# Colours shared by head and tail; also used for background distractors so that
# "is there red anywhere" cannot tell two classes apart.
PART_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "blue": (35, 80, 220),
    "yellow": (235, 205, 30),
    "green": (30, 160, 55),
}

PART_VALUES: dict[str, tuple[str, ...]] = {
    "head": tuple(PART_COLOURS),
    "tail": tuple(PART_COLOURS),
    "wings": ("plain", "striped", "spotted"),
}

# How each attribute reads inside a class name ("red-headed") and as a phrase ("red head").
_NAME_SUFFIX = {"head": "headed", "tail": "tailed", "wings": "winged"}
_PHRASE_NOUN = {"head": "head", "tail": "tail", "wings": "wings"}

# Held-out combinations (head, tail, wings): every value of every part still occurs in
# training, only these combinations are never seen.
HELDOUT: tuple[tuple[str, str, str], ...] = (
    ("red", "green", "spotted"), ("blue", "yellow", "plain"), ("yellow", "red", "striped"),
    ("green", "blue", "spotted"), ("red", "blue", "plain"), ("yellow", "green", "spotted"),
)

SPLITS: tuple[str, ...] = ("train", "heldout", "all")

AttrsLike = Union[str, Mapping[str, str]]


def check_attrs(attrs: Mapping[str, str]) -> dict[str, str]:
    """Validate an attribute dict and return a plain copy in canonical part order.

    Raises:
        TypeError: attrs is not a mapping.
        ValueError: a part is missing, unknown, or has a value outside `PART_VALUES`.
    """
    if not isinstance(attrs, Mapping):
        raise TypeError(f"attrs must be a mapping part -> value, got {type(attrs).__name__}")
    unknown = set(attrs) - set(ATTRIBUTE_PARTS)
    if unknown:
        raise ValueError(f"unknown attribute part(s) {sorted(unknown)}; valid: {list(ATTRIBUTE_PARTS)}")
    out = {}
    for part in ATTRIBUTE_PARTS:
        if part not in attrs:
            raise ValueError(f"attrs lacks part {part!r}; need all of {list(ATTRIBUTE_PARTS)}")
        value = attrs[part]
        if value not in PART_VALUES[part]:
            raise ValueError(f"{part} value {value!r} is not one of {list(PART_VALUES[part])}")
        out[part] = value
    return out


def class_name(attrs: Mapping[str, str]) -> str:
    """Natural-language class name, e.g. 'red-headed blue-tailed striped-winged bird'."""
    attrs = check_attrs(attrs)
    words = [f"{attrs[p]}-{_NAME_SUFFIX[p]}" for p in ATTRIBUTE_PARTS]
    return " ".join(words) + " bird"


def attribute_phrase(part: str, value: str) -> str:
    """Short phrase naming one part's attribute, e.g. ('tail', 'blue') -> 'blue tail'."""
    if part not in PART_VALUES:
        raise ValueError(f"unknown part {part!r}; valid: {list(ATTRIBUTE_PARTS)}")
    if value not in PART_VALUES[part]:
        raise ValueError(f"{part} value {value!r} is not one of {list(PART_VALUES[part])}")
    return f"{value} {_PHRASE_NOUN[part]}"


def attribute_phrases(attrs: AttrsLike) -> dict[str, str]:
    """Phrase per attribute part for a class (name or attrs), e.g. {'head': 'red head', ...}."""
    attrs = parse_class(attrs)
    return {p: attribute_phrase(p, attrs[p]) for p in ATTRIBUTE_PARTS}


def name_fragment(part: str, value: str) -> str:
    """The class-name word for one attribute, e.g. ('tail', 'blue') -> 'blue-tailed'."""
    attribute_phrase(part, value)  # validates
    return f"{value}-{_NAME_SUFFIX[part]}"


def _all_attrs() -> list[dict[str, str]]:
    combos = itertools.product(*(PART_VALUES[p] for p in ATTRIBUTE_PARTS))
    return [dict(zip(ATTRIBUTE_PARTS, c)) for c in combos]


def list_classes(split: str = "all") -> list[str]:
    """Class names of a split, in a fixed order.

    Args:
        split: "train" (seen in training), "heldout" (compositional zero-shot) or "all"
            (train classes first, then held-out ones).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {list(SPLITS)}")
    heldout = {tuple(h) for h in HELDOUT}
    train = [a for a in _all_attrs() if tuple(a[p] for p in ATTRIBUTE_PARTS) not in heldout]
    held = [a for a in _all_attrs() if tuple(a[p] for p in ATTRIBUTE_PARTS) in heldout]
    chosen = {"train": train, "heldout": held, "all": train + held}[split]
    return [class_name(a) for a in chosen]


def parse_class(name_or_attrs: AttrsLike) -> dict[str, str]:
    """Attribute dict of a class given by name or by attrs (validated either way)."""
    if isinstance(name_or_attrs, str):
        lookup = {class_name(a): a for a in _all_attrs()}
        if name_or_attrs not in lookup:
            raise ValueError(
                f"unknown class {name_or_attrs!r}; names look like "
                f"{class_name(_all_attrs()[0])!r} (see list_classes())"
            )
        return dict(lookup[name_or_attrs])
    return check_attrs(name_or_attrs)


def differing_parts(a: AttrsLike, b: AttrsLike) -> list[str]:
    """Attribute parts whose values differ between two classes."""
    pa, pb = parse_class(a), parse_class(b)
    return [p for p in ATTRIBUTE_PARTS if pa[p] != pb[p]]
