"""Backend registry: a decorator to add one, a filtered listing, a lookup.

Importable without torch: the built-ins are registered by "module:Class" path and imported
by `get_backend` on first use, so `list_backends` (the CLI's --backend choices) costs nothing.
A built-in's module registers its class with the same decorator when imported; that
replaces the path entry. Other backends register by decorating their class.
"""
from __future__ import annotations

import fnmatch
import importlib
from typing import Callable, TypeVar

from ..errors import UsageError, WorkError

BUILTINS = {  # one line per built-in backend: name -> "module:Class"
    "open_clip": "zsfinercam.backends.open_clip:OpenClipBackend",
    "hf": "zsfinercam.backends.hf:HFBackend",
}
BUILTIN_TOKEN_GRADIENTS = {"open_clip": True, "hf": True}  # each built-in's `Backend.token_gradients`
_BACKENDS: dict[str, type | str] = dict(BUILTINS)
T = TypeVar("T", bound=type)


def register_backend(name: str) -> Callable[[T], T]:
    """Class decorator that makes a backend loadable by `name`.

    Raises:
        ValueError: `name` is already registered (by another class than its built-in path names).
    """

    def add(cls: T) -> T:
        held = _BACKENDS.get(name)
        if held is not None and held != f"{cls.__module__}:{cls.__qualname__}":
            owner = held if isinstance(held, str) else held.__qualname__
            raise ValueError(f"backend {name!r} is already registered by {owner}")
        cls.name = name
        _BACKENDS[name] = cls
        return cls

    return add


def list_backends(pattern: str = "*") -> list[str]:
    """Registered backend names matching a shell-style wildcard, sorted (imports no backend)."""
    return sorted(n for n in _BACKENDS if fnmatch.fnmatch(n, pattern))


def token_gradients(name: str) -> bool:
    """`Backend.token_gradients` of the backend registered as `name`, without importing a built-in
    (so options can be resolved before a model loads, e.g. by the CLI)."""
    held = _BACKENDS.get(name)
    if isinstance(held, str):
        return BUILTIN_TOKEN_GRADIENTS[name]
    return bool(get_backend(name).token_gradients)


def get_backend(name: str) -> type:
    """The backend class registered as `name` (a built-in's module is imported here)."""
    try:
        held = _BACKENDS[name]
    except KeyError:
        raise UsageError(f"unknown backend {name!r}; choose one of: {', '.join(list_backends())}") from None
    if isinstance(held, str):
        module, _, qualname = held.partition(":")
        importlib.import_module(module)  # its decorator replaces the path by the class
        held = _BACKENDS[name]
        if isinstance(held, str):
            raise WorkError(f"{module} did not register backend {name!r} ({qualname})")
    return held
