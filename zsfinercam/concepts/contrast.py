"""Choosing what a concept is contrasted with: the contrast strategies.

Finer-CAM is only as good as its references. Each strategy turns a concept into a
`Plan`: references fixed before the image is seen, and pools from which the
references closest in logit to the target are picked per image.

    logits   the paper's rule: ranks 1..k by |z_i - z_t| among a vocabulary, per image
    text     the k vocabulary entries nearest by text-embedding cosine (image-independent)
    vs       the references the caller named
    generic  the concept against its category ("red epaulets" vs "bird"), as in the
             paper's multimodal figure
    parts    an attribute against the other attributes of its part ("red tail" vs
             "blue tail": what the trait is) and against the same trait on other parts
             ("red tail" vs "red wings": where it is), k closest logits from each
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch

from ..errors import UsageError
from ..options import DEFAULT_NUM_REFERENCES, STRATEGIES, check_concepts

Embed = Callable[[Sequence[str]], torch.Tensor]  # concepts -> normalised embeddings (K, E)
SAME = 1e-6  # logit gaps (and 1 - cosines) at most this small mean the same concept in other words


def same_text(a: str, b: str) -> bool:
    """Whether two concepts are the same text up to case and spacing ("Red  Tail" = "red tail").

    CLIP tokenizers fold case, so such a pair has one embedding: as a reference it would
    cancel the target's whole map.
    """
    return " ".join(a.casefold().split()) == " ".join(b.casefold().split())


@dataclass(frozen=True)
class Plan:
    """How one concept's references are chosen."""

    strategy: str  # one of STRATEGIES, or "none" for the base alone (no references)
    fixed: tuple[str, ...] = ()  # references known before the image is seen
    pools: tuple[tuple[str, ...], ...] = ()  # per image, the k closest logits of each pool join them
    part: str | None = None  # the concept's part (strategy "parts")

    @property
    def concepts(self) -> tuple[str, ...]:
        """Every concept whose logit this plan may need."""
        return tuple(dict.fromkeys([*self.fixed, *(c for pool in self.pools for c in pool)]))


def nearest_by_logit(z: torch.Tensor, target: int, candidates: Sequence[int],
                     k: int = DEFAULT_NUM_REFERENCES) -> tuple[int, ...]:
    """The k candidates whose logits are closest to the target's (|z_i - z_t|, ascending).

    This is the paper's rule (ranks 1..k of the similarity ordering, rank 0 being the
    target itself); the target is excluded explicitly, and so is any candidate whose logit
    equals the target's (within SAME): the same concept in other words, which would cancel
    the map. Ties keep candidate order.
    """
    pool = [c for c in dict.fromkeys(candidates) if c != target]
    if not pool:
        return ()
    gaps = (z[pool] - z[target]).abs()
    order = [i for i in torch.sort(gaps, stable=True).indices.tolist() if gaps[i] > SAME]
    return tuple(pool[i] for i in order[:k])


def nearest_by_text(embeddings: torch.Tensor, target: int, candidates: Sequence[int],
                    k: int = DEFAULT_NUM_REFERENCES) -> tuple[int, ...]:
    """The k candidates with the highest cosine to the target (rows of `embeddings` are
    normalised); the target and candidates with its very embedding (cosine within SAME
    of 1) are excluded, and ties keep candidate order."""
    pool = [c for c in dict.fromkeys(candidates) if c != target]
    if not pool:
        return ()
    sims = embeddings[pool] @ embeddings[target]
    order = [i for i in torch.sort(sims, descending=True, stable=True).indices.tolist() if sims[i] < 1 - SAME]
    return tuple(pool[i] for i in order[:k])


def pick(plan: Plan, z: torch.Tensor, target: int, index: Mapping[str, int], k: int) -> tuple[int, ...]:
    """The reference indices of one concept on one image (logits z over the table `index`)."""
    chosen = [index[r] for r in plan.fixed]
    for pool in plan.pools:
        chosen += nearest_by_logit(z, target, [index[c] for c in pool], k)
    return tuple(i for i in dict.fromkeys(chosen) if i != target)


