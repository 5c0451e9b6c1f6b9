"""Per-map faithfulness: the formula on hand-set values, token removal against sequences built by hand,
the batched path against one set at a time, and every surface (API, CLI, batch, compare, lab, eval)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import random_image
from zsfinercam.core import faithfulness as faith
from zsfinercam.core import removal
from zsfinercam.core.objectives import Objective
from zsfinercam.options import LocateOptions, OptionError

BIRD = Path(__file__).resolve().parents[1] / "examples" / "bird.png"


def _contrast(top, random):
    return 0.0 if abs(top) + abs(random) == 0 else (top - random) / (abs(top) + abs(random))


def expected(values, n, top, full, seed, deletion_only=False):
    """The documented formula, by hand: O(S) = values(S) for a sorted token set S; `top` the map's order;
    the draws of `faithfulness.random_sets` with the image's `seed`; each term averaged over the draws."""
    rest = lambda s: np.setdiff1d(np.arange(n), s)  # noqa: E731

    def term(levels, o):
        sizes = faith.counts(n, levels)
        return np.mean([np.mean([_contrast(o(top[:size]), o(d)) for d in draws])
                        for size, draws in zip(sizes, faith.random_sets(n, sizes, seed=seed))])

    dels = term(faith.DELETION_LEVELS, lambda s: full - values(rest(s)))
    ins = term(faith.INSERTION_LEVELS, lambda s: values(np.sort(s)))
    return float(dels if deletion_only else (dels + ins) / 2)


# the scoring, pure ---------------------------------------------------------------
def test_score_is_the_formula_on_hand_set_values():
    got = faith.score(4.0, [1.0, 5.0], [[2.0, 4.0], [4.0, 4.0]], [3.0, 0.0], [[1.0, -1.0], [0.0, 0.0]],
                      insertion_levels=(0.05, 0.1), deletion_levels=(0.05, 0.1))
    # i: mean(c(3, 1), c(3, -1)) = mean(0.5, 1) = 0.75; c(0, 0) = 0 -> 0
    # d: drops 3 vs (2, 0): mean(c(3, 2), c(3, 0)) = mean(0.2, 1) = 0.6; -1 vs (0, 0): -1
    assert got.insertion == ((0.05, 0.75), (0.1, 0.0)) and got.deletion == ((0.05, pytest.approx(0.6)), (0.1, -1.0))
    assert got.score == pytest.approx(((0.75 + 0.6) / 2 + (0 - 1) / 2) / 2) and got.mode == "both"  # design.md's
    alone = faith.score(4.0, [1.0, 5.0], [[2.0, 4.0], [4.0, 4.0]], deletion_levels=(0.05, 0.1))
    assert alone.score == pytest.approx(-0.2) and alone.insertion is None and alone.mode == "deletion"
    one = faith.score(4.0, [1.0], [[2.0, 4.0]], [3.0, 0.0], [[1.0, -1.0], [0.0, 0.0]],
                      insertion_levels=(0.05, 0.1), deletion_levels=(0.2,))
    assert one.score == pytest.approx((0.6 + 0.375) / 2) and one.to_dict()["deletion"] == [[0.2, 0.6]]
    assert faith.mode_of(True) == "both" and faith.mode_of("deletion") == "deletion"


def test_sets_counts_ties_and_empty_maps():
    assert faith.counts(196, (0.05, 0.1, 0.2)) == [10, 20, 39] and faith.counts(2, (0.05, 0.9)) == [1, 1]
    assert [sorted(s.tolist()) for s in faith.top_sets(np.array([0.0, 2.0, 1.0, 2.0]), [2, 3])] == [[1, 3], [1, 2, 3]]
    spike = np.r_[1.0, np.zeros(99)]
    ties = [faith.top_sets(spike, [10], seed=s)[0] for s in range(2)]
    assert all(t[0] == 0 for t in ties) and not np.array_equal(ties[0], ties[1])  # zeros: seeded order
    assert ties[0].tolist() != list(range(10)) and np.array_equal(ties[0], faith.top_sets(spike, [10])[0])
    assert faith.top_sets(np.zeros(5), [1]) is None and faith.top_sets(np.full(5, 0.3), [1]) is None
    a, b = faith.random_sets(50, [3, 5]), faith.random_sets(50, [5])
    assert np.array_equal(a[1], b[0]) and a[1].shape == (faith.DRAWS, 5)  # a size's draws, whatever else
    assert all(len(set(row)) == len(row) for row in a[1])  # without replacement
    image = np.zeros((3, 4, 4), np.float32)
    assert faith.image_seed(image) == faith.image_seed(image.copy()) != faith.image_seed(image + 1)


