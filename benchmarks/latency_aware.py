"""Latency-aware BATUDE vs FLOPs-only plans vs the exhaustive-search oracle, measured whole-model.

For each batch: a latency table is measured for the dense network (eager or CUDA-graph timing),
then four plans at >= ``--flops`` fewer FLOPs are made and measured in the same run as dense:

* ``uniform``: one rank ratio, every Tucker layer as the 3-conv chain (the naive baseline);
* ``batude``: BATUDE's greedy allocation (the BC-ADL budget rule at its first Z-step, before
  training; random weights), FLOPs budget only, variants from the table;
* ``batude-latency``: the same rule with a latency budget from the table (of the budgets tried
  near the tightest feasible one, the one whose plan is predicted fastest; :func:`_latency_plan`)
  and the FLOPs budget as an extra limit
  (``--also``); ranks aligned for the dtype; keep-dense and variants from the table;
* ``oracle``: :func:`batude.rank.latency.fastest_plan`, the lowest predicted latency over the
  table's grid under the FLOPs limit, accuracy ignored (the issue's upper bound).

Every model is lowered (variants, BatchNorm folded) before timing, dense too. Reports measured and
predicted ms, the table's prediction error (on the rows timed as the table times: eager, or CUDA
graphs), speed-up over dense in the same backend (the ``triton`` backend's dense is cuDNN in a CUDA
graph, ``triton-compile``'s dense compiled and graphed), each plan's measured speed-up as a share of the oracle's,
and each row's roofline floor (``batude.bench.roofline.model_work`` of the model as deployed, under the device's
ceilings measured at the start or given by ``--ceilings``) with the share of it the row reached.
Each table is saved to ``--out`` as ``lut_b<batch>.json`` as soon as it is measured, and the report
after each batch; ``--lut-dir`` reuses saved tables (same GPU, software, dtype, backend and input),
so an experiment can be split across device sessions.

``--lut-backend triton``: the table also times each factorised conv on batude's fused Triton kernel,
so every plan may put layers on the kernel. Lowering would drop the kernels, so the plans are timed
with BatchNorm folded before factorising (kernel layers on the kernel, the others as plain cuDNN
convs; :func:`batude.bench.lut.deployed_model`) and also with the ``triton`` backend
(``fuse_resnet_``: BN folded, ReLU and residual add in the kernels' epilogues; ``uniform`` then
runs every layer on the kernel), and, with ``triton-compile`` in ``--backends``, that model compiled
and graphed as dense is (its speed-up is over compiled dense). ``vs best dense`` divides by the fastest dense backend of the
batch (the kernels issue's baseline: cuDNN, BN folded, compiled or graphed; on CUDA the dense model
is also timed compiled and graphed, ``--dense-backends compile-graph``).

    python benchmarks/latency_aware.py --out bench_latency_aware                         # GPU (H100/H200)
    python benchmarks/latency_aware.py --device cpu --dtype fp32 --batches 8 --input 3,64,64 \\
        --backends eager --points 2 --iters 5 --out /tmp/la                              # CPU smoke
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch

from batude.bench.backends import measure
from batude.bench.env import environment
from batude.bench.lut import LatencyTable, deployed_model
from batude.bench.roofline import measure_ceilings, model_work, roofline
from batude.checkpoint import reference_model
from batude.cli._common import ceilings_arg
from batude.errors import BatudeError
from batude.export.lower import apply_variants
from batude.nn import profile_model
from batude.rank import apply_plan_, select_ranks
from batude.rank.bcadl import BCADL, BCADLConfig
from batude.rank.budget import Budget, Metric
from batude.rank.latency import fastest_plan, oracle_share
from batude.rank.problem import RankProblem, SelectorConfig

# the dense model a kernel backend's plans are compared with: cuDNN, BN folded, graphed (triton) or compiled and
# graphed (triton-compile: the same compilation around the kernels)
KERNEL_DENSE = {"triton": "cuda-graph", "triton-compile": "compile-graph"}


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18", help="a torchvision model name, or a spec such as batude:resnet20")
    p.add_argument("--input", default="3,224,224")
    p.add_argument("--flops", default="2.52x", help="FLOPs budget every plan must meet")
    p.add_argument("--batches", default="64,1")
    p.add_argument("--dtype", choices=["fp16", "fp32"], default="fp16")
    p.add_argument("--device", default="cuda")
    p.add_argument("--backends", default="cuda-graph,compile")
    p.add_argument("--dense-backends", default=None,
                   help="more backends for the dense model only, for the 'vs best dense' baseline "
                        "(default on CUDA: compile-graph, the fastest dense measured on the H100)")
    p.add_argument("--lut-backend", default=None, help="eager, cuda-graph or triton (default: cuda-graph on CUDA)")
    p.add_argument("--points", type=int, default=5, help="latency-table grid points per rank")
    p.add_argument("--lut-dir", default=None,
                   help="reuse the latency tables an earlier run saved (lut_b<batch>.json; refused if measured elsewhere)")
    p.add_argument("--lut-autotune", action="store_true",
                   help="with --lut-backend triton: autotune the kernels for every table cell (slow: minutes per layer); "
                        "by default the table times the heuristic tile config and the final models are autotuned")
    p.add_argument("--ceilings", type=ceilings_arg, default=None, metavar="TFLOPS,GBPS",
                   help="matrix rate and memory bandwidth for each row's roofline floor (default: measured at the start)")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--out", help="output folder (required unless --table-from)")
    p.add_argument("--table-from", metavar="JSON",
                   help="print the table of a saved latency_aware.json (shares recomputed) and measure nothing")
    p.add_argument("--replan", metavar="DIR",
                   help="plan again with this code on the tables a saved run left in DIR (latency_aware.json and "
                        "lut_b*.json) and compare the predictions with that run's; measures nothing, runs on a CPU")
    args = p.parse_args(argv)
    if not args.out and not args.table_from and not args.replan:
        p.error("--out is required (or --table-from JSON, or --replan DIR)")
    return args


def _latency_plan(dense, shape, lut, flops: str, oracle_ms: float):
    """BATUDE's fastest latency-budgeted plan with the FLOPs limit: budgets from the oracle's time / 0.99
    upwards by 1% to the first one met, 4 bisection steps between it and the last refused one, and
    3 more 1% steps; of the plans met, the one with the least predicted time (neither feasibility
    nor the plan's time is monotone in the budget: the FLOPs limit can bind before the budget).

    Absolute budgets in ms, so this works even where nothing beats dense on this device. The
    search starts no lower than the table's floor (each layer at its fastest form on the grid;
    below it every budget is refused up front).
    """
    config = BCADLConfig()  # ranks aligned for the table's dtype (default_multiple)
    problem = RankProblem.from_model(dense, shape, Metric.LATENCY, config.selector(), lut, [Metric.MACS])
    met = []

    def attempt(ms: float) -> bool:
        budget = f"latency:{ms:.6f}ms"
        try:
            met.append((BCADL(dense, budget, config, input_shape=shape, latency=lut, also=[flops]).plan(), budget))
            return True
        except BatudeError:
            return False

    target = max(oracle_ms / 0.99, problem.least_total() * 1.0001)
    refused = None
    for _ in range(200):
        if attempt(target):
            break
        refused, target = target, target * 1.01
    else:
        raise BatudeError(f"no feasible latency budget found up to {target:.4g} ms")
    first = target
    if refused is not None:
        for _ in range(4):
            middle = 0.5 * (refused + target)
            if attempt(middle):
                target = middle
            else:
                refused = middle
    for step in range(1, 4):
        attempt(first * 1.01 ** step)
    return min(met, key=lambda m: m[0].latency["predicted_ms"])


def _plans(dense, shape, lut, flops: str):
    problem = RankProblem.from_model(dense, shape, Metric.MACS, SelectorConfig(multiple_of=1), lut)
    oracle = fastest_plan(problem, problem.limit_of(Budget.parse(flops)))
    started = time.perf_counter()
    latency_plan, target = _latency_plan(dense, shape, lut, flops, oracle.latency["predicted_ms"])
    plans = {
        "uniform": (select_ranks(dense, flops, "uniform", shape), "chain"),
        "batude": (BCADL(dense, flops, input_shape=shape, latency=lut).plan(), None),
        "batude-latency": (latency_plan, None),
        "oracle": (oracle, None),
    }
    info = {"latency_budget": target, "plan_seconds": time.perf_counter() - started}
    return plans, info


@contextlib.contextmanager
def _autotuning(enabled: bool):
    """``BATUDE_TRITON_AUTOTUNE=0`` inside (the kernels then run one heuristic config per shape), unless ``enabled``."""
    old = os.environ.get("BATUDE_TRITON_AUTOTUNE")
    if not enabled:
        os.environ["BATUDE_TRITON_AUTOTUNE"] = "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("BATUDE_TRITON_AUTOTUNE", None)
        else:
            os.environ["BATUDE_TRITON_AUTOTUNE"] = old


def _table(args, dense, shape, batch: int, dtype, lut_backend: str) -> tuple[LatencyTable, float | None]:
    """The batch's latency table: reused from ``--lut-dir`` where one was saved for this setting, else measured
    (layer by layer, with progress); saved to ``--out`` either way, so a run cut short keeps its tables."""
    name = f"lut_b{batch}.json"
    saved = Path(args.lut_dir) / name if args.lut_dir else None
    if saved is not None and saved.is_file():
        lut = LatencyTable.load(saved)
        lut.check(args.device, dtype, batch, lut_backend)
        if list(lut.input_shape) != list(shape[1:]):
            raise BatudeError(f"{saved} was measured at input {lut.input_shape}, not {list(shape[1:])}; drop --lut-dir")
        print(f"b{batch}: reusing the latency table {saved}", flush=True)
        seconds = None
    else:
        started = time.perf_counter()
        with _autotuning(lut_backend != "triton" or args.lut_autotune):
            lut = LatencyTable.build(dense, shape[1:], batch=batch, dtype=dtype, device=args.device, points=args.points,
                                     multiple_of=16 if dtype == torch.float16 else 8, iters=max(args.iters // 2, 3),
                                     warmup=3, backend=lut_backend,
                                     progress=lambda i, n, layer: print(f"b{batch} table {i + 1}/{n} {layer} "
                                                                        f"({time.perf_counter() - started:.0f} s)", flush=True))
        seconds = time.perf_counter() - started
    lut.save(Path(args.out) / name)
    return lut, seconds


def _measure_batch(args, dense, shape, batch: int, dtype, ceilings) -> dict:
    lut_backend = args.lut_backend or ("cuda-graph" if args.device == "cuda" else "eager")
    lut, lut_seconds = _table(args, dense, shape, batch, dtype, lut_backend)
    dense = dense.float().cpu()  # the table moved it; plans and lowering work on a CPU fp32 copy
    plans, info = _plans(dense, shape, lut, args.flops)
    rows = []
    kernels = lut_backend == "triton"
    backends = args.backends.split(",")
    models = {"dense": (deployed_model(dense, shape), None, None)}
    for name, (plan, policy) in plans.items():
        # BN folded, each layer in the table's variant; with kernels, kernel layers stay on the kernel and the
        # table's cuDNN choices become plain convs, and the triton backend gets the unfolded model (fuse_resnet_)
        variants = {} if policy == "chain" else plan.variants
        fused = None
        if kernels:
            fused = apply_variants(apply_plan_(copy.deepcopy(dense), plan, init="empty"), variants, plain=True).eval()
        models[name] = (deployed_model(dense, shape, plan, variants, plain=kernels), fused, plan)
    extra = args.dense_backends if args.dense_backends is not None else ("compile-graph" if args.device == "cuda" else "")
    for name, (model, fused, plan) in models.items():
        profile = profile_model(model, shape)  # the layers as deployed: each row's floor (kernel backends: on chip)
        mine = dense_backends(backends, extra) if name == "dense" else backends
        runs = [(model, [b for b in mine if b not in KERNEL_DENSE or fused is None])]
        if fused is not None:  # "triton" always, "triton-compile" when asked for
            runs.append((fused, ["triton"] + [b for b in backends if b == "triton-compile"]))
        for r in (r for m, names in runs for r in measure(m, names, shape[1:], [batch], dtype, args.iters, args.warmup,
                                                           args.device, label=name)):
            record = plan.latency if plan else {"predicted_ms": lut.model_ms, "speedup": 1.0}
            r.update(plan=name, macs_reduction=plan.macs_reduction if plan else 1.0,
                     predicted_ms=record["predicted_ms"] if record else None,
                     predicted_speedup=record["speedup"] if record else None)
            if r.get("available"):
                work = model_work(profile, batch, dtype.itemsize, kernels=r["backend"] in KERNEL_DENSE)
                r["roofline"] = roofline(work, ceilings, r["median_ms"])
            rows.append(r)
        print(f"b{batch} {name}: measured", flush=True)
    _speedups(rows)
    for r in rows:  # the table's prediction error, where the row is timed as the table was
        if r["backend"] == lut.timed_with and r.get("available") and r["predicted_ms"]:
            r["prediction_error"] = (r["predicted_ms"] - r["median_ms"]) / r["median_ms"]
    return {"batch": batch, "lut_backend": lut_backend, "lut_seconds": lut_seconds, "lut_model_ms": lut.model_ms,
            "lut_layer_calls": lut.layer_calls,
            **info, "rows": rows, "plans": {n: p.to_dict() for n, (p, _) in plans.items()}}


def dense_backends(backends: list[str], extra: str) -> list[str]:
    """The dense model's backends: the plans' (kernel backends aside: dense has no factorised layer to put on
    a kernel), the dense-only ``extra`` ones, and each requested kernel backend's baseline (``KERNEL_DENSE``)."""
    wanted = ([b for b in backends if b not in KERNEL_DENSE] + [b for b in extra.split(",") if b]
              + [KERNEL_DENSE[b] for b in backends if b in KERNEL_DENSE])
    return list(dict.fromkeys(wanted))


