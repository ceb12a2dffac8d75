"""Fused Triton Tucker-2 kernels vs the cuDNN 3-conv chain vs the dense conv: per layer and whole ResNet-18.

Per layer: the 3x3 conv shapes of ResNet-18 at 224² (rank ratio 0.5, ranks aligned), batches 1 and
64, fp16, channels_last, each variant replayed from a CUDA graph and timed with batude's timing
primitive, ``LAYER_CALLS`` replays back to back per sample as latency tables time layers (runs
up to 2026-11-27 timed one replay from an idle GPU: launch latency included, ratios pulled
towards 1x at batch 1): ``dense`` (one cuDNN conv), ``chain`` (the 3 cuDNN convs of ``TuckerConv2d``),
``fused``, ``split`` and ``halo`` (:func:`batude.kernels.tucker2_conv`, autotuned; ``auto_choice`` is
what ``mode="auto"`` picks). Whole model: ResNet-18 with a uniform 2.52x plan, rewritten by
``fuse_resnet_`` (BN folded, ReLU and residual add in the kernels' epilogues), against the dense
ResNet-18 with BN folded (eager and ``torch.compile``, both in CUDA graphs; the faster is the
baseline) and the unfused Tucker chain; each whole-model row is also profiled (GPU time per kernel
category, the GPU's idle share, the top kernels: ``batude.bench.profile``) and the profiles of a
batch are printed side by side. Every per-layer row also gets its form's roofline
(``batude.bench.roofline``: the floor its FLOPs and compulsory bytes set under the device's matrix
rate and memory bandwidth, measured at the start of the run unless ``--ceilings`` gives them), and
the rooflines are printed as a table and drawn in ``roofline.png``. Everything is measured in this
process; the goals of the kernels issue are evaluated and printed. Writes ``kernels_vs_cudnn.json``
and ``.png`` to ``--out``.

    python benchmarks/kernels_vs_cudnn.py --out bench_kernels            # H100/H200: about 3-4 minutes
    TRITON_INTERPRET=1 python benchmarks/kernels_vs_cudnn.py --smoke --out /tmp/k   # CPU: checks the script
    python benchmarks/kernels_vs_cudnn.py --from-json RUN/kernels_vs_cudnn.json --ceilings 788,4300 --out DIR
        # any machine: an earlier run's layers against the given ceilings (default: the run's own, else the datasheet's)

``--budget-s`` bounds the run: once exceeded, remaining measurements are recorded as skipped.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

from batude._io import write_text_atomic
from batude.bench.backends import Backend, torch_runner
from batude.bench.env import environment
from batude.bench.lut import calls_per_layer_sample
from batude.bench.profile import profile_entry
from batude.bench.report import plot_roofline, profile_tables
from batude.bench.roofline import Ceilings, datasheet_ceilings, layer_work, measure_ceilings, roofline
from batude.cli._common import ceilings_arg
from batude.bench.timing import time_callable
from batude.errors import BatudeError
from batude.functional.cost import ConvGeometry, conv_output_size
from batude.nn import TuckerConv2d
from batude.nn.tucker_conv import ensure_kernels_importable

ensure_kernels_importable()  # a checkout on PYTHONPATH (not pip-installed) has no batude.kernels otherwise

RESNET18_3X3 = [(64, 64, 56, 1), (64, 128, 56, 2), (128, 128, 28, 1), (128, 256, 28, 2), (256, 256, 14, 1),
                (256, 512, 14, 2), (512, 512, 7, 1)]
SMOKE_3X3 = [(16, 16, 8, 1), (16, 32, 8, 2)]
GOALS = {"layer": {1: 1.5, 64: 1.2}, "model": {1: 1.6, 64: 2.0}}
KERNEL_MODES = ("fused", "split", "halo")
CL = torch.channels_last


class Clock:
    def __init__(self, budget_s: float) -> None:
        self.start, self.budget = time.perf_counter(), budget_s

    def over(self) -> bool:
        return time.perf_counter() - self.start > self.budget


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--batches", default="1,64")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--budget-s", type=float, default=190.0, help="stop starting new measurements after this many seconds")
    p.add_argument("--layer-budget-s", type=float, default=90.0, help="share of the budget for the per-layer part")
    p.add_argument("--profile-calls", type=int, default=20, help="replays per whole-model profile")
    p.add_argument("--skip-model", action="store_true")
    p.add_argument("--smoke", action="store_true", help="CPU under TRITON_INTERPRET=1, tiny shapes, one iteration")
    p.add_argument("--ceilings", type=ceilings_arg, default=None, metavar="TFLOPS,GBPS",
                   help="matrix rate and memory bandwidth for the rooflines (default: measured at the start of the run)")
    p.add_argument("--from-json", default=None, metavar="PATH",
                   help="measure nothing: add rooflines to an earlier run's kernels_vs_cudnn.json and write it to --out")
    return p.parse_args(argv)


def _time(fn, x, args, device, batch, label, compile_: bool = False, layer: bool = False) -> dict:
    """Time ``fn(x)``: on CUDA replayed as a CUDA graph (compiled first with ``compile_``), eagerly on the CPU.

    A ``layer`` on CUDA is timed as latency tables time layers, ``LAYER_CALLS`` replays back to back
    per sample (as inside a graphed model: no launch from an idle GPU per layer); models one replay,
    then are profiled (``profile``: GPU time per kernel category, idle share, top kernels).
    """
    graph = device.type == "cuda"
    backend = (Backend.COMPILE_GRAPH if compile_ else Backend.CUDA_GRAPH) if graph else Backend.EAGER
    calls = calls_per_layer_sample(backend) if layer else 1
    with torch.inference_mode():
        run = torch_runner(fn, x, backend)  # warm-up (autotuning, compiling) on a side stream, then capture
    stats = time_callable(run, iters=args.iters, warmup=args.warmup, device=device, batch=batch, label=label, calls=calls)
    row = {**stats.to_dict(), "cuda_graph": graph, "calls_per_sample": calls}
    if not layer:
        row.update(profile_entry(run, device, args.profile_calls, stats.median_ms, label))
    return row


_TUNED_KINDS = {"fused": ("tucker2",), "split": ("pointwise", "tucker2"), "halo": ("halo",)}


def _tuned(mode: str, call) -> tuple[dict | None, object]:
    """``(configs, call())``: the tile configs the autotuners of ``mode``'s kernels ran in ``call`` (their
    ``best_config``, cleared first so a kernel that fell back to its heuristic records nothing rather than
    an earlier shape's choice), e.g. whether a ``SPLIT_N`` or tall-tile candidate won; None where nothing was
    tuned (the interpreter)."""
    from batude.kernels import _configs as kcfg
    from batude.kernels._runtime import autotune_enabled

    if not autotune_enabled():
        return None, call()
    tuners = {kind: kcfg.autotuned(kind) for kind in _TUNED_KINDS[mode]}
    for tuner in tuners.values():
        tuner.best_config = None
    result = call()
    out = {}
    for kind, tuner in tuners.items():
        best = getattr(tuner, "best_config", None)
        if best is not None:
            out[kind] = {**best.kwargs, "num_warps": best.num_warps, "num_stages": best.num_stages}
    return out or None, result


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12))


@torch.inference_mode()
def layer_rows(args, device, dtype, batches, clock: Clock) -> list[dict]:
    from batude.kernels import pack_tucker2, tucker2_conv
    from batude.kernels import tucker2 as t2

    rows = []
    for c, s, h, stride in (SMOKE_3X3 if args.smoke else RESNET18_3X3):
        for batch in batches:
            base = {"part": "layer", "c_in": c, "c_out": s, "hw": h, "stride": stride, "ranks": [s // 2, c // 2], "batch": batch}
            if clock.over():
                rows.append({**base, "variant": "all", "skipped": "time budget"})
                continue
            torch.manual_seed(0)
            dense = nn.Conv2d(c, s, 3, stride, 1, bias=False).to(device, dtype).to(memory_format=CL).eval()
            chain = TuckerConv2d(c, s, 3, (s // 2, c // 2), stride=stride, padding=1, bias=False).to(device, dtype)
            chain = chain.to(memory_format=CL).eval()
            x = torch.randn(batch, c, h, h, device=device, dtype=dtype).contiguous(memory_format=CL)
            p = pack_tucker2(chain.first.weight, chain.core.weight, chain.last.weight)

            def kernel(mode):
                return lambda t: tucker2_conv(t, p.u_in, p.core, p.u_out, stride=stride, padding=1, mode=mode)

            want = chain(x)
            fns = {"dense": dense, "chain": chain, **{mode: kernel(mode) for mode in KERNEL_MODES}}
            timed = {}
            for variant, fn in fns.items():
                row = {**base, "variant": variant,
                       **_time(fn, x, args, device, batch, f"{variant} {c}->{s} {h}² b{batch}", layer=True)}
                if variant in KERNEL_MODES:
                    row["tuned"], out = _tuned(variant, lambda: fn(x))  # what this eager call's autotuners ran
                    row["rel_err_vs_chain"] = _rel(out, want)
                timed[variant] = row
            kernel("auto")(x)
            auto, measured = t2.auto_choice(x, p.core, p.u_out, stride=stride, padding=1)
            for variant, row in timed.items():
                row["speedup_vs_chain"] = timed["chain"]["median_ms"] / row["median_ms"]
                row["speedup_vs_dense"] = timed["dense"]["median_ms"] / row["median_ms"]
                row["auto_choice"], row["auto_choice_measured"] = auto, measured
                rows.append(row)
            print(f"layer {c}->{s} {h}² s{stride} b{batch}: " + ", ".join(f"{v} {r['median_ms']:.4f} ms" for v, r in timed.items())
                  + f"; auto picked {auto} ({'timed' if measured else 'heuristic'})", flush=True)
    return rows


def _model_pair(smoke: bool):
    """(dense model, uniform-plan Tucker model, per-image input shape)."""
    from batude.rank import apply_plan_, select_ranks

    torch.manual_seed(0)
    if smoke:
        from batude.models import CifarResNet

        dense, shape, budget, name = CifarResNet(depth=8, in_channels=3, width=16).eval(), (3, 8, 8), "2x", "cifar-resnet8"
    else:
        import torchvision

        dense, shape, budget, name = torchvision.models.resnet18().eval(), (3, 224, 224), "2.52x", "resnet18"
    plan = select_ranks(dense, budget, "uniform", input_shape=(1, *shape))
    tucker = apply_plan_(copy.deepcopy(dense), plan, init="empty").eval()
    return dense, tucker, shape, f"{name} uniform {budget}"


@torch.inference_mode()
def model_rows(args, device, dtype, batches, clock: Clock, ceilings: Ceilings) -> list[dict]:
    from torch import fx

    from batude.export.lower import fold_batchnorm
    from batude.kernels import fuse_resnet_

    dense, tucker, shape, network = _model_pair(args.smoke)
    profiles = _model_profiles(dense, tucker, shape)
    reduction = profiles["dense"].macs / profiles["tucker"].macs  # the analytic MACs, equal to FlopCounterMode's
    folded = fx.symbolic_trace(copy.deepcopy(dense))
    fold_batchnorm(folded)
    prep = lambda m: m.to(device, dtype).to(memory_format=CL).eval()  # noqa: E731
    folded, tucker = prep(folded), prep(tucker)
    fused = fuse_resnet_(copy.deepcopy(tucker))
    # most important first: the time budget drops what comes last
    variants = [("dense", "eager", folded, False), ("triton", "fused", fused, False), ("dense", "compile", folded, True),
                ("triton", "fused+compile", fused, True), ("chain", "eager", tucker, False), ("chain", "compile", tucker, True)]
    if args.smoke:  # no inductor on the CPU smoke run (a C++ compile per graph)
        variants = [v for v in variants if not v[3]]
    inputs = {b: torch.randn(b, *shape, device=device, dtype=dtype).contiguous(memory_format=CL) for b in batches}
    wants = {b: tucker(x) for b, x in inputs.items()}
    rows = []
    for model_name, backend, model, compile_ in variants:
        for batch in batches:
            x, want = inputs[batch], wants[batch]
            base = {"part": "model", "network": network, "model": model_name, "backend": backend, "batch": batch,
                    "flops_reduction": 1.0 if model_name == "dense" else reduction}
            if clock.over():
                rows.append({**base, "skipped": "time budget"})
                continue
            row = {**base, **_time(model, x, args, device, batch, f"{model_name} {backend} b{batch}", compile_)}
            if model_name != "dense":
                row["rel_err_vs_chain"] = _rel(model(x), want)  # the eager model (compile rows: before compiling)
            rows.append(row)
            print(f"model {model_name} {backend} b{batch}: {row['median_ms']:.4f} ms", flush=True)
    for batch in batches:
        done = [r for r in rows if r["batch"] == batch and "median_ms" in r]
        best_dense = min((r["median_ms"] for r in done if r["model"] == "dense"), default=None)
        for r in done:
            r["speedup_vs_best_dense"] = best_dense / r["median_ms"] if best_dense else None
    add_model_rooflines(rows, ceilings, str(dtype).replace("torch.", ""), profiles)
    # every variant of a batch side by side (profile_tables groups by backend, batch and dtype)
    print(profile_tables([{**r, "model": f"{r['model']} {r['backend']}", "backend": "whole model",
                           "dtype": str(dtype).replace("torch.", "")} for r in rows if "profile" in r]), flush=True)
    return rows


def goals(layers: list[dict], models: list[dict]) -> list[dict]:
    out = []
    for r in layers:
        if r.get("variant") == "chain" and r["batch"] in GOALS["layer"]:
            best = max((q["speedup_vs_chain"] for q in layers if q.get("variant") in KERNEL_MODES and "speedup_vs_chain" in q
                        and (q["c_in"], q["c_out"], q["hw"], q["batch"]) == (r["c_in"], r["c_out"], r["hw"], r["batch"])), default=None)
            target = GOALS["layer"][r["batch"]]
            out.append({"goal": f"layer {r['c_in']}->{r['c_out']} {r['hw']}² s{r['stride']} b{r['batch']}: kernel vs cuDNN chain",
                        "target": target, "measured": best, "met": best is not None and best >= target})
    for batch, target in GOALS["model"].items():
        best = max((r["speedup_vs_best_dense"] for r in models if r["batch"] == batch and r.get("model") == "triton"
                    and r.get("speedup_vs_best_dense")), default=None)
        network = next((r["network"] for r in models if r["batch"] == batch), None)
        if network:
            out.append({"goal": f"{network} b{batch}: triton vs best dense", "target": target, "measured": best,
                        "met": best is not None and best >= target})
    return out


def add_rooflines(layers: list[dict], ceilings: Ceilings, dtype: str) -> None:
    """Each timed layer row's roofline: its form (the variant) on its 3x3 conv's geometry, batch and dtype."""
    size = getattr(torch, dtype).itemsize
    for r in layers:
        if "median_ms" not in r:
            continue
        out = conv_output_size(r["hw"], 3, r["stride"], 1)
        g = ConvGeometry(r["c_out"], r["c_in"], (3, 3), r["hw"] ** 2, out * out)
        ranks = None if r["variant"] == "dense" else tuple(r["ranks"])
        r["roofline"] = roofline(layer_work(r["variant"], g, ranks, r["batch"], size), ceilings, r["median_ms"])


def _model_profiles(dense: nn.Module, tucker: nn.Module, shape: tuple[int, ...]) -> dict:
    """The layer profiles (geometry, ranks, MACs) of the dense and the factorised model, from one forward each."""
    from batude.nn import profile_model

    return {"dense": profile_model(dense, (1, *shape)), "tucker": profile_model(tucker, (1, *shape))}


def add_model_rooflines(models: list[dict], ceilings: Ceilings, dtype: str, profiles: dict) -> None:
    """Each timed whole-model row's roofline: dense as dense convs, the chain as 3-conv chains, ``triton`` with its
    factorised convs on kernels that keep intermediates on chip; BN, ReLU, adds and pooling fused (``model_work``)."""
    from batude.bench.roofline import model_work

    size = getattr(torch, dtype).itemsize
    for r in models:
        if "median_ms" in r:
            work = model_work(profiles["dense" if r["model"] == "dense" else "tucker"], r["batch"], size,
                              kernels=r["model"] == "triton")
            r["roofline"] = roofline(work, ceilings, r["median_ms"])


def model_roofline_table(models: list[dict]) -> str:
    """Markdown: each whole-model row's measured and floor time (ms) and the share of the floor reached."""
    lines = ["| model | backend | batch | measured ms | floor ms | share of floor | bound |", "|---|---|---|---|---|---|---|"]
    for r in models:
        if r.get("roofline"):
            rl = r["roofline"]
            lines.append(f"| {r['model']} | {r['backend']} | {r['batch']} | {r['median_ms']:.3f} | {rl['floor_ms']:.3f} | "
                         f"{100 * rl['floor_share']:.0f}% | {rl['bound']} |")
    return "\n".join(lines)


