"""``batude bench``: measured latency of a (compressed) model per backend and batch, dense measured alongside."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from batude._io import check_out_dir, write_text_atomic
from batude._device import resolve_device
from batude.bench.backends import Backend, measure
from batude.bench.env import environment
from batude.bench.lut import table_key
from batude.bench.report import add_speedups, latency_table, plot_profiles, plot_roofline, plot_speedup, profile_tables
from batude.cli._common import ProgressBar, add_model_args, ceilings_arg, device_arg, load_from_args, non_negative_int, positive_int
from batude.cli.model_cmds import apply_with_progress, plan_for
from batude.errors import BatudeError
from batude.export.lower import apply_variants
from batude.nn import densify, flop_counter_macs

__all__ = ["register"]


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.out:
        check_out_dir(args.out)  # fail before long work
    ckpt, shape = load_from_args(args)
    plan = ckpt.plan
    dense = None
    if args.plan:
        plan = plan_for(ckpt, args.model, args.plan)
        dense = ckpt.model
        ckpt.model = _copy(dense)
        apply_with_progress(ckpt, plan)
    dtype = torch.float16 if args.dtype == "fp16" else torch.float32
    per_image = tuple(shape[1:])
    models = {"compressed" if plan is not None else "model": ckpt.model}
    if args.compare_dense and plan is not None:
        models = {"dense": dense if dense is not None else densify(ckpt.model), **models}
    elif args.compare_dense:
        print("bench: the model has no plan (it is dense), so there is no dense model to compare with; "
              "give --plan PLAN or a compressed checkpoint", file=sys.stderr)
    if plan is not None and plan.variants:  # run each layer as the variant its latency table chose
        # a kernel table timed its non-kernel layers on cuDNN: keep them there under --backend triton too
        kernel_table = (plan.latency or {}).get("table", {}).get("backend") == "triton"
        models["compressed"] = apply_variants(models["compressed"], plan.variants, plain=kernel_table)
    macs = {name: flop_counter_macs(m, (1, *per_image)) for name, m in models.items()}
    profile_calls = args.profile_calls or (20 if args.profile else 0)
    results = []
    bar = ProgressBar()
    for name, model in models.items():
        rows = measure(model, args.backend, per_image, args.batch, dtype, args.iters, args.warmup, args.device, label=name,
                       progress=lambda i, n, what: bar("measuring", i, n, note=what), profile_calls=profile_calls)
        for r in rows:
            r["macs"] = macs[name]
            r["flops_reduction"] = macs.get("dense", macs[name]) / macs[name] if "dense" in macs else None
        results += rows
    if not any(r["available"] for r in results):
        reasons = "; ".join(dict.fromkeys(f"{r['backend']}: {r['reason']}" for r in results))
        raise BatudeError(f"nothing could be measured here ({reasons})")
    add_speedups(results)
    ceilings = _Ceilings(args, dtype) if args.ceilings is not None or args.roofline or args.per_layer else None
    if ceilings is not None:
        _model_rooflines(results, models, per_image, ceilings)
    print(latency_table(results))
    for device, c in (ceilings.used if ceilings is not None else {}).items():
        print(f"floor ({device}): the model's roofline floor at {c.tflops:.4g} TFLOP/s and {c.gbps:.4g} GB/s ({c.source}), "
              "every BatchNorm, activation, add and pooling fused into its convs")
    if profile_calls:
        print(profile_tables(results))
    if plan is not None and plan.latency:
        _predicted_vs_measured(plan, results)
    layers = _per_layer(args, models, shape, dtype, ceilings) if args.per_layer else None
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        report = {"env": environment(), "input_shape": list(per_image), "plan": None if plan is None else plan.method,
                  "ceilings": None if ceilings is None else {d: c.to_dict() for d, c in ceilings.used.items()},
                  "results": results, "layers": layers}
        write_text_atomic(out / "latency.json", json.dumps(report, indent=2) + "\n")
        if any("speedup" in r for r in results):
            plot_speedup(results, out / "speedup_vs_flops.png")
        if profile_calls and plot_profiles(results, out / "time_breakdown.png"):
            print(f"wrote {out / 'time_breakdown.png'}")
        if ceilings is not None and _plot_rooflines(results, layers, ceilings, out, args.batch[0], dtype):
            print(f"wrote {out / 'roofline.png'}")
        print(f"wrote {out / 'latency.json'}")
    return 0


def _predicted_vs_measured(plan, results: list[dict]) -> None:
    """Where a row was measured as the plan's latency table was (same device, versions, dtype, batch,
    backend), record and print the table's prediction next to the measurement."""
    table = plan.latency["table"]
    for r in results:
        if r["model"] != "compressed" or not r.get("available"):
            continue
        here = table_key(torch.device(r["device"]), getattr(torch, r["dtype"]), r["batch"], r["backend"])
        if here != table:
            continue
        r["predicted_ms"] = plan.latency["predicted_ms"]
        error = abs(r["predicted_ms"] - r["median_ms"]) / r["median_ms"]
        print(f"{r['backend']} batch {r['batch']}: predicted {r['predicted_ms']:.3f} ms by the plan's latency table, "
              f"measured {r['median_ms']:.3f} ms (error {100 * error:.1f}%)")
    if not any("predicted_ms" in r for r in results):
        print(f"the plan's latency table was measured for {table.get('hardware')} ({table.get('device')}, {table.get('dtype')}, "
              f"batch {table.get('batch')}, {table.get('backend')}); no row here matches it, so no prediction is compared")


