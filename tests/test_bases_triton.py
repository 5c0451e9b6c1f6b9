"""Every CAM base's Triton path against its torch path, in Triton's CPU interpreter.

As in test_kernels.py, TRITON_INTERPRET=1 must be set before a process imports triton, so
the kernels run in ONE child process: the parent builds every case's inputs (random
attention records, and the gradients of each tiny backend of the shared suite), the child
runs `base.maps(..., impl="triton")` on each and saves the maps, and the tests compare them
with `impl="torch"` here. float32 cases must agree to 1e-5 (of the map's largest value).

Sizes are kept small for the interpreter, whose cost is per program and loop step (the
whole child takes about 30-60 s on 2 busy cores): Layer-CAM, the slowest, meets 37x37 grids
with M <= 4 and M = 64 on a 7x9 grid. What the interpreter cannot check: bfloat16 products
(it multiplies their raw bits, so the kernels upcast bfloat16 tiles to float32 there, and
only the loads, casts and scaling are checked), tensor-core rounding, and timing.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import random_image
from test_backends import built, vocab
from test_kernels import HAS_TRITON, REPO, _run_python
from tiny_models import TINY_BUILDERS
import zsfinercam as zf
from zsfinercam.cli import flags
from zsfinercam.core import engine, kernel_choice
from zsfinercam.core.bases import get_base, list_bases
from zsfinercam.core.bases.base import TokenGradients
from zsfinercam.core.objectives import Objective
from zsfinercam.core.shift import AttentionRecord
from zsfinercam.testing.attention import random_attention

# name: (B, M, L, H, hd, grid, prefix, D, shared queries); K = L * H and D cover several kernel blocks
SHAPES = {
    "cls-7x9": (2, 16, 1, 4, 8, (7, 9), 1, 32, True),
    "one-map": (3, 1, 1, 2, 16, (7, 9), 1, 32, True),
    "64-maps": (1, 64, 1, 4, 8, (7, 9), 1, 32, True),
    "37x37": (2, 3, 1, 4, 8, (37, 37), 1, 32, True),
    "map-pool-no-cls": (2, 5, 2, 12, 8, (7, 9), 0, 96, False),  # K = 24 > 16, D = 96 > 64
}
TOY_CONCEPTS = ["red-winged blackbird", "blue jay"]
BIRD = REPO / "examples" / "bird.png"
HALF_TOL = {torch.float16: 3e-3, torch.bfloat16: 2e-2}  # of the map's largest value; measured up to 1e-3, 5e-3


def random_record(*shape, seed=0):
    """(record fields, dO/do, patches) of `testing.attention.random_attention` (a dict pickles plainly)."""
    *sizes, shared = shape
    record, grad, patches = random_attention(*sizes, shared_queries=shared, seed=seed)
    return vars(record), grad, patches


def gradients_of(name: str, case: dict):
    """The base's input from a saved case: channel weights, or TokenGradients."""
    if not get_base(name).token_gradients:
        return case["weights"]
    record = case["record"]
    return TokenGradients(None if record is None else AttentionRecord(**record), case["grad"])


def _cases(tmp_path_factory) -> dict:
    cases, g = {}, torch.Generator().manual_seed(1)
    for label, shape in SHAPES.items():
        fields, grad, patches = random_record(*shape)
        weights = 1e-3 * torch.randn(grad.shape[0], grad.shape[1], patches.shape[-1], generator=g)
        cases[label] = {"record": fields, "grad": grad, "patches": patches, "weights": weights}
    for dtype in HALF_TOL:
        case = cases["cls-7x9"]
        cases[str(dtype)] = {"record": {k: v.to(dtype) if torch.is_tensor(v) else v for k, v in case["record"].items()},
                             "grad": case["grad"].to(dtype), "patches": case["patches"].to(dtype),
                             "weights": case["weights"].to(dtype)}
    plain = cases["cls-7x9"]
    biased = {**plain["record"], "v": plain["record"]["v"] + 30}  # a value component every token shares
    cases["fp16-value-bias"] = {**{k: v.half() for k, v in plain.items() if k != "record"},
                                "record": {k: v.half() if torch.is_tensor(v) else v for k, v in biased.items()}}
    tiny = {k: v * 1e-4 if k in ("grad", "weights") else v for k, v in cases["cls-7x9"].items()}
    cases["fp16-operands"] = tiny  # float32 inputs of ~1e-7 run as float16 operands, CUDA's policy
    for label in sorted(TINY_BUILDERS):
        cases[f"backend-{label}"] = _backend_case(built(label, tmp_path_factory))
    return cases


