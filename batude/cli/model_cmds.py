"""``batude inspect``, ``batude plan``, ``batude apply``: model analysis and training-free compression."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from batude._format import si
from batude._io import check_parent, write_text_atomic
from batude.checkpoint import Checkpoint, save
from batude.errors import BatudeError
from batude.cli._common import ProgressBar, add_model_args, budget_arg, check_not_input, load_from_args, non_negative_int
from batude.functional.cost import LayerKind
from batude.nn.profile import LayerProfile, ModelProfile, profile_model
from batude.rank.filter import LayerFilter
from batude.bench.lut import LatencyTable
from batude.rank.budget import Metric
from batude.rank.latency import fastest_plan, oracle_share
from batude.rank.plan import RankPlan, apply_plan_
from batude.rank.problem import RankProblem, SelectorConfig
from batude.rank.selectors import Method, select_ranks

__all__ = ["register", "plan_summary", "profile_table", "add_selector_args", "selector_config", "require_dense", "plan_for", "skipped_summary"]


def _weight_shape(layer: LayerProfile) -> str:
    g = layer.geometry
    return f"{g.out_channels}x{g.in_channels // g.groups}x{g.kernel[0]}x{g.kernel[1]}"


def profile_table(profile: ModelProfile) -> str:
    """A fixed-width per-layer table: name, kind, weight shape, output positions, MACs, params, ranks."""
    rows = [("layer", "kind", "weight", "out HxW", "MACs", "params", "ranks", "reduction")]
    for layer in profile.layers:
        ranks, red = "-", "1.00x"
        if layer.ranks is not None:
            ranks, red = ",".join(map(str, layer.ranks)), f"{layer.dense_macs / layer.macs:.2f}x"
        kind = layer.kind.value if layer.kind else "dense(grouped)"
        rows.append((layer.name, kind, _weight_shape(layer), str(layer.geometry.out_positions), si(layer.macs), si(layer.params), ranks, red))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


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


def plan_summary(plan: RankPlan) -> str:
    n = sum(l.decomposed for l in plan.layers)
    return (f"{plan.method} plan for budget {plan.budget}: {n}/{len(plan.layers)} eligible layers factorised; "
            f"{si(plan.dense_macs, 'MAC')} -> {si(plan.macs, 'MAC')} ({plan.macs_reduction:.3f}x fewer MACs/FLOPs), "
            f"{si(plan.dense_params)} -> {si(plan.params)} params ({plan.params_reduction:.3f}x)")


def skipped_summary(plan: RankPlan) -> str:
    """The layers ``plan`` leaves dense because they are not eligible (grouped/depthwise convs,
    filtered out, shared weights...), one line each with the reason; empty when there are none."""
    if not plan.skipped:
        return ""
    n = len(plan.skipped)
    lines = [f"left dense ({n} {'layer' if n == 1 else 'layers'} not eligible for factorisation):"]
    lines += [f"  {name}: {why}" for name, why in plan.skipped.items()]
    return "\n".join(lines)


def _cmd_inspect(args: argparse.Namespace) -> int:
    if args.json:
        check_parent(args.json)
        check_not_input(args.json, args.model)
    ckpt, shape = load_from_args(args)
    profile = profile_model(ckpt.model, shape)
    print(profile_table(profile))
    dense = sum(l.dense_macs for l in profile.layers)
    print(f"\ninput {list(shape)}: {si(profile.macs, 'MAC')} = {si(profile.flops, 'FLOP')} per image "
          f"(conv+linear; FLOPs = 2 x MACs), {si(profile.params)} params in conv/linear layers")
    if dense != profile.macs:
        print(f"dense equivalent: {si(dense, 'MAC')} -> {dense / profile.macs:.3f}x fewer MACs")
    if args.json:
        write_text_atomic(args.json, json.dumps(_profile_dict(profile), indent=2) + "\n")
    return 0


def selector_config(args: argparse.Namespace) -> SelectorConfig:
    return SelectorConfig(
        min_rank=args.min_rank, multiple_of=args.multiple_of,
        layer_filter=LayerFilter(include=tuple(args.include or ("*",)), exclude=tuple(args.exclude or ()),
                                 kinds=tuple(args.kinds.split(",")), min_in_channels=args.min_in_channels),
    )


def require_dense(ckpt: Checkpoint, spec: str) -> None:
    """Plans are made for, and applied to, dense models: refuse an already compressed checkpoint."""
    if ckpt.plan is not None:
        raise BatudeError(f"{spec} is already compressed (it carries a rank plan); start from the dense model")


def plan_for(ckpt: Checkpoint, spec: str, plan_path: str) -> RankPlan:
    """The plan at ``plan_path``, refused unless ``ckpt`` is dense and of the architecture the plan was made for."""
    require_dense(ckpt, spec)
    plan = RankPlan.load(plan_path)
    if plan.arch and ckpt.arch is not None and plan.arch != ckpt.arch.ref:
        raise BatudeError(f"{plan_path} was made for {plan.arch}, but {spec} is {ckpt.arch.ref}; "
                          f"make a plan for this model with `batude plan {spec}`")
    return plan


def latency_table_from_args(args: argparse.Namespace, shape: tuple[int, ...]) -> LatencyTable | None:
    """The ``--lut`` table (for this input shape), or None; refuses --oracle or a latency budget without one."""
    budgets = [args.budget, *(args.also or [])]
    if args.lut is None:
        if any(b is not None and b.metric is Metric.LATENCY for b in budgets) or getattr(args, "oracle", False):
            raise BatudeError("latency budgets and --oracle need a latency table; build one with `batude lut build` and pass --lut FILE")
        return None
    table = LatencyTable.load(args.lut)
    if list(table.input_shape) != list(shape[1:]):
        raise BatudeError(f"{args.lut} was measured at input {table.input_shape}, the plan is for {list(shape[1:])}; "
                          "build the table at the same input shape")
    return table


def latency_summary(plan: RankPlan) -> str:
    rec = plan.latency
    if not rec:
        return ""
    t = rec["table"]
    return (f"predicted latency ({t.get('device')} {t.get('dtype')} batch {t.get('batch')} {t.get('backend')}): "
            f"{rec['predicted_ms']:.4g} ms vs dense {rec['dense_ms']:.4g} ms "
            f"({rec['speedup']:.3f}x {'faster than dense' if rec['speedup'] >= 1 else 'the speed of dense: slower'})")


def _oracle_check(model, plan: RankPlan, args: argparse.Namespace, shape, table: LatencyTable) -> RankPlan:
    """Compare ``plan`` with the fastest plan over the table's grid under the same MACs/params limit."""
    limits = [b for b in [args.budget, *(args.also or [])] if b.metric is not Metric.LATENCY]
    if len(limits) != 1:
        raise BatudeError("--oracle minimises latency under one MACs or params limit; give exactly one, e.g. --also 2.52x")
    # the same eligible layers as the plan; ranks on the table's grid whatever --multiple-of says
    problem = RankProblem.from_model(model, shape, limits[0].metric, replace(selector_config(args), multiple_of=1, min_rank=1), table)
    oracle = fastest_plan(problem, problem.limit_of(limits[0]))
    share, gain = oracle_share(plan.latency["speedup"], oracle.latency["speedup"])
    gained = "" if gain is None else (f", {gain:.1%} of its gain over dense "
                                      f"({plan.latency['speedup'] - 1:+.1%} vs {oracle.latency['speedup'] - 1:+.1%})")
    print(f"oracle (exhaustive search over the table's grid at {limits[0]}, accuracy ignored): "
          f"{oracle.latency['predicted_ms']:.4g} ms ({oracle.latency['speedup']:.3f}x dense's speed); "
          f"this plan reaches {share:.1%} of its speed-up{gained}")
    record = {"predicted_ms": oracle.latency["predicted_ms"], "speedup": oracle.latency["speedup"], "share": share,
              "share_of_gain": gain,
              "limit": str(limits[0]), "ranks": {l.name: l.ranks and list(l.ranks) for l in oracle.layers}}
    return replace(plan, options={**plan.options, "oracle": record})