class _Ceilings:
    """The ceilings of each device a row ran on: ``--ceilings`` for all, else measured once per device."""

    def __init__(self, args: argparse.Namespace, dtype: torch.dtype) -> None:
        self.given, self.dtype, self.used = args.ceilings, dtype, {}

    def __call__(self, device: str):
        from batude.bench.roofline import measure_ceilings

        if device not in self.used:
            self.used[device] = self.given or measure_ceilings(resolve_device(device), self.dtype)
        return self.used[device]


def _plot_rooflines(results: list[dict], layers: dict | None, ceilings: _Ceilings, out: Path, batch: int,
                    dtype: torch.dtype) -> bool:
    """``roofline.png``: the per-layer rows where there are some, else each model and backend as measured (under the
    roofs of the first device measured)."""
    if layers and layers["rows"]:
        return plot_roofline(layers["rows"], layers["ceilings"], out / "roofline.png",
                             f"Tucker layers, eager, batch {batch}, {dtype}".replace("torch.", ""))
    device = next(iter(ceilings.used), None)
    rows = [{**r, "variant": f"{r['model']} {r['backend']}"} for r in results if r.get("roofline") and r["device"] == device]
    return bool(rows) and plot_roofline(rows, ceilings.used[device].to_dict(), out / "roofline.png", f"Whole models ({device})")


def _model_rooflines(results: list[dict], models: dict, per_image: tuple[int, ...], ceilings: _Ceilings) -> None:
    """Each measured row's whole-model roofline under its device's ceilings: its layers in the forms it ran (on
    batude's kernels for the kernel backends), everything else fused (:func:`batude.bench.roofline.model_work`)."""
    from batude.bench.backends import KERNEL_BACKENDS
    from batude.bench.roofline import model_work, roofline
    from batude.nn import profile_model

    profiles = {name: profile_model(model, (1, *per_image)) for name, model in models.items()}
    for r in results:
        if r.get("available"):
            size = getattr(torch, r["dtype"]).itemsize
            work = model_work(profiles[r["model"]], r["batch"], size, kernels=Backend(r["backend"]) in KERNEL_BACKENDS)
            r["roofline"] = roofline(work, ceilings(r["device"]), r["median_ms"])


