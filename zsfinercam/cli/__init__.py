"""The `zsfinercam` command: a click group, one verb a module.

Errors reach the user as one line on stderr: exit 2 when the command line asked for
something invalid, exit 1 when valid work failed. Set ZSFINERCAM_DEBUG=1 for tracebacks.
"""
from __future__ import annotations

import atexit
import importlib
import os
import stat
import sys
import threading
import warnings

import click

from .._version import __version__
from ..errors import UsageError, WorkError

VERBS = {  # verb -> "module:command" under zsfinercam.cli, imported when the verb runs or shows its help
    "locate": "locate:locate", "batch": "batch:batch", "compare": "compare:compare", "models": "models:models",
    "eval": "eval:eval_command", "bench": "bench:bench", "neighbors": "prompts:neighbors",
    "prompts": "prompts:prompts_command", "lab": "lab:lab",
}


class LazyGroup(click.Group):
    """A click group whose verbs are imported on first use, so `zsfinercam --version` or a
    verb's `--help` pays only for click and the verb's own module (none imports torch at import)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(VERBS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in VERBS:
            return None
        module, _, attr = VERBS[name].partition(":")
        return getattr(importlib.import_module(f"{__name__}.{module}"), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="zsfinercam")
def cli() -> None:
    """Zero-shot concept localisation: where in the image is the evidence for a concept?"""


def _fail(message: str, code: int) -> None:
    click.echo(f"zsfinercam: error: {' '.join(str(message).split())}", err=True)
    sys.exit(code)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    click.echo(f"zsfinercam: warning: {' '.join(str(message).split())}", err=True)


def main(argv: list[str] | None = None) -> None:
    """Console entry point.

    Run as the command (`argv` None), the process leaves by `_exit_now` once every output is
    written, skipping the interpreter's teardown; called with `argv` (tests, embedding), it
    returns or raises SystemExit as a library should.
    """
    try:
        _main(argv)
    except SystemExit as done:
        if argv is None:
            _exit_now(done.code)
        raise
    if argv is None:
        _exit_now(0)


def _exit_now(code) -> None:
    """Exit at once with `code` (SystemExit's), skipping the interpreter's teardown.

    That teardown is the ~2.6 s after the last line of `locate`: clearing ~2,900 modules and
    collecting ~400,000 objects that `import open_clip` pulls in (torchvision, torch._dynamo,
    sympy, transformers, timm); no thread or atexit handler of note is involved. Nothing is
    lost: our files are closed (and renamed) when written, atexit handlers still run, stdout
    and stderr are flushed (and synced when they are files). Returns without exiting (the
    normal exit then runs) while threads other than daemons are alive or Ray is loaded, whose
    teardown stops worker processes.
    """
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if others or "ray" in sys.modules:
        return
    if code is not None and not isinstance(code, int):  # sys.exit("message") prints it
        click.echo(str(code), err=True)
        code = 1
    atexit._run_exitfuncs()  # logging.shutdown and the libraries' own clean-up, as a normal exit would
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
            if stat.S_ISREG(os.fstat(stream.fileno()).st_mode):  # pipes and terminals cannot be synced
                os.fsync(stream.fileno())
        except (OSError, ValueError):  # closed or broken stream (e.g. `| head`): nothing more can reach it
            code = code or 1
    os._exit(code or 0)


def _main(argv: list[str] | None) -> None:
    debug = os.environ.get("ZSFINERCAM_DEBUG", "") not in ("", "0")
    warnings.showwarning = _one_line_warning
    try:
        cli.main(args=argv, prog_name="zsfinercam", standalone_mode=False)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.exceptions.Abort:
        _fail("aborted", 130)
    except click.UsageError as err:
        verb = f"{err.ctx.info_name} " if err.ctx is not None and err.ctx.parent is not None else ""
        _fail(f"{err.format_message()} (see `zsfinercam {verb}--help`)", 2)
    except click.ClickException as err:
        _fail(err.format_message(), err.exit_code)
    except UsageError as err:
        _fail(str(err), 2)
    except (WorkError, OSError) as err:
        if debug:
            raise
        _fail(str(err), 1)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as err:  # noqa: BLE001 - the last line of defence against tracebacks
        if debug:
            raise
        if _out_of_memory(err):
            _fail(f"out of memory ({type(err).__name__}); try a smaller --image-size or --batch-size, "
                  f"or another --device", 1)
        _fail(f"unexpected {type(err).__name__}: {err} (rerun with ZSFINERCAM_DEBUG=1 for the traceback)", 1)


def _out_of_memory(err: Exception) -> bool:
    text = str(err).lower()
    return isinstance(err, MemoryError) or "out of memory" in text or "can't allocate memory" in text
