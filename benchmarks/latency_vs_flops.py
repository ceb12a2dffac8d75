"""Measured latency vs FLOPs reduction: torchvision ResNets at 224², uniform and BATUDE-greedy plans.

For each model the dense network and every (budget, method) plan are measured on every requested
backend, batch and dtype in the same process; unavailable backends are listed with the reason.
Plans: ``uniform`` (one rank ratio) and ``batude`` (the BC-ADL greedy budget rule of the first
Z-step, i.e. BATUDE's allocation before any training). Weights are random (latency does not depend
on values) and layers are built with ``init="empty"``. Writes ``latency_vs_flops.json`` and
``latency_vs_flops.png`` and prints a Markdown table.

    python benchmarks/latency_vs_flops.py --out bench_latency                                # GPU: everything
    python benchmarks/latency_vs_flops.py --models resnet18 --budgets 2.52x --batches 1,64 \\
        --dtypes fp32 --backends eager,onnxruntime --iters 10 --out bench_cpu                # CPU
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

from batude.bench.backends import measure
from batude.bench.env import environment
from batude.bench.report import add_speedups, latency_table, plot_speedup
from batude.nn import flop_counter_macs
from batude.rank import apply_plan_, select_ranks
from batude.rank.bcadl import BCADL


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet18,resnet50")
    p.add_argument("--budgets", default="1.5x,2x,2.52x,2.97x,4x")
    p.add_argument("--methods", default="uniform,batude")
    p.add_argument("--batches", default="1,64")
    p.add_argument("--dtypes", default="fp32,fp16")
    p.add_argument("--backends", default="eager,cuda-graph,compile,onnxruntime,tensorrt")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--device", default=None)
    p.add_argument("--out", required=True)
    return p.parse_args(argv)


def _plan(model, budget: str, method: str):
    if method == "batude":
        return BCADL(model, budget, input_shape=(1, 3, 224, 224)).plan()
    return select_ranks(model, budget, method, input_shape=(1, 3, 224, 224))


def main(argv=None) -> int:
    import torchvision

    args = _args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dtypes = [torch.float16 if d == "fp16" else torch.float32 for d in args.dtypes.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    backends = args.backends.split(",")
    results = []
    for name in args.models.split(","):
        torch.manual_seed(0)
        dense = torchvision.models.get_model(name).eval()
        dense_macs = flop_counter_macs(dense, (1, 3, 224, 224))
        variants = [("dense", dense, None)]
        for budget in args.budgets.split(","):
            for method in args.methods.split(","):
                plan = _plan(dense, budget, method)
                variants.append((f"{method} {budget}", apply_plan_(copy.deepcopy(dense), plan, init="empty"), plan))
        for label, model, plan in variants:
            macs = flop_counter_macs(model, (1, 3, 224, 224))
            for dtype in dtypes:
                rows = measure(model, backends, (3, 224, 224), batches, dtype, args.iters, args.warmup, args.device,
                               label=f"{name} {label}")
                for r in rows:
                    r.update(network=name, macs=macs, flops_reduction=dense_macs / macs)
                print(f"{name} {label}: done", flush=True)
                results += rows
    for name in args.models.split(","):  # speedups within each network
        add_speedups([r for r in results if r["network"] == name], dense_label=f"{name} dense")
    report = {"env": environment(), "args": vars(args), "results": results}
    (out / "latency_vs_flops.json").write_text(json.dumps(report, indent=2) + "\n")
    print(latency_table(results))
    plot_speedup(results, out / "latency_vs_flops.png", title="Measured speedup vs FLOPs reduction (224², dense in the same run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
