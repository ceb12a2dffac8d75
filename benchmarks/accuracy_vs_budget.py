"""Fashion-MNIST ResNet-20: BATUDE vs uniform / energy / VBMF ranks at equal FLOPs and equal epochs.

For each budget, method (and BC-ADL score, for BATUDE) and seed: compress a copy of the same dense
checkpoint with ``batude.train.compress`` (BATUDE: E_admm BC-ADL + E_ft fine-tuning epochs;
baselines: E_admm + E_ft fine-tuning epochs), measure FLOPs with FlopCounterMode and test
accuracy. Also times one plain training epoch of the dense model (the second of two) and reports
BC-ADL's mean epoch time after its first epoch relative to it (first epochs warm up or compile).
Writes ``results.json``, ``accuracy_vs_budget.png`` and prints a Markdown table.

Dense checkpoint: ``batude train --model resnet20 --data fashion-mnist --epochs N --out DIR``
(then pass ``--dense DIR/model.pt``).

    python benchmarks/accuracy_vs_budget.py --dense DIR/model.pt --out bench_out \
        --budgets 2.5x,4x --seeds 0,1 --epochs-admm 10 --epochs-ft 10          # GPU schedule

A GPU session too short for every run: its ``results.json`` is rewritten after each finished run;
the next session passes it as ``--continue-from`` (same schedule and dense model, checked) and runs
only what is missing, writing one results file, table and plot over both calls. ``--continue-from``
may be given several times (calls on different machines: each run records its device).
"""

from __future__ import annotations

import argparse
import copy
import functools
import hashlib
import json
import sys
import time
from pathlib import Path

import batude
from batude._io import write_text_atomic
from batude.bench.env import environment
from batude.data import DataSpec, load_datasets, make_loader
from batude.nn import flop_counter_macs
from batude.rank.bcadl import BCADLConfig
from batude.train import CompressConfig, TrainConfig, compress, evaluate
from batude.train.config import COMPILE_MODES
from batude.train.fit import epoch_seconds
from batude.train.loop import epoch_lines, seed_everything


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dense", help="dense batude checkpoint (from `batude train`); required unless --replot")
    p.add_argument("--out", required=True)
    p.add_argument("--budgets", default="2.5x,4x")
    p.add_argument("--methods", default="batude,uniform,energy,vbmf")
    p.add_argument("--scores", default="joint_per_cost", help="BC-ADL greedy scores to compare (BATUDE only)")
    p.add_argument("--seeds", default="0")
    p.add_argument("--epochs-admm", type=int, default=2)
    p.add_argument("--epochs-ft", type=int, default=2)
    p.add_argument("--lr-admm", type=float, default=0.01)
    p.add_argument("--lr-ft", type=float, default=0.005)
    p.add_argument("--updates-per-epoch", type=int, default=1, help="BC-ADL Z/U updates per epoch")
    p.add_argument("--rho0", type=float, default=1e-3)
    p.add_argument("--rho-growth", type=float, default=1.5)
    p.add_argument("--rho-max", type=float, default=1.0)
    p.add_argument("--lam", type=float, default=1e-4)
    p.add_argument("--kd", action="store_true")
    p.add_argument("--subset", type=int, default=None)
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST folder (default: the Debian package's)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default=None)
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--compile", choices=COMPILE_MODES, default=None, help="torch.compile mode for every training phase")
    p.add_argument("--skip-epoch-timing", action="store_true", help="do not time a plain dense epoch")
    p.add_argument("--continue-from", action="append", default=None, metavar="RESULTS_JSON",
                   help="results.json of an earlier call with the same schedule: its runs are kept and not run again "
                        "(repeat it to merge several calls)")
    p.add_argument("--replot", default=None, metavar="RESULTS_JSON", help="only print the table and draw the plot of a results.json")
    args = p.parse_args(argv)
    if not args.dense and not args.replot:
        p.error("--dense is required (a dense checkpoint from `batude train`), unless --replot")
    return args


_PER_CALL = {"out", "budgets", "methods", "seeds", "scores", "device", "workers", "compile", "skip_epoch_timing", "continue_from",
             "data_dir"}  # how a call runs, not what it measures (each run records its compile mode)


def _sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _bcadl_ratio(log: list[dict], plain: float | None) -> float | None:
    """Mean BC-ADL epoch after the first (which warms up or compiles, like plain's first) over the plain epoch."""
    admm = [e["seconds"] for e in log if e["phase"] == "admm"]
    admm = admm[1:] or admm
    return sum(admm) / len(admm) / plain if admm and plain else None


def _earlier(args, dense_sha256: str) -> list[tuple[str, dict]]:
    """Each ``--continue-from`` file's results, after checking that it used this call's schedule and dense checkpoint."""
    files = []
    for path in args.continue_from or []:
        try:
            earlier = json.loads(Path(path).read_text())
        except (OSError, ValueError) as err:
            raise SystemExit(f"--continue-from {path}: cannot read it ({err}); pass an earlier call's results.json")
        mine, theirs = vars(args), earlier.get("args", {})
        differ = [f"--{k.replace('_', '-')} {theirs.get(k)!r} there, {mine[k]!r} here"
                  for k in sorted(mine.keys() - _PER_CALL) if theirs.get(k) != mine[k]]
        if earlier.get("dense_sha256", dense_sha256) != dense_sha256:  # older files: the --dense path compared above
            differ.append(f"another dense checkpoint (sha256 {earlier['dense_sha256'][:12]}...)")
        if differ:
            raise SystemExit(f"--continue-from {path} used {', '.join(differ)}; continue only a run with the same schedule")
        files.append((path, earlier))
    return files


@functools.lru_cache(maxsize=None)
def _file(path: str) -> dict:
    """An earlier results file, read once ({} if it is gone)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def _device_label(results: dict) -> str:
    """Where a call's runs trained: the GPU (bf16 autocast, the harness's CUDA default) or the CPU (fp32)."""
    env, wanted = results.get("env") or {}, (results.get("args") or {}).get("device")
    return f"{env['gpu']}, bf16" if env.get("gpu") and wanted != "cpu" else "CPU, fp32"


def _run_device(run: dict, results: dict) -> str:
    """A run's device label; files written before runs stored it take it from the call that measured them."""
    if run.get("device"):
        return run["device"]
    return _device_label(_file(run["from"]) if run.get("from") else results)


