"""Linear-probe mode (the Finer-CAM paper's setting): files in, a probe backend out.

    classifier file (nn.Linear state dict) + class names file + backbone -> ProbeBackend

Accepted classifiers: a `torch.nn.Linear` state dict (`weight` (C, E), optional `bias` (C,))
in a .safetensors file or a weights-only torch file (.pth/.pt/.bin). Keys may carry a
prefix ("linear.weight", "module.classifier.weight") and the dict may sit under "state_dict"
or "model". The official Finer-CAM `classifier_*.pth` files (Imageomics/Finer-CAM, saved
by `torch.save(nn.Linear(768, C).state_dict())` over DINOv2 ViT-B/14 mean patch tokens)
are this layout: plain `weight` and `bias`.

Class names: a text file with one class per line, in the classifier's row order, or a
JSON list (the official training script writes `class_names.json`).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .probe import ProbeBackend, load_tower, probe_config, read_state_dict
from ..errors import UsageError

CONTAINER_KEYS = ("state_dict", "model", "classifier")  # where training scripts nest the weights
LAYOUT = "expected a torch.nn.Linear state dict: weight (C, E) and optional bias (C,)"


def load_probe(backbone: str, classifier, classes, *, pretrained, model_config, device: torch.device,
               image_size) -> ProbeBackend:
    """Read the class names and classifier (cheap checks first), then load the tower."""
    names = read_classes(classes)
    weight, bias = read_classifier(classifier)
    if weight.shape[0] != len(names):
        raise UsageError(f"the classifier has {weight.shape[0]} classes (weight rows) but {classes} names "
                         f"{len(names)}; give one class name per row, in order")
    tower, tower_config = load_tower(backbone, pretrained=pretrained, model_config=model_config, device=device,
                                     image_size=image_size)
    dim = tower_config.embed_dim
    if weight.shape[1] != dim:
        raise UsageError(f"the classifier takes features of size {weight.shape[1]} but {backbone} gives {dim}; "
                         "was it trained on another backbone?")
    return ProbeBackend(tower, weight, bias, names, probe_config(tower_config, names), device)


def read_classifier(path) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight (C, E), bias (C,)) of the one linear layer in `path`; zero bias when it has none."""
    state = _unwrap(read_state_dict(str(path)))
    weights = [k for k, v in state.items() if _is_key(k, "weight") and v.ndim == 2]
    if not weights:
        shown = ", ".join(f"{k} {tuple(v.shape)}" for k, v in list(state.items())[:4]) or "nothing"
        raise UsageError(f"{path} has no 2-D weight tensor ({LAYOUT}); it holds {shown}")
    if len(weights) > 1:
        raise UsageError(f"{path} holds several linear layers ({', '.join(weights[:4])}); {LAYOUT}")
    weight = state[weights[0]].float()
    bias_key = weights[0][: -len("weight")] + "bias"
    bias = state.get(bias_key)
    if bias is None:
        return weight, weight.new_zeros(weight.shape[0])
    if tuple(bias.shape) != (weight.shape[0],):
        raise UsageError(f"{path}: {bias_key} has shape {tuple(bias.shape)}, expected ({weight.shape[0]},) "
                         f"to match {weights[0]} {tuple(weight.shape)}")
    return weight, bias.float()


def _unwrap(state: dict) -> dict:
    """The flat tensor dict, out of the containers training scripts wrap it in."""
    for key in CONTAINER_KEYS:
        if isinstance(state.get(key), dict):
            return _unwrap(state[key])
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _is_key(key: str, leaf: str) -> bool:
    return key == leaf or key.endswith("." + leaf)


def read_classes(path) -> list[str]:
    """Class names, one per line (or a JSON list); blank lines only at the end; no duplicates."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UsageError(f"class names file not found: {path}")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"cannot read class names from {path}: {err}") from None
    if p.suffix == ".json":
        return _check_names(_json_list(text, path), path)
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return _check_names(lines, path)


def _json_list(text: str, path) -> list[str]:
    try:
        names = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"class names file {path} is not valid JSON: {err}") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UsageError(f"class names file {path} must hold a JSON list of strings")
    return [n.strip() for n in names]


def _check_names(names: list[str], path) -> list[str]:
    if not names:
        raise UsageError(f"class names file {path} is empty; write one class name per line")
    if "" in names:
        raise UsageError(f"class names file {path} has a blank entry at line {names.index('') + 1}")
    seen: dict[str, int] = {}
    for i, n in enumerate(names):
        if n in seen:
            raise UsageError(f"class names file {path} names {n!r} twice (lines {seen[n] + 1} and {i + 1})")
        seen[n] = i
    return names
