"""How much a map's own objective rests on its hottest tokens: the scoring, pure given objective values.

`core.removal` runs the model on the kept tokens (`Backend.encode_kept`) and hands the objective
values here. For each level k (a fraction of the N patch tokens, n_k = max(1, round(k N))), with O
the map's own objective (the Finer contrast; the concept's logit for the base alone), "top" the
map's n_k largest tokens and "random" a seeded draw of n_k tokens (DRAWS of them, the same for
every map of an image), each term averaged over the draws:

    deletion  d_k = mean over draws of (drop_top - drop_random) / (|drop_top| + |drop_random|),
                    drop = O(all) - O(without those tokens)
    insertion i_k = mean over draws of (O_top - O_random) / (|O_top| + |O_random|),
                    O_x = O(only those tokens)
    faithfulness  = (mean over INSERTION_LEVELS of i_k + mean over DELETION_LEVELS of d_k) / 2
    deletion mode: mean over DELETION_LEVELS of d_k

With the same levels for both this is docs/design.md's mean over k of (d_k + i_k) / 2. Deletion is
kept at 20 % only: on the synthetic benchmark it predicted better than three deletion levels and
costs a third as much (docs/faithfulness.md). Every term lies in [-1, 1] (0 when numerator and
denominator are both 0): 0 means the map's top tokens move its objective no more than random ones,
1 that they carry all of it and random tokens none, negative that random tokens do better. The top
tokens are the map's largest values (ties in a seeded random order); an empty map (no positive
value, or flat) ranks nothing and gets no number (None).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np

INSERTION_LEVELS = (0.05, 0.10, 0.20)  # fractions of the patch tokens kept alone (insertion)
DELETION_LEVELS = (0.20,)  # fractions removed (deletion): near-full sequences, so one level (docs/faithfulness.md)
DRAWS = 4  # random token sets per level, shared by every map of an image
SEED = 0  # of the random sets, with the image's own bytes (`image_seed`): the same image, the same sets
MODES = ("both", "deletion")  # deletion and insertion, or deletion alone (half the cost; docs/faithfulness.md)

Curve = tuple[tuple[float, float], ...]  # ((level k, d_k or i_k), ...)


@dataclass(frozen=True)
class Faithfulness:
    """One map's faithfulness: the summary `score` and its curves, (level, value) per level.

    `score` (and both curves) are None for an empty map; `insertion` is None in deletion mode.
    """

    mode: str
    score: float | None
    insertion: Curve | None = None
    deletion: Curve | None = None

    def to_dict(self) -> dict:
        """JSON-ready: the score, the mode and the curves as [[k, value], ...], rounded to 1e-6."""
        rounded = lambda curve: None if curve is None else [[k, round(float(v), 6)] for k, v in curve]  # noqa: E731
        return {"score": None if self.score is None else round(self.score, 6), "mode": self.mode,
                "insertion": rounded(self.insertion), "deletion": rounded(self.deletion)}


def counts(patches: int, levels: Sequence[float]) -> list[int]:
    """Tokens per level: max(1, round(k * patches)), at most patches - 1 (something is always left)."""
    return [min(max(1, round(k * patches)), patches - 1) for k in levels]


def top_sets(token_map: np.ndarray, sizes: Sequence[int], seed: int = SEED) -> list[np.ndarray] | None:
    """The indices of the `size` largest values of a flat map, per size; None for an empty map (no
    positive value, or all equal: nothing stands out, as `LocateResult.empty`).

    Ties (the zeros a ReLU leaves, often more than the smaller levels' worth) are broken in a seeded
    random order, not by position: by position they would be the image's top rows, a corner of
    background, which biases both the map's number and a shuffled control's (measured: -0.1).
    """
    values = np.asarray(token_map, dtype=np.float64).ravel()
    if not np.any(values > 0) or values.max() == values.min():
        return None
    ties = np.random.default_rng([seed, 1]).permutation(values.size)  # a stream apart from random_sets'
    order = np.lexsort((ties, -values))
    return [order[:n] for n in sizes]


def image_seed(pixels: np.ndarray, seed: int = SEED) -> int:
    """The seed of an image's random sets and tie order: `seed` mixed with a checksum of its pixels.

    Fixed per image (every concept, every run), but not the same positions for every image: with one
    fixed set of positions for a whole data set, positions that happen to fall on the subject more
    often than chance bias every map's number alike (measured: shuffled maps -0.06 instead of 0).
    """
    return zlib.crc32(np.ascontiguousarray(pixels).tobytes(), seed)


def random_sets(patches: int, sizes: Sequence[int], draws: int = DRAWS, seed: int = SEED) -> list[np.ndarray]:
    """Per size, (draws, size) token indices drawn without replacement, seeded by (seed, size): the same
    for every map, and a size gets the same draws whatever other sizes are asked for."""
    out = []
    for n in sizes:
        rng = np.random.default_rng([seed, 2, n])  # 2: a stream apart from top_sets' tie order
        out.append(np.stack([rng.permutation(patches)[:n] for _ in range(draws)]))
    return out


def contrast(top: float, random: float) -> float:
    """(top - random) / (|top| + |random|), in [-1, 1]; 0 when both are 0."""
    scale = abs(top) + abs(random)
    return 0.0 if scale == 0 else float((top - random) / scale)


def score(full: float, deletion_top: Sequence[float], deletion_random: Sequence[Sequence[float]],
          insertion_top: Sequence[float] | None = None, insertion_random: Sequence[Sequence[float]] = (), *,
          deletion_levels: Sequence[float] = DELETION_LEVELS,
          insertion_levels: Sequence[float] = INSERTION_LEVELS) -> Faithfulness:
    """A map's faithfulness from objective values: `full` = O with every token; per level the top
    set's O and the random draws' O, for deletion (those tokens removed) and, when `insertion_top`
    is given, insertion (only those tokens kept). Score: the mean of the deletion curve, averaged
    with the mean of the insertion curve when there is one (= mean over k of (d_k + i_k) / 2 when
    the levels agree)."""
    dels = tuple((k, against_draws(full - t, [full - v for v in r]))
                 for k, t, r in zip(deletion_levels, deletion_top, deletion_random))
    del_mean = float(np.mean([v for _, v in dels]))
    if insertion_top is None:
        return Faithfulness("deletion", del_mean, None, dels)
    ins = tuple((k, against_draws(t, r)) for k, t, r in zip(insertion_levels, insertion_top, insertion_random))
    return Faithfulness("both", (del_mean + float(np.mean([v for _, v in ins]))) / 2, ins, dels)


def mode_of(option: bool | str) -> str:
    """The mode (one of MODES) of a truthy `LocateOptions.faithfulness`: True -> "both", "deletion" -> "deletion"."""
    return "deletion" if option == "deletion" else "both"


def against_draws(top: float, draws: Sequence[float]) -> float:
    """The mean over the random draws of `contrast(top, draw)`.

    Not the contrast with the draws' mean: `contrast` is concave in `top`, and a single set varies
    more than a mean of several, so a map no better than random would score below 0 (measured:
    about -0.1 for shuffled maps). Against each draw, a random set and a draw are exchangeable and
    `contrast` is antisymmetric, so such a map scores 0 on average.
    """
    return float(np.mean([contrast(top, float(d)) for d in draws]))


def empty(mode: str) -> Faithfulness:
    """The faithfulness of a map with nothing to rank: no score, no curve."""
    return Faithfulness(mode, None)
