"""The Hugging Face backend: tiny CLIPModel/SiglipModel saved with save_pretrained and re-loaded.

References are independent of our code: pytorch-grad-cam's FinerCAM hooked on the
module whose output is our target, and the models' own forward for logits.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import pickle
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import zsfinercam as zf
from conftest import random_image
from tiny_models import SIGLIP_EOS, save_tiny_hf, siglip_spm
from zsfinercam.errors import UsageError, WeightsUnavailableError, WorkError
from zsfinercam.testing.reference import ImageTower, ZeroShotHead, finer_cam
from zsfinercam.io.render import minmax

CLASSES = ["cat", "dog", "bird", "red fox", "grey wolf", "barn owl"]
ONE_TEMPLATE = ["a photo of a {}."]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {kind: save_tiny_hf(root / kind, kind) for kind in ("clip", "siglip")}


def load(name, **kwargs):
    return zf.Localizer.from_pretrained(str(name), backend="hf", device="cpu", cache_dir=None, **kwargs)


_LOADED: dict = {}


def shared(folders, kind, image_size=None):
    """A loaded tiny model for tests that only read it (loading costs ~0.5 s)."""
    if (kind, image_size) not in _LOADED:
        _LOADED[kind, image_size] = load(folders[kind], image_size=image_size)
    return _LOADED[kind, image_size]


def features(out) -> torch.Tensor:
    """get_*_features returns a tensor (transformers 4) or an output with pooler_output (5)."""
    return out if torch.is_tensor(out) else out.pooler_output


def reference_maps(loc, images, pairs, alpha):
    """FinerCAM maps (min-max, patch grid) hooked on the module named by config.target_layer."""
    model = copy.deepcopy(loc.backend.model)
    cfg = loc.config
    interpolate = cfg.image_size != cfg.native_image_size
    image = ImageTower(model, lambda m, x: m.get_image_features(pixel_values=x,
                                                                   interpolate_pos_encoding=interpolate))
    head = ZeroShotHead(image, loc.encode_text(CLASSES), loc.backend.logit_scale)
    pixels = loc.pixels(images)
    return finer_cam(head, model.get_submodule(cfg.target_layer), pixels, pairs[0][0] if alpha == 0 else pairs,
                     grid=cfg.grid_size, prefix=cfg.num_prefix_tokens, alpha=alpha)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
@pytest.mark.parametrize("alpha, image_size", [(1.0, None), (0.0, None), (1.0, 48)])
def test_maps_equal_pytorch_grad_cam(folders, kind, alpha, image_size):
    loc = shared(folders, kind, image_size)
    images = [random_image(1), random_image(2, 33, 29)]
    ours = loc.locate_many(images, CLASSES[:3], vocab=CLASSES, alpha=alpha, base="gradcam")
    worst = 0.0
    for t in range(3):
        ref = reference_maps(loc, images, [(t, [CLASSES.index(r) for r in ours[b][t].references]) for b in (0, 1)],
                             alpha)
        for b in (0, 1):
            got = minmax(ours[b][t].token_map)
            assert got.shape == loc.config.grid_size and got.max() == 1.0
            np.testing.assert_allclose(got, ref[b], atol=1e-4)
            worst = max(worst, float(np.abs(got - ref[b]).max()))
    print(f"{kind} alpha={alpha} size={image_size}: max abs diff {worst:.2e}")


def reference_ids(folder, prompts, context_length):
    """The ids the transformers way: the folder's own processor (CLIPProcessor / SiglipProcessor), max-length padding."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(folder), local_files_only=True)
    kind = json.loads((folder / "config.json").read_text())["model_type"]
    assert type(processor.tokenizer).__name__ == {"clip": "CLIPTokenizer", "siglip": "SiglipTokenizer"}[kind]
    return processor(text=prompts, padding="max_length", max_length=context_length, return_tensors="pt")


