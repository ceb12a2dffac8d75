"""``batude bench``: measured latency of a (compressed) model per backend and batch, dense measured alongside."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from batude._io import write_text_atomic
from batude.bench.backends import Backend, measure
from batude.bench.env import environment
from batude.bench.report import add_speedups, latency_table, plot_speedup
from batude.cli._common import add_model_args, load_from_args
from batude.cli.model_cmds import apply_with_progress, require_dense
from batude.nn import densify, flop_counter_macs
from batude.rank.plan import RankPlan

__all__ = ["register"]


def _cmd_bench(args: argparse.Namespace) -> int:
    ckpt, shape = load_from_args(args)
    plan = ckpt.plan
    dense = None
    if args.plan:
        require_dense(ckpt, args.model)
        dense = ckpt.model
        plan = RankPlan.load(args.plan)
        ckpt.model = _copy(dense)
        apply_with_progress(ckpt, plan)
    dtype = torch.float16 if args.dtype == "fp16" else torch.float32
    per_image = tuple(shape[1:])
    models = {"compressed" if plan is not None else "model": ckpt.model}
    if args.compare_dense and plan is not None:
        models = {"dense": dense if dense is not None else densify(ckpt.model), **models}
    macs = {name: flop_counter_macs(m, (1, *per_image)) for name, m in models.items()}
    results = []
    for name, model in models.items():
        rows = measure(model, args.backend, per_image, args.batch, dtype, args.iters, args.warmup, args.device, label=name)
        for r in rows:
            r["macs"] = macs[name]
            r["flops_reduction"] = macs.get("dense", macs[name]) / macs[name] if "dense" in macs else None
        results += rows
    add_speedups(results)
    print(latency_table(results))
    layers = _per_layer(args, models, shape, dtype) if args.per_layer else None
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        report = {"env": environment(), "input_shape": list(per_image), "plan": None if plan is None else plan.method,
                  "results": results, "layers": layers}
        write_text_atomic(out / "latency.json", json.dumps(report, indent=2) + "\n")
        if any("speedup" in r for r in results):
            plot_speedup(results, out / "speedup_vs_flops.png")
        print(f"wrote {out / 'latency.json'}")
    return 0


def _per_layer(args: argparse.Namespace, models: dict, shape: tuple[int, ...], dtype: torch.dtype) -> list[dict]:
    from batude.bench.layers import profile_layers

    model = models.get("compressed", models.get("model"))
    rows = profile_layers(model, shape, batch=args.batch[0], dtype=dtype, device=args.device or "cpu",
                          iters=args.iters, warmup=args.warmup)
    print(f"\nper layer (eager, batch {args.batch[0]}): median ms and speedup vs the dense conv")
    print("| layer | ranks | dense | chain | merge_first | merge_last | best |")
    print("|---|---|---|---|---|---|---|")
    for name in dict.fromkeys(r["layer"] for r in rows):
        mine = {r["variant"]: r for r in rows if r["layer"] == name}
        best = min(mine.values(), key=lambda r: r["median_ms"])
        cells = " | ".join(f"{mine[v]['median_ms']:.3f} ({mine[v]['speedup_vs_dense']:.2f}x)" for v in ("dense", "chain", "merge_first", "merge_last"))
        print(f"| {name} | {','.join(map(str, mine['chain']['ranks']))} | {cells} | {best['variant']} |")
    return rows


def _copy(model):
    import copy

    return copy.deepcopy(model)


def _list(kind):
    def parse(text: str):
        try:
            return [kind(v) for v in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list") from None
    return parse


def register(sub) -> None:
    p = sub.add_parser("bench", help="measure latency per backend and batch (dense baseline in the same run)")
    add_model_args(p)
    p.add_argument("--plan", help="rank plan to apply to a dense MODEL before measuring")
    p.add_argument("--backend", type=_list(Backend), default=[Backend.EAGER],
                   help="comma-separated: " + ", ".join(b.value for b in Backend) + " (default eager)")
    p.add_argument("--batch", type=_list(int), default=[1], help="batch sizes, e.g. 1,64")
    p.add_argument("--dtype", choices=["fp32", "fp16"], default="fp32")
    p.add_argument("--compare-dense", action="store_true", help="also measure the dense equivalent in the same run")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--device", default=None, help="cpu or cuda for the torch backends (default cpu)")
    p.add_argument("--per-layer", action="store_true", help="also time each Tucker layer: dense vs every exact chain variant")
    p.add_argument("--out", default=None, help="folder for latency.json and speedup_vs_flops.png")
    p.set_defaults(func=_cmd_bench)
