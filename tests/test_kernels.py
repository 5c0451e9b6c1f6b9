"""Token-map stage: the torch reference on hand-set inputs, and the Triton kernel against it.

The kernel runs on CPU in Triton's interpreter. triton 3.8 decides between compiled and
interpreted functions when ``triton.jit`` decorates them, and decorates its own helpers
(``tl.zeros``, ``tl.max``, ...) when ``triton.language`` is first imported, so
``TRITON_INTERPRET=1`` must be set before the process imports triton. The interpreter tests
therefore run their kernel calls in ONE child process started with the variable set: the
parent saves every case's inputs, the child runs ``impl="triton"`` on each and saves the
maps, and the tests below compare them with the reference here. No test sets the variable
in this process except to check the error for a flag flipped after triton was imported.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from zsfinercam.core import kernel_choice
from zsfinercam.core.kernel_choice import TritonUnavailableError, triton_available
from zsfinercam.core.kernels import token_maps, token_maps_torch

HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_interpreter(monkeypatch):
    """TRITON_INTERPRET unset for one test (restored afterwards)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def _hand_set():
    """Four tokens, three maps; the expected maps are worked out by hand."""
    A = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, -1.0]]])
    w = torch.tensor([[[1.0, 0.0], [1.0, -1.0], [-1.0, -1.0]]])
    raw = torch.tensor([[[1.0, 0.0, 1.0, 2.0], [1.0, 0.0, 0.0, 3.0], [0.0, 0.0, 0.0, 0.0]]])
    third = torch.tensor(1.0) / 3.0  # float32 rounding of 1/3, as both paths compute it
    norm = torch.tensor([[[0.5, 0.0, 0.5, 1.0], [third, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]]])
    return A, w, raw, norm


def _ramp(n_tokens: int):
    """D = 1, A[n] = n + 1, maps w = 1 and w = 2: raw = (n + 1) * w, norm = n / (N - 1).

    Every raw value is > 0, so a min that counted the masked-out columns of the last
    tile (zeros) would be wrong.
    """
    A = torch.arange(1, n_tokens + 1, dtype=torch.float32).reshape(1, n_tokens, 1)
    w = torch.tensor([[[1.0], [2.0]]])
    raw = torch.cat([A.reshape(1, 1, -1), 2 * A.reshape(1, 1, -1)], dim=1)
    norm = (torch.arange(n_tokens, dtype=torch.float32) / (n_tokens - 1)).expand(1, 2, n_tokens)
    return A, w, raw, norm


def _random(B, N, D, M, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, N, D, generator=g), torch.randn(B, M, D, generator=g) * 1e-2


# ----------------------------------------------------------------- torch reference


def test_reference_hand_set_exact():
    A, w, raw, norm = _hand_set()
    got_raw, got_norm = token_maps_torch(A, w)
    assert torch.equal(got_raw, raw)
    assert torch.equal(got_norm, norm)


def test_reference_ramp_exact():
    A, w, raw, norm = _ramp(70)
    got_raw, got_norm = token_maps_torch(A, w)
    assert torch.equal(got_raw, raw)
    assert torch.equal(got_norm, norm)


def test_reference_constant_map_normalises_to_zeros():
    A = torch.ones(1, 5, 3)
    w = torch.tensor([[[1.0, 1.0, 1.0], [-1.0, 0.0, 0.0]]])  # raw 3 everywhere; raw 0 everywhere
    raw, norm = token_maps_torch(A, w)
    assert torch.equal(raw[0, 0], torch.full((5,), 3.0))
    assert torch.equal(raw[0, 1], torch.zeros(5))
    assert torch.equal(norm, torch.zeros(1, 2, 5))


def test_reference_upcasts_half_inputs_and_detaches():
    A, w, raw, norm = _hand_set()
    got_raw, got_norm = token_maps_torch(A.half().requires_grad_(), w.bfloat16())
    assert got_raw.dtype == got_norm.dtype == torch.float32
    assert not got_raw.requires_grad and not got_norm.requires_grad
    assert torch.equal(got_raw, raw) and torch.equal(got_norm, norm)


def test_auto_on_cpu_is_the_reference(no_interpreter):
    A, w = _random(2, 9, 5, 3)
    for got, want in zip(token_maps(A, w), token_maps_torch(A, w)):
        assert torch.equal(got, want)


def test_empty_batch_or_maps_give_empty_outputs():
    raw, norm = token_maps(torch.zeros(2, 4, 3), torch.zeros(2, 0, 3))
    assert raw.shape == norm.shape == (2, 0, 4)