def _cmd_plan(args: argparse.Namespace) -> int:
    check_parent(args.out)  # fail before long work
    check_not_input(args.out, args.model)
    ckpt, shape = load_from_args(args)
    require_dense(ckpt, args.model)
    if str(args.method) in ("energy", "vbmf") and not Path(args.model).exists():
        print(f"note: {args.model} has random weights, so {args.method}'s ranks describe noise; give a trained "
              "checkpoint for ranks that mean something (uniform does not read the weights)", file=sys.stderr)
    table = latency_table_from_args(args, shape)
    plan = select_ranks(ckpt.model, args.budget, args.method, input_shape=shape, config=selector_config(args),
                        latency=table, also=args.also or ())
    plan = plan.with_arch(ckpt.arch.ref if ckpt.arch else None)
    if args.oracle:
        plan = _oracle_check(ckpt.model, plan, args, shape, table)
    plan.save(args.out)
    print(plan_summary(plan))
    if plan.latency:
        print(latency_summary(plan))
    if plan.skipped:
        print(skipped_summary(plan))
    print(f"wrote {args.out}")
    return 0


def apply_with_progress(ckpt: Checkpoint, plan: RankPlan, hooi_iters: int = 0) -> None:
    bar = ProgressBar()
    apply_plan_(ckpt.model, plan, hooi_iters=hooi_iters, progress=lambda i, n, name: bar("factorising", i + 1, n, note=name))