class SumModel:
    """A hand-set 'tower': the embedding of a kept set is (sum of its tokens' values, 1); with a linear
    head z = e @ T^T, T = [[1, 0]] the objective of the base alone is the sum of the kept values."""

    logit_scale = None

    def __init__(self, values: np.ndarray):
        self.values = torch.tensor(values, dtype=torch.float32)
        self.calls = []

    def encode_kept(self, pixels, keep):
        self.calls.append(tuple(keep.shape))
        picked = self.values[keep].sum(-1)
        return torch.stack([picked, torch.ones_like(picked)], dim=-1)


@pytest.mark.parametrize("mode", ["both", "deletion"])
def test_on_a_hand_set_model_the_number_is_the_formula(mode):
    rng = np.random.default_rng(3)
    values = rng.normal(size=40)
    values[[5, 17, 30]] += 4  # tokens the objective rests on
    model = SumModel(values)
    heat = np.where(np.isin(np.arange(40), [5, 17, 30]), 1.0, 0.1) + 0.01 * rng.random(40)
    maps = np.stack([heat, rng.random(40), np.zeros(40)])[None]
    objective = Objective(0, (), 0.0)
    pixels = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    got = removal.faithfulness(model, pixels, torch.tensor([[1.0, 0.0]]), [[objective] * 3], maps, mode)[0]
    seed = faith.image_seed(pixels.numpy())
    for m in range(2):
        top = faith.top_sets(maps[0, m], [40 - 1], seed=seed)[0]
        want = expected(lambda s: values[s].sum(), 40, top, values.sum(), seed, mode == "deletion")
        assert got[m].score == pytest.approx(want, abs=1e-5)
    assert got[0].score > 0.25 and got[0].score > got[1].score + 0.2  # the map on the known tokens is faithful
    assert got[2].score is None and got[2].deletion is None  # an empty map gets no number
    lengths = {shape[2] for shape in model.calls}
    assert len(model.calls) == len(lengths)  # one pass per sequence length (3 maps and 4 draws each)


def test_chunks_bound_the_tokens_per_pass_and_change_nothing():
    values = np.random.default_rng(0).normal(size=30)
    maps = np.random.default_rng(1).random((1, 2, 30))
    args = (torch.zeros(1, 3, 4, 4), torch.tensor([[1.0, 0.0]]), [[Objective(0, (), 0.0)] * 2], maps)
    whole = removal.faithfulness(SumModel(values), *args)[0]
    small = SumModel(values)
    chunked = removal.faithfulness(small, *args, max_tokens=40)[0]
    assert [f.score for f in chunked] == pytest.approx([f.score for f in whole], abs=1e-6)
    assert max(s[1] * s[2] for s in small.calls) <= 40


# token removal through the Backend contract (per backend: tests/test_backends.py) ---------------------
def pixels_of(loc, image):
    from zsfinercam.io.images import to_pixels

    c = loc.config
    return to_pixels([image], c.image_size, c.mean, c.std)


def by_hand(loc, pixels, kept):
    """The model's own modules on the shorter sequence: prefix tokens + patch tokens `kept`, cut
    right after the position embedding (no zsfinercam code)."""
    model, kept = loc.backend.model if hasattr(loc.backend, "model") else None, torch.as_tensor(kept)
    if loc.config.backend == "hf":
        v = model.vision_model
        x = v.embeddings(pixels)
        prefix = loc.config.num_prefix_tokens
        x = torch.cat([x[:, :prefix], x[:, prefix + kept]], dim=1)
        x = v.post_layernorm(v.encoder(inputs_embeds=v.pre_layrnorm(x) if prefix else x).last_hidden_state)
        return model.visual_projection(x[:, 0]) if prefix else v.head(x)
    vit = getattr(getattr(loc.backend, "tower", None), "vit", None)
    if vit is not None:  # timm towers (SigLIP in open_clip, DINOv2 probes): timm's own _pos_embed
        x = vit._pos_embed(vit.patch_embed(pixels))
        p = vit.num_prefix_tokens
        x = vit.norm(vit.blocks(vit.norm_pre(torch.cat([x[:, :p], x[:, p + kept]], dim=1))))
        out = vit.forward_head(x)
        head = loc.backend.tower.head
        out = out if head is None else head(out)
        return torch.cat([out, torch.ones(1, 1)], dim=-1) if loc.config.backend == "probe" else out
    v = model.visual
    x = v.conv1(pixels).flatten(2).transpose(1, 2)
    x = torch.cat([v.class_embedding.expand(1, 1, -1), x], dim=1) + v.positional_embedding
    x = v.transformer(v.ln_pre(torch.cat([x[:, :1], x[:, 1 + kept]], dim=1)))
    return v.ln_post(x[:, 0]) @ v.proj


