"""Compile every kernel the GPU tests and benchmarks may launch for sm_90 (H100/H200), here, without a GPU.

For the 3x3 and 1x1 conv shapes of ResNet-18/50 (224²) and Fashion-MNIST ResNet-20, rank ratios
0.25/0.5/0.75 (aligned) and 0.5 (unaligned), batches 1 and 64, fp16/bf16/fp32, and each mode
(``fused``/``split``/``halo`` Tucker-2, the 1x1 ``chain``), every autotuning candidate that survives pruning
(and the heuristic config) is compiled once per distinct specialisation with Triton's own compiler
and ``ptxas`` (:mod:`batude.kernels.aot`). It reports compile errors, shared memory against the
per-block limit, registers and spills, global loads/stores left unvectorised, how many warps of each
can be resident on an SM (and what limits them), and exits 1 if any kernel would not compile or launch.

    python benchmarks/kernels_aot.py --out benchmarks/results/kernels_aot            # all: 1636 kernels, 24-26 min on 2 cores (shared with a training run)
    python benchmarks/kernels_aot.py --out /tmp/aot --models resnet20 --dtypes fp16  # a quick subset
    python benchmarks/kernels_aot.py --from-json benchmarks/results/kernels_aot_sm90/kernels_aot.json --out DIR
        # compiles nothing: an earlier sweep's records with their occupancy, summarised again

What it cannot find: wrong results and slow code (the ``gpu`` tests and kernels_vs_cudnn.py on a GPU).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from batude.bench.env import environment
from batude.nn.tucker_conv import ensure_kernels_importable

ensure_kernels_importable()  # a checkout on PYTHONPATH (not pip-installed) has no batude.kernels otherwise

from batude.kernels._configs import SPLITS  # noqa: E402
from batude.kernels.aot import SHARED_LIMIT, Layer, compile_spec, layer_specs, occupancy, spec_key  # noqa: E402

# (C_in, C_out, H=W, stride) at the conv's input resolution, as in tests/kernels/kernel_cases.py
SHAPES = {
    "resnet18": {3: [(64, 64, 56, 1), (64, 128, 56, 2), (128, 128, 28, 1), (128, 256, 28, 2), (256, 256, 14, 1),
                     (256, 512, 14, 2), (512, 512, 7, 1)],
                 1: [(64, 128, 56, 2), (128, 256, 28, 2), (256, 512, 14, 2)]},
    "resnet50": {3: [(64, 64, 56, 1), (128, 128, 56, 2), (128, 128, 28, 1), (256, 256, 28, 2), (256, 256, 14, 1),
                     (512, 512, 14, 2), (512, 512, 7, 1)],
                 1: [(64, 256, 56, 1), (256, 64, 56, 1), (256, 128, 56, 1), (256, 512, 56, 2), (128, 512, 28, 1),
                     (512, 128, 28, 1), (512, 1024, 28, 2), (1024, 256, 14, 1), (256, 1024, 14, 1),
                     (1024, 2048, 14, 2), (2048, 512, 7, 1), (512, 2048, 7, 1)]},
    "resnet20": {3: [(16, 16, 28, 1), (16, 32, 28, 2), (32, 32, 14, 1), (32, 64, 14, 2), (64, 64, 7, 1)],
                 1: [(16, 32, 28, 2), (32, 64, 14, 2)]},
}
RATIOS = [(0.25, True), (0.5, True), (0.75, True), (0.5, False)]


def _rank(c: int, ratio: float, aligned: bool) -> int:
    r = max(1, round(ratio * c))
    return r if aligned else max(1, r - 3) | 1


def layers(models: list[str], batches: list[int]) -> list[Layer]:
    out = []
    for model in models:
        for k, shapes in SHAPES[model].items():
            for c, s, hw, stride in shapes:
                for ratio, aligned in RATIOS:
                    # Tucker-2: (R1, R2) from (S, C); a low-rank 1x1 pair: one rank from min(C, S). At most
                    # 512 padded output ranks fit the kernels' register tile.
                    r1 = min(_rank(s if k == 3 else min(c, s), ratio, aligned), 512)
                    r2 = _rank(c, ratio, aligned) if k == 3 else 0
                    out += [Layer(c, s, hw, k, stride, r1, r2, b) for b in batches]
    return out


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--arch", type=int, default=90, help="compute capability x10 (90: H100/H200)")
    p.add_argument("--models", default="resnet18,resnet50,resnet20")
    p.add_argument("--dtypes", default="fp16,bf16,fp32")
    p.add_argument("--batches", default="1,64")
    p.add_argument("--modes", default="fused,split,halo", help="tucker2_conv modes of the kxk layers (1x1 pairs: their one kernel)")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--limit", type=int, default=None, help="compile only the first N distinct kernels (a smoke run)")
    p.add_argument("--from-json", default=None, metavar="PATH", help="compile nothing: add occupancy to an earlier sweep's records")
    return p.parse_args(argv)


def _from_json(a) -> int:
    try:
        report = json.loads(Path(a.from_json).read_text())
        records, arch = report["records"], report["arch"]
    except (OSError, ValueError, KeyError) as err:
        print(f"error: cannot read a kernels_aot sweep from {a.from_json}: {err}", file=sys.stderr)
        return 2
    try:
        for r in records:
            r["occupancy"] = occupancy(r.get("registers"), r.get("shared_bytes"), r["num_warps"], arch)
        report.update(summary=_summary(records, arch), occupancy_from=a.from_json)
    except (KeyError, TypeError, ValueError) as err:
        print(f"error: {a.from_json} is not a kernels_aot sweep this script can read ({type(err).__name__}: {err})", file=sys.stderr)
        return 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "kernels_aot.json").write_text(json.dumps(report, separators=(",", ":")))
    _print_summary(report["summary"], arch)
    return 0


def main(argv=None) -> int:
    a = _args(argv)
    if a.from_json:
        return _from_json(a)
    models, dtypes = a.models.split(","), a.dtypes.split(",")
    unknown = [m for m in models if m not in SHAPES]
    if unknown:
        print(f"error: unknown model(s) {unknown}; choose from {', '.join(SHAPES)}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    unique: dict[str, object] = {}
    uses: dict[str, int] = defaultdict(int)
    for layer in layers(models, [int(b) for b in a.batches.split(",")]):
        for dtype in dtypes:
            for mode in (("chain",) if layer.k == 1 else a.modes.split(",")):
                for spec in layer_specs(layer, dtype, mode):
                    key = spec_key(spec, a.arch)
                    unique.setdefault(key, spec)
                    uses[key] += 1
    specs = list(unique.values())[:a.limit]
    print(f"{sum(uses.values())} launches over {len(specs)} distinct kernels for sm_{a.arch}; compiling with {a.jobs} jobs",
          flush=True)
    records = []
    with ProcessPoolExecutor(max_workers=a.jobs) as pool:
        for i, rec in enumerate(pool.map(compile_spec, specs, [a.arch] * len(specs)), 1):
            records.append(rec)
            if not rec["ok"]:
                print(f"  FAIL {rec['kind']} rp={rec['rp']} {rec['config']} w{rec['num_warps']}s{rec['num_stages']}: {rec['error']}",
                      flush=True)
            if i % 25 == 0 or i == len(specs):
                print(f"  {i}/{len(specs)} compiled ({time.perf_counter() - t0:.0f} s)", flush=True)
    summary = _summary(records, a.arch)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "kernels_aot.json").write_text(json.dumps({"env": environment(), "arch": a.arch, "summary": summary,
                                                      "seconds": round(time.perf_counter() - t0, 1),
                                                      "records": records}, separators=(",", ":")))
    _print_summary(summary, a.arch)
    return 0 if all(r["ok"] for r in records) else 1


def _summary(records: list[dict], arch: int) -> list[dict]:
    """One row per kernel and dtype, then one per kernel, dtype and split meta-parameter for the kernels that
    use it (e.g. ``lowrank (SPLIT_S > 1)``: a subset of the ``lowrank`` row)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["kind"], r["origin"]["dtype"])].append(r)
        for split in SPLITS:
            if (r.get("config") or {}).get(split, 1) > 1:
                groups[(f"{r['kind']} ({split} > 1)", r["origin"]["dtype"])].append(r)
    rows = []
    for (kind, dtype), rs in sorted(groups.items()):
        ok = [r for r in rs if r.get("shared_bytes") is not None]
        rows.append({"kernel": kind, "dtype": dtype, "compiled": len(rs), "failed": sum(not r["ok"] for r in rs),
                     "max_shared_bytes": max((r["shared_bytes"] for r in ok), default=None),
                     "shared_limit": SHARED_LIMIT.get(arch),
                     "max_registers": max((r["registers"] or 0 for r in ok), default=None),
                     "spilling": sum(bool(r.get("spill_bytes")) for r in ok),
                     "max_spill_bytes": max((r.get("spill_bytes") or 0 for r in ok), default=0),
                     "scalar_global": sum(bool(r.get("scalar_global")) for r in ok),
                     **_occupancy_summary([r["occupancy"] for r in ok if r.get("occupancy")])})
    return rows


