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
_REGISTRY = Registry("backend", BUILTINS)
register_backend = _REGISTRY.register  # class decorator: @register_backend("name")
list_backends = _REGISTRY.names  # names matching a shell-style wildcard, sorted
get_backend = _REGISTRY.get  # the class registered under a name
