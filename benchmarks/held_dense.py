"""When the greedy rule holds layers dense: never, only to fit the limits, or also to keep more value.

BC-ADL's Z-step ranks (:func:`batude.rank.greedy.budgeted_ranks`) for latency budgets on saved
latency tables, optionally with a FLOPs limit, under each ``hold`` setting of the rule's step 3:

* ``never``: rank steps only (the rule before 2026-11-27);
* ``to-fit``: layers held dense one at a time while the limits fail;
* ``auto``: also, where a limit is in latency, while holding one more layer keeps more value.

For each table, budget and setting it reports the value the Z-step keeps (the sum over layers of
what the greedy rule trades for cost, with the default ``joint_per_cost`` score each layer's kept
fraction of its two unfoldings' gains multiplied, so at most 1 per layer; shown as a mean per
layer), the layers held dense, and the plan BC-ADL makes of those ranks: its predicted ms on the
table and its FLOPs cut. Weights are the seeded random initialisation of the model (as in
``latency_aware.py``), so the values say how the rule spends a budget, not how accurate a trained
model would be. Nothing is measured: it runs on a CPU, on tables measured anywhere.

    python benchmarks/held_dense.py --lut benchmarks/results/h100_latency_aware_bnfold/lut_b64.json \\
        --budgets 0.93,0.95,1.0,1.1 --also 2.52x --out benchmarks/results/held_dense_h100
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from batude.bench.env import environment
from batude.bench.lut import LatencyTable
from batude.checkpoint import reference_model
from batude.errors import BatudeError
from batude.rank.bcadl import BCADL, BCADLConfig
from batude.rank.greedy import HOLD, budgeted_ranks, kept_value


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lut", action="append", required=True, help="a saved latency table (repeatable)")
    p.add_argument("--model", default="resnet18", help="the table's model: a torchvision name or a spec such as batude:resnet20")
    p.add_argument("--input", default="3,224,224")
    p.add_argument("--budgets", default="0.93,0.95,1.0,1.1", help="latency budgets as multiples of the table's dense time")
    p.add_argument("--also", action="append", default=[], help="an extra limit every plan must meet (e.g. 2.52x)")
    p.add_argument("--out", help="folder for held_dense.json")
    return p.parse_args(argv)


def rows_for(lut_path: str, model: str, shape, budgets: list[float], also: list[str]) -> list[dict]:
    lut = LatencyTable.load(lut_path)
    dense = reference_model(model)
    config = BCADLConfig()  # ranks aligned for the table's dtype (default_multiple)
    rows = []
    for factor in budgets:
        budget = f"latency:{factor * lut.model_ms:.6f}ms"
        base = {"lut": lut_path, "batch": lut.key["batch"], "budget": budget, "factor": factor, "also": also}
        try:
            admm = BCADL(dense, budget, config, input_shape=shape, latency=lut, also=also)
        except BatudeError as err:  # out of reach of every setting (the constructor runs the default one)
            rows.extend({**base, "hold": hold, "feasible": False, "reason": str(err)} for hold in HOLD)
            continue
        spectra = [[sp.sigma for sp in splits] for splits in admm.splits]
        for hold in HOLD:
            try:
                ranks = budgeted_ranks(admm.problem, spectra, admm.last_thresholds, admm.limit, config.score,
                                       admm.extra_limits, hold=hold)
            except BatudeError as err:
                rows.append({**base, "hold": hold, "feasible": False, "reason": str(err)})
                continue
            admm.ranks = ranks
            plan = admm.plan()
            rows.append({**base, "hold": hold, "feasible": True, "held": sum(r is None for r in ranks),
                         "value_per_layer": kept_value(admm.problem, spectra, admm.last_thresholds, ranks, config.score)
                         / len(ranks),
                         "predicted_ms": plan.latency["predicted_ms"], "dense_ms": lut.model_ms,
                         "macs_reduction": plan.macs_reduction})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| table | batch | latency budget (x dense time) | hold | layers held | value kept per layer "
             "| plan predicted ms | FLOPs cut |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        name = Path(r["lut"]).parent.name
        if not r["feasible"]:
            lines.append(f"| {name} | {r['batch']} | {r['factor']:.2f} | {r['hold']} | infeasible | | | |")
            continue
        lines.append(f"| {name} | {r['batch']} | {r['factor']:.2f} | {r['hold']} | {r['held']} | "
                     f"{r['value_per_layer']:.3f} | {r['predicted_ms']:.4f} | {r['macs_reduction']:.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = _args(argv)
    shape = (1, *(int(x) for x in args.input.split(",")))
    budgets = [float(x) for x in args.budgets.split(",")]
    rows = []
    for path in args.lut:
        rows.extend(rows_for(path, args.model, shape, budgets, args.also))
        print(f"{path}: done", flush=True)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "held_dense.json").write_text(json.dumps({"env": environment(), "args": vars(args), "rows": rows},
                                                                    indent=2) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
