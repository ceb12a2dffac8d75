"""Fashion-MNIST ResNet-20: BATUDE with a FLOPs budget vs BATUDE with the latency budget that matches it.

1. A latency table of the dense checkpoint is measured on ``--device`` (batch ``--batch``, dtype).
2. BATUDE compresses a copy at ``--flops`` (a FLOPs budget; the table only picks variants), E_admm
   BC-ADL + E_ft fine-tuning epochs. Its plan's predicted latency is ``L``.
3. BATUDE compresses another copy with the latency budget ``latency:<L>ms`` on the same table, same
   epochs and seed: the same predicted time, spent where the table says it buys most.
4. Both final models (each Tucker layer in its table-chosen variant) and the dense model are
   measured in this process; accuracy, FLOPs, predicted and measured latency side by side.

Writes ``results.json``, each run's plan (``plan_flops.json``, ``plan_latency.json``: ranks, variants,
predicted latency; ``batude bench --plan`` re-measures them on the same kind of machine) and
prints a Markdown table.

    python benchmarks/latency_budget_accuracy.py --dense DIR/model.pt --out out --device cuda --dtype fp16 \\
        --lut-backend cuda-graph --batch 64 --epochs-admm 10 --epochs-ft 10                  # GPU
    python benchmarks/latency_budget_accuracy.py --dense DIR/model.pt --out out --subset 12000 \\
        --epochs-admm 2 --epochs-ft 2                                                         # CPU, short
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

import batude
from batude.bench.backends import measure
from batude.bench.env import environment
from batude.bench.lut import LatencyTable
from batude.data import DataSpec, load_datasets, make_loader
from batude.export.lower import apply_variants
from batude.nn import flop_counter_macs
from batude.train import CompressConfig, TrainConfig, compress, evaluate
from batude.train.config import COMPILE_MODES
from batude.train.loop import epoch_lines, seed_everything


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dense", required=True, help="dense batude checkpoint (from `batude train`)")
    p.add_argument("--out", required=True)
    p.add_argument("--flops", default="2.52x")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs-admm", type=int, default=2)
    p.add_argument("--epochs-ft", type=int, default=2)
    p.add_argument("--updates-per-epoch", type=int, default=4)
    p.add_argument("--subset", type=int, default=None)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "fp16"], default="fp32")
    p.add_argument("--batch", type=int, default=64, help="batch of the latency table and the measurement")
    p.add_argument("--lut-backend", choices=["eager", "cuda-graph"], default="eager")
    p.add_argument("--points", type=int, default=4)
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--compile", choices=COMPILE_MODES, default=None, help="torch.compile mode for the training phases")
    return p.parse_args(argv)


def _compress(args, dense, loaders, budget: str, lut: LatencyTable, name: str) -> tuple:
    seed_everything(args.seed)
    train = TrainConfig(epochs=args.epochs_admm + args.epochs_ft, device=args.device, seed=args.seed, num_workers=args.workers,
                        compile=args.compile)
    cfg = CompressConfig(method="batude", epochs_admm=args.epochs_admm, epochs_ft=args.epochs_ft,
                         updates_per_epoch=args.updates_per_epoch, train=train)
    started = time.perf_counter()
    result = compress(copy.deepcopy(dense), *loaders, budget, cfg, latency=lut, progress=epoch_lines(f"{name} ({budget})"))
    print(f"{name} ({budget}): {result.accuracy:.2f}%, predicted {result.plan.latency['predicted_ms']:.3f} ms, "
          f"{time.perf_counter() - started:.0f}s", flush=True)
    return result, time.perf_counter() - started


def main(argv=None) -> int:
    args = _args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dtype = torch.float16 if args.dtype == "fp16" else torch.float32
    dense = batude.load_checkpoint(args.dense).model.eval()
    train, test, info = load_datasets(DataSpec("fashion-mnist", root=args.data_dir, subset=args.subset))
    shape = (1, info.in_channels, *info.image_size)
    lut = LatencyTable.build(copy.deepcopy(dense), shape[1:], batch=args.batch, dtype=dtype, device=args.device,
                             points=args.points, multiple_of=16 if dtype == torch.float16 else 8, backend=args.lut_backend)
    pin = TrainConfig(device=args.device).resolved_device().type == "cuda"  # asynchronous copies to the GPU
    loaders = (make_loader(train, 128, True, args.seed, args.workers, pin_memory=pin), make_loader(test, 512, False, 0, pin_memory=pin))
    runs = {}
    print(f"latency table: dense {lut.model_ms:.3f} ms on {args.device} (batch {args.batch}, {args.lut_backend})", flush=True)
    flops_result, flops_s = _compress(args, dense, loaders, args.flops, lut, "flops")
    runs["flops"] = (args.flops, flops_result, flops_s)
    matched = f"latency:{flops_result.plan.latency['predicted_ms']:.6f}ms"
    latency_result, latency_s = _compress(args, dense, loaders, matched, lut, "latency")
    runs["latency"] = (matched, latency_result, latency_s)
    dense_macs = flop_counter_macs(dense, shape)
    device = TrainConfig(device=args.device).resolved_device()
    models = {"dense": dense, **{k: apply_variants(r.model.cpu().float().eval(), r.plan.variants) for k, (_, r, _) in runs.items()}}
    timing = {}
    for name, model in models.items():
        (row,) = measure(model, [args.lut_backend], shape[1:], [args.batch], dtype, args.iters, 5, args.device, label=name)
        timing[name] = row
    results = {"env": environment(), "args": vars(args), "table_key": lut.key, "table_model_ms": lut.model_ms,
               "table_other_ms": lut.other_ms, "dense_macs": dense_macs,
               "dense_accuracy": evaluate(dense.to(device), loaders[1], device, TrainConfig(device=args.device))[1],
               "dense_ms": timing["dense"]["median_ms"], "runs": []}
    for name, (budget, res, seconds) in runs.items():
        res.plan.save(out / f"plan_{name}.json")
        macs = flop_counter_macs(res.model.cpu().float(), shape)
        results["runs"].append({
            "run": name, "budget": budget, "accuracy": res.accuracy, "decomposed_accuracy": res.decomposed_accuracy,
            "macs_reduction": dense_macs / macs, "predicted_ms": res.plan.latency["predicted_ms"],
            "measured_ms": timing[name]["median_ms"], "measured_speedup": timing["dense"]["median_ms"] / timing[name]["median_ms"],
            "seconds": round(seconds, 1), "variants": res.plan.variants,
            "ranks": {l.name: (list(l.ranks) if l.ranks else None) for l in res.plan.layers}, "log": res.log})
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    return 0


def table(results: dict) -> str:
    lines = [f"dense: {results['dense_accuracy']:.2f}%, {results['dense_ms']:.3f} ms measured",
             "| budget | top-1 % | before fine-tuning % | FLOPs cut | predicted ms | measured ms | measured speed-up |",
             "|---|---|---|---|---|---|---|"]
    for r in results["runs"]:
        lines.append(f"| {r['budget']} | {r['accuracy']:.2f} | {r['decomposed_accuracy']:.2f} | {r['macs_reduction']:.2f}x | "
                     f"{r['predicted_ms']:.3f} | {r['measured_ms']:.3f} | {r['measured_speedup']:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
