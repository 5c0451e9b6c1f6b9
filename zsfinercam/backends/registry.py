"""Backend registry: a decorator to add one, a filtered listing, a lookup (`zsfinercam._registry`).

Importable without torch: the built-ins are registered by "module:Class" path and imported
by `get_backend` on first use, so `list_backends` (the CLI's --backend choices) costs nothing.
"""
from __future__ import annotations

from .._registry import Registry

BUILTINS = {  # one line per built-in backend: name -> "module:Class"
    "open_clip": "zsfinercam.backends.open_clip:OpenClipBackend",
    "hf": "zsfinercam.backends.hf:HFBackend",
}
BUILTIN_TOKEN_GRADIENTS = {"open_clip": True, "hf": True}  # each built-in's `Backend.token_gradients`
_REGISTRY = Registry("backend", BUILTINS)
register_backend = _REGISTRY.register  # class decorator: @register_backend("name")
list_backends = _REGISTRY.names  # names matching a shell-style wildcard, sorted
get_backend = _REGISTRY.get  # the class registered under a name


def token_gradients(name: str) -> bool:
    """`Backend.token_gradients` of the backend registered as `name`, without importing a built-in
    (so options can be resolved before a model loads, e.g. by the CLI)."""
    if name in BUILTIN_TOKEN_GRADIENTS:  # a built-in's name cannot be taken by another class
        return BUILTIN_TOKEN_GRADIENTS[name]
    return bool(get_backend(name).token_gradients)
