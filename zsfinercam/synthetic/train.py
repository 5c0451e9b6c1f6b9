"""Train the tiny open_clip CLIP shipped as the `toy` model on synthetic birds.

    python -m zsfinercam.synthetic.train --out zsfinercam/assets/toy

Contrastive (CLIP) training with multi-positive targets: a batch holds images and one
random true caption per image (full class name or a subset of its attributes), and
caption j counts as a positive of image i whenever it is true of image i, so duplicates
of a class are not pushed apart. Two cross-entropy terms add dense supervision: each
image among the templated names of all training classes (`--class-weight`), and, per part,
among that part's phrases, "a bird with a red head." (`--attr-weight`). Held-out classes
are never rendered and their names never encoded during training; their zero-shot
accuracy measures whether the text tower composes attribute words.

Everything is seeded (rendering, captions, batches, init); on one machine and thread
count a rerun gives the same checkpoint.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .captions import TEMPLATES, attrs_from_index, caption_words, phrase_caption, positives, sample_caption
from .data import MEAN, STD, augment, render_pool, to_tensor
from .draw import make_sample, sample_seeds
from .taxonomy import ATTRIBUTE_PARTS, HELDOUT, PART_VALUES, class_name, list_classes

MODEL_CFG: dict = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 128, "layers": 4, "head_width": 32},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 48, "heads": 4, "layers": 3},
}


def build_model(cfg: dict | None = None):
    """An open_clip CLIP from a config dict in open_clip's JSON format (random weights)."""
    from open_clip.model import CLIP

    cfg = MODEL_CFG if cfg is None else cfg
    return CLIP(**{k: cfg[k] for k in ("embed_dim", "vision_cfg", "text_cfg")})


def build_tokenizer(cfg: dict | None = None):
    """open_clip's SimpleTokenizer at the config's context length."""
    from open_clip.tokenizer import SimpleTokenizer

    cfg = MODEL_CFG if cfg is None else cfg
    return SimpleTokenizer(context_length=cfg["text_cfg"]["context_length"])


@torch.no_grad()
def class_embeddings(model, tokenizer, names: list[str], templates=TEMPLATES) -> torch.Tensor:
    """(K, E) zero-shot head: mean over templates of normalised text embeddings, renormalised."""
    texts = [t.format(n) for n in names for t in templates]
    emb = F.normalize(model.encode_text(tokenizer(texts)), dim=-1)
    emb = emb.view(len(names), len(templates), -1).mean(1)
    return F.normalize(emb, dim=-1)


@torch.no_grad()
def zero_shot_accuracy(model, tokenizer, images: np.ndarray, labels: np.ndarray, names: list[str]) -> float:
    """Top-1 accuracy of images (uint8 NHWC) among all `names`; labels index `names`."""
    was_training = model.training
    model.eval()
    head = class_embeddings(model, tokenizer, names)
    preds = []
    for start in range(0, len(images), 256):
        feats = F.normalize(model.encode_image(to_tensor(images[start:start + 256])), dim=-1)
        preds.append((feats @ head.T).argmax(-1).numpy())
    model.train(was_training)
    return float((np.concatenate(preds) == labels).mean())


def _contrastive_loss(img, txt, scale, pos: torch.Tensor) -> torch.Tensor:
    """Symmetric CLIP loss with soft targets spread evenly over all positives."""
    logits = scale * img @ txt.T
    tgt_i = pos / pos.sum(1, keepdim=True)
    tgt_t = pos.T / pos.T.sum(1, keepdim=True)
    loss_i = -(tgt_i * F.log_softmax(logits, 1)).sum(1).mean()
    loss_t = -(tgt_t * F.log_softmax(logits.T, 1)).sum(1).mean()
    return 0.5 * (loss_i + loss_t)


def _lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return 0.5 * peak * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))


def _step_loss(model, tokenizer, batch, idx, rng, train_names, class_weight, attr_weight):
    captions = [sample_caption(i, rng) for i in idx]
    texts = [c[0] for c in captions]
    pos = torch.from_numpy(positives(idx, np.array([c[1] for c in captions]))).float()
    img = F.normalize(model.encode_image(batch), dim=-1)
    txt = F.normalize(model.encode_text(tokenizer(texts)), dim=-1)
    scale = model.logit_scale.exp()
    loss = _contrastive_loss(img, txt, scale, pos)
    if class_weight > 0:
        template = TEMPLATES[rng.integers(len(TEMPLATES))]
        head = F.normalize(model.encode_text(tokenizer([template.format(n) for n in train_names])), dim=-1)
        labels = torch.from_numpy(_train_label(idx, train_names))
        loss = loss + class_weight * F.cross_entropy(scale * img @ head.T, labels)
    if attr_weight > 0:
        loss = loss + attr_weight * _attribute_loss(model, tokenizer, img, scale, idx)
    return loss


def _attribute_loss(model, tokenizer, img, scale, idx) -> torch.Tensor:
    """Mean over parts of cross-entropy among that part's phrases ('a bird with a red head.')."""
    total = 0.0
    for k, part in enumerate(ATTRIBUTE_PARTS):
        texts = [phrase_caption([part], {part: v}) for v in PART_VALUES[part]]
        head = F.normalize(model.encode_text(tokenizer(texts)), dim=-1)
        total = total + F.cross_entropy(scale * img @ head.T, torch.from_numpy(idx[:, k]))
    return total / len(ATTRIBUTE_PARTS)


