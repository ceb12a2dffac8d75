"""Resumable runs: a folder with ``state.pt`` (after every epoch) and ``log.json``.

``state.pt`` holds plain data only (weights, optimiser and scheduler state, torch RNG states, the
phase and epoch, and whatever the caller adds such as BC-ADL's Z/U), is written atomically, and is
read back with ``torch.load(weights_only=True)``. A run refuses to resume with different options
(other than ``compile``, which changes how steps execute, not what they compute).
In a data-parallel run only rank 0 creates the folder and writes; every rank reads ``state.pt``
to resume (the folder must be visible to all of them).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from batude._io import atomic_path, write_text_atomic
from batude.errors import BatudeError
from batude.train.distributed import is_main

__all__ = ["Run", "rng_state", "set_rng_state"]

log = logging.getLogger(__name__)

STATE, LOG = "state.pt", "log.json"
_FORMAT = "batude-run"
_HOW_NOT_WHAT = frozenset({"compile"})  # options that change how a run executes, not what it computes: free on resume


def _what_it_computes(config: Any) -> Any:
    """``config`` without :data:`_HOW_NOT_WHAT` keys at any depth (older runs' states also lack them)."""
    if isinstance(config, dict):
        return {k: _what_it_computes(v) for k, v in config.items() if k not in _HOW_NOT_WHAT}
    return config


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Run:
    """One run's folder (or none: ``out_dir=None`` keeps everything in memory).

    ``write``: whether this process writes the folder (None: only in a single process or on rank 0).
    """

    def __init__(self, out_dir: str | Path | None, kind: str, config: dict[str, Any], resume: bool = False,
                 write: bool | None = None) -> None:
        self.dir = None if out_dir is None else Path(out_dir)
        self.kind, self.config = kind, config
        self.write = is_main() if write is None else bool(write)
        self.log: list[dict[str, Any]] = []
        self.state: dict[str, Any] | None = None
        if self.dir is None:
            return
        try:
            if self.write:
                self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise BatudeError(f"cannot create output folder {self.dir}: {err.strerror}; choose another --out") from None
        state_file = self.dir / STATE
        if state_file.exists() and not resume:
            raise BatudeError(f"{self.dir} already holds a run; pass --resume to continue it, or choose another --out")
        if resume and state_file.exists():
            self.state = self._load(state_file)
            self.log = list(self.state.get("log", []))

    def _load(self, path: Path) -> dict[str, Any]:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - a damaged state file in any way
            raise BatudeError(f"cannot resume: {path} is unreadable ({type(err).__name__}); remove it to start over") from None
        if not isinstance(state, dict) or state.get("format") != _FORMAT or state.get("kind") != self.kind:
            raise BatudeError(f"cannot resume: {path} is not a batude {self.kind} run; choose another --out")
        if _what_it_computes(state.get("config")) != _what_it_computes(self.config):
            raise BatudeError(f"cannot resume: the run in {self.dir} used different options; rerun with the same options or another --out")
        log.info("resuming %s run from %s (phase %s, epoch %s)", self.kind, path, state.get("phase"), state.get("epoch"))
        return state

    def resume_point(self, phase: str) -> int:
        """Completed epochs of ``phase`` in the loaded state (0 if none or another phase)."""
        if self.state is None or self.state.get("phase") != phase:
            return 0
        return int(self.state["epoch"])

    def record(self, entry: dict[str, Any]) -> None:
        self.log.append(entry)
        if self.dir is not None and self.write:
            write_text_atomic(self.dir / LOG, json.dumps(self.log, indent=2) + "\n")

    def checkpoint(self, phase: str, epoch: int, model: nn.Module, optimizer, scheduler, **extra: Any) -> None:
        """Atomically save everything needed to continue after ``epoch`` completed epochs of ``phase``."""
        if self.dir is None or not self.write:
            return
        payload = {
            "format": _FORMAT, "version": 1, "kind": self.kind, "config": self.config, "phase": phase, "epoch": epoch,
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state(),
            "log": self.log, **extra,
        }
        with atomic_path(self.dir / STATE) as tmp:
            torch.save(payload, tmp)
