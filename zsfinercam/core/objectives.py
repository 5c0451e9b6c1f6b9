"""Finer-CAM objectives: pure functions of the logits z.

`weighted` (default, the official Finer-CAM objective, alpha = 1):
    O = sum_i q_i (z_t - alpha z_i),   q = softmax over the REFERENCE logits only.
The official code writes this as sum_i p_i (z_t - alpha z_i) / (sum_i p_i + 1e-9) with p
the softmax over all concepts. Without the 1e-9 the two are identical; with it, at
CLIP's logit scale (100) the reference probabilities underflow below 1e-9, the epsilon
dominates, the gradient through p changes sign and the map points away from the
distinguishing part. We therefore drop the epsilon and normalise over the references.
`mean` (the paper's form): O = mean_i (z_t - gamma z_i), gamma = 0.6 by default.
`compare`: O = z_t - alpha z_r for exactly one reference r. (The objective's name only:
`Localizer.compare` and `zsfinercam compare` show the CAM base alone beside Finer-CAM, any objective.)
alpha = 0, or no references, is the base alone: O = z_t, the concept's logit.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..errors import UsageError
from ..options import OBJECTIVES, check_alpha, check_choice


@dataclass(frozen=True)
class Objective:
    """One map to compute: the concept's index in the logits, its reference indices, the contrast strength.

    (The concept is the Finer-CAM papers' "target class"; in this package "target" means only
    the target activation A, see `zsfinercam.core.engine`.)
    """

    concept: int
    references: tuple[int, ...] = ()
    alpha: float = 1.0
    kind: str = "weighted"

    def __post_init__(self) -> None:
        # the engine's own invariants; the checks and their messages are LocateOptions' (zsfinercam.options)
        check_choice("objective", self.kind, OBJECTIVES)
        check_alpha(self.alpha)
        if self.kind == "compare" and len(self.references) != 1:
            raise UsageError(f"the compare objective takes exactly one reference, got {len(self.references)}")
        object.__setattr__(self, "references", tuple(int(r) for r in self.references))

    @property
    def is_base_alone(self) -> bool:
        """True when O is the concept's logit alone (alpha 0, or no references)."""
        return self.alpha == 0 or not self.references

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """O for logits (..., K), one value per leading index."""
        z = logits.reshape(-1, 1, logits.shape[-1])
        return objective_scores(z, [[self]] * z.shape[0]).reshape(logits.shape[:-1])


def objective_scores(z: torch.Tensor, objectives: Sequence[Sequence[Objective]]) -> torch.Tensor:
    """Evaluate many objectives at once.

    Args:
        z: logits (B, M, K); row m of image b is scored by objectives[b][m].
        objectives: B lists of M objectives.

    Returns:
        O of shape (B, M).
    """
    concept, refs, valid, alpha, is_mean = _index_tensors(objectives, z.device)
    z_t = z.gather(-1, concept[..., None])[..., 0]
    z_r = z.gather(-1, refs)
    q = z_r.masked_fill(~valid, float("-inf")).softmax(dim=-1)
    counts = valid.sum(-1).clamp_min(1)
    mean_ref = (z_r * valid).sum(-1) / counts
    ref_term = torch.where(is_mean, mean_ref, (q * z_r).sum(-1))
    return z_t - alpha * ref_term


def _index_tensors(objectives: Sequence[Sequence[Objective]], device: torch.device):
    """Pad reference lists; base-alone rows reference the concept itself with alpha 0."""
    width = max((len(o.references) for row in objectives for o in row), default=0) or 1
    concept, refs, valid, alpha, is_mean = [], [], [], [], []
    for row in objectives:
        concept.append([o.concept for o in row])
        refs.append([list(o.references or (o.concept,)) + [o.concept] * (width - len(o.references or (0,)))
                     for o in row])
        valid.append([[j < max(len(o.references), 1) for j in range(width)] for o in row])
        alpha.append([0.0 if o.is_base_alone else float(o.alpha) for o in row])
        is_mean.append([o.kind == "mean" for o in row])
    as_tensor = lambda data, dtype: torch.tensor(data, dtype=dtype, device=device)  # noqa: E731
    return (as_tensor(concept, torch.long), as_tensor(refs, torch.long), as_tensor(valid, torch.bool),
            as_tensor(alpha, torch.float32), as_tensor(is_mean, torch.bool))