def _train_label(idx: np.ndarray, train_names: list[str]) -> np.ndarray:
    lookup = {n: k for k, n in enumerate(train_names)}
    return np.array([lookup[class_name(attrs_from_index(i))] for i in idx], dtype=np.int64)


def _param_groups(model, wd: float):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        small = p.ndim < 2 or "embedding" in name or "logit_scale" in name
        (no_decay if small else decay).append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


def train(args) -> tuple[torch.nn.Module, dict]:
    """Run training; returns the model (fp32, eval mode) and a log of figures."""
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    t0, cpu0 = time.time(), time.process_time()
    images, idx = render_pool(args.pool, args.seed, MODEL_CFG["vision_cfg"]["image_size"], workers=args.workers)
    t_data = time.time() - t0
    print(f"rendered {len(images)} training images in {t_data:.1f} s", flush=True)
    model, tokenizer = build_model(), build_tokenizer()
    model.train()
    opt = torch.optim.AdamW(_param_groups(model, args.wd), lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    train_names = list_classes("train")
    val = _eval_sets(args.seed, n_train=2, n_held=10)
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, args.steps, args.lr, args.warmup)
        pick = rng.integers(0, len(images), args.batch)
        batch = augment(to_tensor(images[pick]), rng)
        loss = _step_loss(model, tokenizer, batch, idx[pick], rng, train_names, args.class_weight,
                          args.attr_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            accs = {k: zero_shot_accuracy(model, tokenizer, *v, list_classes("all")) for k, v in val.items()}
            print(f"step {step + 1:5d} loss {loss.item():.3f} scale {model.logit_scale.exp().item():.1f} "
                  f"val {accs} {time.time() - t0:.0f}s", flush=True)
    model.eval()
    log = {"train_seconds": round(time.time() - t0, 1), "render_seconds": round(t_data, 1),
           # CPU seconds of this process (rendering workers excluded) per thread: what the
           # run costs on an otherwise idle machine with `threads` cores.
           "train_cpu_seconds_per_thread": round((time.process_time() - cpu0) / args.threads, 1),
           "torch": torch.__version__}
    return model, log


def _eval_sets(seed: int, n_train: int, n_held: int) -> dict:
    """Unseen test images: per split, (uint8 images, labels into list_classes('all'))."""
    all_names = list_classes("all")
    out = {}
    for split, per_class in (("train", n_train), ("heldout", n_held)):
        names = list_classes(split)
        seeds = sample_seeds(per_class * len(names), seed + 1_000_003)
        imgs = [np.asarray(make_sample(names[k % len(names)], s).image) for k, s in enumerate(seeds)]
        labels = [all_names.index(names[k % len(names)]) for k in range(len(seeds))]
        out[split] = (np.stack(imgs), np.array(labels))
    return out


def save_toy(model, out_dir: Path, extras: dict) -> Path:
    """Write config.json and toy.safetensors (fp16 weights, fp32 logit_scale)."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: (v.float() if k == "logit_scale" else v.half()).contiguous()
             for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / "toy.safetensors"), metadata={"format": "pt"})
    cfg = {**MODEL_CFG, "zsfinercam": extras}
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return out_dir / "toy.safetensors"


def shipped_accuracy(out_dir: Path, test: dict) -> dict:
    """Zero-shot top-1 of the saved checkpoint, loaded through zsfinercam's real loader."""
    from ..localizer import Localizer

    loc = Localizer.from_pretrained("toy", str(out_dir / "toy.safetensors"),
                                    model_config=str(out_dir / "config.json"), device="cpu", cache_dir=None)
    names = list_classes("all")
    accs = {}
    for split, (images, labels) in test.items():
        preds = []
        for start in range(0, len(images), 256):
            scores = loc.scores(list(images[start:start + 256]), names)
            preds += [int(np.argmax([row[n] for n in names])) for row in scores]
        accs[split] = float(np.mean(np.array(preds) == labels))
    return accs


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("zsfinercam/assets/toy"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=1100)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--pool", type=int, default=24000, help="distinct training images rendered")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--wd", type=float, default=0.05)
    p.add_argument("--warmup", type=int, default=60)
    p.add_argument("--class-weight", type=float, default=0.5)
    p.add_argument("--attr-weight", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=2, help="processes for rendering")
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--eval-per-class", type=int, default=30)
    return p


def main(argv: list[str] | None = None) -> dict:
    """Train, save, reload the fp16 checkpoint and report zero-shot accuracy on unseen images."""
    args = _parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    model, log = train(args)
    test = _eval_sets(args.seed + 7, n_train=args.eval_per_class, n_held=args.eval_per_class)
    extras = {
        "classes": list_classes("all"), "train_classes": list_classes("train"),
        "heldout_classes": list_classes("heldout"), "templates": list(TEMPLATES), "words": caption_words(),
        "mean": list(MEAN), "std": list(STD), "tokenizer": "open_clip.tokenizer.SimpleTokenizer",
        "heldout_attrs": [list(h) for h in HELDOUT],
        "trained_with": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    path = save_toy(model, args.out, extras)
    accs = shipped_accuracy(args.out, test)
    log.update({f"zero_shot_acc_{k}": round(a, 4) for k, a in accs.items()},
               checkpoint_bytes=path.stat().st_size)
    extras["report"] = log
    save_toy(model, args.out, extras)
    print(json.dumps(log, indent=2))
    return log


if __name__ == "__main__":
    main()
