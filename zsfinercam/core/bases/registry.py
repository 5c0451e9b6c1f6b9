"""CAM base registry: a decorator to add one, a filtered listing, a lookup (`zsfinercam._registry`).

Importable without torch (it sits in the foundation layer, beside `options`, whose `BASES`
is `list_bases()`): the built-ins are registered by "module:Class" path and imported by
`get_base` on first use.
"""
from __future__ import annotations

from typing import Any

from ..._registry import Registry

BUILTINS = {  # one line per built-in base: name -> "module:Class"
    "gradcam": "zsfinercam.core.bases.gradcam:GradCAM",
    "hirescam": "zsfinercam.core.bases.hirescam:HiResCAM",
    "layercam": "zsfinercam.core.bases.layercam:LayerCAM",
}
_REGISTRY = Registry("CAM base", BUILTINS)
register_base = _REGISTRY.register  # class decorator: @register_base("name") on a `base.CamBase`
list_bases = _REGISTRY.names  # names matching a shell-style wildcard, sorted
unregister_base = _REGISTRY.unregister


def get_base(name: str) -> Any:
    """An instance of the `base.CamBase` registered as `name` (a UsageError listing them if none)."""
    return _REGISTRY.get(name)()