@pytest.mark.parametrize(
    "A, w, impl, error, match",
    [
        (torch.zeros(4, 3), torch.zeros(1, 2, 3), "auto", ValueError, r"expected A of shape \(B, N, D\), got shape \(4, 3\)"),
        (torch.zeros(1, 4, 3), torch.zeros(2, 3), "auto", ValueError, r"expected w of shape \(B, M, D\)"),
        (torch.zeros(1, 4, 3), torch.zeros(2, 2, 3), "auto", ValueError, "same batch size B, got 1 and 2"),
        (torch.zeros(1, 4, 3), torch.zeros(1, 2, 5), "auto", ValueError, "same channel count D, got 3 and 5"),
        (torch.zeros(1, 0, 3), torch.zeros(1, 2, 3), "auto", ValueError, "at least one token"),
        (torch.zeros(1, 4, 3, dtype=torch.int64), torch.zeros(1, 2, 3), "auto", TypeError, "floating dtype"),
        ([[[1.0]]], torch.zeros(1, 1, 1), "auto", TypeError, "expected A to be a torch.Tensor, got list"),
        (torch.zeros(1, 4, 3), torch.zeros(1, 2, 3, device="meta"), "auto", ValueError, "same device, got cpu and meta"),
        (torch.zeros(1, 4, 3), torch.zeros(1, 2, 3), "cuda", ValueError, "'auto', 'torch', 'triton', got 'cuda'"),
        (torch.zeros(1, 4, 3, dtype=torch.float64), torch.zeros(1, 2, 3), "triton", TritonUnavailableError, "float64"),
    ],
)
def test_bad_inputs_raise(A, w, impl, error, match):
    with pytest.raises(error, match=match):
        token_maps(A, w, impl=impl)


def test_triton_on_cpu_without_interpreter_says_why(no_interpreter):
    A, w, _, _ = _hand_set()
    why = "TRITON_INTERPRET" if HAS_TRITON else "not importable"
    with pytest.raises(TritonUnavailableError, match=why):
        token_maps(A, w, impl="triton")


def test_missing_triton_says_so_and_auto_falls_back(monkeypatch):
    monkeypatch.setattr(kernel_choice, "_triton_import_error", lambda: "ModuleNotFoundError: No module named 'triton'")
    A, w, raw, _ = _hand_set()
    with pytest.raises(TritonUnavailableError, match="triton package is not importable"):
        token_maps(A, w, impl="triton")
    assert not triton_available()
    assert torch.equal(token_maps(A, w)[0], raw)


@needs_triton
def test_too_many_images_for_the_grid(no_interpreter):
    with pytest.raises(TritonUnavailableError, match="at most 65535 images"):
        token_maps(torch.zeros(65536, 1, 1), torch.zeros(65536, 1, 1), impl="triton")


@needs_triton
def test_flag_flipped_after_triton_import_says_so(monkeypatch):
    import triton  # triton.language's helpers are fixed for the flag as it was at first import

    if kernel_choice.stdlib_interpreted(triton):
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    else:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    A, w, _, _ = _hand_set()
    with pytest.raises(TritonUnavailableError, match="when triton was first imported"):
        token_maps(A, w, impl="triton")
    assert not triton_available()


# ----------------------------------------------------------------- Triton kernel (interpreter)

_CHILD = """
import sys, torch
from zsfinercam.core import kernel_choice, kernels
cases = torch.load(sys.argv[1])
maps = {name: kernels.token_maps(A, w, impl="triton") for name, (A, w) in cases.items()}

def must_not_run(*args):
    raise AssertionError("auto ran the Triton kernel on CPU tensors")

kernels._token_maps_triton = must_not_run
auto = kernels.token_maps(*cases["hand_set"])
torch.save({"maps": maps, "auto": auto, "available": kernel_choice.triton_available()}, sys.argv[2])
"""


def _strided(A, w):
    """Same values, non-contiguous: stride 1 along N for A and along M for w."""
    return A.transpose(1, 2).contiguous().transpose(1, 2), w.transpose(1, 2).contiguous().transpose(1, 2)


RANDOM_SHAPES = {"multi-block": (2, 100, 40, 70), "tiny": (1, 17, 1, 1), "exact-tiles": (3, 64, 64, 16),
                 "odd": (1, 129, 33, 33)}
# fp32 tiles are 64 tokens wide, half ones 128: two, three and three tiles, last one partial.
RAMPS = [(70, torch.float32), (130, torch.float32), (300, torch.float16)]
HALF_TOL_VS_FP32 = {torch.float16: 3e-3, torch.bfloat16: 2e-2}  # measured 5e-4 and 5e-3