def _speedups(rows: list[dict]) -> None:
    dense = {r["backend"]: r for r in rows if r["plan"] == "dense" and r.get("available")}
    best = min((r["median_ms"] for r in dense.values()), default=None)
    for r in rows:
        if best and r.get("available"):
            r["speedup_vs_best_dense"] = best / r["median_ms"]
    for backend in {r["backend"] for r in rows}:
        mine = {r["plan"]: r for r in rows if r["backend"] == backend and r.get("available")}
        base = mine.get("dense", dense.get(KERNEL_DENSE.get(backend)))  # a kernel backend's dense: cuDNN run that way
        if base is None:
            continue
        for r in mine.values():
            r["speedup"] = base["median_ms"] / r["median_ms"]
        if "oracle" in mine:
            for r in mine.values():
                r["share_of_oracle"], r["share_of_oracle_gain"] = oracle_share(r["speedup"], mine["oracle"]["speedup"])


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _floor(rl: dict | None) -> str:
    """``floor ms (share of it reached)`` of a row's roofline."""
    return "-" if not rl else f"{rl['floor_ms']:.3f} ({rl['floor_share']:.0%})"


def _dense_layers(batch: dict, plan: str) -> str:
    """``held of eligible``: the plan's layers left dense (ranks None), from the saved plan."""
    layers = (batch.get("plans", {}).get(plan) or {}).get("layers")
    return "-" if not layers else f"{sum(layer['ranks'] is None for layer in layers)} of {len(layers)}"


