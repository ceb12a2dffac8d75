"""One rule for turning a user's device string into a ``torch.device`` (used by training, tables and bench)."""

from __future__ import annotations

import torch

from batude.errors import BatudeError

__all__ = ["parse_device", "resolve_device"]


def parse_device(device: str | torch.device) -> torch.device:
    """``torch.device(device)``, or a :class:`BatudeError` naming what is accepted (no machine check)."""
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise BatudeError(f"unknown device '{device}'; use cpu, cuda or cuda:N") from None


def resolve_device(device: str | torch.device | None, default: str = "cpu", make_current: bool = False) -> torch.device:
    """``device`` (``cpu``, ``cuda``, ``cuda:N``; None: ``default``) checked against this machine.

    Keeps a CUDA index (``cuda:1`` stays GPU 1) and refuses, as a :class:`BatudeError` that says
    what to pass instead, a CUDA device where CUDA is unavailable or the index does not exist.
    ``default="auto"``: the GPU when there is one, else the CPU. ``make_current``: a CUDA device
    becomes the current one (streams, CUDA graphs and timing events use the current device).
    """
    if device is None:
        device = ("cuda" if torch.cuda.is_available() else "cpu") if default == "auto" else default
    dev = parse_device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BatudeError(f"device {device} requested but CUDA is not available here; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise BatudeError(f"device {device} requested but this machine has {torch.cuda.device_count()} GPU(s); "
                              f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}")
        if make_current and dev.index is not None:  # a bare "cuda" is the current device already
            torch.cuda.set_device(dev.index)  # an index: torch 2.11 refuses a device without one
    return dev
