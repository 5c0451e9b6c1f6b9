"""Contrast strategies: each picks what it claims, on hand-set numbers and on a tiny model."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from conftest import random_image
from zsfinercam.concepts.contrast import Plan, make_plans, nearest_by_logit, nearest_by_text, part_of, part_plan, pick
from zsfinercam.errors import UsageError
from zsfinercam.concepts.vocab import load_category

VOCAB = ["cat", "dog", "bird", "red fox", "grey wolf", "barn owl", "house sparrow"]
PARTS = {"tail": ["red tail", "blue tail", "forked tail"], "wing": ["red wings", "striped wings"],
         "head": ["red head", "crested head"]}


def fake_embed(table: dict[str, list[float]]):
    """An embed function over hand-set vectors (normalised like the real one)."""
    return lambda texts: F.normalize(torch.tensor([table[t] for t in texts]), dim=-1)


# ------------------------------------------------------------------ hand-set numbers
def test_nearest_by_logit_ranks_by_gap_and_skips_the_target():
    z = torch.tensor([5.0, 4.0, 7.5, 5.2, -1.0])
    assert nearest_by_logit(z, 0, [0, 1, 2, 3, 4], k=3) == (3, 1, 2)
    assert nearest_by_logit(z, 0, [4, 4, 0], k=3) == (4,)
    assert nearest_by_logit(z, 0, [0], k=3) == ()


def test_nearest_by_text_ranks_by_cosine():
    emb = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.99, 0.14], [-1.0, 0.0]]), dim=-1)
    assert nearest_by_text(emb, 0, range(5), k=2) == (3, 1)
    assert nearest_by_text(emb, 2, [0, 1, 2, 4], k=9) == (1, 0, 4)


def test_pick_joins_fixed_references_and_the_closest_logits_of_each_pool():
    index = {n: i for i, n in enumerate("tabcde")}
    z = torch.tensor([1.0, 1.1, 3.0, 0.8, -2.0, 1.05])
    plan = Plan("parts", fixed=("d",), pools=(("a", "b"), ("c", "e", "t")))
    assert pick(plan, z, 0, index, 1) == (4, 1, 5)  # d fixed; a from pool 1; e from pool 2 (t skipped)


@pytest.mark.parametrize("concept, part", [
    ("blue tail", "tail"),  # listed
    ("Forked Tail", "tail"),  # listed, other case
    ("green wings", "wing"),  # the part named in it, plural
    ("a crested head with a red tail", "tail"),  # several named: the longest name, then file order
    ("plumage stripes", "wing"),  # none named: the nearest part by mean embedding
])
def test_part_of(concept, part):
    vectors = {e: [1.0, 0.0, 0.0] for e in PARTS["tail"]} | {e: [0.0, 1.0, 0.0] for e in PARTS["wing"]} \
        | {e: [0.0, 0.0, 1.0] for e in PARTS["head"]} | {concept: [0.1, 0.9, 0.2]}
    assert part_of(concept, PARTS, fake_embed(vectors)) == part


def test_part_plan_contrasts_the_part_and_the_same_trait_elsewhere():
    vectors = {"red tail": [1.0, 1.0], "blue tail": [0.0, 1.0], "forked tail": [0.2, 1.0], "red wings": [1.0, 0.1],
               "striped wings": [0.0, 0.2], "red head": [1.0, 0.3], "crested head": [-1.0, 0.3]}
    plan = part_plan("red tail", PARTS, fake_embed(vectors))
    assert plan == Plan("parts", pools=(("blue tail", "forked tail"), ("red wings", "red head")), part="tail")


@pytest.mark.parametrize("strategy, kwargs, message", [
    ("generic", {}, "--category bird"),
    ("sideways", {}, "unknown contrast"),
    ("parts", {"parts": {}}, "part vocabulary is empty"),
    ("parts", {"parts": {"tail": ["red tail"]}}, "nothing besides"),
])
def test_make_plans_refuses(strategy, kwargs, message):
    with pytest.raises(UsageError, match=message):
        make_plans(strategy, ["red tail"], pool=[], embed=fake_embed({"red tail": [1.0]}), **kwargs)


# ------------------------------------------------------------------ tiny model, through the Localizer
@pytest.fixture(scope="module")
def feats(tiny):
    return tiny.encode_image(random_image(3))


def test_logits_strategy_takes_the_three_closest_logits(tiny, feats):
    res = tiny.locate(feats, "cat", vocab=VOCAB)
    z = tiny.scores(feats, VOCAB)[0]
    want = sorted(VOCAB[1:], key=lambda c: abs(z[c] - z["cat"]))[:3]
    assert res.contrast == "logits" and list(res.references) == want


def test_text_strategy_takes_the_nearest_text_embeddings(tiny, feats):
    res = tiny.locate(feats, "cat", vocab=VOCAB, contrast="text")
    text = tiny.encode_text(VOCAB)
    want = sorted(VOCAB[1:], key=lambda c: -float(text[VOCAB.index(c)] @ text[0]))[:3]
    assert res.contrast == "text" and list(res.references) == want
    other = tiny.locate(tiny.encode_image(random_image(9)), "cat", vocab=VOCAB, contrast="text")
    assert other.references == res.references  # image-independent


def test_vs_and_generic_strategies(tiny, feats, tmp_path):
    assert tiny.locate(feats, "cat", vs=["dog"]).references == ("dog",)
    assert tiny.locate(feats, "cat", vs=["dog"]).contrast == "vs"
    res = tiny.locate(feats, "red epaulets", contrast="generic", category="bird")
    assert (res.contrast, res.references) == ("generic", ("bird",))
    assert tiny.locate(feats, "Sooty Albatross", vocab="cub200", contrast="generic").references == ("bird",)
    user = tmp_path / "hawks.txt"
    user.write_text("# my hawks\n# category: raptor\nred-tailed hawk\ncooper's hawk\n")
    assert load_category(str(user)) == "raptor"
    assert tiny.locate(feats, "red-tailed hawk", vocab=str(user), contrast="generic").references == ("raptor",)


def test_parts_strategy_picks_from_its_part_and_from_other_parts(tiny, feats):
    res = tiny.locate(feats, "red tail", parts=PARTS, num_references=1)
    z = tiny.scores(feats, [e for v in PARTS.values() for e in v])[0]
    same = min(["blue tail", "forked tail"], key=lambda c: abs(z[c] - z["red tail"]))
    plan = part_plan("red tail", PARTS, lambda t: tiny.encode_text(list(t)))
    elsewhere = min(plan.pools[1], key=lambda c: abs(z[c] - z["red tail"]))
    assert res.contrast == "parts" and res.references == (same, elsewhere)
    shipped = tiny.locate(feats, "red tail", parts="cub_parts")
    assert len(shipped.references) == 6 and any("tail" in r for r in shipped.references)


def test_the_paper_default_is_unchanged_without_a_strategy(tiny, feats):
    a = tiny.locate(feats, "cat", vocab=VOCAB)
    b = tiny.locate(feats, "cat", vocab=VOCAB, contrast="logits")
    assert a.references == b.references and (a.token_map == b.token_map).all()
    assert tiny.locate(feats, "cat", vocab=VOCAB, method="base").contrast == "none"


@pytest.mark.parametrize("kwargs, message", [
    ({"vs": ["dog"], "contrast": "text"}, r"conflicts with vs \(--vs\)"),
    ({"contrast": "vs"}, r"needs vs= \(--vs\)"),
    ({"contrast": "parts"}, r"needs parts= \(--parts\)"),
    ({"vs": ["Cat "]}, "the concept itself"),
    ({"vocab": ["cat", "CAT"]}, "the concept itself"),
    ({"vocab": ["cat"]}, "holds nothing besides the concept"),
    ({"parts": {"tail": ["red tail"], "head": []}}, "'head' of the part vocabulary have no attributes"),
    ({"parts": {"tail": "red tail"}}, "a dict"),
    ({"vs": ["dog"], "parts": PARTS}, "give one of them"),
    ({"contrast": "generic"}, "--category"),
    ({"contrast": "nope"}, "unknown contrast"),
    ({"num_references": 0}, "positive integer"),
    ({"parts": "cub200"}, "not a part vocabulary"),
    ({"category": "  "}, "empty or blank"),
    ({"contrast": "generic", "category": "cat"}, "no reference left"),
])
def test_contrast_errors(tiny, feats, kwargs, message):
    with pytest.raises(UsageError, match=message):
        tiny.locate(feats, "cat", **kwargs)


def test_unicode_and_long_prompts(tiny, feats):
    long = "a very long description of a small brown bird " * 6
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = tiny.locate_many(feats, ["rotschwänziger Bussard 🦅", "北京烤鸭", long], contrast="text")
    assert any("truncated" in str(w.message) for w in caught)
    assert [r.concept for r in out] == ["rotschwänziger Bussard 🦅", "北京烤鸭", long.strip()]
    assert all(torch.isfinite(torch.from_numpy(r.token_map)).all() for r in out)


def test_strategies_through_the_cli(tiny_files, tmp_path):
    import json
    import os
    import subprocess
    import sys

    from PIL import Image

    cfg, weights = tiny_files
    image = tmp_path / "bird.png"
    Image.fromarray(random_image(4)).save(image)
    parts = tmp_path / "parts.txt"
    parts.write_text("[tail]\nred tail\nblue tail\n[wing]\nred wings\nstriped wings\n", encoding="utf-8")
    model = ["--model", "t", "--model-config", str(cfg), "--pretrained", str(weights), "--device", "cpu"]

    def run(*args):
        proc = subprocess.run([sys.executable, "-m", "zsfinercam", "locate", str(image), *args, *model, "--json",
                               "--out", str(tmp_path / "out")], capture_output=True, text=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
        return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines()], proc.stderr

    code, records, err = run("red tail", "striped wings", "--parts", "--part-vocab", str(parts), "--alpha", "0.5")
    assert code == 0, err
    assert [(r["contrast"], r["alpha"]) for r in records] == [("parts", 0.5)] * 2
    assert "blue tail" in records[0]["references"] and "red tail" in records[1]["references"]
    code, records, err = run("Sooty Albatross", "--vocab", "cub200", "--contrast", "generic")
    assert code == 0 and records[0]["references"] == ["bird"], err
    code, records, err = run("cat", "--contrast", "generic")
    assert code == 2 and records == [] and err.count("\n") == 1 and "--category" in err


@pytest.mark.parametrize("name, category", [("cub200", "bird"), ("cub_parts", "bird"), ("stanford_cars", "car"),
                                            ("fgvc_aircraft", "aircraft"), ("imagenet1k", None)])
def test_shipped_categories(name, category, tmp_path):
    assert load_category(name) == category
    user = tmp_path / "cars.json"
    user.write_text('{"category": "car", "classes": ["2012 Tesla Model S Sedan", "2007 Ford Focus Sedan"]}')
    assert load_category(str(user)) == "car"


@pytest.mark.parametrize("kwargs", [{"vocab": VOCAB + ["Cat", " cat"]}, {"vocab": VOCAB + ["CAT"], "contrast": "text"},
                                    {"parts": {"x": ["Cat", "dog"], "y": ["cat ", "owl"]}}])
def test_the_concept_in_other_case_is_never_its_own_reference(tiny, feats, kwargs):
    res = tiny.locate(feats, "cat", **kwargs)
    assert res.references and not any(r.casefold().strip() == "cat" for r in res.references)
    assert res.token_map.max() > 0


def test_equal_logits_and_embeddings_are_not_references():
    z = torch.tensor([2.0, 2.0, 1.0, 5.0])
    assert nearest_by_logit(z, 0, [1, 2, 3], k=3) == (2, 3)
    emb = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), dim=-1)
    assert nearest_by_text(emb, 0, [1, 2], k=2) == (2,)


def test_empty_vs_means_automatic_references(tiny, feats):
    assert tiny.locate(feats, "cat", vs=[], vocab=VOCAB).contrast == "logits"


def test_an_unused_category_warns(tiny, feats):
    with pytest.warns(UserWarning, match="category is used only by contrast 'generic'"):
        tiny.locate(feats, "cat", vocab=VOCAB, category="animal")
