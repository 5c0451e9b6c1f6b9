"""Random pooling-attention records, the input of the element-wise bases, for tests and benchmarks."""
from __future__ import annotations

import torch

from ..core.shift import AttentionRecord


def random_attention(batch: int, maps: int, queries: int, heads: int, head_dim: int, grid: tuple[int, int],
                     prefix: int, width: int, *, shared_queries: bool = True, seed: int = 0,
                     device: str | torch.device = "cpu") -> tuple[AttentionRecord, torch.Tensor, torch.Tensor]:
    """(record, dO/do (B, M, L, H * hd), patches (B, N, D)), float32, N = grid[0] * grid[1].

    A softmax attention of L queries (one set for the batch with `shared_queries`, as a CLS
    or MAP pool's latent) over `prefix` + N tokens, unit-scale projections, and gradients of
    ~1e-3 (token-mean gradients are small), all drawn from `seed`.
    """
    g = torch.Generator().manual_seed(seed)
    n = grid[0] * grid[1]

    def draw(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    record = AttentionRecord(q=draw(1 if shared_queries else batch, queries, heads, head_dim),
                             v=draw(batch, prefix + n, heads, head_dim),
                             weights=(2 * draw(batch, queries, heads, prefix + n)).softmax(-1),
                             wk=draw(heads * head_dim, width) / width**0.5,
                             wv=draw(heads * head_dim, width) / width**0.5, prefix=prefix)
    grad, patches = 1e-3 * draw(batch, maps, queries, heads * head_dim), draw(batch, n, width)
    moved = AttentionRecord(*(t.to(device) for t in (record.q, record.v, record.weights, record.wk, record.wv)),
                            record.prefix)
    return moved, grad.to(device), patches.to(device)