def _cmd_apply(args: argparse.Namespace) -> int:
    check_parent(args.out)  # fail before long work
    check_not_input(args.out, args.model, args.plan)
    ckpt, _ = load_from_args(args)
    plan = plan_for(ckpt, args.model, args.plan)
    apply_with_progress(ckpt, plan, args.hooi_iters)
    save(args.out, ckpt.model, plan=plan, arch=ckpt.arch, metadata={"input_shape": list(plan.input_shape)})
    print(plan_summary(plan))
    print(f"wrote {args.out}")
    return 0


def add_selector_args(p: argparse.ArgumentParser, *, methods: list[str], default: str, budget_required: bool = True) -> None:
    p.add_argument("--method", choices=methods, default=default, help=f"rank selector (default {default})")
    p.add_argument("--budget", type=budget_arg, required=budget_required, help="e.g. 2.52x, 40%%, 1.2GMAC, 3.5MFLOP, params:3x, latency:2x (needs --lut)")
    p.add_argument("--multiple-of", type=int, default=None,
                   help="round ranks to multiples of this (default 1; with --lut: 16 for fp16/bf16 tables, 8 for fp32)")
    p.add_argument("--lut", default=None, metavar="FILE",
                   help="latency table from `batude lut build`: enables latency budgets, keep-dense and variant choice by measured time")
    p.add_argument("--also", action="append", type=budget_arg, metavar="BUDGET",
                   help="a further limit the plan must meet too, e.g. --budget 2.52x --also latency:1x (repeatable)")
    p.add_argument("--min-rank", type=int, default=1, help="smallest rank any factor may get")
    p.add_argument("--include", action="append", metavar="GLOB", help="only layers whose name matches (repeatable)")
    p.add_argument("--exclude", action="append", metavar="GLOB", help="skip layers whose name matches (repeatable)")
    p.add_argument("--kinds", default=",".join(k.value for k in LayerKind), help="eligible layer kinds, comma-separated")
    p.add_argument("--min-in-channels", type=int, default=16, help="layers with fewer input channels stay dense")


def register(sub) -> None:
    p = sub.add_parser("inspect", help="per-layer shapes, MACs, params and ranks of a model")
    add_model_args(p)
    p.add_argument("--json", default=None, metavar="FILE", help="also write the table as JSON")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("plan", help="choose ranks for a budget (training-free) and write a rank plan (JSON)")
    add_model_args(p)
    add_selector_args(p, methods=[m.value for m in Method], default="uniform")
    p.add_argument("--oracle", action="store_true",
                   help="with --lut: also find the fastest plan over the table's grid under the MACs/params limit and "
                        "report this plan's share of its speed-up (recorded in the plan's options)")
    p.add_argument("--out", required=True, help="plan JSON to write")
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser("apply", help="factorise a model with a plan and write a batude checkpoint")
    add_model_args(p)
    p.add_argument("--plan", required=True, help="rank plan JSON (from `batude plan`)")
    p.add_argument("--hooi-iters", type=non_negative_int, default=0, help="HOOI iterations after the SVD init (default 0)")
    p.add_argument("--out", required=True, help="checkpoint to write")
    p.set_defaults(func=_cmd_apply)
