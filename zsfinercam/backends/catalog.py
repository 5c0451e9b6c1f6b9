"""What can be loaded, found without importing torch or running open_clip's package init.

`zsfinercam models` lists from here. open_clip's architectures are its model_configs/*.json
files and its weight tags the literal tables of its pretrained.py, read as text (located
with `importlib.util.find_spec`, which imports nothing): `import open_clip` alone costs
about 1.5x `import torch`. Whether weights are cached is a look at the cache folders
(Hugging Face hub cache, ~/.cache/clip), as is the hf backend's listing.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse


@dataclass(frozen=True)
class Entry:
    """One loadable model: `--model name --pretrained tag` (tag "" for none), and whether its weights are here."""

    name: str
    tag: str
    cached: bool
    note: str = ""  # e.g. "timm ViT tower"


def hub_cache() -> Path:
    """The Hugging Face hub cache folder, from the same variables huggingface_hub reads."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


def clip_cache() -> Path:
    """Where OpenAI's CLIP checkpoints (open_clip `url` weights) are cached."""
    return Path("~/.cache/clip").expanduser()


def open_clip_entries() -> list[Entry]:
    """Every (architecture, tag) open_clip ships that the open_clip backend runs: CLS-pooled
    ViTs and timm ViT towers (SigLIP). Empty when open_clip is not installed."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return []
    root = Path(list(spec.submodule_search_locations)[0])
    configs = {p.stem: _read(p) for p in sorted((root / "model_configs").glob("*.json"))}
    entries = []
    for name, tags in _pretrained_tables(root / "pretrained.py").items():
        kind = supported(configs.get(name) or {})
        entries += [Entry(name, tag, _cached(cfg), kind) for tag, cfg in tags.items() if kind is not None]
    return entries


def supported(cfg: dict) -> str | None:
    """None unless the open_clip backend runs this model config; else a note ("" or "timm ViT tower")."""
    vision = cfg.get("vision_cfg") or {}
    timm_name = vision.get("timm_model_name")
    if timm_name:
        return "timm ViT tower" if str(timm_name).startswith("vit_") else None
    if vision.get("attentional_pool") or vision.get("pool_type", "tok") != "tok":
        return None
    return "" if isinstance(vision.get("layers"), int) else None


def hf_entries() -> list[Entry]:
    """Hub repos in the local Hugging Face cache whose config.json is a CLIP or SigLIP (the hf backend's)."""
    from .hf_weights import SUPPORTED

    found = []
    for folder in sorted(hub_cache().glob("models--*")):
        for config in sorted(folder.glob("snapshots/*/config.json")):
            kind = _read(config).get("model_type")
            if kind in SUPPORTED:
                found.append(Entry(folder.name[len("models--"):].replace("--", "/"), "", True, kind))
                break
    return found


def _cached(cfg: dict) -> bool:
    """Whether the weights of one pretrained table entry are on this machine (as `open_clip_weights.is_cached`)."""
    from .open_clip_weights import CHECKPOINT_NAMES

    if hub := cfg.get("hf_hub"):
        repo, filename = os.path.split(hub)
        snapshots = hub_cache() / ("models--" + repo.replace("/", "--")) / "snapshots"
        names = (filename,) if filename else CHECKPOINT_NAMES
        return any((s / n).is_file() for s in snapshots.glob("*") for n in names)
    url = cfg.get("url") or ""
    return bool(url) and (clip_cache() / os.path.basename(urlparse(url).path)).is_file()


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _pretrained_tables(path: Path) -> dict[str, dict[str, dict]]:
    """{architecture: {tag: {"url": ..., "hf_hub": ..., "quick_gelu": ...}}} from open_clip's
    pretrained.py, read as text: module-level `_X = dict(tag=_pcfg(...))` tables and the
    `_PRETRAINED = {name: _X | dict(...)}` index, plus the "-quickgelu" variants open_clip derives."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return {}
    tables: dict[str, dict[str, dict]] = {}
    index: dict[str, dict[str, dict]] = {}
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            continue
        target, value = node.targets[0].id, node.value
        if target == "_PRETRAINED" and isinstance(value, ast.Dict):
            for key, ref in zip(value.keys, value.values):
                if isinstance(key, ast.Constant) and isinstance(key.value, str):
                    index[key.value] = tables.get(ref.id, {}) if isinstance(ref, ast.Name) else _table(ref)
        elif (table := _table(value)) is not None:
            tables[target] = table
    quick = {f"{name}-quickgelu": {t: c for t, c in tags.items() if c.get("quick_gelu")}
             for name, tags in index.items()}
    return {**index, **{name: tags for name, tags in quick.items() if tags}}


def _table(node: ast.AST) -> dict[str, dict] | None:
    """`dict(tag=_pcfg(url=..., hf_hub=..., quick_gelu=...), ...)` -> {tag: {constant keywords}}; else None."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict"):
        return None
    out = {}
    for kw in node.keywords:
        if kw.arg and isinstance(kw.value, ast.Call):
            out[kw.arg] = {k.arg: k.value.value for k in kw.value.keywords
                           if k.arg and isinstance(k.value, ast.Constant)}
    return out