def _backend_case(loc) -> dict:
    """Two images, four objectives of a tiny backend: its real record (None on the full path)."""
    feats = loc.encode_image([random_image(1), random_image(2, 33, 29)])
    text = loc.head(vocab(loc))
    objs = [[Objective(0, (1, 2, 3)), Objective(4, (0, 5)), Objective(2, (1,), 1.0, "compare"), Objective(5)]] * 2
    token = engine.token_gradients(loc.backend, feats, text, objs)
    record = None if token.record is None else {k: v.detach() if torch.is_tensor(v) else v
                                                for k, v in vars(token.record).items()}
    return {"record": record, "grad": token.grad.detach(), "patches": feats.patch_tokens.detach(),
            "weights": engine.channel_weights(loc.backend, feats, text, objs).detach()}


_CHILD = """
import sys, torch
sys.path.insert(0, sys.argv[3])  # the tests folder
from zsfinercam.core import kernel_choice
from zsfinercam.core.bases import get_base, list_bases
from test_bases_triton import TOY_CONCEPTS, gradients_of

cases = torch.load(sys.argv[1])
maps, auto, own_dtype = {}, {}, kernel_choice.operand_dtype
for label, case in cases.items():
    if label == "fp16-operands":
        kernel_choice.operand_dtype = lambda *tensors: torch.float16
    for name in list_bases():
        maps[label, name] = get_base(name).maps(gradients_of(name, case), case["patches"], impl="triton")
    kernel_choice.operand_dtype = own_dtype

def must_not_run(*args):
    raise AssertionError("auto ran Triton on CPU tensors")

for name in list_bases():
    base = get_base(name)
    base.maps_triton = must_not_run
    auto[name] = base.maps(gradients_of(name, cases["cls-7x9"]), cases["cls-7x9"]["patches"])
import zsfinercam as zf
loc = zf.Localizer.from_pretrained("toy", device="cpu", cache_dir=None, kernel="triton")
located = {name: [torch.from_numpy(r.token_map) for r in loc.locate_many(sys.argv[4], TOY_CONCEPTS, base=name)]
           for name in list_bases()}
torch.save({"maps": maps, "auto": auto, "located": located}, sys.argv[2])
"""


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory):
    """Inputs and every base's Triton maps, computed in one child process under the interpreter."""
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    tmp = tmp_path_factory.mktemp("bases_interp")
    cases = _cases(tmp_path_factory)
    torch.save(cases, tmp / "in.pt")
    _run_python(_CHILD, str(tmp / "in.pt"), str(tmp / "out.pt"), str(Path(__file__).parent), str(BIRD),
                TRITON_INTERPRET="1")
    return cases, torch.load(tmp / "out.pt")


def _compare(got, case, name, tol):
    want = get_base(name).maps(gradients_of(name, case), case["patches"], impl="torch")
    assert got[0].dtype == got[1].dtype == torch.float32 and got[0].shape == want[0].shape
    top = float(want[0].max())
    assert top > 0 and (want[1].amax(dim=-1) == 1).any(), "flat maps: the test would not see a difference"
    torch.testing.assert_close(got[0], want[0], rtol=tol, atol=tol * top)
    torch.testing.assert_close(got[1], want[1], rtol=tol, atol=tol)
    return float((got[0] - want[0]).abs().max()) / top


@pytest.mark.parametrize("name", list_bases())
@pytest.mark.parametrize("label", list(SHAPES))
def test_triton_equals_torch_in_float32(interpreted, label, name):
    cases, out = interpreted
    print(f"{label} {name}: max |diff| {_compare(out['maps'][label, name], cases[label], name, 1e-5):.1e} of the max")


@pytest.mark.parametrize("name", list_bases())
@pytest.mark.parametrize("label", sorted(TINY_BUILDERS))
def test_triton_equals_torch_on_every_backend(interpreted, label, name):
    """The real records of CLS-pooled open_clip and HF CLIP, SigLIP's MAP pools (HF, open_clip over
    timm) and the probe's full path (its dO/dA comes from autograd: element-wise bases multiply it
    in torch on both paths, so only Grad-CAM's kernel runs there)."""
    cases, out = interpreted
    worst = _compare(out["maps"][f"backend-{label}", name], cases[f"backend-{label}"], name, 1e-5)
    print(f"{label} {name}: max |diff| {worst:.1e} of the max")


def test_the_suite_meets_both_kinds_of_tower(interpreted):
    """SigLIP's MAP pool (no CLS token, prefix 0) and CLS pools give records; the probe's full path does not."""
    cases, _ = interpreted
    records = {label: cases[f"backend-{label}"]["record"] for label in TINY_BUILDERS}
    prefixes = {label: None if record is None else record["prefix"] for label, record in records.items()}
    assert prefixes["open_clip"] == 1 and prefixes["open_clip-siglip"] == 0 and prefixes["probe-dinov2"] is None


@pytest.mark.parametrize("name", list_bases())
@pytest.mark.parametrize("dtype", list(HALF_TOL), ids=str)
def test_half_inputs(interpreted, dtype, name):
    """Half inputs run half operands (bfloat16 upcast before the products in the interpreter)."""
    cases, out = interpreted
    worst = _compare(out["maps"][str(dtype), name], cases[str(dtype)], name, HALF_TOL[dtype])
    print(f"{dtype} {name}: max |diff| {worst:.1e} of the max")