# options and surfaces --------------------------------------------------------------------
def test_the_option_is_validated_round_trips_and_changes_the_settings_hash():
    from zsfinercam.io.files import result_stem

    for value in (False, True, "deletion"):
        assert LocateOptions.from_json(LocateOptions(faithfulness=value).to_json()).faithfulness == value
    for bad in ("yes", 1, None):
        with pytest.raises(OptionError, match="faithfulness must be False, True or 'deletion'"):
            LocateOptions(faithfulness=bad)
    stems = {result_stem("img", "c", LocateOptions(faithfulness=v).to_json(), ()) for v in (False, True, "deletion")}
    assert len(stems) == 3
    assert LocateOptions(faithfulness=True).base_alone().faithfulness is True  # the base-alone row keeps it


@pytest.fixture(scope="module")
def toy():
    from zsfinercam.localizer import Localizer

    return Localizer.from_pretrained("toy", cache_dir=None)


def test_locate_many_deletion_mode_and_off(toy):
    names = ["red tail", "blue head"]
    both = toy.locate_many(str(BIRD), names, faithfulness=True)
    alone = toy.locate_many(str(BIRD), names, faithfulness="deletion")
    off = toy.locate_many(str(BIRD), names)
    for b, a, o in zip(both, alone, off):
        np.testing.assert_allclose(a.faithfulness.deletion, b.faithfulness.deletion, atol=1e-6)
        assert a.faithfulness.insertion is None
        assert a.faithfulness.score == pytest.approx(np.mean([v for _, v in a.faithfulness.deletion]))
        assert o.faithfulness is None and "faithfulness" not in o.to_dict()
        assert "faithfulness" not in o.caption_lines()[1]
        record = b.to_dict()["faithfulness"]
        assert record["score"] == round(b.faithfulness.score, 6)
        assert [k for k, _ in record["insertion"]] == list(faith.INSERTION_LEVELS)
        assert [k for k, _ in record["deletion"]] == list(faith.DELETION_LEVELS)
        np.testing.assert_array_equal(b.token_map, o.token_map)  # the maps themselves do not change


def _empty_result(faithfulness):
    from zsfinercam.result import LocateResult

    return LocateResult("red tail", ("blue head",), {"red tail": 1.0, "blue head": 2.0}, np.zeros((8, 8)),
                        np.full((64, 64, 3), 128, np.uint8), base="hirescam", faithfulness=faithfulness)


def test_an_empty_map_flows_through_every_surface(tmp_path):
    from zsfinercam.cli.locate import result_line
    from zsfinercam.compare import Comparison
    from zsfinercam.lab import session

    res = _empty_result(faith.empty("both"))
    assert res.empty and res.to_dict()["faithfulness"]["score"] is None and res.faithfulness_text == "-"
    assert "faithfulness -" in res.caption_lines()[1] and "faithfulness -" in result_line(res, {})
    res.save(tmp_path)
    comparison = Comparison(base_alone=[_empty_result(faith.empty("both"))], finer=[res])
    comparison.grid()
    assert comparison.to_dict()["concepts"][0]["base_alone"]["faithfulness"]["score"] is None
    result = session.LabResult(comparison, session.parse_request("red tail", faithfulness="both"), False, 0.1, {})
    assert session.score_rows(result)[0][-1] == "-" and session.summary(result)["results"][0]["base_alone"]["peak"] is None


def test_compare_captions_and_json_carry_both_rows(toy):
    from PIL import Image, ImageDraw

    from zsfinercam.io import render

    comparison = toy.compare(str(BIRD), ["red tail", "blue head"], faithfulness="deletion")
    draw, face = ImageDraw.Draw(Image.new("RGB", (1, 1))), render.font(12)
    caption = " ".join(comparison.caption(0, draw, face, 2000))
    f, g = comparison.finer[0].faithfulness.score, comparison.base_alone[0].faithfulness.score
    assert f"faithfulness {f:.2f} (HiResCAM {g:.2f})" in caption
    record = comparison.to_dict()["concepts"][0]
    assert record["finer"]["faithfulness"]["mode"] == "deletion" and "faithfulness" in record["base_alone"]