def _interpreter_cases():
    cases = {"hand_set": _hand_set()[:2]}
    for n_tokens, dtype in RAMPS:
        A, w = _ramp(n_tokens)[:2]
        cases[f"ramp{n_tokens}"] = (A.to(dtype), w.to(dtype))
    cases["constant"] = (torch.ones(2, 33, 3), torch.tensor([[[1.0, 1.0, 1.0]], [[0.0, 0.0, 0.0]]]))
    for name, shape in RANDOM_SHAPES.items():
        cases[name] = _random(*shape)
    for dtype in HALF_TOL_VS_FP32:
        A, w = _random(2, 100, 40, 20, seed=1)
        cases[str(dtype)] = (A.to(dtype), w.to(dtype))
    A, w = _random(2, 50, 24, 5, seed=2)
    cases["mixed_strided"] = _strided(A.half(), w)  # fp16 A with fp32 w: promoted to fp32
    return cases


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory):
    """Inputs and the kernel's outputs, computed in one child process under the interpreter."""
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    tmp = tmp_path_factory.mktemp("interp")
    cases = _interpreter_cases()
    torch.save(cases, tmp / "in.pt")
    _run_python(_CHILD, str(tmp / "in.pt"), str(tmp / "out.pt"), TRITON_INTERPRET="1")
    return cases, torch.load(tmp / "out.pt")


def test_kernel_hand_set_exact(interpreted):
    _, _, raw, norm = _hand_set()
    got_raw, got_norm = interpreted[1]["maps"]["hand_set"]
    assert torch.equal(got_raw, raw)
    assert torch.equal(got_norm, norm)


@pytest.mark.parametrize("n_tokens", [n for n, _ in RAMPS])
def test_kernel_minmax_ignores_masked_tokens(interpreted, n_tokens):
    _, _, raw, norm = _ramp(n_tokens)
    got_raw, got_norm = interpreted[1]["maps"][f"ramp{n_tokens}"]
    assert torch.equal(got_raw, raw)
    assert torch.equal(got_norm, norm)


def test_kernel_single_map_and_constant_maps(interpreted):
    raw, norm = interpreted[1]["maps"]["constant"]  # M = 1; raw 3 everywhere, raw 0 everywhere
    assert torch.equal(raw, torch.stack([torch.full((1, 33), 3.0), torch.zeros(1, 33)]))
    assert torch.equal(norm, torch.zeros(2, 1, 33))


def _assert_matches_reference(got, A, w):
    want_raw, want_norm = token_maps_torch(A, w)
    assert got[0].dtype == got[1].dtype == torch.float32
    torch.testing.assert_close(got[0], want_raw, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[1], want_norm, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(RANDOM_SHAPES))
def test_kernel_matches_reference_fp32(interpreted, name):
    cases, out = interpreted
    _assert_matches_reference(out["maps"][name], *cases[name])


@pytest.mark.parametrize("dtype", list(HALF_TOL_VS_FP32), ids=str)
def test_kernel_half_inputs(interpreted, dtype):
    cases, out = interpreted
    Ah, wh = cases[str(dtype)]
    raw, norm = out["maps"][str(dtype)]
    # Same rounded inputs: only the summation order differs (fp32 accumulate).
    _assert_matches_reference((raw, norm), Ah, wh)
    # Against the unrounded fp32 data: the input rounding shows, bounded.
    f32_raw, f32_norm = token_maps_torch(*_random(2, 100, 40, 20, seed=1))
    tol = HALF_TOL_VS_FP32[dtype]
    assert ((raw - f32_raw).abs() / f32_raw.amax(dim=-1, keepdim=True)).max() < tol
    assert (norm - f32_norm).abs().max() < tol


def test_kernel_mixed_dtypes_and_strided_inputs(interpreted):
    cases, out = interpreted
    A, w = cases["mixed_strided"]
    assert not A.is_contiguous() and not w.is_contiguous()
    _assert_matches_reference(out["maps"]["mixed_strided"], A, w)


def test_interpreter_is_available_but_auto_does_not_use_it(interpreted):
    _, out = interpreted
    assert out["available"]
    assert torch.equal(out["auto"][0], _hand_set()[2])


def test_import_does_not_import_triton():
    code = "import sys, zsfinercam.core.kernels, zsfinercam.core.bases.layercam; print('triton' in sys.modules)"
    out = _run_python(code, TRITON_INTERPRET="1")
    assert out.strip().splitlines()[-1] == "False"


def _run_python(code: str, *args: str, **env: str) -> str:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args], cwd=REPO,
        env={**os.environ, **env, "PYTHONPATH": path}, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout
