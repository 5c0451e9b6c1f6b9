"""Where open_clip weights come from: name resolution, caches, offline errors.

Everything here ends in local files before open_clip is called, so a machine
without network fails at once with one clear line instead of retrying for a
minute inside huggingface_hub.
"""
from __future__ import annotations

import difflib
import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from ..errors import UsageError, WeightsUnavailableError

TOY_DIR = Path(__file__).resolve().parent.parent / "assets" / "toy"
HF_PREFIX, LOCAL_PREFIX = "hf-hub:", "local-dir:"
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
LOCAL_HINT = "--pretrained /path/to/weights.safetensors (or --model local-dir:/path/to/folder)"
# Preferred weight files inside a hub repo or local folder, best first.
CHECKPOINT_NAMES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "model.safetensors",
    "pytorch_model.bin",
)


@dataclass
class Resolved:
    """A model request turned into local files (or a built-in architecture)."""

    arch: str  # open_clip built-in name, or a label for config-built models
    model_cfg: dict | None  # None: build the built-in `arch`
    checkpoint: str | None  # local weights file; None: random initialisation
    preprocess: dict = field(default_factory=dict)  # mean/std overrides
    quick_gelu: bool = False  # the weights were trained with QuickGELU
    extras: dict = field(default_factory=dict)  # zsfinercam-specific keys of the config


def resolve(name: str, pretrained: str | None, model_config: str | None) -> Resolved:
    """Turn (name, pretrained, model_config) into local files, downloading only when reachable."""
    if model_config is not None:
        return _from_config_file(Path(model_config), name, pretrained)
    if name == "toy":
        return _from_config_file(TOY_DIR / "config.json", "toy", pretrained or str(TOY_DIR / "toy.safetensors"))
    if name.startswith(LOCAL_PREFIX):
        return _from_local_dir(Path(name[len(LOCAL_PREFIX):]).expanduser(), name)
    if name.startswith(HF_PREFIX):
        return _from_local_dir(_hub_snapshot(name[len(HF_PREFIX):]), name)
    return _from_builtin(name, pretrained)


def _from_builtin(name: str, pretrained: str | None) -> Resolved:
    import open_clip

    if name not in open_clip.list_models():
        raise UsageError(_unknown_model_message(name, open_clip.list_models()))
    if pretrained is None:
        return Resolved(name, None, None)
    if _looks_like_path(pretrained):
        return Resolved(name, None, _checkpoint_file(pretrained))
    cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise UsageError(
            f"unknown pretrained tag {pretrained!r} for {name}; known tags: {', '.join(tags) or 'none'}, "
            "or pass a weights file path"
        )
    preprocess = {k: tuple(cfg[k]) for k in ("mean", "std") if k in cfg}
    return Resolved(name, None, _fetch_tag(name, pretrained, cfg), preprocess, bool(cfg.get("quick_gelu")))


def _unknown_model_message(name: str, known: list[str]) -> str:
    if Path(name).expanduser().is_dir():
        return f"{name!r} is a folder: load it with --model local-dir:{name}"
    if name.endswith(".json") and Path(name).is_file():
        return f"{name!r} is a JSON file: pass model configs with --model-config {name}"
    if name.count("/") == 1 and not Path(name).exists():
        return f"unknown model {name!r}; for a Hugging Face hub repo write hf-hub:{name}"
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return f"unknown model {name!r}; {hint}see `zsfinercam models` for the list, or use --model toy"


def _looks_like_path(value: str) -> bool:
    return os.sep in value or value.endswith(CHECKPOINT_SUFFIXES) or Path(value).exists()


def _checkpoint_file(path: str) -> str:
    p = Path(path).expanduser()
    if not p.exists():
        raise UsageError(f"weights file not found: {path}")
    if p.is_dir():
        raise UsageError(f"{path} is a folder, not a weights file; use --model local-dir:{path}")
    if p.suffix not in CHECKPOINT_SUFFIXES:
        raise UsageError(f"unsupported weights file {path}; expected one of {', '.join(CHECKPOINT_SUFFIXES)}")
    return str(p)


def _from_config_file(path: Path, label: str, pretrained: str | None) -> Resolved:
    if not path.is_file():
        raise UsageError(f"model config not found: {path}")
    cfg, preprocess, extras = _split_config(read_json_object(path, "model config"), path)
    checkpoint = _checkpoint_file(pretrained) if pretrained else None
    return Resolved(label, cfg, checkpoint, preprocess, bool(cfg.get("quick_gelu")), extras)


