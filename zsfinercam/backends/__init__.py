"""Backends behind one registry. Built-ins are imported explicitly, one line each."""
from .base import Backend
from .registry import get_backend, list_backends, register_backend
from . import open_clip as _open_clip  # noqa: F401  (registers "open_clip")
from . import hf as _hf  # noqa: F401  (registers "hf")

__all__ = ["Backend", "get_backend", "list_backends", "register_backend"]