def roofline_table(layers: list[dict]) -> str:
    """Markdown: per 3x3 conv and batch, each variant's measured and floor time (µs) and the share of the floor reached."""
    variants = [v for v in ("dense", "chain", *KERNEL_MODES) if any(r.get("variant") == v for r in layers)]
    lines = ["| 3x3 conv (C->S, H², stride) | batch | " + " | ".join(f"{v}: measured / floor µs (share)" for v in variants) + " |",
             "|---|---|" + "---|" * len(variants)]
    for key in dict.fromkeys((r["c_in"], r["c_out"], r["hw"], r["stride"], r["batch"]) for r in layers if r.get("roofline")):
        mine = {r["variant"]: r for r in layers if r.get("roofline") and (r["c_in"], r["c_out"], r["hw"], r["stride"], r["batch"]) == key}
        cells = [f"{1e3 * mine[v]['median_ms']:.1f} / {1e3 * mine[v]['roofline']['floor_ms']:.1f} "
                 f"({100 * mine[v]['roofline']['floor_share']:.0f}%, {mine[v]['roofline']['bound']})" if v in mine else "-"
                 for v in variants]
        c, s, h, stride, batch = key
        lines.append(f"| {c}->{s}, {h}², s{stride} | {batch} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _rooflines_from_json(args) -> int:
    """``--from-json``: an earlier report's layers against ``--ceilings`` (else its own, else the datasheet's)."""
    try:
        report = json.loads(Path(args.from_json).read_text())
        layers = report["layers"]
    except (OSError, ValueError, KeyError) as err:
        print(f"cannot read a kernels_vs_cudnn report from {args.from_json}: {err}", file=sys.stderr)
        return 2
    gpu = report.get("env", {}).get("gpu")
    try:
        ceilings = args.ceilings or (Ceilings.from_dict(report["ceilings"]) if report.get("ceilings") else datasheet_ceilings(gpu))
        if ceilings is None:
            print(f"no ceilings for {gpu!r}: give --ceilings TFLOPS,GBPS", file=sys.stderr)
            return 2
        add_rooflines(layers, ceilings, report.get("dtype", "float16"))
        if any("median_ms" in r for r in report.get("model", [])):
            dense, tucker, shape, _ = _model_pair(bool(report.get("args", {}).get("smoke")))
            add_model_rooflines(report["model"], ceilings, report.get("dtype", "float16"), _model_profiles(dense, tucker, shape))
    except (KeyError, TypeError, ValueError, AttributeError, BatudeError) as err:
        print(f"{args.from_json} is not a kernels_vs_cudnn report this script can read ({type(err).__name__}: {err})",
              file=sys.stderr)
        return 2
    report.update(ceilings=ceilings.to_dict(), rooflines_from=args.from_json)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "kernels_vs_cudnn.json", json.dumps(report, indent=2) + "\n")
    _print_rooflines(report, out, gpu)
    return 0


