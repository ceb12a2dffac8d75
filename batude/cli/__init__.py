"""Command-line interface: ``batude {inspect,plan,apply,train,compress,bench,demo}`` and ``batude-export``.

The CLI owns output and exit codes: results go to stdout, progress to stderr, and a
:class:`~batude.errors.BatudeError` becomes one line ``batude: error: ...`` with exit code 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from batude._io import check_out_dir
from batude._version import __version__
from batude.cli import bench_cmd, lut_cmd, model_cmds, train_cmds
from batude.cli.export_cmd import build_export_parser, export_main
from batude.cli._common import Parser, ProgressBar, budget_arg, run
from batude.rank.budget import Budget

__all__ = ["main", "export_main", "build_parser", "build_export_parser"]


def _cmd_demo(args: argparse.Namespace) -> int:
    from batude.demo import FULL, SMALL, run_demo

    check_out_dir(args.out)  # fail before long work
    report = run_demo(Path(args.out), args.budget, FULL if args.full else SMALL, args.device, args.data_dir, print, ProgressBar())
    return 0 if report["checks"]["passed"] else 1


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="batude", description="Budget-aware Tucker decomposition of CNNs (BATUDE).")
    parser.add_argument("--version", action="version", version=f"batude {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    model_cmds.register(sub)
    train_cmds.register(sub)
    bench_cmd.register(sub)
    lut_cmd.register(sub)
    p = sub.add_parser("demo", help="the quick-start job: Fashion-MNIST ResNet-20, train -> BATUDE vs uniform -> report")
    p.add_argument("--budget", type=budget_arg, default=Budget.parse("2.52x"))
    p.add_argument("--full", action="store_true", help="the full schedule (all data, 30 + 10 + 10 epochs; for a GPU)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST location (default: the Debian package's)")
    p.add_argument("--out", default="demo_out", help="folder for checkpoints, plan and report")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``batude`` console script."""
    return run(build_parser(), argv)
