"""Finer-CAM objectives: pure functions of the logits z.

`weighted` (default, the official Finer-CAM objective, alpha = 1):
    O = sum_i q_i (z_t - alpha z_i),   q = softmax over the REFERENCE logits only.
The official code writes this as sum_i p_i (z_t - alpha z_i) / (sum_i p_i + 1e-9) with p
the softmax over all concepts. Without the 1e-9 the two are identical; with it, at
CLIP's logit scale (100) the reference probabilities underflow below 1e-9, the epsilon
dominates, the gradient through p changes sign and the map points away from the
distinguishing part. We therefore drop the epsilon and normalise over the references.
`mean` (the paper's form): O = mean_i (z_t - gamma z_i), gamma = 0.6 by default.
`compare`: O = z_t - alpha z_r for exactly one reference r.
alpha = 0, or no references, is plain Grad-CAM: O = z_t.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from .errors import UsageError

OBJECTIVES = ("weighted", "mean", "compare")
DEFAULT_ALPHA = {"weighted": 1.0, "mean": 0.6, "compare": 1.0}


@dataclass(frozen=True)
class Objective:
    """One map to compute: a target concept index, its reference indices, the contrast strength."""

    target: int
    references: tuple[int, ...] = ()
    alpha: float = 1.0
    kind: str = "weighted"

    def __post_init__(self) -> None:
        if self.kind not in OBJECTIVES:
            raise UsageError(f"unknown objective {self.kind!r}; choose one of: {', '.join(OBJECTIVES)}")
        if not isinstance(self.alpha, (int, float)) or not math.isfinite(self.alpha) or self.alpha < 0:
            raise UsageError(f"alpha must be a finite number >= 0, got {self.alpha!r}")
        if self.kind == "compare" and len(self.references) != 1:
            raise UsageError(f"the compare objective takes exactly one reference, got {len(self.references)}")
        object.__setattr__(self, "references", tuple(int(r) for r in self.references))

    @property
    def is_gradcam(self) -> bool:
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
    target, refs, valid, alpha, is_mean = _index_tensors(objectives, z.device)
    z_t = z.gather(-1, target[..., None])[..., 0]
    z_r = z.gather(-1, refs)
    q = z_r.masked_fill(~valid, float("-inf")).softmax(dim=-1)
    counts = valid.sum(-1).clamp_min(1)
    mean_ref = (z_r * valid).sum(-1) / counts
    ref_term = torch.where(is_mean, mean_ref, (q * z_r).sum(-1))
    return z_t - alpha * ref_term


def _index_tensors(objectives: Sequence[Sequence[Objective]], device: torch.device):
    """Pad reference lists; plain Grad-CAM rows reference the target itself with alpha 0."""
    width = max((len(o.references) for row in objectives for o in row), default=0) or 1
    target, refs, valid, alpha, is_mean = [], [], [], [], []
    for row in objectives:
        target.append([o.target for o in row])
        refs.append([list(o.references or (o.target,)) + [o.target] * (width - len(o.references or (0,)))
                     for o in row])
        valid.append([[j < max(len(o.references), 1) for j in range(width)] for o in row])
        alpha.append([0.0 if o.is_gradcam else float(o.alpha) for o in row])
        is_mean.append([o.kind == "mean" for o in row])
    as_tensor = lambda data, dtype: torch.tensor(data, dtype=dtype, device=device)  # noqa: E731
    return (as_tensor(target, torch.long), as_tensor(refs, torch.long), as_tensor(valid, torch.bool),
            as_tensor(alpha, torch.float32), as_tensor(is_mean, torch.bool))