def make_plans(strategy: str, names: Sequence[str], *, pool: Sequence[str], vs: Sequence[str] = (),
               category: str | None = None, parts: Mapping[str, Sequence[str]] | None = None,
               embed: Embed | None = None, k: int = DEFAULT_NUM_REFERENCES) -> list[Plan]:
    """One plan per concept. `pool` is the vocabulary for "logits" and "text"; `embed`
    (needed by "text" and "parts") returns normalised text embeddings. A candidate that is
    the concept itself up to case and spacing is never its reference (see `same_text`)."""
    def others(n: str, entries: Sequence[str]) -> tuple[str, ...]:
        return tuple(e for e in entries if not same_text(e, n))

    if strategy == "none":
        return [Plan("none") for _ in names]
    if strategy == "vs":
        return [Plan("vs", fixed=others(n, vs)) for n in names]
    if strategy == "generic":
        if not category:
            raise UsageError("contrast 'generic' needs the concepts' category: category='bird' (--category bird)")
        return [Plan("generic", fixed=others(n, [category])) for n in names]
    if strategy == "logits":
        return [Plan("logits", pools=(others(n, pool),)) for n in names]
    if strategy == "text":
        table = list(dict.fromkeys([*names, *pool]))
        emb, pos = embed(table), {c: i for i, c in enumerate(table)}
        return [Plan("text", fixed=tuple(table[i] for i in nearest_by_text(
            emb, pos[n], [pos[c] for c in others(n, pool)], k))) for n in names]
    if strategy == "parts":
        return [part_plan(n, parts or {}, embed) for n in names]
    raise UsageError(f"unknown contrast {strategy!r}; choose one of: {', '.join(STRATEGIES)}")


def part_plan(concept: str, parts: Mapping[str, Sequence[str]], embed: Embed) -> Plan:
    """Pools for an attribute: the other attributes of its part, and for every other part
    the attribute nearest to the concept by text (the same trait elsewhere)."""
    if not parts:
        raise UsageError("the part vocabulary is empty; give one with [part] sections (see prompts/README.md)")
    if empty := [p for p, entries in parts.items() if not entries]:
        raise UsageError(f"part(s) {', '.join(map(repr, empty))} of the part vocabulary have no attributes; "
                         "list some under each [part] or remove it")
    part = part_of(concept, parts, embed)
    same = tuple(e for e in parts[part] if not same_text(e, concept))
    others = [p for p in parts if p != part]
    elsewhere: list[str] = []
    if others:
        entries = [e for p in others for e in parts[p]]
        emb = embed([concept, *entries])
        sims, start = emb[1:] @ emb[0], 0
        for p in others:
            n = len(parts[p])
            elsewhere.append(parts[p][int(torch.argmax(sims[start:start + n]))])
            start += n
    pools = tuple(pool for pool in (same, tuple(e for e in elsewhere if not same_text(e, concept))) if pool)
    if not pools:
        raise UsageError(f"the part vocabulary has nothing besides {concept!r} to contrast with")
    return Plan("parts", pools=pools, part=part)


def part_of(concept: str, parts: Mapping[str, Sequence[str]], embed: Embed) -> str:
    """The part an attribute belongs to: the part listing it; else the longest part name
    written in it as a word ("red tail" -> tail, "blue wings" -> wing); else the part whose
    attributes' mean text embedding is nearest."""
    for part, entries in parts.items():
        if any(same_text(e, concept) for e in entries):
            return part
    folded = concept.casefold()
    named = [p for p in parts if re.search(rf"\b{re.escape(p.casefold())}s?\b", folded)]
    if named:
        return max(named, key=len)
    entries = [e for p in parts for e in parts[p]]
    emb = embed([concept, *entries])
    scores, start = [], 0
    for p in parts:
        n = len(parts[p])
        mean = emb[1 + start:1 + start + n].mean(dim=0)
        scores.append(float(mean @ emb[0]) / float(mean.norm().clamp_min(1e-12)))
        start += n
    return list(parts)[max(range(len(scores)), key=scores.__getitem__)]


def part_table_of(parts) -> dict[str, list[str]]:
    """A part vocabulary given by name, file or {part: [attributes]} dict, checked."""
    if isinstance(parts, (str, Path)):
        from .vocab import load_parts

        return load_parts(str(parts))
    if not isinstance(parts, Mapping) or any(isinstance(v, str) for v in parts.values()):
        raise UsageError("parts must be a part vocabulary name or file, or a dict {part: [attributes]}")
    return {str(p): check_concepts(list(v), allow_empty=True) for p, v in parts.items()}
