"""zsfinercam: zero-shot, open-vocabulary concept localisation with Finer-CAM.

The public names load on first use (PEP 562), so `import zsfinercam.options` (or the
version) does not import torch; `from zsfinercam import Localizer` works as before.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._version import __version__

_HOMES = {  # public name -> the module that defines it
    "Backend": ".backends", "get_backend": ".backends", "list_backends": ".backends",
    "register_backend": ".backends", "ModelConfig": ".config", "ImageFeatures": ".core.engine",
    "UsageError": ".errors", "WeightsUnavailableError": ".errors", "WorkError": ".errors",
    "Localizer": ".localizer", "LocateOptions": ".options", "Objective": ".core.objectives",
    "LocateResult": ".result", "list_templates": ".concepts.vocab", "list_vocabs": ".concepts.vocab",
    "load_templates": ".concepts.vocab", "load_vocab": ".concepts.vocab",
}

__all__ = ["__version__", *sorted(_HOMES)]

if TYPE_CHECKING:
    from .backends import Backend, get_backend, list_backends, register_backend
    from .config import ModelConfig
    from .core.engine import ImageFeatures
    from .errors import UsageError, WeightsUnavailableError, WorkError
    from .localizer import Localizer
    from .core.objectives import Objective
    from .options import LocateOptions
    from .result import LocateResult
    from .concepts.vocab import list_templates, list_vocabs, load_templates, load_vocab


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name], __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
