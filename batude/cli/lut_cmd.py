"""``batude lut build`` / ``validate`` / ``show``: measured per-layer latency tables."""

from __future__ import annotations

import argparse
import json

import torch

from batude._io import check_parent
from batude.bench.lut import LatencyTable
from batude.cli._common import ProgressBar, add_model_args, check_not_input, device_arg, load_from_args, positive_int
from batude.cli.model_cmds import plan_for, require_dense

__all__ = ["register"]


def _dtype(name: str) -> torch.dtype:
    return torch.float16 if name == "fp16" else torch.float32


def _cmd_build(args: argparse.Namespace) -> int:
    check_parent(args.out)
    check_not_input(args.out, args.model)
    ckpt, shape = load_from_args(args)
    require_dense(ckpt, args.model)
    bar = ProgressBar()
    lut = LatencyTable.build(ckpt.model, shape[1:], batch=args.batch, dtype=_dtype(args.dtype), device=args.device,
                             points=args.points, multiple_of=args.multiple_of or (16 if args.dtype == "fp16" else 8),
                             iters=args.iters, backend=args.backend,
                             progress=lambda i, n, name: bar("timing layers", i + 1, n, note=name))
    lut.save(args.out)
    print(f"latency table for {len(lut.layers)} layers on {lut.key['hardware']} ({lut.key['device']}, {lut.key['dtype']}, "
          f"batch {lut.key['batch']}, {lut.key['backend']}): dense model {lut.model_ms:.3f} ms, non-factorisable part {lut.other_ms:.3f} ms -> {args.out}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    lut = LatencyTable.load(args.lut)
    lut.check(args.device, getattr(torch, str(lut.key["dtype"]), torch.float32), lut.key["batch"], lut.key.get("backend", "eager"))
    ckpt, _ = load_from_args(args)
    result = lut.validate(ckpt.model, plan_for(ckpt, args.model, args.plan), iters=args.iters)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"predicted {result['predicted_ms']:.3f} ms, measured {result['measured_ms']:.3f} ms: error {100 * result['error']:.1f}%")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    lut = LatencyTable.load(args.lut)
    plan = None
    if args.plan:
        from batude.rank.plan import RankPlan

        plan = RankPlan.load(args.plan)
    s = lut.summary(plan)
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    k = s["key"]
    print(f"{args.lut}: {len(lut.layers)} layers on {k['hardware']} ({k['device']}, {k['dtype']}, batch {k['batch']}, "
          f"{k['backend']}, torch {k['torch']})")
    print(f"dense model {s['model_ms']:.3f} ms: factorisable layers {s['eligible_ms']:.3f} ms ({s['eligible_share']:.0%}), "
          f"the rest {s['other_ms']:.3f} ms")
    if plan is not None:
        print(f"plan {args.plan} ({s['plan_macs_reduction']:.2f}x fewer MACs): predicted {s['predicted_ms']:.3f} ms "
              f"({s['predicted_speedup']:.2f}x); if its layers ran at dense speed per FLOP {s['flops_bound_ms']:.3f} ms "
              f"({s['flops_bound_speedup']:.2f}x)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("lut", help="latency lookup tables: build one for a model, validate it against a measurement, show it")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    b = verbs.add_parser("build", help="measure every eligible layer (dense and factorised forms) on a rank grid")
    add_model_args(b)
    b.add_argument("--device", type=device_arg, default="cpu")
    b.add_argument("--dtype", choices=["fp32", "fp16"], default="fp32")
    b.add_argument("--batch", type=positive_int, default=1)
    b.add_argument("--points", type=positive_int, default=4, help="grid points per rank (at least 2)")
    b.add_argument("--multiple-of", type=positive_int, default=None, help="grid ranks are multiples of this (default 16 for fp16, 8 for fp32)")
    b.add_argument("--backend", choices=["eager", "cuda-graph", "triton"], default="eager",
                   help="time each module eagerly or as a replayed CUDA graph (GPU; what a served model pays); "
                        "triton: CUDA graphs, plus each factorised conv on batude's fused Triton kernel as one more variant")
    b.add_argument("--iters", type=positive_int, default=20)
    b.add_argument("--out", required=True, help="JSON table to write")
    b.set_defaults(func=_cmd_build)
    v = verbs.add_parser("validate", help="predicted vs measured latency of MODEL compressed by --plan")
    v.add_argument("lut", metavar="LUT", help="a table from `batude lut build` (its input shape, batch, dtype and backend are used)")
    add_model_args(v, input_option=False)
    v.add_argument("--plan", required=True, help="a plan JSON for MODEL (`batude plan`)")
    v.add_argument("--device", type=device_arg, default="cpu", help="must be the table's device (default cpu)")
    v.add_argument("--iters", type=positive_int, default=20, help="timed calls (default 20)")
    v.add_argument("--json", action="store_true", help="print the result as one JSON object instead of a sentence")
    v.set_defaults(func=_cmd_validate)
    s = verbs.add_parser("show", help="where a table's dense time goes; with --plan, its prediction and FLOPs-proportional bound (no device)")
    s.add_argument("lut", metavar="LUT", help="a table from `batude lut build`")
    s.add_argument("--plan", default=None, help="a plan JSON for the same model (`batude plan`)")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=_cmd_show)
