"""Tiny random models of every backend, saved and re-loaded through the real loaders.

`TINY_BUILDERS` maps a label to `builder(folder, device="cpu") -> Localizer`; tests/test_backends.py
runs the shared backend suite over all of them, and fails for a registered backend that
has no builder here. To add one, write a builder and append one line to the dict.

The Hugging Face CLIP model gets a real CLIP BPE tokenizer built offline from open_clip's
bundled merges (`open_clip.tokenizer.default_bpe()`). The SigLIP model gets a real
`SiglipTokenizer` (sentencepiece, lower-casing, punctuation stripped, `</s>` appended and
used as padding, ids <pad> 0, </s> 1, <unk> 2 as in google/siglip-*) over a tiny
sentencepiece model trained here on the bundled prompt lists (prompts/*.txt): its text
tower's vocabulary is that model's, so the ids are the tokenizer's own, end to end.
"""
from __future__ import annotations

import functools
import gzip
import io
import json
import math
import tempfile
from pathlib import Path

import torch

from conftest import save_tiny
from tiny_timm import build_open_clip_siglip, build_probe_dinov2

CLIP_VOCAB = 49408  # the BPE vocabulary: 256 bytes x 2, 48,894 merges, 2 special tokens
BOS, EOS = 49406, 49407
TEXT = {"vocab_size": CLIP_VOCAB, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
        "num_attention_heads": 2, "max_position_embeddings": 16, "bos_token_id": BOS, "eos_token_id": EOS,
        "pad_token_id": EOS}
SIGLIP_VOCAB = 1000  # the tiny sentencepiece vocabulary, at most (google/siglip-*: 32,000)
SIGLIP_EOS = 1  # "</s>": appended to every text and used as padding (pad_token_id 1 as in google/siglip-*)
SIGLIP_TEXT = dict(TEXT, vocab_size=SIGLIP_VOCAB, bos_token_id=None, eos_token_id=SIGLIP_EOS, pad_token_id=SIGLIP_EOS)
PROMPTS = Path(__file__).resolve().parent.parent / "prompts"
VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
          "image_size": 32, "patch_size": 8}


@functools.lru_cache(maxsize=None)
def clip_tokenizer():
    """A CLIPTokenizer with OpenAI CLIP's vocabulary, from open_clip's bundled merges (no download)."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:1 + CLIP_VOCAB - 512 - 2]]  # as open_clip's SimpleTokenizer
    units = list(bytes_to_unicode().values())
    vocab = units + [u + "</w>" for u in units] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
        return CLIPTokenizer.from_pretrained(tmp)


@functools.lru_cache(maxsize=None)
def siglip_spm() -> bytes:
    """A tiny sentencepiece model (serialized), trained on the concept and template lists; deterministic.

    Special ids as in SigLIP's spiece.model: <pad> 0, </s> 1, <unk> 2, no <s>.
    """
    import sentencepiece as spm

    lines = [line.strip() for path in sorted(PROMPTS.glob("*.txt"))
             for line in path.read_text(encoding="utf-8").splitlines() if line.strip() and not line.startswith("#")]
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=out, vocab_size=SIGLIP_VOCAB,
                                   model_type="unigram", pad_id=0, eos_id=SIGLIP_EOS, unk_id=2, bos_id=-1,
                                   character_coverage=1.0, hard_vocab_limit=False, num_threads=1, minloglevel=2)
    return out.getvalue()


def siglip_tokenizer(folder: Path):
    """A real transformers SiglipTokenizer over `siglip_spm()`, its spiece.model written into `folder`."""
    from transformers import SiglipTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spiece.model").write_bytes(siglip_spm())
    return SiglipTokenizer(vocab_file=str(folder / "spiece.model"), model_max_length=TEXT["max_position_embeddings"])


def _scramble(model: torch.nn.Module, seed: int) -> None:
    """Weights of unit-ish gain: transformers' 0.02-std init makes near-constant maps."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                fan_in = 1 if name.endswith(("token_embedding.weight", "position_embedding.weight")) else p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
            elif "logit" not in name:
                p.add_(0.1 * torch.randn(p.shape, generator=gen))


def save_tiny_hf(folder: Path, kind: str = "clip", seed: int = 0, tokenizer=None) -> Path:
    """A random transformers CLIPModel ("clip") or SiglipModel ("siglip") + tokenizer + processor config.

    The tokenizer defaults to the family's own: `clip_tokenizer()` or `siglip_tokenizer(folder)`.
    """
    from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, SiglipConfig, SiglipImageProcessor,
                              SiglipModel)

    torch.manual_seed(seed)
    if kind == "clip":
        model = CLIPModel(CLIPConfig(text_config=TEXT, vision_config=VISION, projection_dim=16))
        processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32)
        tokenizer = clip_tokenizer() if tokenizer is None else tokenizer
    else:
        text = dict(SIGLIP_TEXT, projection_size=VISION["hidden_size"])
        model = SiglipModel(SiglipConfig(text_config=text, vision_config=VISION))
        tokenizer = siglip_tokenizer(folder) if tokenizer is None else tokenizer
        processor = SiglipImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.45, 0.5, 0.55],
                                         image_std=[0.25, 0.3, 0.35])
    _scramble(model, seed)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(10.0))
        if kind == "siglip":
            model.logit_bias.fill_(-2.5)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _load(name: str, **kwargs):
    import zsfinercam as zf

    return zf.Localizer.from_pretrained(name, cache_dir=None, **kwargs)


def build_open_clip(folder: Path, device: str = "cpu"):
    cfg, weights = save_tiny(folder)
    return _load("tiny", pretrained=str(weights), model_config=str(cfg), device=device)


def build_hf_clip(folder: Path, device: str = "cpu"):
    return _load(str(save_tiny_hf(folder, "clip")), backend="hf", device=device)


def build_hf_siglip(folder: Path, device: str = "cpu"):
    return _load(str(save_tiny_hf(folder, "siglip")), backend="hf", device=device)


TINY_BUILDERS = {
    "open_clip": build_open_clip,
    "hf-clip": build_hf_clip,
    "hf-siglip": build_hf_siglip,
    "open_clip-siglip": build_open_clip_siglip,  # timm trunk, MAP pooling (tests/tiny_timm.py)
    "probe-dinov2": build_probe_dinov2,  # Localizer.from_classifier over a DINOv2-style timm ViT
}
