"""Command-line interface: ``batude {inspect,plan,apply,demo}`` and ``batude-export``.

The CLI owns output and exit codes: results go to stdout, progress to stderr, and a
:class:`~batude.errors.BatudeError` becomes one line ``batude: error: ...`` with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from batude._format import si
from batude._io import check_parent, write_text_atomic
from batude._version import __version__
from batude.checkpoint import Checkpoint, load_model, save
from batude.errors import BatudeError
from batude.functional.cost import LayerKind
from batude.nn.profile import ModelProfile, flop_counter_macs, profile_model
from batude.rank.budget import Budget
from batude.rank.filter import LayerFilter
from batude.rank.plan import RankPlan, apply_plan_
from batude.rank.problem import SelectorConfig
from batude.rank.selectors import Method, select_ranks

__all__ = ["main", "export_main"]


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (``prog: error: ...``) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of integers, e.g. 1,3,224,224") from None
    if len(shape) < 2 or any(d <= 0 for d in shape):
        raise argparse.ArgumentTypeError(f"'{text}' must be N,C,H,W with positive sizes, e.g. 1,3,224,224")
    return shape


def _budget(text: str) -> Budget:
    try:
        return Budget.parse(text)
    except BatudeError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="checkpoint path, .pt2 program, or torchvision:NAME / batude:NAME / package.module:function")
    p.add_argument("--input", type=_shape, default=None, metavar="N,C,H,W", help="input shape (default: from the checkpoint, else the architecture's)")
    p.add_argument("--arch", default=None, help="architecture of a plain state_dict checkpoint, or a trusted user factory")
    p.add_argument("--trust-pickle", action="store_true", help="allow loading pickled whole models (runs code from the file)")


def _load(args: argparse.Namespace) -> tuple[Checkpoint, tuple[int, ...]]:
    ckpt = load_model(args.model, arch=args.arch, trust_pickle=args.trust_pickle)
    return ckpt, tuple(args.input) if args.input else ckpt.input_shape


def _fmt_shape(layer) -> str:
    g = layer.geometry
    return f"{g.out_channels}x{g.in_channels // g.groups}x{g.kernel[0]}x{g.kernel[1]}"


def _table(profile: ModelProfile, plan: RankPlan | None = None) -> str:
    planned = {l.name: l for l in plan.layers} if plan else {}
    rows = [("layer", "type", "weight", "out HxW", "MACs", "params", "ranks", "reduction")]
    for layer in profile.layers:
        macs, params, ranks, red = layer.macs, layer.params, "-", "1.00x"
        if layer.ranks is not None:
            ranks, red = ",".join(map(str, layer.ranks)), f"{layer.dense_macs / layer.macs:.2f}x"
        elif layer.name in planned and planned[layer.name].ranks is not None:
            lp = planned[layer.name]
            macs, params = lp.macs_after, lp.params_after
            ranks, red = ",".join(map(str, lp.ranks)), f"{lp.macs_before / lp.macs_after:.2f}x"
        kind = layer.kind.value if layer.kind else "dense(grouped)"
        rows.append((layer.name, kind, _fmt_shape(layer), str(layer.geometry.out_positions), si(macs), si(params), ranks, red))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def _cmd_inspect(args: argparse.Namespace) -> int:
    ckpt, shape = _load(args)
    profile = profile_model(ckpt.model, shape)
    print(_table(profile))
    dense = sum(l.dense_macs for l in profile.layers)
    print(f"\ninput {list(shape)}: {si(profile.macs, 'MAC')} = {si(profile.flops, 'FLOP')} per image "
          f"(conv+linear; FLOPs = 2 x MACs), {si(profile.params)} params in conv/linear layers")
    if dense != profile.macs:
        print(f"dense equivalent: {si(dense, 'MAC')} -> {dense / profile.macs:.3f}x fewer MACs")
    if args.json:
        write_text_atomic(args.json, json.dumps(_profile_dict(profile), indent=2) + "\n")
    return 0


def _profile_dict(profile: ModelProfile) -> dict:
    return {
        "input_shape": list(profile.input_shape),
        "counted": "conv+linear MACs per image (FLOPs = 2 * MACs)",
        "macs": profile.macs, "flops": profile.flops, "params": profile.params,
        "layers": [
            {"name": l.name, "type": l.module_type, "kind": l.kind.value if l.kind else None,
             "geometry": l.geometry.to_dict(), "ranks": list(l.ranks) if l.ranks else None,
             "macs": l.macs, "params": l.params}
            for l in profile.layers
        ],
    }


def _selector_config(args: argparse.Namespace) -> SelectorConfig:
    return SelectorConfig(
        min_rank=args.min_rank, multiple_of=args.multiple_of,
        layer_filter=LayerFilter(include=tuple(args.include or ("*",)), exclude=tuple(args.exclude or ()),
                                 kinds=tuple(args.kinds.split(",")), min_in_channels=args.min_in_channels),
    )


def _make_plan(ckpt: Checkpoint, shape: tuple[int, ...], args: argparse.Namespace) -> RankPlan:
    plan = select_ranks(ckpt.model, args.budget, args.method, input_shape=shape, config=_selector_config(args))
    return plan.with_arch(ckpt.arch.ref if ckpt.arch else None)


def _summary(plan: RankPlan) -> str:
    n = sum(l.decomposed for l in plan.layers)
    return (f"{plan.method} plan for budget {plan.budget}: {n}/{len(plan.layers)} eligible layers factorised; "
            f"{si(plan.dense_macs, 'MAC')} -> {si(plan.macs, 'MAC')} ({plan.macs_reduction:.3f}x fewer MACs/FLOPs), "
            f"{si(plan.dense_params)} -> {si(plan.params)} params ({plan.params_reduction:.3f}x)")


def _cmd_plan(args: argparse.Namespace) -> int:
    check_parent(args.out)  # fail before long work
    ckpt, shape = _load(args)
    plan = _make_plan(ckpt, shape, args)
    plan.save(args.out)
    print(_summary(plan))
    print(f"wrote {args.out}")
    return 0


def _progress(i: int, n: int, name: str) -> None:
    print(f"\r  factorising {i + 1}/{n} {name:<40}", end="" if i + 1 < n else "\n", file=sys.stderr, flush=True)


def _cmd_apply(args: argparse.Namespace) -> int:
    check_parent(args.out)  # fail before long work
    ckpt, _ = _load(args)
    plan = RankPlan.load(args.plan)
    apply_plan_(ckpt.model, plan, hooi_iters=args.hooi_iters, progress=_progress)
    save(args.out, ckpt.model, plan=plan, arch=ckpt.arch, metadata={"input_shape": list(plan.input_shape)})
    print(_summary(plan))
    print(f"wrote {args.out}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from batude.demo import run_demo

    report = run_demo(args.model, args.budget, args.method, Path(args.out), args.multiple_of, print)
    return 0 if report["checks"]["passed"] else 1


def _selector_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", choices=[m.value for m in Method], default="uniform", help="rank selector (default uniform)")
    p.add_argument("--budget", type=_budget, required=True, help="e.g. 2.52x, 40%%, 1.2GMAC, 3.5MFLOP, params:3x")
    p.add_argument("--multiple-of", type=int, default=1, help="round ranks to multiples of this (hardware alignment)")
    p.add_argument("--min-rank", type=int, default=1, help="smallest rank any factor may get")
    p.add_argument("--include", action="append", metavar="GLOB", help="only layers whose name matches (repeatable)")
    p.add_argument("--exclude", action="append", metavar="GLOB", help="skip layers whose name matches (repeatable)")
    p.add_argument("--kinds", default=",".join(k.value for k in LayerKind), help="eligible layer kinds, comma-separated")
    p.add_argument("--min-in-channels", type=int, default=16, help="layers with fewer input channels stay dense")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="batude", description="Budget-aware Tucker decomposition of CNNs (BATUDE).")
    parser.add_argument("--version", action="version", version=f"batude {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("inspect", help="per-layer shapes, MACs, params and ranks of a model")
    _model_args(p)
    p.add_argument("--json", default=None, metavar="FILE", help="also write the table as JSON")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("plan", help="choose ranks for a budget and write a rank plan (JSON)")
    _model_args(p)
    _selector_args(p)
    p.add_argument("--out", required=True, help="plan JSON to write")
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser("apply", help="factorise a model with a plan and write a batude checkpoint")
    _model_args(p)
    p.add_argument("--plan", required=True, help="rank plan JSON (from `batude plan`)")
    p.add_argument("--hooi-iters", type=int, default=0, help="HOOI iterations after the SVD init (default 0)")
    p.add_argument("--out", required=True, help="checkpoint to write")
    p.set_defaults(func=_cmd_apply)

    p = sub.add_parser("demo", help="the quick-start job: inspect, plan, apply, verify and report")
    p.add_argument("--model", default="torchvision:resnet18")
    p.add_argument("--budget", type=_budget, default=Budget.parse("2.52x"))
    p.add_argument("--method", choices=[m.value for m in Method], default="uniform")
    p.add_argument("--multiple-of", type=int, default=1)
    p.add_argument("--out", default="demo_out", help="folder for plan, checkpoint and report")
    p.set_defaults(func=_cmd_demo)
    return parser


def _run(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help/--version (0) or a usage error (2, already printed)
        return int(done.code or 0)
    try:
        return args.func(args)
    except BatudeError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    """``batude`` console script."""
    return _run(build_parser(), argv)


def build_export_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="batude-export", description="Lower a (compressed) model to ONNX and TensorRT engines.")
    p.add_argument("model", metavar="MODEL", help="batude checkpoint, .pt2 program, or torchvision:NAME")
    p.add_argument("--plan", help="rank plan to apply to MODEL before export")
    p.add_argument("--out", default="export_out", help="output folder")
    p.add_argument("--trt", action="store_true", help="also build TensorRT engines")
    p.add_argument("--fp16", action="store_true", help="half-precision export")
    p.add_argument("--batch", default="1", help="static batch sizes, e.g. 1,64")
    p.add_argument("--dynamic-batch", metavar="MIN:OPT:MAX", help="dynamic batch profile, e.g. 1:64:256")
    p.add_argument("--input-shape", default=None, metavar="C,H,W", help="per-image input shape")
    p.add_argument("--variant", choices=["chain", "min-flops", "auto"], default="min-flops", help="Tucker chain lowering")
    p.add_argument("--triton-repo", metavar="DIR", help="write a Triton Inference Server model repository")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset")
    p.add_argument("--trust-pickle", action="store_true", help="allow loading pickled whole models")
    p.set_defaults(func=_cmd_export)
    return p


def _cmd_export(args: argparse.Namespace) -> int:
    raise BatudeError("the exporter is not in this release yet (tracked as the export issue); `--help` lists its planned options")


def export_main(argv: Sequence[str] | None = None) -> int:
    """``batude-export`` console script."""
    return _run(build_export_parser(), argv)