@pytest.mark.parametrize("name", list_bases())
def test_float16_operands_keep_tiny_gradients(interpreted, name):
    """CUDA's policy: float32 inputs run as float16 operands, scaled first; gradients of ~1e-7
    would otherwise fall into float16's subnormals."""
    cases, out = interpreted
    worst = _compare(out["maps"]["fp16-operands", name], cases["fp16-operands"], name, HALF_TOL[torch.float16])
    print(f"float16 operands {name}: max |diff| {worst:.1e} of the max")


@pytest.mark.parametrize("name", list_bases())
def test_a_shared_value_component_keeps_half_precision(interpreted, name):
    """Values sharing a large component (a value bias, as CLIP has) would cancel in HiResCAM's
    regrouping after float16 rounding; centred on the attention output they do not."""
    cases, out = interpreted
    _compare(out["maps"]["fp16-value-bias", name], cases["fp16-value-bias"], name, HALF_TOL[torch.float16])


def test_auto_never_runs_triton_on_cpu(interpreted):
    cases, out = interpreted
    for name in list_bases():
        _compare(out["auto"][name], cases["cls-7x9"], name, 0.0)


@pytest.mark.parametrize("name", list_bases())
def test_triton_on_cpu_without_the_interpreter_says_why(name, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    fields, grad, patches = random_record(*SHAPES["cls-7x9"])
    case = {"record": fields, "grad": grad, "patches": patches, "weights": torch.ones(2, 16, 32)}
    why = "TRITON_INTERPRET" if HAS_TRITON else "not importable"
    with pytest.raises(kernel_choice.TritonUnavailableError, match=why):
        get_base(name).maps(gradients_of(name, case), patches, impl="triton")


@pytest.mark.parametrize("name", list_bases())
def test_a_localizer_with_the_triton_kernel_locates_as_with_torch(interpreted, name):
    """kernel="triton" reaches every base's maps through Localizer.locate_many (the toy model)."""
    loc = zf.Localizer.from_pretrained("toy", device="cpu", cache_dir=None, kernel="torch")
    want = [r.token_map for r in loc.locate_many(str(BIRD), TOY_CONCEPTS, base=name)]
    for got, map_ in zip(interpreted[1]["located"][name], want):
        assert map_.max() > 0
        np.testing.assert_allclose(got.numpy(), map_, rtol=1e-5, atol=1e-5 * map_.max())


def test_a_triton_kernel_that_cannot_run_is_refused_before_the_model_loads(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    why = "TRITON_INTERPRET=1" if HAS_TRITON else "not importable"
    with pytest.raises(zf.UsageError, match=f"kernel 'triton' .*cannot run on cpu: .*{why}"):
        zf.Localizer.from_pretrained("no-such-model", device="cpu", kernel="triton")  # not a model error
    with pytest.raises(zf.UsageError, match="unknown kernel 'cuda'; choose one of: auto, torch, triton"):
        zf.Localizer.from_pretrained("no-such-model", device="cpu", kernel="cuda")


def test_the_kernel_flag_is_on_every_verb_that_computes():
    from click.testing import CliRunner

    from zsfinercam.cli import cli

    assert flags.KERNELS == kernel_choice.IMPLS
    for verb in ("locate", "compare", "batch", "eval", "lab", "bench"):
        out = CliRunner().invoke(cli, [verb, "--help"])
        assert out.exit_code == 0 and "--kernel [auto|torch|triton]" in out.output, verb


def test_the_cli_refuses_the_triton_kernel_on_cpu_in_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    done = subprocess.run([sys.executable, "-m", "zsfinercam", "locate", str(BIRD), "bird", "--kernel", "triton",
                           "--device", "cpu", "--out", str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [done.stderr.strip()]  # one line: no loading note, no traceback
    assert "--kernel triton" in done.stderr and "TRITON_INTERPRET=1" in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_the_cli_runs_the_triton_kernel_in_the_interpreter(tmp_path):
    """locate --kernel triton under TRITON_INTERPRET=1 writes the heatmap the torch kernel gives."""
    _run_python("from zsfinercam.cli import main; main()", "locate", str(BIRD), "red-winged blackbird",
                "--kernel", "triton", "--out", str(tmp_path), "-q", TRITON_INTERPRET="1")
    (path,) = tmp_path.glob("*_heatmap.npy")
    loc = zf.Localizer.from_pretrained("toy", device="cpu", cache_dir=None, kernel="torch")
    want = loc.locate(str(BIRD), "red-winged blackbird").heatmap
    assert want.max() > 0.5  # a map that shows something
    np.testing.assert_allclose(np.load(path), want, atol=1e-5)
