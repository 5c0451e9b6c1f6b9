"""Fast-path speed per backend, as a ratio to the same model's own plain image forward.

    python benchmarks/bench_backends.py --device cpu --rounds 2 [--backends open_clip,hf_siglip] [--ks 1,16]

Real-size image towers with random weights, built in memory (nothing is downloaded): open_clip
ViT-B-16 (CLS) and ViT-B-16-SigLIP (timm trunk, MAP head), transformers CLIPModel and SiglipModel
(ViT-B/16, 2-layer text towers), a Linear(768, 200) probe over timm vit_base_patch14_reg4_dinov2.
One 224 image. Conventions of `zsfinercam.bench.run` (its helpers are reused): per backend, every
round runs each method once, the first round is a warm-up, medians are reported.
- floor: the model's own image forward, inference_mode, the trunk's autocast (bfloat16 on CUDA);
- ours: `Localizer.locate_many(image, K concepts, vs=3 references)`, text warm (text towers
  get open_clip's bundled BPE ids: with random weights the ids only need to differ);
- cached: the same call on `ImageFeatures` (a per-image Jacobian, where used, is built in the warm-up);
- gradcam: pytorch-grad-cam `FinerCAM` on the backend's declared target layer, one call per
  concept; one call a round is timed and the per-concept median multiplied by K (marked ~).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from zsfinercam.bench.run import device_name, ratio, sync  # noqa: E402
from zsfinercam.errors import UsageError, WorkError  # noqa: E402
from zsfinercam.localizer import Localizer, resolve_device  # noqa: E402
from zsfinercam.testing.reference import ImageTower, ZeroShotHead, finer_cam  # noqa: E402

REFERENCES = 3
VIT_B16 = dict(patch_size=16, image_size=224, hidden_size=768, intermediate_size=3072,
               num_hidden_layers=12, num_attention_heads=12)
# 2 layers (text is not timed), width 768 so SigLIP's text head matches its image width in any transformers
SMALL_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=2,
                  num_attention_heads=12)
DINOV2 = "vit_base_patch14_reg4_dinov2"


@dataclasses.dataclass
class Case:
    """One backend ready to time: the localizer and the plain model it is measured against."""

    loc: Localizer
    plain: nn.Module  # x -> logits over `names`; `plain.embed(x)` is the floor
    target: nn.Module  # the layer pytorch-grad-cam hooks: the backend's own `config.target_layer`
    names: list[str]  # rows of `plain`'s logits
    concepts: list[str]
    refs: list[str]
    batch_first: bool = True  # layout of the target's tokens


class OfflineTokenizer:
    """open_clip's bundled BPE with ids folded into the text tower's vocabulary, seen through both
    interfaces the backends call: open_clip's (texts -> ids) and the transformers subset HFBackend uses."""

    def __init__(self, context_length: int, vocab_size: int):
        from open_clip.tokenizer import SimpleTokenizer

        self.bpe, self.vocab_size = SimpleTokenizer(context_length=context_length), vocab_size

    def __call__(self, texts, **hf_kwargs):
        ids = self.bpe(list(texts)) % self.vocab_size
        return {"input_ids": ids} if hf_kwargs else ids

    def encode(self, text: str, **_) -> list[int]:
        return self.bpe.encode(text)

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return 2  # start and end