@pytest.mark.parametrize("kind", ["clip", "siglip"])
@pytest.mark.parametrize("image_size", [None, 48])
def test_scores_equal_the_models_own_logits(folders, kind, image_size):
    loc = shared(folders, kind, image_size)
    images = [random_image(4), random_image(5, 20, 60)]
    scores = loc.scores(images, CLASSES, templates=ONE_TEMPLATE)
    model, prompts = loc.backend.model, [f"a photo of a {c}." for c in CLASSES]
    ids = reference_ids(folders[kind], prompts, loc.config.context_length)
    assert torch.equal(loc.backend.tokenize(prompts), ids["input_ids"])
    pixels = loc.pixels(images)
    kwargs = {} if kind == "siglip" else {"attention_mask": ids["attention_mask"]}
    with torch.no_grad():
        own = model(input_ids=ids["input_ids"], pixel_values=pixels, interpolate_pos_encoding=image_size is not None,
                    **kwargs).logits_per_image
    ours = torch.tensor([[s[c] for c in CLASSES] for s in scores])  # scores include the bias
    torch.testing.assert_close(ours, own, atol=1e-5, rtol=1e-5)
    assert loc.config.logit_bias == (-2.5 if kind == "siglip" else 0.0)


def test_clip_text_is_cut_exactly(folders):
    loc = shared(folders, "clip")
    prompts = ["a photo of a cat.", "a red-tailed hawk perched on a branch", "x"]
    tokens = loc.backend.tokenize(prompts)
    assert tokens.shape == (3, loc.config.context_length)
    with torch.no_grad():
        full = features(loc.backend.model.get_text_features(input_ids=tokens))
    torch.testing.assert_close(loc.backend.encode_text(tokens), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_long_prompts_warn_and_keep_their_end_token(folders, kind):
    loc = shared(folders, kind)
    long = "very " * 30 + "long bird"
    with pytest.warns(UserWarning, match="truncated"):
        emb = loc.encode_text([long], templates=ONE_TEMPLATE)
    assert torch.isfinite(emb).all()
    ids = loc.backend.tokenize([long])
    assert ids.shape == (1, loc.config.context_length) and int(ids[0, -1]) == loc.backend.tokenizer.hf.eos_token_id


def test_siglip_has_its_real_sentencepiece_tokenizer(folders):
    loc = shared(folders, "siglip")
    tok, context = loc.backend.tokenizer, loc.config.context_length
    assert type(tok.hf).__name__ == "SiglipTokenizer" and tok.num_special_tokens == 1
    assert (tok.hf.eos_token_id, tok.hf.pad_token_id, tok.hf.unk_token_id) == (SIGLIP_EOS, SIGLIP_EOS, 2)
    ids = loc.backend.tokenize(["a photo of a red fox.", "A Photo of a RED fox!", "a photo of a grey wolf."])
    assert torch.equal(ids[0], ids[1]) and not torch.equal(ids[0], ids[2])  # lower-cased, punctuation dropped
    n = len(tok.encode("a photo of a red fox."))
    assert SIGLIP_EOS not in ids[0, :n] and ids[0, n:].tolist() == [SIGLIP_EOS] * (context - n)  # </s>, </s> pads
    assert int(ids.max()) < loc.backend.model.config.text_config.vocab_size


def test_the_tiny_sentencepiece_model_is_deterministic_and_fast():
    start = time.perf_counter()
    again = siglip_spm.__wrapped__()  # train anew, past the session cache
    assert time.perf_counter() - start < 2.0 and again == siglip_spm()


@pytest.mark.parametrize("kind, special", [("clip", 2), ("siglip", 1)])
def test_the_truncation_warning_starts_where_truncation_does(folders, kind, special):
    """CLIP adds a start and an end token, SigLIP only </s>: the room left differs by one."""
    loc = shared(folders, kind)
    tok, context = loc.backend.tokenizer, loc.config.context_length
    assert tok.num_special_tokens == special
    for n, truncated in ((context - special, False), (context - special + 1, True)):
        text = " ".join(["a"] * n)  # one token per word in both vocabularies
        assert len(tok.encode(text)) == n
        assert len(tok.hf(text, verbose=False)["input_ids"]) == context + truncated
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loc.encode_text([text], templates=["{}"])
        assert any("truncated" in str(w.message) for w in caught) == truncated, n


def test_counting_a_long_prompt_logs_nothing_from_transformers(folders, caplog):
    """text.py warns once itself; the tokenizer's own 'longer than the maximum' log line is noise."""
    from transformers import AutoTokenizer

    from zsfinercam.backends.hf import TextTokenizer

    hf = AutoTokenizer.from_pretrained(str(folders["siglip"]), local_files_only=True)  # fresh: it logs once
    logging.getLogger("transformers").addHandler(caplog.handler)  # transformers' logger does not propagate
    try:
        TextTokenizer(hf, 16).encode("very " * 30)
        assert "sequence length" not in caplog.text
        hf.encode("very " * 30, add_special_tokens=False)  # the plain call does log: the check can fail
        assert "sequence length" in caplog.text
    finally:
        logging.getLogger("transformers").removeHandler(caplog.handler)


def test_a_missing_tokenizer_package_is_named(folders, monkeypatch):
    import transformers

    def missing(*args, **kwargs):  # transformers' words when protobuf is not installed
        raise ImportError("\nSiglipTokenizer requires the protobuf library but it was not found. Check out\nhttps://")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", missing)
    with pytest.raises(WorkError, match=r"requires the protobuf library but it was not found \(reinstall zsfinercam "
                                        r".*pip install sentencepiece protobuf\)$"):
        load(folders["siglip"])


def test_siglip_config_is_read_from_the_model(folders):
    cfg = shared(folders, "siglip").config
    assert (cfg.pooling, cfg.num_prefix_tokens, cfg.target_layer) == ("map", 0, "vision_model.post_layernorm")
    assert cfg.mean == (0.45, 0.5, 0.55) and cfg.std == (0.25, 0.3, 0.35) and cfg.grid_size == (4, 4)


def test_siglip_maps_change_with_the_concept(folders):
    loc = shared(folders, "siglip")
    maps = [r.token_map for r in loc.locate_many(random_image(6), CLASSES, method="base")]
    for i in range(len(maps)):
        for j in range(i):
            assert not np.allclose(maps[i], maps[j], atol=1e-6)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_jacobian_path_equals_direct_path(folders, kind):
    loc = shared(folders, kind)
    image = random_image(7)
    direct = loc.locate_many(image, CLASSES[:3], vocab=CLASSES)
    cached = loc.locate_many(loc.encode_image(image), CLASSES[:3], vocab=CLASSES)
    for a, b in zip(direct, cached):
        assert a.references == b.references
        np.testing.assert_allclose(b.token_map, a.token_map, rtol=1e-5, atol=1e-5 * a.token_map.max())


def test_from_model_leaves_the_callers_model_untouched(folders):
    from zsfinercam.backends.hf import HFBackend

    held = shared(folders, "siglip").backend
    model = copy.deepcopy(held.model).train()
    model.vision_model.head.probe.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    loc = zf.Localizer(HFBackend.from_model(model, held.tokenizer.hf, mean=held.config.mean, std=held.config.std),
                       cache_dir=None)
    got = loc.locate_many(random_image(3), CLASSES[:2], vocab=CLASSES)
    want = shared(folders, "siglip").locate_many(random_image(3), CLASSES[:2], vocab=CLASSES)
    np.testing.assert_allclose(got[0].token_map, want[0].token_map, rtol=1e-5, atol=1e-5 * want[0].token_map.max())
    assert model.training and {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_fingerprint_follows_the_text_weights_only(folders, kind):
    from zsfinercam.backends.hf import HFBackend

    held = shared(folders, kind).backend

    def fingerprint(edit):
        model = copy.deepcopy(held.model)
        with torch.no_grad():
            edit(model)
        return HFBackend.from_model(model, held.tokenizer.hf, name=held.config.name).fingerprint()

    same = fingerprint(lambda m: None)
    assert fingerprint(lambda m: m.vision_model.post_layernorm.weight.add_(1.0)) == same
    assert fingerprint(lambda m: m.text_model.final_layer_norm.weight.add_(1e-3)) != same
    assert fingerprint(lambda m: m.logit_scale.add_(1.0)) != same


def test_local_dir_prefix_and_plain_folder_agree(folders):
    a = shared(folders, "clip").encode_text(["cat"])
    b = load(f"local-dir:{folders['clip']}").encode_text(["cat"])
    torch.testing.assert_close(a, b)


def test_a_cached_hub_repo_loads_offline(folders, tmp_path, monkeypatch):
    from huggingface_hub import constants

    snapshot = tmp_path / "models--org--tiny-clip" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for f in folders["clip"].iterdir():
        (snapshot / f.name).symlink_to(f)
    (tmp_path / "models--org--tiny-clip" / "refs").mkdir()
    (tmp_path / "models--org--tiny-clip" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    for name in ("hf-hub:org/tiny-clip", "org/tiny-clip"):
        torch.testing.assert_close(load(name).encode_text(["cat"]), shared(folders, "clip").encode_text(["cat"]))


def test_a_missing_hub_model_fails_fast_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as err:
        load("hf-hub:nosuch-org/nosuch-clip")
    assert time.perf_counter() - start < 5.0
    message = str(err.value)
    assert "\n" not in message
    for part in ("hf-hub:nosuch-org/nosuch-clip", str(tmp_path), "local-dir:", "offline"):
        assert part in message


def test_a_degenerate_tokenizer_is_refused(folders, tmp_path):
    """What transformers hands back offline for a missing id: a vocabulary of two tokens."""
    from transformers import CLIPTokenizer

    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "vocab.json").write_text(json.dumps({"<|startoftext|>": 0, "<|endoftext|>": 1}))
    (tmp_path / "t" / "merges.txt").write_text("#version: 0.2\n")
    folder = save_tiny_hf(tmp_path / "m", "clip", tokenizer=CLIPTokenizer.from_pretrained(tmp_path / "t"))
    with pytest.raises(WorkError, match="maps different texts to the same tokens"):
        load(folder)


def test_a_tokenizer_beyond_the_text_vocabulary_is_refused(folders):
    from types import SimpleNamespace

    from zsfinercam.backends.hf import check_tokenizer

    small = SimpleNamespace(text_model=SimpleNamespace(config=SimpleNamespace(vocab_size=1000)))
    with pytest.raises(WorkError, match="do not belong together"):
        check_tokenizer(shared(folders, "clip").backend.tokenizer.hf, small, 16)


def test_a_pickled_checkpoint_that_runs_code_is_refused(folders, tmp_path):
    folder = tmp_path / "evil"
    folder.mkdir()
    for f in folders["clip"].iterdir():
        if f.name != "model.safetensors":
            (folder / f.name).write_bytes(f.read_bytes())

    class Payload:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    with open(folder / "pytorch_model.bin", "wb") as fh:
        pickle.dump({"x": Payload()}, fh, protocol=2)
    with pytest.raises(WorkError, match="could not load weights"):
        load(folder)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("kwargs, error, message", [
    ({"name": "toy"}, UsageError, "neither a folder nor a hub repo"),
    ({"name": "/no/such/dir/x"}, UsageError, "neither a folder nor a hub repo"),
    ({"name": "local-dir:/no/such/dir"}, UsageError, "model folder not found"),
    ({"name": "CLIP", "pretrained": "openai"}, UsageError, "--pretrained is not used by the hf backend"),
    ({"name": "CLIP", "image_size": 36}, UsageError, "multiple of the patch size 8 .try 32 or 40"),
])
def test_bad_requests(folders, kwargs, error, message):
    name = str(folders["clip"]) if kwargs["name"] == "CLIP" else kwargs["name"]
    with pytest.raises(error, match=message):
        load(name, **{k: v for k, v in kwargs.items() if k != "name"})


def test_an_open_clip_folder_points_at_the_other_backend(tmp_path):
    (tmp_path / "open_clip_config.json").write_text("{}")
    with pytest.raises(UsageError, match="use --backend open_clip"):
        load(f"local-dir:{tmp_path}")


def test_an_unsupported_model_type_is_named(folders, tmp_path):
    for f in folders["clip"].iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(dict(cfg, model_type="blip")))
    with pytest.raises(UsageError, match="model_type 'blip' is not supported .*CLIPModel, SiglipModel"):
        load(tmp_path)


def test_cli_locate_with_the_hf_backend(folders, tmp_path):
    image = tmp_path / "img.png"
    Image.fromarray(random_image(8)).save(image)
    env = dict(os.environ, HF_HUB_OFFLINE="1", ZSFINERCAM_CACHE=str(tmp_path / "cache"))
    cmd = [sys.executable, "-m", "zsfinercam", "locate", str(image), "cat", "dog", "--vs", "bird",
           "--backend", "hf", "--model", str(folders["siglip"]), "--device", "cpu", "--json", "--out",
           str(tmp_path / "out")]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=Path(__file__).parent.parent, timeout=120)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["concept"] for r in records] == ["cat", "dog"]
    assert all(r["references"] == ["bird"] and Path(r["files"]["overlay"]).is_file() for r in records)