def test_cli_locate_json_line_and_bad_value(tmp_path, capsys):
    from zsfinercam.cli import main

    main(["locate", str(BIRD), "red tail", "--vs", "blue head", "--out", str(tmp_path), "--json", "--faithfulness"])
    record = json.loads(capsys.readouterr().out)
    assert record["faithfulness"]["mode"] == "both" and -1 <= record["faithfulness"]["score"] <= 1
    saved = json.loads((tmp_path / record["files"]["json"]).read_text())
    assert saved["faithfulness"] == record["faithfulness"]
    main(["locate", str(BIRD), "red tail", "--vs", "blue head", "--out", str(tmp_path), "--faithfulness", "deletion"])
    line = capsys.readouterr().out
    assert " faithfulness " in line and " -> " in line
    with pytest.raises(SystemExit) as err:
        main(["locate", str(BIRD), "red tail", "--faithfulness", "maybe"])
    assert err.value.code == 2
    message = capsys.readouterr().err.strip()
    assert "'maybe' is not one of 'off', 'both', 'deletion'" in message and len(message.splitlines()) == 1


def test_batch_manifest_records_faithfulness(toy, tmp_path):
    from PIL import Image

    from zsfinercam.batch.run import MANIFEST_NAME, run_batch

    images = []
    for k in range(2):
        images.append(tmp_path / f"im{k}.png")
        Image.fromarray(random_image(k, 64, 64)).save(images[-1])
    run_batch(toy, images, tmp_path / "out", ["red tail"], options=LocateOptions(faithfulness=True), progress=False)
    records = [json.loads(line) for line in (tmp_path / "out" / MANIFEST_NAME).read_text().splitlines()]
    scores = [r["outputs"][0]["faithfulness"]["score"] for r in records]
    want = [toy.locate(str(p), "red tail", faithfulness=True).faithfulness.score for p in images]
    assert scores == pytest.approx(want, abs=1e-5)
    assert json.loads((tmp_path / "out" / "run.json").read_text())["locate"]["faithfulness"] is True


def test_eval_reports_auroc_and_the_shuffled_control(toy):
    from zsfinercam.evaluation.evaluate import evaluate, synthetic_items

    report = evaluate(toy, synthetic_items(6, size=toy.config.image_size[0]), ["finer", "random"],
                      faithfulness=True, progress=False)
    finer = [r for r in report.rows if r["method"] == "finer"]
    assert all(-1 <= r["faithfulness"] <= 1 and -1 <= r["shuffled"] <= 1 for r in finer)
    assert all("faithfulness" not in r for r in report.rows if r["method"] == "random")
    stats = report.summary()["finer"]
    hits = [r["pointing"] > 0 for r in finer]
    from zsfinercam.evaluation.metrics import auroc

    want = auroc([r["faithfulness"] for r in finer], hits)
    assert (np.isnan(stats["faith_auroc"]) and np.isnan(want)) or stats["faith_auroc"] == pytest.approx(want)
    assert "faith_auroc" in report.table() and "shuffled" in report.table()


def test_auroc_exact_values():
    from zsfinercam.evaluation.metrics import auroc

    assert auroc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [False, False, True, True]) == 0.0
    assert auroc([0.5, 0.5, 0.7, 0.1], [True, False, True, False]) == pytest.approx((0.5 + 1 + 1 + 1) / 4)
    assert np.isnan(auroc([0.1, 0.2], [True, True]))


def test_the_benchmark_runs_and_reports_the_split():
    import argparse
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_faithfulness.py"
    spec = importlib.util.spec_from_file_location("bench_faithfulness", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.run(argparse.Namespace(model="toy", size=64, k=2, threads=1, rounds=1))
    assert {"floor", "maps", "both", "deletion", "insertion", "tokens both"} <= set(out)
    tokens = {name: float(out[f"tokens {name}"].split()[0]) for name in ("insertion", "deletion", "both")}
    assert tokens["both"] == pytest.approx(tokens["insertion"] + tokens["deletion"], abs=0.011)


def test_a_map_with_faithfulness_gets_its_own_file_names(toy, tmp_path):
    """A rerun without (or with another mode of) faithfulness never replaces the file that holds it."""
    stems = {mode: toy.locate(str(BIRD), "red tail", vs=["blue head"], faithfulness=mode).default_stem()
             for mode in (False, True, "deletion")}
    assert len(set(stems.values())) == 3