def _per_layer(args: argparse.Namespace, models: dict, shape: tuple[int, ...], dtype: torch.dtype, ceilings: _Ceilings) -> dict:
    from batude.bench.layers import profile_layers

    model = models.get("compressed", models.get("model"))
    device = str(resolve_device(args.device or "cpu"))
    ceilings = ceilings(device)
    rows = profile_layers(model, shape, batch=args.batch[0], dtype=dtype, device=device,
                          iters=args.iters, warmup=args.warmup, ceilings=ceilings)
    print(f"\nper layer (eager, batch {args.batch[0]}): median ms (speedup vs the dense conv; share of the form's roofline "
          f"floor at {ceilings.tflops:.4g} TFLOP/s and {ceilings.gbps:.4g} GB/s, {ceilings.source})")
    print("| layer | ranks | dense | chain | merge_first | merge_last | best |")
    print("|---|---|---|---|---|---|---|")
    for name in dict.fromkeys(r["layer"] for r in rows):
        mine = {r["variant"]: r for r in rows if r["layer"] == name}
        best = min(mine.values(), key=lambda r: r["median_ms"])
        cells = " | ".join(f"{mine[v]['median_ms']:.3f} ({mine[v]['speedup_vs_dense']:.2f}x; {mine[v]['roofline']['floor_share']:.0%})"
                           for v in ("dense", "chain", "merge_first", "merge_last"))
        print(f"| {name} | {','.join(map(str, mine['chain']['ranks']))} | {cells} | {best['variant']} |")
    return {"ceilings": ceilings.to_dict(), "rows": rows}


def _copy(model):
    import copy

    return copy.deepcopy(model)


def _list(kind, hint: str):
    def parse(text: str):
        values = []
        for v in text.split(","):
            try:
                values.append(kind(v))
            except (ValueError, argparse.ArgumentTypeError):
                raise argparse.ArgumentTypeError(f"'{v}' in '{text}' is not valid; give {hint}") from None
        return values
    return parse


def register(sub) -> None:
    p = sub.add_parser("bench", help="measure latency per backend and batch (dense baseline in the same run)")
    add_model_args(p)
    p.add_argument("--plan", help="rank plan to apply to a dense MODEL before measuring")
    backends = ", ".join(b.value for b in Backend)
    p.add_argument("--backend", type=_list(Backend, f"comma-separated backends from {backends}"), default=[Backend.EAGER],
                   help=f"comma-separated: {backends} (default eager)")
    p.add_argument("--batch", type=_list(positive_int, "positive batch sizes, e.g. 1,64"), default=[1], help="batch sizes, e.g. 1,64")
    p.add_argument("--dtype", choices=["fp32", "fp16"], default="fp32")
    p.add_argument("--compare-dense", action="store_true", help="also measure the dense equivalent in the same run")
    p.add_argument("--iters", type=positive_int, default=50)
    p.add_argument("--warmup", type=non_negative_int, default=10)
    p.add_argument("--device", type=device_arg, default=None, help="cpu or cuda for the torch backends (default cpu)")
    p.add_argument("--per-layer", action="store_true", help="also time each Tucker layer: dense vs every exact chain variant, "
                   "each against its roofline floor")
    p.add_argument("--roofline", action="store_true",
                   help="also each row against its roofline floor (the time its FLOPs and least memory traffic take on this device)")
    p.add_argument("--ceilings", type=ceilings_arg, default=None, metavar="TFLOPS,GBPS",
                   help="the device's matrix rate and memory bandwidth for the rooflines (default: measured here)")
    p.add_argument("--profile", action="store_true",
                   help="after timing, profile each row: time per kernel category (GPU) or top-level operator (CPU), "
                        "the GPU's idle share, the top kernels (also in latency.json, and time_breakdown.png with --out)")
    p.add_argument("--profile-calls", type=positive_int, default=None, help="calls per profile (default 20; implies --profile)")
    p.add_argument("--out", default=None, help="folder for latency.json and speedup_vs_flops.png")
    p.set_defaults(func=_cmd_bench)
