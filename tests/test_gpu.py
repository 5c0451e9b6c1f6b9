"""CUDA checks: every base's Triton kernel against its torch path, the GPU engine against the CPU one.

Skipped where there is no GPU (CI); run on a GPU machine with `pytest tests/test_gpu.py`.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import random_image
from zsfinercam.core.bases import get_base, list_bases
from zsfinercam.core.bases.base import TokenGradients
from zsfinercam.core.kernel_choice import triton_available
from zsfinercam.core.kernels import token_maps, token_maps_torch
from zsfinercam.testing.attention import random_attention

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("shape", [(1, 196, 768, 16), (2, 1024, 768, 64), (3, 1369, 1024, 5), (1, 49, 32, 1)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_kernel_matches_reference_on_cuda(shape, dtype):
    if not triton_available():
        pytest.skip("triton unavailable")
    b, n, d, m = shape
    g = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(b, n, d, device="cuda", generator=g).to(dtype)
    w = torch.randn(b, m, d, device="cuda", generator=g).to(dtype)
    raw, norm = token_maps(a, w, impl="triton")
    raw_ref, norm_ref = token_maps_torch(a, w)
    torch.testing.assert_close(raw, raw_ref, rtol=1e-4, atol=1e-3 * raw_ref.abs().max().item())
    torch.testing.assert_close(norm, norm_ref, rtol=0, atol=2e-4)


# (B, M, grid, D, H): ViT-B/16 at 224 and 448, ViT-L/14 at 518 (37x37)
BASE_SHAPES = [(1, 16, (14, 14), 768, 12), (8, 1, (28, 28), 768, 12), (2, 64, (37, 37), 1024, 16)]


@pytest.mark.parametrize("shape", BASE_SHAPES)
@pytest.mark.parametrize("name", list_bases())
def test_every_base_kernel_matches_torch_on_cuda(name, shape, monkeypatch):
    """float16 operands (scaled) against the float32 torch path; "auto" takes the kernel."""
    if not triton_available():
        pytest.skip("triton unavailable")
    base = get_base(name)
    batch, maps, grid, width, heads = shape
    record, grad, patches = random_attention(batch, maps, 1, heads, width // heads, grid, 1, width, device="cuda")
    gradients = TokenGradients(record, grad) if base.token_gradients else 1e-3 * torch.randn_like(grad[:, :, 0])
    raw_ref, norm_ref = base.maps(gradients, patches, impl="torch")
    raw, norm = base.maps(gradients, patches, impl="triton")
    top = raw_ref.amax(dim=-1, keepdim=True).clamp_min(1e-30)
    assert ((raw - raw_ref).abs() / top).max() < 3e-3
    assert (norm - norm_ref).abs().max() < 3e-3
    ran = []
    monkeypatch.setattr(base, "maps_triton", lambda *args: ran.append(1) or (raw, norm))
    base.maps(gradients, patches)
    assert ran == [1]


def test_gpu_maps_match_cpu_maps(tiny_files):
    import zsfinercam as zf

    cfg, weights = tiny_files
    images = [random_image(1), random_image(2)]
    concepts = ["cat", "dog", "bird", "owl"]
    got = {}
    for device in ("cpu", "cuda"):
        loc = zf.Localizer.from_pretrained("t", str(weights), model_config=str(cfg), device=device, cache_dir=None)
        got[device] = loc.locate_many(images, concepts)
    for cpu_row, gpu_row in zip(got["cpu"], got["cuda"]):
        for c, g in zip(cpu_row, gpu_row):
            assert c.references == g.references
            peak = max(c.token_map.max(), 1e-12)
            np.testing.assert_allclose(g.token_map / peak, c.token_map / peak, atol=5e-2)
            assert np.corrcoef(g.token_map.ravel(), c.token_map.ravel())[0, 1] > 0.99


@pytest.mark.parametrize("label", sorted(__import__("tiny_models").TINY_BUILDERS))
def test_every_backend_on_cuda_matches_cpu(label, tmp_path):
    """Each backend's GPU path (bf16/fp16 trunk where the backend uses it, fused kernel) against its CPU path."""
    from tiny_models import TINY_BUILDERS

    build = TINY_BUILDERS[label]
    locs = {d: build(tmp_path / d, device=d) for d in ("cpu", "cuda")}
    vocab = list(locs["cpu"].config.default_vocab or ["cat", "dog", "bird", "owl", "fox"])
    images = [random_image(1), random_image(2, 30, 50)]
    got = {d: loc.locate_many(images, vocab[:3], vocab=vocab) for d, loc in locs.items()}
    for cpu_row, gpu_row in zip(got["cpu"], got["cuda"]):
        for c, g in zip(cpu_row, gpu_row):
            peak = max(c.token_map.max(), 1e-12)
            np.testing.assert_allclose(g.token_map / peak, c.token_map / peak, atol=5e-2)
            assert np.corrcoef(g.token_map.ravel(), c.token_map.ravel())[0, 1] > 0.99
    feats = locs["cuda"].encode_image(images[0])
    direct = locs["cuda"].locate_many(images[0], vocab[:3], vocab=vocab)
    cached = locs["cuda"].locate_many(feats, vocab[:3], vocab=vocab)
    for d, c in zip(direct, cached):
        assert np.corrcoef(d.token_map.ravel(), c.token_map.ravel())[0, 1] > 0.999