def read_json_object(path: Path, what: str, expect: str = "a JSON object") -> dict:
    """The JSON object in `path`; a UsageError naming the file as `what` when it is not one."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageError(f"{what} {path} is not a readable JSON file: {err}") from None
    if not isinstance(raw, dict):
        raise UsageError(f"{what} {path} must be {expect}")
    return raw


def _split_config(raw: dict, path: Path) -> tuple[dict, dict, dict]:
    """Accept a bare open_clip model config or the {"model_cfg", "preprocess_cfg"} layout."""
    cfg = dict(raw.get("model_cfg", raw))
    extras = dict(raw.get("zsfinercam", cfg.pop("zsfinercam", {})))
    preprocess = {k: tuple(v) for k, v in raw.get("preprocess_cfg", {}).items() if k in ("mean", "std")}
    preprocess.update({k: tuple(extras[k]) for k in ("mean", "std") if k in extras})
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in cfg]
    if missing:
        raise UsageError(f"model config {path} lacks {', '.join(missing)}; expected an open_clip model config")
    return cfg, preprocess, extras


def _from_local_dir(folder: Path, label: str) -> Resolved:
    cfg_path = folder / "open_clip_config.json"
    if not cfg_path.is_file():
        raise UsageError(f"{folder} has no open_clip_config.json; expected an open_clip model folder")
    found = [folder / n for n in CHECKPOINT_NAMES if (folder / n).is_file()]
    found = found or sorted(p for p in folder.iterdir() if p.suffix in CHECKPOINT_SUFFIXES)
    if not found:
        raise UsageError(f"{folder} has no weights file ({', '.join(CHECKPOINT_NAMES[:3])}, ...)")
    return _from_config_file(cfg_path, label, str(found[0]))


def hub_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def cached_file(repo_id: str, filename: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(repo_id, filename)
    return hit if isinstance(hit, str) else None


def hub_reachable(timeout: float = 3.0) -> bool:
    """False when HF_HUB_OFFLINE is set or the hub's host cannot be reached quickly."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _unavailable(what: str, where: str, hint: str = LOCAL_HINT) -> WeightsUnavailableError:
    """The offline error; `hint` says how to pass a local file instead."""
    return WeightsUnavailableError(
        f"weights for {what} are not in the local cache ({where}) and the hub cannot be reached (offline?); "
        f"download them on a machine with network, or pass a local file: {hint}"
    )


def hub_file(repo_id: str, names: tuple[str, ...], what: str, hint: str = LOCAL_HINT) -> str:
    """The first of `names` cached for repo_id, else downloaded when the hub is reachable."""
    for filename in names:
        if hit := cached_file(repo_id, filename):
            return hit
    if not hub_reachable():
        raise _unavailable(what, f"{hub_cache_dir()}, repo {repo_id}", hint)
    from huggingface_hub import hf_hub_download

    last: Exception | None = None
    for filename in names:
        try:
            return hf_hub_download(repo_id, filename)
        except Exception as err:  # noqa: BLE001 - the hub raises many types; the next name may exist
            last = err
    raise WeightsUnavailableError(f"could not download {what} from hub repo {repo_id}: {last}")


def _hub_snapshot(repo_id: str) -> Path:
    config = hub_file(repo_id, ("open_clip_config.json",), f"hf-hub:{repo_id}")
    hub_file(repo_id, CHECKPOINT_NAMES, f"hf-hub:{repo_id}")
    return Path(config).parent


def is_cached(cfg: dict) -> bool:
    """Whether the weights of an open_clip pretrained config are already on this machine."""
    if hub := cfg.get("hf_hub"):
        repo_id, filename = os.path.split(hub)
        return any(cached_file(repo_id, n) for n in ((filename,) if filename else CHECKPOINT_NAMES))
    url = cfg.get("url", "")
    return bool(url) and (Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(urlparse(url).path)).is_file()


def _fetch_tag(name: str, tag: str, cfg: dict) -> str:
    what = f"{name} (pretrained={tag!r})"
    if hub := cfg.get("hf_hub"):
        repo_id, filename = os.path.split(hub)  # "org/repo/" names no file: use the default names
        names = (filename,) if filename else CHECKPOINT_NAMES
        return hub_file(repo_id, names, what)
    url = cfg.get("url", "")
    target = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(urlparse(url).path)
    if target.is_file():
        return str(target)
    if not hub_reachable():
        raise _unavailable(what, str(target))
    from open_clip.pretrained import download_pretrained_from_url

    return download_pretrained_from_url(url)
