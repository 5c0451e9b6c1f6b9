"""Choosing what a concept is contrasted with."""
from __future__ import annotations

from typing import Sequence

import torch

DEFAULT_NUM_REFERENCES = 3


def nearest_by_logit(z: torch.Tensor, target: int, candidates: Sequence[int],
                     k: int = DEFAULT_NUM_REFERENCES) -> tuple[int, ...]:
    """The k candidates whose logits are closest to the target's (|z_i - z_t|, ascending).

    This is the paper's rule (ranks 1..k of the similarity ordering, rank 0 being the
    target itself); the target is excluded explicitly, and ties keep candidate order.
    """
    pool = [c for c in dict.fromkeys(candidates) if c != target]
    if not pool:
        return ()
    gaps = (z[pool] - z[target]).abs()
    order = torch.sort(gaps, stable=True).indices[:k]
    return tuple(pool[i] for i in order.tolist())