def _plain_of(run: dict, earlier: dict) -> float | None:
    """The plain epoch timed in the call that measured ``run`` (older files keep it only at their top level)."""
    if run.get("plain_epoch_seconds") is not None:
        return run["plain_epoch_seconds"]
    if run.get("from"):  # measured in a call before the earlier one (one read per file)
        return _file(run["from"]).get("plain_epoch_seconds")
    return earlier.get("plain_epoch_seconds")


def _kept_runs(files: list[tuple[str, dict]]) -> list[dict]:
    """The earlier calls' runs, each with the plain epoch of its own call and the ratio by this script's definition."""
    runs, seen = [], {}
    for path, earlier in files:
        for run in earlier.get("runs", []):
            key = (run["budget"], run["seed"], run["method"], run["score"])
            if key in seen:
                raise SystemExit(f"--continue-from: {key[0]} seed {key[1]} {key[2]} is in both {seen[key]} and {path}; "
                                 "pass only one file that holds it (a merged file already holds its origins' runs)")
            seen[key] = path
            plain = _plain_of(run, earlier)
            runs.append({**run, "plain_epoch_seconds": plain, "bcadl_epoch_vs_plain": _bcadl_ratio(run["log"], plain),
                         "device": _run_device(run, earlier), "from": run.get("from") or path})
    return runs


def _plain_epoch_seconds(dense, train_loader, cfg: TrainConfig) -> float:
    """The second of two plain training epochs of the dense model (the first warms kernels and caches, or compiles)."""
    return epoch_seconds(copy.deepcopy(dense), train_loader, cfg, epochs=2)[-1]


def _runs(args):
    """Seed outermost: a run cut short still has every budget and method at the first seed."""
    for seed in map(int, args.seeds.split(",")):
        for budget in args.budgets.split(","):
            for method in args.methods.split(","):
                for score in (args.scores.split(",") if method == "batude" else [None]):
                    yield budget, seed, method, score


