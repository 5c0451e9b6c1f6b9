"""Exceptions that carry a one-line message meant for the user.

The CLI turns `UsageError` into exit status 2 (the request was wrong) and
`WorkError` into exit status 1 (the request was fine, the work failed).
Both subclass the built-in types callers already catch.
"""
from __future__ import annotations


class UsageError(ValueError):
    """The caller asked for something invalid; the message names the fix."""


class WorkError(RuntimeError):
    """A valid request could not be carried out (unreadable file, missing weights)."""


class WeightsUnavailableError(WorkError, FileNotFoundError):
    """Pretrained weights are neither cached nor downloadable."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (libraries' messages run on over lines), else its type."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
