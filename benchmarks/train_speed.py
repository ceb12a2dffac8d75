"""Training step speed of the Fashion-MNIST ResNet-20, eager vs torch.compile modes: dense, BC-ADL and decomposed.

Why: on an H100 (2026-11-26, BENCHMARKS.md) a plain dense epoch took 5.9 s and a fine-tuning epoch
of the 2.5x decomposed model 8-10 s, for 469 steps of a model that needs microseconds of GPU time per
image: the steps are bound by launching kernels from Python, and the decomposed model launches more
(three convolutions per layer). ``torch.compile`` fuses kernels; its ``reduce-overhead`` mode also
replays the step as a CUDA graph. This script measures what each mode gives, in the same process.

For each model (``dense``, ``bcadl`` = dense + BC-ADL's penalty and updates, ``decomposed`` = uniform
ranks at ``--budget``) and each mode (``eager`` or a torch.compile mode), it trains two epochs on
``--subset`` training images from the same weights: the first includes compiling, the second is
the steady state. Prints a Markdown table; writes ``train_speed.json``.

    python benchmarks/train_speed.py --dense benchmarks/results/fmnist_resnet20_dense30/model.pt --out out \
        --modes eager,default,reduce-overhead --subset 25600 --workers 4        # GPU
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

import batude
from batude.bench.env import environment
from batude.data import DataSpec, load_datasets, make_loader
from batude.rank.bcadl import BCADL, BCADLConfig
from batude.rank.plan import apply_plan_
from batude.rank.selectors import select_ranks
from batude.train import TrainConfig
from batude.train.config import COMPILE_MODES
from batude.train.fit import epoch_seconds, prepare
from batude.train.loop import seed_everything

MODELS = ("dense", "bcadl", "decomposed")


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dense", required=True, help="dense Fashion-MNIST ResNet-20 batude checkpoint")
    p.add_argument("--out", required=True)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--modes", default="eager,default,reduce-overhead", help=f"eager and/or {', '.join(COMPILE_MODES)}")
    p.add_argument("--budget", default="2.5x", help="FLOPs budget of the decomposed model (uniform ranks)")
    p.add_argument("--subset", type=int, default=25600, help="training images per epoch (25600 = 200 steps of 128)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--workers", type=int, default=0)
    args = p.parse_args(argv)
    for name, allowed, given in (("--models", MODELS, args.models), ("--modes", ("eager", *COMPILE_MODES), args.modes)):
        unknown = sorted(set(given.split(",")) - set(allowed))
        if unknown:
            p.error(f"{name}: unknown {', '.join(unknown)}; choose from {', '.join(allowed)}")
    return args


def _model(kind: str, dense: torch.nn.Module, budget: str, shape: tuple[int, ...], steps: int,
           cfg: TrainConfig) -> tuple[torch.nn.Module, dict]:
    """The model on its training device (as ``compress`` places it), with BC-ADL's hooks built there."""
    model = copy.deepcopy(dense)
    if kind == "decomposed":
        apply_plan_(model, select_ranks(model, budget, "uniform", input_shape=shape))
    prepare(model, cfg)
    if kind == "bcadl":  # Z/U updates 4 times an epoch, as in accuracy_vs_budget's GPU schedule
        admm = BCADL(model, budget, BCADLConfig(period=max(1, steps // 4)), input_shape=shape)
        return model, {"extra_loss": admm.penalty, "after_step": admm.step}
    return model, {}


def time_epochs(kind: str, mode: str, dense, loader, cfg: TrainConfig, budget: str, shape) -> dict:
    """Two epochs of ``kind`` trained through ``mode``; their seconds and the steady ms per step."""
    seed_everything(0)
    cfg = TrainConfig(**{**cfg.to_dict(), "compile": None if mode == "eager" else mode})
    model, hooks = _model(kind, dense, budget, shape, len(loader), cfg)
    seconds = epoch_seconds(model, loader, cfg, epochs=2, hooks=hooks)
    return {"model": kind, "mode": mode, "steps": len(loader), "first_epoch_s": seconds[0], "epoch_s": seconds[1],
            "ms_per_step": seconds[1] / len(loader) * 1e3}


def table(rows: list[dict]) -> str:
    eager = {r["model"]: r["ms_per_step"] for r in rows if r["mode"] == "eager"}
    lines = ["| model | mode | first epoch s (compiles) | steady epoch s | ms/step | vs eager |", "|---|---|---|---|---|---|"]
    for r in rows:
        base = eager.get(r["model"])
        vs = f"{base / r['ms_per_step']:.2f}x" if base else "-"
        lines.append(f"| {r['model']} | {r['mode']} | {r['first_epoch_s']:.1f} | {r['epoch_s']:.2f} | {r['ms_per_step']:.2f} | {vs} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = _args(argv)
    dense = batude.load_checkpoint(args.dense).model
    train, _, info = load_datasets(DataSpec("fashion-mnist", root=args.data_dir, subset=args.subset))
    shape = (1, info.in_channels, *info.image_size)
    cfg = TrainConfig(batch_size=args.batch_size, lr=0.01, device=args.device, num_workers=args.workers)
    loader = make_loader(train, args.batch_size, True, 0, args.workers, pin_memory=cfg.resolved_device().type == "cuda")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"env": environment(), "args": vars(args), "results": []}
    for kind in args.models.split(","):
        for mode in args.modes.split(","):
            row = time_epochs(kind, mode, dense, loader, cfg, args.budget, shape)
            report["results"].append(row)
            print(f"{kind} {mode}: first epoch {row['first_epoch_s']:.1f}s, then {row['epoch_s']:.2f}s "
                  f"({row['ms_per_step']:.2f} ms/step)", flush=True)
            (out / "train_speed.json").write_text(json.dumps(report, indent=2) + "\n")
    print(table(report["results"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
