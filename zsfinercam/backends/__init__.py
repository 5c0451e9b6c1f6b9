"""Backends behind one registry (see `registry`); the contract is `base.Backend`.

Importing this package imports neither torch nor any backend: the registry lists the
built-ins by name and `get_backend` imports one when asked. `Backend` is loaded on first access.
"""
from .registry import get_backend, list_backends, register_backend, token_gradients

__all__ = ["Backend", "get_backend", "list_backends", "register_backend", "token_gradients"]


def __getattr__(name: str):
    if name == "Backend":
        from .base import Backend

        return Backend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
