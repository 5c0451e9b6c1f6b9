"""Which implementation computes maps, torch or Triton, and why Triton cannot run when it cannot.

`impl` / `kernel` is one of IMPLS: "auto" takes Triton on CUDA where triton imports (never the
interpreter), "torch" the reference, "triton" the kernels or a one-line reason they cannot run.

Triton's interpreter (``TRITON_INTERPRET=1``) runs the kernels on CPU tensors, for testing only.
Triton (3.x, including the 3.8 installed here) reads the flag when ``triton.language`` is first
imported and decorates its own helpers then, so the variable must be set before the process
imports triton. This module reads the flag at call time (never at import) and names the cause
when the flag and the imported triton disagree. Importing it does not import triton.
"""
from __future__ import annotations

import functools
import os
from typing import Any

import torch

from ..errors import UsageError

IMPLS = ("auto", "torch", "triton")
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # what the kernels take


class TritonUnavailableError(RuntimeError):
    """``impl="triton"`` was asked for but cannot run in this process or on this device."""


def triton_available() -> bool:
    """Whether the Triton kernels can run in this process.

    True when triton imports and either CUDA is available or Triton's interpreter is
    enabled (``TRITON_INTERPRET=1``, read now, and already set when triton was imported).
    Whether a given call can use them still depends on its tensors' device (`use_triton`)
    and, for ``kernels.token_maps``, dtype.
    """
    triton = import_triton()
    if triton is None or interpreting(triton) != stdlib_interpreted(triton):
        return False
    return torch.cuda.is_available() or interpreting(triton)


def unavailable_reason(device: torch.device, batch: int = 1) -> str | None:
    """Why the Triton kernels cannot run on `device` for `batch` images in this process, or None.

    One line naming the cause and the way out (install triton, use CUDA tensors or set
    TRITON_INTERPRET=1 before triton is imported, use impl='torch').
    """
    triton = import_triton()
    if triton is None:
        return (f"the triton package is not importable ({_triton_import_error()}); install it or use "
                "impl='torch' (--kernel torch)")
    if batch > 65535:  # the batch is the grid's third axis
        return (f"expected at most 65535 images per call, got {batch}; split the batch or use impl='torch' "
                "(--kernel torch)")
    if interpreting(triton) != stdlib_interpreted(triton):
        now, then = ("set", "unset") if interpreting(triton) else ("unset", "set")
        return (
            f"TRITON_INTERPRET is {now} now but was {then} when triton was first imported (triton "
            "decorates its own helpers at import); set or unset it before the process imports triton"
        )
    if torch.device(device).type == "cuda" or interpreting(triton):
        return None
    cuda = "CUDA is available" if torch.cuda.is_available() else "this machine has no CUDA device"
    return (
        f"the kernels run on CUDA, not {device} ({cuda}); to run them in Triton's CPU interpreter "
        "(for testing only), set TRITON_INTERPRET=1 before the process imports triton"
    )


def check_kernel(kernel: str, device: torch.device | str) -> str:
    """`kernel` (one of IMPLS) if it can run on `device`, else a one-line UsageError saying why.

    "triton" needs CUDA, or on CPU Triton's interpreter (TRITON_INTERPRET=1 set before
    triton is imported; for testing). Checked when a Localizer is made, before a model loads.
    """
    if kernel not in IMPLS:
        raise UsageError(f"unknown kernel {kernel!r}; choose one of: {', '.join(IMPLS)}")
    reason = unavailable_reason(torch.device(device)) if kernel == "triton" else None
    if reason is not None:
        raise UsageError(f"kernel 'triton' (--kernel triton) cannot run on {device}: {reason}")
    return kernel


def use_triton(impl: str, tensor: torch.Tensor) -> bool:
    """Whether a map computation on `tensor`'s device and batch takes its Triton path.

    "torch": never; "auto": on CUDA where triton imports (never the interpreter); "triton":
    always, or `TritonUnavailableError` saying why it cannot run.
    """
    if impl not in IMPLS:
        raise ValueError(f"expected impl to be one of {', '.join(map(repr, IMPLS))}, got {impl!r}")
    if impl == "torch":
        return False
    if impl == "auto":
        triton = import_triton() if tensor.is_cuda else None
        return triton is not None and not interpreting(triton) and not stdlib_interpreted(triton)
    reason = unavailable_reason(tensor.device, tensor.shape[0])
    if reason is not None:
        raise TritonUnavailableError(f"impl='triton' cannot run: {reason}")
    return True


def operand_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype a Triton path feeds its kernel: float16 on CUDA (tensor cores; callers scale
    their operands first), else (the interpreter) the inputs' own precision, float32 at most."""
    if tensors[0].is_cuda:
        return torch.float16
    dtype = functools.reduce(torch.promote_types, (t.dtype for t in tensors))
    return dtype if dtype in KERNEL_DTYPES else torch.float32


@functools.lru_cache(maxsize=1)
def _triton_import_error() -> str | None:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except ImportError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def import_triton() -> Any:
    """The triton module, or None when it does not import (the reason is cached)."""
    if _triton_import_error() is not None:
        return None
    import triton

    return triton


def interpreting(triton: Any) -> bool:
    """Triton's interpreter flag as triton itself reads it, right now."""
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    # triton < 3.4 has no knobs; triton.jit reads the variable when it decorates.
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def stdlib_interpreted(triton: Any) -> bool:
    """Whether triton.language's own jit helpers were built for the interpreter (this is
    fixed when triton.language is first imported)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(getattr(triton.language, "zeros", None), InterpretedFunction)


def upcast(dtype: torch.dtype) -> bool:
    """Whether a kernel must upcast its `dtype` tiles to float32 before `tl.dot`: bfloat16 under the
    interpreter, which multiplies bfloat16's raw bit patterns (triton-lang/triton#11584)."""
    return dtype == torch.bfloat16 and interpreting(import_triton())
