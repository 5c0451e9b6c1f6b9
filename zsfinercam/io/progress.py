"""What zsfinercam says while it works: one-line notes and progress bars, on stderr.

Notes go to the "zsfinercam" logger at INFO level, silent unless someone enables it (the
command line does; its `--quiet` does not). Progress bars are tqdm bars shown only while
that logger is enabled for INFO, only on a terminal, and only once the work has run past
BAR_DELAY seconds. Imports only the standard library (tqdm when a bar is made).
"""
from __future__ import annotations

import logging
import sys
from typing import Iterable

LOGGER = logging.getLogger("zsfinercam")
BAR_DELAY = 2.0  # seconds of work before a bar appears
MANY_PROMPTS = 64  # encoding more prompts than this is announced


def note(message: str) -> None:
    """One line about what is happening (e.g. "loading ViT-B-16 (openai) on cpu ...")."""
    LOGGER.info(message)


def talking() -> bool:
    """Whether notes and bars are wanted (the "zsfinercam" logger is enabled for INFO)."""
    return LOGGER.isEnabledFor(logging.INFO)


def bar(iterable: Iterable | None = None, total: int | None = None, desc: str | None = None, unit: str = "it"):
    """A tqdm bar over `iterable` on stderr: shown after BAR_DELAY s, on a terminal, while `talking()`."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, delay=BAR_DELAY, leave=False,
                dynamic_ncols=True, disable=None if talking() else True)
