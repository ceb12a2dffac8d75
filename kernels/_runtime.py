"""Where the kernels can run, and importing them lazily.

* CUDA tensors: compiled Triton kernels (needs ``triton``: ``pip install batude[gpu]``).
* CPU tensors: only under Triton's interpreter. ``triton.jit`` decides between compiling and
  interpreting when triton is *first imported* (and so does triton's own standard library), so
  ``TRITON_INTERPRET=1`` must be in the environment before anything imports triton; the choice is
  process-wide. :func:`cpu_kernels_requested` is what the custom ops' CPU implementation asks.
* ``BATUDE_TRITON_AUTOTUNE=0`` replaces autotuning on the GPU by one heuristic config per shape
  (quicker start-up; the interpreter always uses one small config).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType

import torch

from batude.errors import BatudeError

__all__ = ["triton_unavailable_reason", "jit_module", "interpreting", "cpu_kernels_requested", "autotune_enabled", "check_device"]


def triton_unavailable_reason() -> str | None:
    """None if the kernels can be imported here, else why not (for ``BackendUnavailable`` messages)."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed; pip install 'batude[gpu]' (or triton) on a CUDA machine"
    return None


def _env_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def jit_module() -> ModuleType:
    """``batude.kernels._jit`` (imports triton on first use)."""
    reason = triton_unavailable_reason()
    if reason:
        raise BatudeError(f"the Triton kernels are unavailable: {reason}")
    from batude.kernels import _jit

    return _jit


_INTERPRETING: list[bool] = []  # decided once the kernels are imported


def interpreting() -> bool:
    """True when this process's kernels run under Triton's interpreter."""
    if _INTERPRETING:
        return _INTERPRETING[0]
    if "batude.kernels._jit" not in sys.modules and "triton" not in sys.modules:
        return _env_interpret()
    import triton.language as tl

    ours = type(jit_module()._tucker2_kernel).__name__ == "InterpretedFunction"
    theirs = type(tl.zeros).__name__ == "InterpretedFunction"
    if ours != theirs:
        raise BatudeError("TRITON_INTERPRET changed between importing triton and importing batude's kernels; "
                          "set it (or not) before starting Python")
    _INTERPRETING.append(ours)
    return ours


def cpu_kernels_requested() -> bool:
    """Should CPU tensors go through the (interpreted) kernels rather than the PyTorch reference?"""
    return _env_interpret() and triton_unavailable_reason() is None and interpreting()


def autotune_enabled() -> bool:
    return not interpreting() and os.environ.get("BATUDE_TRITON_AUTOTUNE", "1") != "0"


def check_device(x: torch.Tensor) -> None:
    """Refuse tensors the kernels cannot run on in this process, saying what to do instead."""
    if x.device.type == "cuda":
        if interpreting():
            raise BatudeError("TRITON_INTERPRET=1 is set, so the kernels are interpreted and need CPU tensors; "
                              "unset it to run them on the GPU")
        return
    if x.device.type == "cpu":
        if not interpreting():
            raise BatudeError("the Triton kernels run on CUDA tensors; on the CPU set TRITON_INTERPRET=1 before "
                              "starting Python (interpreter), or use the PyTorch reference / the custom op")
        return
    raise BatudeError(f"the Triton kernels do not run on {x.device.type} tensors; use CUDA (or CPU under TRITON_INTERPRET=1)")