def _compress_config(args, base: TrainConfig, seed: int, method: str, score) -> CompressConfig:
    bcadl = BCADLConfig(rho0=args.rho0, rho_growth=args.rho_growth, rho_max=args.rho_max, lam=args.lam,
                        **({"score": score} if score else {}))
    return CompressConfig(method=method, epochs_admm=args.epochs_admm, epochs_ft=args.epochs_ft, lr_admm=args.lr_admm,
                          lr_ft=args.lr_ft, updates_per_epoch=args.updates_per_epoch, bcadl=bcadl, kd=args.kd,
                          train=TrainConfig(**{**base.to_dict(), "seed": seed}))


def _summary(run) -> str:
    return (f"{run['budget']} seed {run['seed']} {run['method']}{'/' + run['score'] if run['score'] else ''}: "
            f"{run['accuracy']:.2f}% (drop {run['drop']:+.2f}, before fine-tuning {run['decomposed_accuracy']:.2f}%), "
            f"{run['macs_reduction']:.3f}x fewer FLOPs, {run['seconds']:.0f}s")


def main(argv=None) -> int:
    args = _args(argv)
    out = Path(args.out)
    if args.replot:
        results = json.loads(Path(args.replot).read_text())
        print(table(results))
        out.mkdir(parents=True, exist_ok=True)
        plot(results, out / "accuracy_vs_budget.png")
        return 0
    ckpt = batude.load_checkpoint(args.dense)
    train, test, info = load_datasets(DataSpec("fashion-mnist", root=args.data_dir, subset=args.subset))
    shape = (1, info.in_channels, *info.image_size)
    base = TrainConfig(epochs=args.epochs_admm + args.epochs_ft, batch_size=args.batch_size, device=args.device, num_workers=args.workers,
                       compile=args.compile)
    device = base.resolved_device()
    pin = device.type == "cuda"  # asynchronous copies to the GPU
    test_loader = make_loader(test, 512, False, 0, pin_memory=pin)
    dense_sha256 = _sha256(args.dense)
    earlier = _earlier(args, dense_sha256)  # checked before anything slow
    dense_acc = evaluate(ckpt.model.to(device), test_loader, device, base)[1]
    plain = None if args.skip_epoch_timing else _plain_epoch_seconds(ckpt.model, make_loader(train, args.batch_size, True, 0, args.workers, pin_memory=pin), base)
    results = {"env": environment(), "args": vars(args), "dense_accuracy": dense_acc, "dense_sha256": dense_sha256,
               "plain_epoch_seconds": plain, "dense_macs": flop_counter_macs(ckpt.model.cpu(), shape),
               "runs": _kept_runs(earlier)}
    if earlier:  # the kept runs' own calls
        results["continued_from"] = [{"path": path, "env": e.get("env"), "dense_accuracy": e.get("dense_accuracy"),
                                      "plain_epoch_seconds": e.get("plain_epoch_seconds")} for path, e in earlier]
    print(f"dense accuracy {dense_acc:.2f}% on {device}, plain epoch " + (f"{plain:.1f}s" if plain else "not timed"), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "results.json", json.dumps(results, indent=2) + "\n")
    done = {(r["budget"], r["seed"], r["method"], r["score"]): r["from"] for r in results["runs"]}
    for budget, seed, method, score in _runs(args):
        if (budget, seed, method, score) in done:
            print(f"{budget} seed {seed} {method}: kept from {done[budget, seed, method, score]}", flush=True)
            continue
        seed_everything(seed)
        train_loader = make_loader(train, args.batch_size, True, seed, args.workers, pin_memory=pin)
        start = time.perf_counter()
        res = compress(copy.deepcopy(ckpt.model), train_loader, test_loader, budget, _compress_config(args, base, seed, method, score),
                       progress=epoch_lines(f"{budget} seed {seed} {method}"))
        macs = flop_counter_macs(res.model.cpu().float(), shape)
        run = {"budget": budget, "seed": seed, "method": method, "score": score, "dense_accuracy": res.dense_accuracy,
               "decomposed_accuracy": res.decomposed_accuracy, "accuracy": res.accuracy, "drop": res.dense_accuracy - res.accuracy,
               "macs": macs, "macs_reduction": results["dense_macs"] / macs,
               "plain_epoch_seconds": plain, "bcadl_epoch_vs_plain": _bcadl_ratio(res.log, plain), "compile": args.compile,
               "device": _device_label(results),
               "ranks": {l.name: (list(l.ranks) if l.ranks else None) for l in res.plan.layers},
               "seconds": round(time.perf_counter() - start, 1), "log": res.log}
        results["runs"].append(run)
        print(_summary(run), flush=True)
        write_text_atomic(out / "results.json", json.dumps(results, indent=2) + "\n")  # a cut-short call leaves whole runs
    print(table(results))
    plot(results, out / "accuracy_vs_budget.png")
    return 0


