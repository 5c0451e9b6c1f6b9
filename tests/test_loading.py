"""Loading through the real code paths: files, folders, hub names offline, hostile files."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

import zsfinercam as zf
from conftest import TINY_CFG, random_image, save_tiny
from zsfinercam.backends.base import check_not_degenerate
from zsfinercam.errors import UsageError, WeightsUnavailableError, WorkError


def load(**kwargs):
    kwargs.setdefault("device", "cpu")
    kwargs.setdefault("cache_dir", None)
    return zf.Localizer.from_pretrained(**kwargs)


def maps(loc, seed=0):
    return [r.token_map for r in loc.locate_many(random_image(seed), ["cat", "dog", "owl"])]


def test_safetensors_and_torch_checkpoints_give_the_same_maps(tiny_files, tmp_path):
    cfg, weights = tiny_files
    from safetensors.torch import load_file

    torch.save({"state_dict": load_file(str(weights))}, tmp_path / "w.pt")
    a = maps(load(name="t", pretrained=str(weights), model_config=str(cfg)))
    b = maps(load(name="t", pretrained=str(tmp_path / "w.pt"), model_config=str(cfg)))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_local_dir_reads_config_preprocessing_and_weights(tiny_files, tmp_path):
    cfg, weights = tiny_files
    folder = tmp_path / "model"
    folder.mkdir()
    layout = {"model_cfg": TINY_CFG, "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}
    (folder / "open_clip_config.json").write_text(json.dumps(layout))
    (folder / "open_clip_model.safetensors").write_bytes(weights.read_bytes())
    loc = load(name=f"local-dir:{folder}")
    assert loc.config.mean == (0.5, 0.5, 0.5) and loc.config.std == (0.25, 0.25, 0.25)
    ref = load(name="t", pretrained=str(weights), model_config=str(cfg))
    torch.testing.assert_close(loc.encode_text(["cat"]), ref.encode_text(["cat"]))


@pytest.mark.parametrize("name, pretrained", [("hf-hub:imageomics/bioclip", None), ("ViT-B-32", "openai")])
def test_missing_weights_offline_fail_with_a_clear_message(name, pretrained):
    with pytest.raises(WeightsUnavailableError, match=r"not in the local cache .* --pretrained /path"):
        load(name=name, pretrained=pretrained)


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "ViT-B-32", "pretrained": "no-such-tag"}, "known tags: openai"),
    ({"name": "ViT-B-61"}, "did you mean ViT-B-16"),
    ({"name": "imageomics/bioclip"}, "hf-hub:imageomics/bioclip"),
    ({"name": "ViT-B-32", "pretrained": "/no/such/file.safetensors"}, "weights file not found"),
    ({"name": "t", "model_config": "/no/such.json"}, "model config not found"),
    ({"name": "t", "device": "cuda"} if not torch.cuda.is_available() else {"name": "ViT-B-61"}, "CUDA|did you"),
    ({"name": "t", "backend": "nope"}, "unknown backend 'nope'; choose one of: .*open_clip"),
])
def test_bad_requests_are_usage_errors(kwargs, message, tiny_files):
    if kwargs["name"] == "t" and "model_config" not in kwargs:
        kwargs["model_config"] = str(tiny_files[0])
    with pytest.raises(UsageError, match=message):
        load(**kwargs)


def test_a_folder_name_needs_the_local_dir_prefix(tmp_path):
    with pytest.raises(UsageError, match=f"local-dir:{tmp_path}"):
        load(name=str(tmp_path))


def test_image_size_must_be_a_multiple_of_the_patch(tiny_files):
    with pytest.raises(UsageError, match="multiple of the patch size 8 .try 32 or 40"):
        load(name="t", pretrained=str(tiny_files[1]), model_config=str(tiny_files[0]), image_size=35)


class Payload:
    def __reduce__(self):
        return (open, ("/tmp/zsfinercam-pwned", "w"))


def test_a_checkpoint_that_runs_code_is_refused(tiny_files, tmp_path):
    bad = tmp_path / "evil.pt"
    with open(bad, "wb") as f:
        pickle.dump({"x": Payload()}, f, protocol=2)
    with pytest.raises(WorkError, match="could not load weights"):
        load(name="t", pretrained=str(bad), model_config=str(tiny_files[0]))
    import os

    assert not os.path.exists("/tmp/zsfinercam-pwned")


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all" * 10])
def test_corrupt_checkpoints_are_work_errors(tiny_files, tmp_path, content):
    for suffix in (".safetensors", ".pt"):
        bad = tmp_path / f"bad{suffix}"
        bad.write_bytes(content)
        with pytest.raises(WorkError, match="could not load weights"):
            load(name="t", pretrained=str(bad), model_config=str(tiny_files[0]))


def test_weights_of_another_architecture_are_refused(tmp_path, tiny_files):
    other = dict(TINY_CFG, vision_cfg=dict(TINY_CFG["vision_cfg"], width=64))
    _, weights = save_tiny(tmp_path, cfg=other)
    with pytest.raises(WorkError, match="could not load weights"):
        load(name="t", pretrained=str(weights), model_config=str(tiny_files[0]))


def test_a_degenerate_tokenizer_is_caught():
    with pytest.raises(WorkError, match="same tokens"):
        check_not_degenerate(lambda texts: torch.zeros(len(texts), 8, dtype=torch.long))


def test_truncated_text_encoding_equals_open_clips(tiny):
    prompts = ["a photo of a cat.", "a red-tailed hawk perched on a branch", "x"]
    tokens = tiny.backend.tokenize(prompts)
    with torch.no_grad():
        full = tiny.backend.model.encode_text(tokens)
    torch.testing.assert_close(tiny.backend.encode_text(tokens), full, atol=1e-5, rtol=1e-5)


def test_text_embeddings_are_cached_on_disk(tiny_files, tmp_path):
    cfg, weights = tiny_files
    first = load(name="t", pretrained=str(weights), model_config=str(cfg), cache_dir=tmp_path)
    want = first.encode_text(["cat", "dog"])
    assert list((tmp_path / "text").glob("*.safetensors"))
    second = load(name="t", pretrained=str(weights), model_config=str(cfg), cache_dir=tmp_path)
    second.backend.encode_text = lambda tokens: (_ for _ in ()).throw(AssertionError("text tower was run"))
    torch.testing.assert_close(second.encode_text(["dog", "cat"]), want.flip(0))