def _occupancy_summary(occ: list[dict]) -> dict:
    """Resident warps per SM over a group's kernels: least, median, how many have at most 8, the usual limiter."""
    warps = sorted(o["warps_per_sm"] for o in occ)
    return {"min_warps_per_sm": warps[0] if warps else None, "median_warps_per_sm": warps[len(warps) // 2] if warps else None,
            "at_most_8_warps": sum(w <= 8 for w in warps), "limiters": dict(Counter(o["limiter"] for o in occ))}


def _print_summary(rows: list[dict], arch: int) -> None:
    print(f"\n| kernel | dtype | kernels compiled for sm_{arch} | failed | max shared (limit) | max registers | spilling "
          "| with scalar global loads/stores | resident warps per SM: least / median | at most 8 | limited by |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        limiters = ", ".join(f"{k} {v}" for k, v in sorted(r.get("limiters", {}).items(), key=lambda kv: -kv[1])) or "-"
        print(f"| {r['kernel']} | {r['dtype']} | {r['compiled']} | {r['failed']} | "
              f"{r['max_shared_bytes']} ({r['shared_limit']}) | {r['max_registers']} | "
              f"{r['spilling']} (max {r['max_spill_bytes']} B) | {r['scalar_global']} | "
              f"{r.get('min_warps_per_sm')} / {r.get('median_warps_per_sm')} | {r.get('at_most_8_warps', '-')} | {limiters} |")


if __name__ == "__main__":
    sys.exit(main())
