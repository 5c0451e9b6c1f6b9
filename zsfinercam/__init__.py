"""zsfinercam: zero-shot, open-vocabulary concept localisation with Finer-CAM."""
from ._version import __version__
from .backends import Backend, get_backend, list_backends, register_backend
from .config import ModelConfig
from .engine import ImageFeatures
from .errors import UsageError, WeightsUnavailableError, WorkError
from .localizer import Localizer
from .objectives import Objective
from .result import LocateResult
from .vocab import list_templates, list_vocabs, load_templates, load_vocab

__all__ = [
    "__version__", "Backend", "ImageFeatures", "LocateResult", "Localizer", "ModelConfig", "Objective",
    "UsageError", "WeightsUnavailableError", "WorkError", "get_backend", "list_backends", "list_templates",
    "list_vocabs", "load_templates", "load_vocab", "register_backend",
]
