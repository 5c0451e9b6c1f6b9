"""Objectives on hand-set logits, and the numerical soundness of the weighted form."""
from __future__ import annotations

import math

import pytest
import torch

from zsfinercam.errors import UsageError
from zsfinercam.core.objectives import Objective, objective_scores


def official_weighted(z, target, refs, alpha):
    """Finer-CAM's published objective, with its 1e-9 epsilon (softmax over all concepts)."""
    p = torch.softmax(z, dim=-1)
    num = sum(p[i] * (z[target] - alpha * z[i]) for i in refs)
    return num / (sum(p[i] for i in refs) + 1e-9)


Z = torch.tensor([2.0, 1.0, 0.5, -1.0])


@pytest.mark.parametrize("objective, expected", [
    (Objective(0, (1,), 1.0, "compare"), 1.0),                      # 2 - 1
    (Objective(0, (1, 2), 0.6, "mean"), 2.0 - 0.6 * 0.75),          # z_t - gamma * mean(1, 0.5)
    (Objective(0, (), 1.0), 2.0),                                  # no references: the base alone
    (Objective(2, (0, 1), 0.0), 0.5),                              # alpha 0: the base alone
    (Objective(0, (1, 2), 1.0),                                    # softmax over the references only
     2.0 - (math.e * 1.0 + math.exp(0.5) * 0.5) / (math.e + math.exp(0.5))),
])
def test_exact_values(objective, expected):
    assert objective(Z).item() == pytest.approx(expected, abs=1e-6)


def test_weighted_equals_the_official_objective_at_moderate_scale():
    torch.manual_seed(0)
    for _ in range(20):
        z = torch.randn(10)
        refs = tuple(torch.randperm(9)[:3].add(1).tolist())
        ours = Objective(0, refs, 1.0)(z)
        assert ours.item() == pytest.approx(official_weighted(z, 0, refs, 1.0).item(), abs=1e-6)
        g_ours = torch.autograd.functional.jacobian(Objective(0, refs, 1.0), z)
        g_off = torch.autograd.functional.jacobian(lambda v: official_weighted(v, 0, refs, 1.0), z)
        torch.testing.assert_close(g_ours, g_off, atol=1e-5, rtol=1e-4)


def test_batched_evaluation_matches_one_at_a_time():
    z = torch.randn(2, 3, 6)
    objs = [[Objective(0, (1, 2)), Objective(3, (), 0.0), Objective(4, (5,), 0.5, "compare")],
            [Objective(1, (0, 2, 3), 0.6, "mean"), Objective(2, (1,)), Objective(5, (0, 1, 2, 3))]]
    got = objective_scores(z, objs)
    for b in range(2):
        for m in range(3):
            assert got[b, m].item() == pytest.approx(objs[b][m](z[b, m]).item(), abs=1e-6)


def test_gradient_at_clip_scale_is_the_analytic_limit():
    """At logit scale 100 the reference softmax is one-hot on the top reference: dO/dz = e_t - alpha e_top."""
    cos = torch.tensor([0.31, 0.27, 0.12, 0.05, -0.02])  # a typical CLIP cosine spread
    z = 100 * cos
    grad = torch.autograd.functional.jacobian(Objective(0, (1, 2, 3), 1.0), z)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(grad, torch.tensor([1.0, -1.0, 0.0, 0.0, 0.0]), atol=1e-5, rtol=0)


def test_the_epsilon_form_breaks_at_clip_scale():
    """The official epsilon form: the target's own weight collapses, so its map is not z_t - z_top."""
    cos = torch.tensor([0.50, 0.27, 0.12, 0.05])  # the target clearly wins: reference probs < 1e-9
    z = 100 * cos
    grad = torch.autograd.functional.jacobian(lambda v: official_weighted(v, 0, (1, 2, 3), 1.0), z)
    assert grad[0].item() < 0.5  # should be 1.0 (dO/dz_t = sum of reference weights)
    ours = torch.autograd.functional.jacobian(Objective(0, (1, 2, 3), 1.0), z)
    assert ours[0].item() == pytest.approx(1.0)


@pytest.mark.parametrize("kwargs, message", [
    ({"kind": "best"}, "unknown objective"),
    ({"alpha": float("nan")}, "alpha must be"),
    ({"alpha": -0.5}, "alpha must be"),
    ({"kind": "compare", "references": (1, 2)}, "exactly one reference"),
])
def test_invalid_objectives(kwargs, message):
    with pytest.raises(UsageError, match=message):
        Objective(0, **{"references": (1,), **kwargs})


@pytest.mark.parametrize("objective, alone", [
    (Objective(0), True), (Objective(2, (0, 1), 0.0), True), (Objective(2, (0,), 0.5), False),
    (Objective(1, (0,), 1.0, "mean"), False),
])
def test_is_base_alone_means_the_concepts_logit(objective, alone):
    z = torch.tensor([[2.0, -1.0, 0.5]])
    assert objective.is_base_alone is alone
    assert (objective(z).item() == z[0, objective.concept].item()) is alone