def table(batches: list[dict]) -> str:
    lines = ["| batch | backend | plan | FLOPs cut | layers dense | predicted speed-up | predicted ms | measured ms "
             "| table error | measured speed-up | share of oracle | share of oracle's gain | vs best dense | floor ms (share) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for b in batches:
        for r in b["rows"]:
            if not r.get("available"):
                lines.append(f"| {b['batch']} | {r['backend']} | {r['plan']} | | | | | unavailable: {r['reason']} | | | | | | |")
                continue
            error = r.get("prediction_error")
            lines.append(f"| {b['batch']} | {r['backend']} | {r['plan']} | {r['macs_reduction']:.2f}x | "
                         f"{_dense_layers(b, r['plan'])} | "
                         f"{_x(r['predicted_speedup'])} | {_ms(r['predicted_ms'])} | {r['median_ms']:.3f} | "
                         f"{'-' if error is None else f'{error:+.1%}'} | {_x(r.get('speedup'))} | "
                         f"{_pct(r.get('share_of_oracle'))} | {_pct(r.get('share_of_oracle_gain'))} | "
                         f"{_x(r.get('speedup_vs_best_dense'))} | {_floor(r.get('roofline'))} |")
    return "\n".join(lines)


def replan(folder: str | Path) -> list[dict]:
    """Each plan of a saved run made again on that run's tables: predicted ms then and now (see ``--replan``)."""
    folder = Path(folder)
    saved = json.loads((folder / "latency_aware.json").read_text())
    args = saved["args"]
    shape = (1, *(int(x) for x in args["input"].split(",")))
    dense = reference_model(args["model"])
    rows = []
    for b in saved["batches"]:
        lut = LatencyTable.load(folder / f"lut_b{b['batch']}.json")
        plans, info = _plans(dense, shape, lut, args["flops"])
        then_oracle = b["plans"]["oracle"]["latency"]["predicted_ms"]
        now_oracle = plans["oracle"][0].latency["predicted_ms"]
        for name, (plan, _) in plans.items():
            if plan.latency is None:
                continue
            then = (b["plans"][name].get("latency") or {}).get("predicted_ms")
            now = plan.latency["predicted_ms"]
            rows.append({"batch": b["batch"], "plan": name, "macs_reduction": plan.macs_reduction,
                         "dense_ms": lut.model_ms, "predicted_ms_then": then, "predicted_ms_now": now,
                         "share_of_oracle_then": then_oracle / then if then else None,
                         "share_of_oracle_now": now_oracle / now,
                         "dense_layers_now": sum(layer.ranks is None for layer in plan.layers),
                         "latency_budget_then": b.get("latency_budget") if name == "batude-latency" else None,
                         "latency_budget_now": info["latency_budget"] if name == "batude-latency" else None})
    return rows


def replan_table(rows: list[dict]) -> str:
    lines = ["| batch | plan | FLOPs cut | layers dense | predicted ms then | predicted ms now | predicted speed-up now "
             "| share of oracle then | now |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['batch']} | {r['plan']} | {r['macs_reduction']:.2f}x | {r['dense_layers_now']} | "
                     f"{_ms(r['predicted_ms_then'])} | {r['predicted_ms_now']:.3f} | "
                     f"{_x(r['dense_ms'] / r['predicted_ms_now'])} | {_pct(r['share_of_oracle_then'])} | "
                     f"{_pct(r['share_of_oracle_now'])} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = _args(argv)
    if args.table_from:
        saved = json.loads(Path(args.table_from).read_text())
        for b in saved["batches"]:
            _speedups(b["rows"])
        print(table(saved["batches"]))
        return 0
    if args.replan:
        rows = replan(args.replan)
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / "replan.json").write_text(json.dumps({"env": environment(), "from": args.replan, "rows": rows},
                                                                   indent=2) + "\n")
        print(replan_table(rows))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dtype = torch.float16 if args.dtype == "fp16" else torch.float32
    shape = (1, *(int(x) for x in args.input.split(",")))
    dense = reference_model(args.model)
    ceilings = args.ceilings or measure_ceilings(args.device, dtype)
    print(f"ceilings: {ceilings.tflops:.4g} TFLOP/s, {ceilings.gbps:.4g} GB/s ({ceilings.source})", flush=True)
    batches = []
    for b in args.batches.split(","):  # the report is rewritten after each batch: a run cut short keeps what it measured
        batches.append(_measure_batch(args, copy.deepcopy(dense), shape, int(b), dtype, ceilings))
        kernel_configs = sys.modules.get("batude.kernels._configs")  # once a kernel ran: what its autotuners chose
        report = {"env": environment(), "args": {**vars(args), "ceilings": args.ceilings and args.ceilings.to_dict()},
                  "ceilings": ceilings.to_dict(), "batches": batches,
                  "autotuned": kernel_configs.tuned_configs() if kernel_configs else {}}
        (out / "latency_aware.json").write_text(json.dumps(report, indent=2) + "\n")
    print(table(batches))
    for line in kernel_configs.tuned_summary(report["autotuned"]) if kernel_configs else []:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