def _groups(results):
    """Runs by (budget, method), mildest budget first whatever order the calls ran them in (a merged file lists
    its origins' runs first); within a budget methods keep their order."""
    allowed = lambda r: batude.Budget.parse(r["budget"]).limit(results["dense_macs"])  # noqa: E731
    groups: dict[tuple, list] = {}
    for r in sorted(results["runs"], key=allowed, reverse=True):
        name = r["method"] + (f" ({r['score']})" if r["score"] else "")
        groups.setdefault((r["budget"], name), []).append(r)
    return groups


def table(results) -> str:
    lines = ["| budget | method | seeds | device | FLOPs reduction | accuracy % (mean) | per seed | drop vs dense (pt) | before fine-tune % "
             "| BC-ADL epoch / plain |", "|---|---|---|---|---|---|---|---|---|---|"]
    for (budget, name), runs in _groups(results).items():
        mean = lambda k: sum(r[k] for r in runs) / len(runs)  # noqa: E731
        ratio = [r["bcadl_epoch_vs_plain"] for r in runs if r["bcadl_epoch_vs_plain"]]
        ratio_text = f"{sum(ratio) / len(ratio):.2f}x" if ratio else "-"
        per_seed = ", ".join(f"{r['accuracy']:.2f}" for r in sorted(runs, key=lambda r: r["seed"]))  # the spread one mean hides
        devices = " + ".join(sorted({_run_device(r, results) for r in runs}))  # a merged file may hold runs of several machines
        lines.append(f"| {budget} | {name} | {len(runs)} | {devices} | {mean('macs_reduction'):.3f}x | {mean('accuracy'):.2f} | {per_seed} | "
                     f"{mean('drop'):+.2f} | {mean('decomposed_accuracy'):.2f} | {ratio_text} |")
    return "\n".join(lines)


def plot(results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    groups = _groups(results)
    for name in sorted({name for _, name in groups}):
        pts = sorted((sum(r["macs_reduction"] for r in runs) / len(runs), [r["accuracy"] for r in runs])
                     for (b, n), runs in groups.items() if n == name)
        means = [sum(acc) / len(acc) for _, acc in pts]
        spread = [[m - min(acc) for m, (_, acc) in zip(means, pts)], [max(acc) - m for m, (_, acc) in zip(means, pts)]]
        ax.errorbar([p[0] for p in pts], means, yerr=spread, marker="o", capsize=3, label=name)  # bars: lowest to highest seed
    ax.axhline(results["dense_accuracy"], color="gray", linestyle="--", label=f"dense ({results['dense_accuracy']:.2f}%)")
    ax.ticklabel_format(axis="x", useOffset=False)  # budgets are met within 1%: no "+2.5" offset axis
    low, high = ax.get_xlim()
    if high - low < 1.0:  # one budget so far: a readable span around it
        ax.set_xlim((low + high) / 2 - 0.5, (low + high) / 2 + 0.5)
    ax.set_xlabel("FLOPs reduction (x, FlopCounterMode)")
    ax.set_ylabel("Fashion-MNIST test accuracy (%)")
    ax.set_title("ResNet-20: accuracy vs FLOPs budget (equal epochs)")
    ax.legend(fontsize=8)
    where: dict[str, set] = {}  # budgets in the table's order
    for (budget, _), runs in groups.items():
        where.setdefault(budget, set()).update(_run_device(r, results) for r in runs)
    if len(set().union(*where.values())) > 1:  # a merged file: say which machine trained which points
        ax.text(0.0, -0.2, "; ".join(f"{b}: {' + '.join(sorted(d))}" for b, d in where.items()), transform=ax.transAxes, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