def _print_rooflines(report: dict, out: Path, gpu: str | None) -> None:
    c = report["ceilings"]
    print(f"rooflines at {c['tflops']:.4g} TFLOP/s and {c['gbps']:.4g} GB/s ({c['source']}; ridge {c['ridge_flop_per_byte']:.0f} FLOP/B):")
    print(roofline_table(report["layers"]))
    if any(r.get("roofline") for r in report.get("model", [])):
        print(model_roofline_table(report["model"]))
    if plot_roofline(report["layers"], c, out / "roofline.png", f"ResNet-18 3x3 convs, {gpu or 'CPU'}, {report.get('dtype')}"):
        print(f"wrote {out / 'roofline.png'}")


def plot(report: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot", file=sys.stderr)
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    rows = [r for r in report["layers"] if "speedup_vs_chain" in r and r["variant"] != "chain"]
    labels = sorted({(r["batch"], r["c_in"], r["c_out"], r["hw"]) for r in rows})
    for i, variant in enumerate(("dense", *KERNEL_MODES)):
        vals = [next((r["speedup_vs_chain"] for r in rows if r["variant"] == variant and (r["batch"], r["c_in"], r["c_out"], r["hw"]) == k), 0)
                for k in labels]
        axes[0].bar([j + 0.2 * i for j in range(len(labels))], vals, width=0.2, label=variant)
    axes[0].set_xticks(range(len(labels)), [f"b{b} {c}->{s} {h}²" for b, c, s, h in labels], rotation=70, fontsize=7)
    axes[0].axhline(1.0, color="black", linewidth=0.5)
    axes[0].set_ylabel("speedup vs cuDNN 3-conv chain (x)")
    axes[0].legend(fontsize=8)
    models = [r for r in report["model"] if r.get("speedup_vs_best_dense")]
    axes[1].bar(range(len(models)), [r["speedup_vs_best_dense"] for r in models])
    axes[1].set_xticks(range(len(models)), [f"b{r['batch']} {r['model']} {r['backend']}" for r in models], rotation=70, fontsize=7)
    axes[1].axhline(1.0, color="black", linewidth=0.5)
    axes[1].set_ylabel("whole model: speedup vs best dense (x)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    args = _args(argv)
    if args.from_json:
        return _rooflines_from_json(args)
    from batude.kernels import _configs as kcfg

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        from batude.kernels._runtime import interpreting

        if not interpreting():
            print("--smoke runs the kernels under Triton's interpreter: set TRITON_INTERPRET=1", file=sys.stderr)
            return 2
        device, dtype, batches = torch.device("cpu"), torch.float32, [1, 2]
        args.iters, args.warmup, args.profile_calls = 1, 0, 1
    else:
        if not torch.cuda.is_available():
            print("needs a CUDA GPU (or --smoke under TRITON_INTERPRET=1 on the CPU)", file=sys.stderr)
            return 2
        device, dtype, batches = torch.device("cuda"), torch.float16, [int(b) for b in args.batches.split(",")]
        torch.backends.cudnn.benchmark = True
    ceilings = args.ceilings or measure_ceilings(device, dtype, **({"copy_mib": 8, "matmul": 128, "iters": 2} if args.smoke else {}))
    print(f"ceilings: {ceilings.tflops:.4g} TFLOP/s, {ceilings.gbps:.4g} GB/s ({ceilings.source})", flush=True)
    clock = Clock(args.budget_s)

    def write_report(layers: list[dict], models: list[dict], done: bool) -> dict:
        """The report so far, written at once: a run killed in the model part keeps its layer table."""
        r = {"env": environment(), "args": {**vars(args), "ceilings": args.ceilings and args.ceilings.to_dict()},
             "dtype": str(dtype).replace("torch.", ""), "complete": done,
             "ceilings": ceilings.to_dict(), "layers": layers, "model": models, "goals": goals(layers, models),
             "autotuned": kcfg.tuned_configs(), "elapsed_s": time.perf_counter() - clock.start}
        write_text_atomic(out / "kernels_vs_cudnn.json", json.dumps(r, indent=2) + "\n")
        return r

    layers = layer_rows(args, device, dtype, batches, Clock(min(args.layer_budget_s, args.budget_s)))
    add_rooflines(layers, ceilings, str(dtype).replace("torch.", ""))
    write_report(layers, [], done=args.skip_model)
    models = [] if args.skip_model else model_rows(args, device, dtype, batches, clock, ceilings)
    report = write_report(layers, models, done=True)
    plot(report, out / "kernels_vs_cudnn.png")
    _print_rooflines(report, out, report["env"].get("gpu"))
    for g in report["goals"]:
        measured = "-" if g["measured"] is None else f"{g['measured']:.2f}x"
        print(f"{'MET ' if g['met'] else 'MISS'} {g['goal']}: {measured} (target {g['target']}x)")
    for line in kcfg.tuned_summary(report["autotuned"]):
        print(line)
    print(f"wrote {out / 'kernels_vs_cudnn.json'} in {report['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
