"""A registry of named classes (backends, CAM bases): a decorator to add one, a filtered listing, a lookup.

Importable without torch: built-ins are held as "module:Class" paths and imported on first
lookup, so listing names (the CLI's choices, `options.BASES`) costs nothing. A built-in's
module registers its class with the same decorator when imported; that replaces the path
entry. Other classes register by decorating themselves.
"""
from __future__ import annotations

import fnmatch
import importlib
from typing import Callable, TypeVar

from .errors import UsageError, WorkError

T = TypeVar("T", bound=type)


class Registry:
    """Names -> classes of one `kind` ("backend", "CAM base"), built-ins from `builtins` (name -> "module:Class")."""

    def __init__(self, kind: str, builtins: dict[str, str]):
        self.kind = kind
        self._held: dict[str, type | str] = dict(builtins)

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator that makes a class loadable by `name` (and sets its `name`).

        Raises:
            ValueError: `name` is already registered (by another class than its built-in path names).
        """

        def add(cls: T) -> T:
            held = self._held.get(name)
            if held is not None and held is not cls and held != f"{cls.__module__}:{cls.__qualname__}":
                owner = held if isinstance(held, str) else held.__qualname__
                raise ValueError(f"{self.kind} {name!r} is already registered by {owner}")
            cls.name = name
            self._held[name] = cls
            return cls

        return add

    def unregister(self, name: str) -> None:
        """Forget `name` (a class registered for a test, say); unknown names are ignored."""
        self._held.pop(name, None)

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style wildcard, sorted (imports nothing)."""
        return sorted(n for n in self._held if fnmatch.fnmatch(n, pattern))

    def get(self, name: str) -> type:
        """The class registered as `name` (a built-in's module is imported here).

        Raises:
            UsageError: no class has that name (the message lists the names).
        """
        try:
            held = self._held[name]
        except (KeyError, TypeError):
            raise UsageError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}") from None
        if isinstance(held, str):
            module, _, qualname = held.partition(":")
            importlib.import_module(module)  # its decorator replaces the path by the class
            held = self._held[name]
            if isinstance(held, str):
                raise WorkError(f"{module} did not register {self.kind} {name!r} ({qualname})")
        return held
