"""Backend registry: a decorator to add one, a filtered listing, a lookup."""
from __future__ import annotations

import fnmatch
from typing import Callable, TypeVar

from ..errors import UsageError

_BACKENDS: dict[str, type] = {}
T = TypeVar("T", bound=type)


def register_backend(name: str) -> Callable[[T], T]:
    """Class decorator that makes a backend loadable by `name`.

    Raises:
        ValueError: `name` is already registered.
    """

    def add(cls: T) -> T:
        if name in _BACKENDS:
            raise ValueError(f"backend {name!r} is already registered by {_BACKENDS[name].__qualname__}")
        cls.name = name
        _BACKENDS[name] = cls
        return cls

    return add


def list_backends(pattern: str = "*") -> list[str]:
    """Registered backend names matching a shell-style wildcard, sorted."""
    return sorted(n for n in _BACKENDS if fnmatch.fnmatch(n, pattern))


def get_backend(name: str) -> type:
    """The backend class registered as `name`."""
    try:
        return _BACKENDS[name]
    except KeyError:
        raise UsageError(f"unknown backend {name!r}; choose one of: {', '.join(list_backends())}") from None
