"""The command line's model when --model is not given: set once, in the environment or a file.

Precedence, first that names a model: --model, $ZSFINERCAM_MODEL, the config file
(`$XDG_CONFIG_HOME/zsfinercam/config.toml`, else `~/.config/zsfinercam/config.toml`), the
embedded toy. The weights and backend come from the same place as the model, unless
--pretrained or --backend is given. Imports only the standard library.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ..errors import UsageError

KEYS = ("model", "pretrained", "backend")  # what the environment and the file may set
ENVIRONMENT = {key: f"ZSFINERCAM_{key.upper()}" for key in KEYS}
EXAMPLE = 'model = "ViT-B-16" and pretrained = "openai"'


@dataclass(frozen=True)
class ModelChoice:
    """The model a verb loads, and where the choice came from."""

    model: str
    pretrained: str | None
    backend: str
    source: str  # "--model", "$ZSFINERCAM_MODEL", the config file's path, or "default"


def config_path(environ: Mapping[str, str] = os.environ) -> Path:
    """The config file's path (it need not exist)."""
    base = environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "zsfinercam" / "config.toml"


def read_config(path: Path) -> dict[str, str]:
    """The model settings of a config file; {} when there is no file.

    Raises:
        UsageError: the file is not TOML, or holds a key or value it should not.
    """
    if not path.is_file():
        return {}
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        raise UsageError(f"reading {path} needs Python 3.11 or later; use ZSFINERCAM_MODEL instead, "
                         "or remove the file") from None
    fix = f"fix it (e.g. {EXAMPLE}) or remove it"
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"{path} is not valid TOML ({err}); {fix}") from None
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise UsageError(f"{path} has unknown key(s) {', '.join(unknown)}; it may set {', '.join(KEYS)}; {fix}")
    bad = [k for k, v in raw.items() if not isinstance(v, str) or not v.strip()]
    if bad:
        raise UsageError(f"{path}: {', '.join(bad)} must be a non-empty string; {fix}")
    return {k: v.strip() for k, v in raw.items()}


def _source(settings: Mapping[str, str], where: str) -> dict[str, str] | None:
    """`settings` if they name a model; None if they set nothing; an error if they set weights alone."""
    if not settings:
        return None
    if "model" not in settings:
        raise UsageError(f"{where} sets {', '.join(sorted(settings))} but no model; add the model "
                         f"(e.g. {EXAMPLE})")
    return dict(settings)


def choose_model(model: str | None, pretrained: str | None, backend: str | None,
                 environ: Mapping[str, str] = os.environ) -> ModelChoice:
    """The model of a command line whose --model, --pretrained, --backend are these (None: not given).

    Raises:
        UsageError: the environment or the file sets weights without a model, or the file is malformed.
    """
    if model is not None:
        chosen, source = {"model": model}, "--model"
    else:
        env = {k: environ[v].strip() for k, v in ENVIRONMENT.items() if environ.get(v, "").strip()}
        chosen, source = _source(env, "the environment (ZSFINERCAM_*)"), f"${ENVIRONMENT['model']}"
        if chosen is None:
            path = config_path(environ)
            chosen, source = _source(read_config(path), str(path)), str(path)
        if chosen is None:
            chosen, source = {"model": "toy"}, "default"
    return ModelChoice(model=chosen["model"], pretrained=pretrained or chosen.get("pretrained"),
                       backend=backend or chosen.get("backend") or "open_clip", source=source)
