"""The synthetic bird generator: determinism, masks that match the pixels, splits, captions."""
import json
from pathlib import Path

import numpy as np
import pytest

from zsfinercam import synthetic as S
from zsfinercam.synthetic.captions import TEMPLATES, phrase_caption, positives, sample_caption

RED_BLUE = "red-headed blue-tailed striped-winged bird"
TOY = Path(S.__file__).parents[1] / "assets" / "toy"


def pixels(sample):
    return np.asarray(sample.image).astype(int)


def test_same_class_and_seed_give_identical_samples():
    a, b = S.make_sample(RED_BLUE, 11), S.make_sample(RED_BLUE, 11)
    np.testing.assert_array_equal(pixels(a), pixels(b))
    for part in S.PARTS:
        np.testing.assert_array_equal(a.masks[part], b.masks[part])
    assert not np.array_equal(pixels(a), pixels(S.make_sample(RED_BLUE, 12)))


def test_name_and_attrs_give_the_same_sample():
    attrs = {"head": "red", "tail": "blue", "wings": "striped"}
    np.testing.assert_array_equal(pixels(S.make_sample(attrs, 3)), pixels(S.make_sample(RED_BLUE, 3)))
    assert S.make_sample(attrs, 3).class_name == RED_BLUE


@pytest.mark.parametrize("part, other", [("head", "green"), ("tail", "yellow"), ("wings", "spotted")])
def test_one_attribute_changes_only_that_part(part, other):
    a = S.parse_class(RED_BLUE)
    b = dict(a, **{part: other})
    for seed in range(5):
        sa, sb = S.make_sample(a, seed), S.make_sample(b, seed)
        for p in S.PARTS:  # geometry does not depend on the class
            np.testing.assert_array_equal(sa.masks[p], sb.masks[p])
        changed = np.any(pixels(sa) != pixels(sb), axis=-1)
        mask = sa.masks[part]
        assert not changed[~mask].any(), "pixels outside the differing part changed"
        # every pixel of the part changes, except the eye (head) or shared base (wings)
        assert changed.sum() >= (0.8 if part == "head" else 0.25) * mask.sum() > 0


def test_pixels_outside_the_masks_are_the_background():
    for seed in range(5):
        sample = S.make_sample(RED_BLUE, seed, size=48)
        bird = np.any(np.stack(list(sample.masks.values())), axis=0)
        bg = np.asarray(S.make_background(seed, size=48)).astype(int)
        np.testing.assert_array_equal(pixels(sample)[~bird], bg[~bird])
        assert np.any(pixels(sample)[bird] != bg[bird])


def nearest_part_colour(rgb):
    names = list(S.PART_COLOURS)
    ref = np.array([S.PART_COLOURS[n] for n in names], float)
    return np.array(names)[np.argmin(((rgb[:, None, :] - ref[None]) ** 2).sum(-1), axis=1)]


@pytest.mark.parametrize("cls", ["red-headed blue-tailed striped-winged bird",
                                 "yellow-headed green-tailed plain-winged bird",
                                 "blue-headed red-tailed spotted-winged bird"])
def test_part_masks_hold_the_part_colour(cls):
    attrs = S.parse_class(cls)
    for seed in range(4):
        sample = S.make_sample(cls, seed)
        img = pixels(sample)
        tail = nearest_part_colour(img[sample.masks["tail"]])
        assert np.mean(tail == attrs["tail"]) == 1.0
        head = nearest_part_colour(img[sample.masks["head"]])
        assert np.mean(head == attrs["head"]) >= 0.75  # the rest is the (dark) eye
        bird = np.any(np.stack(list(sample.masks.values())), axis=0)
        assert img[bird].std() > 0


def test_masks_are_disjoint_visible_and_large():
    flips = []
    for seed in range(30):
        sample = S.make_sample(RED_BLUE, seed)
        stack = np.stack([sample.masks[p] for p in S.PARTS]).astype(int)
        assert stack.sum(0).max() == 1
        for part in S.ATTRIBUTE_PARTS:
            assert sample.masks[part].sum() >= 20, (seed, part)
        ys, xs = np.nonzero(stack.sum(0))
        assert xs.max() - xs.min() >= 0.5 * 64 or ys.max() - ys.min() >= 0.5 * 64
        flips.append(sample.pose["flip"])
    assert 0.2 < np.mean(flips) < 0.8  # birds face both ways


