"""CAM bases as objects, one module each, behind one registry (see `registry`).

A base turns the gradients the engine computes into maps: Grad-CAM from channel weights
(the token-mean gradient), HiResCAM and Layer-CAM from the gradient at every patch token
(`attention` holds the closed-form attention backward they share). The contract is
`base.CamBase`: a name, a display name, whether it needs per-token gradients, and a torch
and a Triton path. A fourth base is one new module, one line in `registry.BUILTINS` and
its equivalence test (tests/test_bases.py runs over `list_bases()`).

Importing this package imports no torch: `options.BASES` reads the registry's listing.
"""
from .registry import get_base, list_bases, register_base

__all__ = ["get_base", "list_bases", "register_base"]
