"""``batude-export``: lower a (compressed) model, export verified ONNX, build TensorRT engines, write a Triton repository."""

from __future__ import annotations

import argparse
from typing import Sequence

from batude._io import check_out_dir
from batude.checkpoint import load_model
from batude.cli._common import Parser, ProgressBar, run
from batude.cli.model_cmds import plan_for
from batude.export.onnx_export import DEFAULT_OPSET
from batude.export.pipeline import ExportOptions, export_model
from batude.rank.plan import apply_plan_

__all__ = ["build_export_parser", "export_main"]


def _ints(text: str, sep: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(sep))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} '{text}' must be integers separated by '{sep}'") from None
    if any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"{what} '{text}' must be positive")
    return values


def _profile(text: str) -> tuple[int, int, int]:
    values = _ints(text, ":", "dynamic batch")
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"dynamic batch '{text}' must be MIN:OPT:MAX, e.g. 1:64:256")
    return values  # type: ignore[return-value]


def build_export_parser() -> argparse.ArgumentParser:
    p = Parser(prog="batude-export", description="Lower a (compressed) model to verified ONNX and TensorRT engines.")
    p.add_argument("model", metavar="MODEL", help="batude checkpoint, .pt2 program, or torchvision:NAME / batude:NAME")
    p.add_argument("--plan", help="rank plan (from `batude plan`) to apply to a dense MODEL before export")
    p.add_argument("--out", default="export_out", help="output folder (model.onnx, report.json, model.plan)")
    p.add_argument("--trt", action="store_true", help="also build TensorRT engines (needs TensorRT and a GPU)")
    p.add_argument("--fp16", action="store_true", help="half-precision export (TensorRT FP16)")
    batch = p.add_mutually_exclusive_group()
    batch.add_argument("--batch", type=lambda t: _ints(t, ",", "batch"), default=(1,), help="static batch sizes, e.g. 1,64")
    batch.add_argument("--dynamic-batch", type=_profile, metavar="MIN:OPT:MAX", help="dynamic batch profile, e.g. 1:64:256")
    p.add_argument("--input-shape", type=lambda t: _ints(t, ",", "input shape"), default=None, metavar="C,H,W",
                   help="per-image input shape (default: from the checkpoint, else 3,224,224)")
    p.add_argument("--variant", choices=["chain", "min-flops", "auto"], default="auto",
                   help="Tucker chain lowering: auto (default) = the variants the plan's latency table found fastest "
                        "(`batude plan --lut`), else min-flops; chain = always the 3-conv chain")
    p.add_argument("--triton-repo", metavar="DIR", help="also write a Triton Inference Server model repository")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--legacy-exporter", action="store_true", help="use the TorchScript exporter instead of dynamo")
    p.add_argument("--arch", default=None, help="architecture of a plain state_dict checkpoint")
    p.add_argument("--trust-pickle", action="store_true", help="allow loading pickled whole models (runs code from the file)")
    p.set_defaults(func=_cmd_export)
    return p


def _variant_policy(choice: str, plan, fp16: bool) -> str | dict[str, str]:
    """``auto``: the plan's table-chosen variants if its table was measured in this precision, else min-flops."""
    if choice != "auto":
        return choice
    if plan is None or not plan.variants:
        return "min-flops"
    measured = plan.latency["table"].get("dtype")
    if measured != ("float16" if fp16 else "float32"):
        print(f"note: the plan's variants were chosen by a {measured} latency table; exporting "
              f"{'fp16' if fp16 else 'fp32'} with the fewest-MACs variants instead (--variant min-flops)")
        return "min-flops"
    return plan.variants


def _cmd_export(args: argparse.Namespace) -> int:
    out = check_out_dir(args.out)  # fail before long work
    if args.triton_repo:
        check_out_dir(args.triton_repo, "--triton-repo")
    ckpt = load_model(args.model, arch=args.arch, trust_pickle=args.trust_pickle)
    plan = ckpt.plan
    if args.plan:
        plan = plan_for(ckpt, args.model, args.plan)
        bar = ProgressBar()
        apply_plan_(ckpt.model, plan, progress=lambda i, n, name: bar("factorising", i + 1, n, note=name))
    shape = tuple(args.input_shape) if args.input_shape else tuple(ckpt.input_shape[1:])
    options = ExportOptions(
        input_shape=shape, batches=tuple(args.batch), dynamic=args.dynamic_batch, fp16=args.fp16,
        variant=_variant_policy(args.variant, plan, args.fp16), opset=args.opset,
        dynamo=not args.legacy_exporter, trt=args.trt, triton_repo=args.triton_repo,
    )
    report = export_model(ckpt.model, out, options, plan=plan, emit=lambda line: print(line, flush=True))
    onnx = report["onnx"]
    print(f"exported {out / 'model.onnx'}: {report['macs_exported'] / 1e6:.2f} MMAC per image, "
          f"onnxruntime relative error {onnx['rel_error']:.2e} (<= {onnx['tolerance']:g}); report {out / 'report.json'}")
    return 0


def export_main(argv: Sequence[str] | None = None) -> int:
    """``batude-export`` console script."""
    return run(build_export_parser(), argv)