def test_background_has_attribute_colour_distractors():
    with_red = 0
    for seed in range(20):
        bg = np.asarray(S.make_background(seed)).astype(float)
        near_red = np.sqrt(((bg - S.PART_COLOURS["red"]) ** 2).sum(-1)) < 40
        with_red += near_red.sum() >= 10
    assert with_red >= 5


def test_splits_names_and_phrases():
    train, held, every = S.list_classes("train"), S.list_classes("heldout"), S.list_classes("all")
    assert (len(train), len(held), len(every)) == (42, 6, 48)
    assert not set(train) & set(held) and every == train + held
    for part in S.ATTRIBUTE_PARTS:  # held-out classes are new combinations, not new values
        assert {S.parse_class(c)[part] for c in train} == set(S.PART_VALUES[part])
    assert S.class_name(S.parse_class(every[7])) == every[7]
    assert S.attribute_phrases(RED_BLUE) == {"head": "red head", "tail": "blue tail",
                                             "wings": "striped wings"}
    assert S.differing_parts(RED_BLUE, "red-headed green-tailed striped-winged bird") == ["tail"]


def test_make_dataset_is_balanced_deterministic_and_seed_separated():
    ds = S.make_dataset(12, seed=0, split="heldout", size=32)
    assert [s.class_name for s in ds[:6]] == S.list_classes("heldout") == [s.class_name for s in ds[6:]]
    again = S.make_dataset(12, seed=0, split="heldout", size=32)
    assert all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(ds, again))
    assert not set(S.sample_seeds(500, 0)) & set(S.sample_seeds(500, 1))


@pytest.mark.parametrize("call, message", [
    (lambda: S.make_sample("purple-headed bird", 0), "unknown class"),
    (lambda: S.make_sample({"head": "red", "tail": "blue"}, 0), "lacks part 'wings'"),
    (lambda: S.make_sample({"head": "pink", "tail": "blue", "wings": "plain"}, 0), "not one of"),
    (lambda: S.make_sample(RED_BLUE, -1), "non-negative"),
    (lambda: S.make_sample(RED_BLUE, 0, size=8), ">= 16"),
    (lambda: S.list_classes("test"), "valid"),
    (lambda: S.attribute_phrase("beak", "red"), "valid"),
])
def test_bad_input_raises_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_caption_constraints_and_positives():
    rng = np.random.default_rng(0)
    idx = (0, 1, 2)  # red head, blue tail, spotted wings
    for _ in range(50):
        text, constraint = sample_caption(idx, rng)
        assert all(c in (-1, i) for c, i in zip(constraint, idx)) and text.startswith("a ")
    images = np.array([[0, 1, 2], [0, 2, 2]])
    captions = np.array([[0, -1, -1], [-1, 1, -1], [0, 2, 2]])
    np.testing.assert_array_equal(positives(images, captions), [[True, True, False], [True, False, True]])
    assert phrase_caption(["tail", "wings"], S.parse_class(RED_BLUE)) == \
        "a bird with a blue tail and striped wings."


def test_every_caption_fits_the_toy_context_length():
    tokenizer = pytest.importorskip("open_clip.tokenizer").SimpleTokenizer()
    longest = max(len(tokenizer.encode(t.format(n))) for n in S.list_classes() for t in TEMPLATES)
    phrase = len(tokenizer.encode(phrase_caption(list(S.ATTRIBUTE_PARTS), S.parse_class(RED_BLUE))))
    context = json.loads((TOY / "config.json").read_text())["text_cfg"]["context_length"]
    assert max(longest, phrase) + 2 <= context  # + start and end tokens


def test_shipped_toy_model_recognises_unseen_birds():
    """The embedded model, loaded through the real loader (`--model toy`), on images it never saw."""
    import zsfinercam as zf

    loc = zf.Localizer.from_pretrained("toy", device="cpu", cache_dir=None)
    names = S.list_classes("all")
    assert list(loc.config.default_vocab) == names and list(loc.config.default_templates) == list(TEMPLATES)
    samples = S.make_dataset(96, seed=987, split="all")
    scores = loc.scores([np.asarray(s.image) for s in samples], names)
    pred = np.array([int(np.argmax([row[n] for n in names])) for row in scores])
    truth = np.array([names.index(s.class_name) for s in samples])
    assert (pred == truth).mean() >= 0.6  # chance is 1 / 48