class _ProbeHead(ZeroShotHead):
    """x -> W timm(x) + b: the probe as its users run it (`text` holds the classifier rows [W | b])."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x).float() @ self.text[:, :-1].T + self.text[:, -1]


# backends ----------------------------------------------------------------------------------
def _zero_shot(loc: Localizer, n: int, visual: nn.Module, root: nn.Module, batch_first: bool = True) -> Case:
    concepts = [f"concept number {i}" for i in range(n)]
    refs = [f"reference number {i}" for i in range(REFERENCES)]
    text = loc.head(concepts + refs)  # warms the text cache: text is not timed
    plain = ZeroShotHead(visual, text, loc.backend.logit_scale, loc.backend.autocast_dtype)
    return Case(loc, plain, root.get_submodule(loc.config.target_layer), concepts + refs, concepts, refs, batch_first)


def _open_clip(name: str, device: torch.device, n: int) -> Case:
    import open_clip

    from zsfinercam.backends.open_clip import OpenClipBackend

    if name not in open_clip.list_models():
        raise UsageError(f"open_clip {open_clip.__version__} has no {name} config")
    model = open_clip.create_model(name, pretrained=None).to(device).eval()
    text = getattr(model, "text", model)  # CustomTextCLIP (SigLIP) keeps its text tower apart
    tokenizer = OfflineTokenizer(model.context_length, text.token_embedding.num_embeddings)
    loc = Localizer(OpenClipBackend.from_model(model, tokenizer, name=name), cache_dir=None)
    transformer = getattr(model.visual, "transformer", None)
    return _zero_shot(loc, n, model.visual, model, getattr(transformer, "batch_first", True))


def _hf(kind: str, device: torch.device, n: int) -> Case:
    import transformers as tf

    from zsfinercam.backends.hf import HFBackend

    model_cls, config_cls = (tf.CLIPModel, tf.CLIPConfig) if kind == "clip" else (tf.SiglipModel, tf.SiglipConfig)
    model = model_cls(config_cls(text_config=SMALL_TEXT, vision_config=VIT_B16)).to(device).eval()
    text = model.config.text_config
    tokenizer = OfflineTokenizer(text.max_position_embeddings, text.vocab_size)
    loc = Localizer(HFBackend.from_model(model, tokenizer, name=f"hf-{kind}-b16"), cache_dir=None)
    return _zero_shot(loc, n, ImageTower(model, lambda m, x: m.get_image_features(pixel_values=x)), model)


def _probe(device: torch.device, n: int) -> Case:
    """The documented path, `Localizer.from_classifier`, from files written to a temp folder."""
    import timm

    overrides, classes = {"img_size": 224}, [f"class {i:03d}" for i in range(200)]
    if n + REFERENCES > len(classes):
        raise UsageError(f"K={n} + {REFERENCES} references exceed the probe's {len(classes)} classes")
    vit = timm.create_model(DINOV2, pretrained=False, num_classes=0, **overrides)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        torch.save(vit.state_dict(), folder / "backbone.pth")
        torch.save(nn.Linear(vit.num_features, len(classes)).state_dict(), folder / "classifier.pth")
        (folder / "classes.txt").write_text("\n".join(classes), encoding="utf-8")
        (folder / "timm.json").write_text(json.dumps(overrides), encoding="utf-8")
        loc = Localizer.from_classifier(f"timm:{DINOV2}", folder / "classifier.pth", folder / "classes.txt",
                                        pretrained=str(folder / "backbone.pth"),
                                        model_config=str(folder / "timm.json"), device=str(device), image_size=224)
    tower = loc.backend.tower
    plain = _ProbeHead(tower.vit, loc.backend.table, 1.0, tower.autocast_dtype)
    target = nn.ModuleDict({"trunk": tower.vit}).get_submodule(loc.config.target_layer)  # "trunk.blocks..."
    return Case(loc, plain, target, classes, classes[:n], classes[n:n + REFERENCES])


BACKENDS: dict[str, Callable[[torch.device, int], Case]] = {  # (device, concepts) -> Case
    "open_clip": functools.partial(_open_clip, "ViT-B-16"),
    "open_clip_siglip": functools.partial(_open_clip, "ViT-B-16-SigLIP"),
    "hf_clip": functools.partial(_hf, "clip"),
    "hf_siglip": functools.partial(_hf, "siglip"),
    "dinov2_probe": _probe,
}


# timing ------------------------------------------------------------------------------------
def _gradcam(case: Case, pixels: torch.Tensor, concept: str):
    """One pytorch-grad-cam FinerCAM call (maps at the input size): the map of one concept (how its users run it)."""
    c = case.loc.config
    pair = (case.names.index(concept), [case.names.index(r) for r in case.refs])
    return finer_cam(case.plain, case.target, pixels, [pair], grid=c.grid_size, prefix=c.num_prefix_tokens,
                     batch_first=case.batch_first, on_grid=False)


def _time_case(case: Case, ks, rounds: int, gradcam: bool, device: torch.device) -> dict:
    """Median seconds per method; every round runs each method once, round 0 is a warm-up."""
    loc = case.loc
    image = (np.random.RandomState(0).rand(224, 224, 3) * 255).astype(np.uint8)
    pixels = loc.pixels([image]).to(device)
    feats = loc.encode_image(image)
    samples = defaultdict(list)

    def timed(key, fn) -> None:
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        samples[key].append(time.perf_counter() - start)

    def floor() -> None:
        with torch.inference_mode():
            case.plain.embed(pixels)

    for r in range(rounds + 1):
        timed("floor", floor)
        for k in ks:
            timed(("ours", k), lambda: loc.locate_many(image, case.concepts[:k], vs=case.refs, base="gradcam"))
            timed(("cached", k), lambda: loc.locate_many(feats, case.concepts[:k], vs=case.refs, base="gradcam"))
        if gradcam:
            timed("gradcam1", lambda: _gradcam(case, pixels, case.concepts[r % len(case.concepts)]))
    return {key: statistics.median(v[1:]) for key, v in samples.items()}


def _ms(seconds) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.1f}"


def _x(ratio) -> str:
    return "-" if ratio is None else f"{ratio:.3g}x"


def _rows(name: str, med: dict, ks) -> list[list[str]]:
    ms, x = _ms, _x
    floor, per_concept, rows = med["floor"], med.get("gradcam1"), []
    for k in ks:
        ours, cached = med[("ours", k)], med[("cached", k)]
        gradcam = per_concept * k if per_concept is not None else None
        rows.append([name, str(k), ms(floor), ms(ours), x(ratio(ours, floor)), ms(cached),
                     x(ratio(cached, floor)), ("~" if k > 1 and gradcam else "") + ms(gradcam), x(ratio(gradcam, ours))])
    return rows


def _print_table(rows: list[list[str]]) -> None:
    head = ["backend", "K", "floor ms", "ours ms", "ours/floor", "cached ms", "cached/floor", "gradcam ms",
            "gradcam/ours"]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths))))
    print("ours/floor: our call over the model's own image forward; gradcam/ours: speed-up over "
          "pytorch-grad-cam FinerCAM (~ = one call per concept, extrapolated x K)")


def _parse(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, help="timed rounds after the warm-up (default: 10 on CUDA, 3 on CPU)")
    parser.add_argument("--backends", default=",".join(BACKENDS), help=f"comma-separated, of {', '.join(BACKENDS)}")
    parser.add_argument("--ks", default="1,16", help="concept counts K, comma-separated")
    parser.add_argument("--no-gradcam", action="store_true", help="skip the pytorch-grad-cam baseline")
    args = parser.parse_args(argv)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in args.backends if b not in BACKENDS]
    if unknown or not args.backends:
        parser.error(f"unknown backend(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(BACKENDS)}")
    args.ks = [int(k) for k in args.ks.split(",")]
    if (args.rounds is not None and args.rounds < 1) or min(args.ks) < 1:
        parser.error("--rounds and every K must be positive")
    args.rounds = args.rounds or (10 if args.device == "cuda" else 3)
    return args


def main(argv=None) -> None:
    args = _parse(argv)
    device = resolve_device(args.device)
    gradcam = not args.no_gradcam and importlib.util.find_spec("pytorch_grad_cam") is not None
    print(f"device {device} ({device_name(device)}), torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.rounds} rounds + 1 warm-up, one 224 image, {REFERENCES} references")
    if not gradcam and not args.no_gradcam:
        print("gradcam columns skipped: pytorch-grad-cam is not installed")
    rows, started = [], time.perf_counter()
    for name in args.backends:
        torch.manual_seed(0)
        try:
            case = BACKENDS[name](device, max(args.ks))
        except (ImportError, UsageError, WorkError) as err:
            print(f"skip {name}: {type(err).__name__}: {str(err).strip().splitlines()[0]}", flush=True)
            continue
        rows += _rows(name, _time_case(case, args.ks, args.rounds, gradcam, device), args.ks)
        print(f"done {name} ({time.perf_counter() - started:.0f} s)", flush=True)
        del case
    _print_table(rows)


if __name__ == "__main__":
    main()
