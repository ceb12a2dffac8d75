"""Shared CLI plumbing: one-line errors, argument types, model loading, the progress bar."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from batude.checkpoint import Checkpoint, load_model
from batude.errors import BatudeError
from batude.rank.budget import Budget

__all__ = ["Parser", "shape_arg", "budget_arg", "device_arg", "positive_int", "non_negative_int", "add_model_args", "load_from_args",
           "check_not_input", "ProgressBar", "run"]


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (``prog: error: ...``) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def shape_arg(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of integers, e.g. 1,3,224,224") from None
    if len(shape) != 4 or any(d <= 0 for d in shape):
        raise argparse.ArgumentTypeError(f"'{text}' must be N,C,H,W (four positive sizes), e.g. 1,3,224,224")
    return shape


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not an integer; give a whole number >= {minimum}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"'{text}' is too small; give a whole number >= {minimum}")
        return value
    return parse


positive_int = _int_at_least(1)
non_negative_int = _int_at_least(0)


def device_arg(text: str) -> str:
    from batude._device import parse_device

    try:
        parse_device(text)
    except BatudeError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def budget_arg(text: str) -> Budget:
    try:
        return Budget.parse(text)
    except BatudeError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def ceilings_arg(text: str):
    """``TFLOPS,GBPS``: a device's matrix rate and memory bandwidth (:class:`batude.bench.roofline.Ceilings`)."""
    from batude.bench.roofline import parse_ceilings

    try:
        return parse_ceilings(text)
    except BatudeError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_model_args(p: argparse.ArgumentParser, *, input_option: bool = True) -> None:
    p.add_argument("model", metavar="MODEL", help="checkpoint path, .pt2 program, or torchvision:NAME / batude:NAME / package.module:function")
    if input_option:
        p.add_argument("--input", type=shape_arg, default=None, metavar="N,C,H,W", help="input shape (default: from the checkpoint, else the architecture's)")
    p.add_argument("--arch", default=None, help="architecture of a plain state_dict checkpoint, or a trusted user factory")
    p.add_argument("--trust-pickle", action="store_true", help="allow loading pickled whole models (runs code from the file)")


def load_from_args(args: argparse.Namespace) -> tuple[Checkpoint, tuple[int, ...]]:
    ckpt = load_model(args.model, arch=args.arch, trust_pickle=args.trust_pickle)
    given = getattr(args, "input", None)
    return ckpt, tuple(given) if given else ckpt.input_shape


def check_not_input(out: str | os.PathLike, *inputs: str | os.PathLike | None) -> None:
    """Refuse an output path that is one of the command's input files (it would be replaced)."""
    target = Path(out).resolve()
    for given in inputs:
        if given is not None and Path(given).exists() and Path(given).resolve() == target:
            raise BatudeError(f"--out {out} is also an input of this command and would be overwritten; choose another --out")


_open_line = False  # a progress line without its newline is on stderr


class ProgressBar:
    """``label [#####     ] step/steps loss x`` (or a note) on stderr, redrawn at most 10 times a second.

    When stderr is not a terminal (a log file, CI), the bar is not redrawn in place: it prints one
    line when a phase finishes and at most one line every ``log_every`` seconds before that.
    """

    def __init__(self, width: int = 24, log_every: float = 30.0) -> None:
        self.width, self.log_every, self._last, self._label = width, log_every, 0.0, ""

    def __call__(self, label: str, step: int, steps: int, loss: float | None = None, note: str = "") -> None:
        now = time.monotonic()
        tty = sys.stderr.isatty()
        if label != self._label:
            self._label = label
            if not tty:  # a new phase in a log: its first line is due log_every seconds from now
                self._last = now
        if step < steps and now - self._last < (0.1 if tty else self.log_every):
            return
        self._last = now
        filled = int(self.width * step / max(steps, 1))
        bar = "#" * filled + " " * (self.width - filled)
        global _open_line
        _open_line = tty and step < steps
        tail = f"loss {loss:.4f}" if loss is not None else note
        line = f"{label:<16} [{bar}] {step}/{steps} {tail:<40}"
        print(f"\r{line}" if tty else line.rstrip(), end="" if _open_line else "\n", file=sys.stderr, flush=True)


def _fresh_line() -> str:
    global _open_line
    prefix, _open_line = ("\n" if _open_line else ""), False
    return prefix


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse and dispatch; user errors become one line and exit code 2."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help/--version (0) or a usage error (2, already printed)
        return int(done.code or 0)
    try:
        return args.func(args)
    except BatudeError as err:
        print(f"{_fresh_line()}{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the file system refused (disk full, permissions, ...): not a batude bug
        where = f"{err.filename}: " if err.filename else ""
        print(f"{_fresh_line()}{parser.prog}: error: {where}{err.strerror or err}; check the path, its permissions and free disk space",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{_fresh_line()}{parser.prog}: interrupted; no file was half-written, run the command again "
              "(train/compress: add --resume)", file=sys.stderr)
        return 130
