"""``export_model``: lower -> ONNX (verified) -> report -> [TensorRT engines] -> [Triton repository].

Each step checks its own output (``onnx_from_module`` runs the checker and onnxruntime; engines are
built by :mod:`batude.export.trt` with a manifest). ``report.json`` is written as soon as the ONNX
model is verified, so a TensorRT failure still leaves a usable, verified ONNX export behind.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from batude._io import output_dir, write_text_atomic
from batude._version import __version__
from batude.errors import BatudeError
from batude.export.lower import lower
from batude.export.onnx_export import DEFAULT_OPSET, onnx_from_module
from batude.export.triton import TensorSpec, write_triton_model
from batude.nn.decompose import densify
from batude.nn.profile import flop_counter_macs
from batude.rank.plan import RankPlan

__all__ = ["ExportOptions", "export_model"]


@dataclass(frozen=True)
class ExportOptions:
    """What to export. ``batches``: static batch sizes (TensorRT builds one engine each);
    ``dynamic``: ``(min, opt, max)`` batch profile instead. ONNX gets a dynamic batch axis when
    more than one batch size is needed."""

    input_shape: tuple[int, ...]  # per image: C, H, W
    batches: tuple[int, ...] = (1,)
    dynamic: tuple[int, int, int] | None = None
    fp16: bool = False
    variant: str | Mapping[str, str] = "min-flops"
    opset: int = DEFAULT_OPSET
    dynamo: bool = True
    trt: bool = False
    triton_repo: str | None = None
    model_name: str = "batude_model"

    def __post_init__(self) -> None:
        if len(self.input_shape) != 3 or any(int(d) <= 0 for d in self.input_shape):
            raise BatudeError(f"input shape {list(self.input_shape)} must be three positive per-image sizes C,H,W, e.g. 3,224,224")
        if not self.batches or any(int(b) <= 0 for b in self.batches):
            raise BatudeError(f"batch sizes {list(self.batches)} must be positive")
        if self.dynamic is not None and not (1 <= self.dynamic[0] <= self.dynamic[1] <= self.dynamic[2]):
            raise BatudeError(f"dynamic batch {self.dynamic} must satisfy 1 <= min <= opt <= max")

    @property
    def dynamic_onnx(self) -> bool:
        return self.dynamic is not None or len(self.batches) > 1


def _plan_report(plan: RankPlan, model: nn.Module, shape1: tuple[int, ...], lowered_macs: int) -> dict:
    """The plan's summary, its MACs reduction counted at the export's input shape (the plan's
    ``dense_macs`` was counted at the shape it was planned for, which may differ)."""
    same = tuple(plan.input_shape[1:]) == tuple(shape1[1:])
    dense_macs = plan.dense_macs if same else flop_counter_macs(densify(model).eval(), shape1)
    return {"method": plan.method, "budget": None if plan.budget is None else str(plan.budget), "dense_macs": dense_macs,
            "macs_reduction": dense_macs / lowered_macs, "ranks": {l.name: (list(l.ranks) if l.ranks else None) for l in plan.layers}}


def export_model(model: nn.Module, out: str | Path, options: ExportOptions, plan: RankPlan | None = None,
                 emit: Callable[[str], None] = lambda line: None) -> dict:
    """Export ``model`` into folder ``out``; returns the report (also written as ``report.json``)."""
    out = Path(out)
    opts = options
    shape1 = (1, *opts.input_shape)
    policy = "the plan's table-chosen variants" if isinstance(opts.variant, Mapping) else f"{opts.variant} variants"
    emit(f"[1/4] lowering: {policy}, BatchNorm folding")
    dense_macs = flop_counter_macs(model.eval(), shape1)
    lowered, variants = lower(model, shape1, opts.variant)
    lowered_macs = flop_counter_macs(lowered, shape1)
    emit(f"[2/4] ONNX export ({'dynamo' if opts.dynamo else 'torchscript'} exporter, opset {opts.opset}) and onnxruntime check")
    t0 = time.perf_counter()
    first_batch = opts.dynamic[1] if opts.dynamic else opts.batches[0]
    with output_dir(out):  # a folder created here is removed again if the export fails
        onnx_report = onnx_from_module(lowered, (first_batch, *opts.input_shape), out / "model.onnx", dynamo=opts.dynamo,
                                       opset=opts.opset, dynamic_batch=opts.dynamic_onnx, fp16=opts.fp16)
    with torch.no_grad():
        n_out = int(lowered(torch.zeros(shape1, dtype=torch.float16 if opts.fp16 else torch.float32)).shape[-1])
    report = {
        "batude": __version__, "torch": str(torch.__version__), "input_shape": list(opts.input_shape),
        "onnx": onnx_report.to_dict(), "export_seconds": round(time.perf_counter() - t0, 2),
        "counted": "conv+linear MACs per image (FLOPs = 2 * MACs), FlopCounterMode",
        "macs_before_lowering": dense_macs, "macs_exported": lowered_macs,
        "plan": None if plan is None else _plan_report(plan, model, shape1, lowered_macs),
        "variants": {k: v.value for k, v in variants.items()}, "engines": [], "triton": None,
    }
    write_text_atomic(out / "report.json", json.dumps(report, indent=2) + "\n")
    emit(f"      verified: {onnx_report.op_counts.get('Conv', 0)} Conv nodes, relative error {onnx_report.rel_error:.2e} -> {out / 'model.onnx'}")
    if opts.trt:
        emit("[3/4] TensorRT engines")
        report["engines"] = _build_engines(out, opts, onnx_report.dtype)
        write_text_atomic(out / "report.json", json.dumps(report, indent=2) + "\n")
    if opts.triton_repo:
        emit(f"[4/4] Triton model repository -> {opts.triton_repo}")
        report["triton"] = _triton(out, opts, n_out, report["engines"])
        write_text_atomic(out / "report.json", json.dumps(report, indent=2) + "\n")
    return report


def _build_engines(out: Path, opts: ExportOptions, dtype: str) -> list[dict]:
    from batude.export.trt import EngineSpec, Precision, engine_from_onnx

    common = {"input_name": "input", "input_shape": tuple(opts.input_shape), "onnx_dtype": dtype,
              "precision": Precision.FP16 if opts.fp16 else Precision.FP32, "timing_cache": str(out / "timing.cache")}
    specs = [EngineSpec(profile=opts.dynamic, **common)] if opts.dynamic else [EngineSpec(batch=b, **common) for b in opts.batches]
    engines = []
    for spec in specs:
        name = "model.plan" if len(specs) == 1 else f"model_b{spec.batch}.plan"
        try:
            manifest = engine_from_onnx(out / "model.onnx", out / name, spec)
        except BatudeError as err:
            raise BatudeError(f"{err}; the verified ONNX model is in {out / 'model.onnx'} and can be used without it") from None
        engines.append({"path": str(out / name), "manifest": manifest})
    return engines


def _triton(out: Path, opts: ExportOptions, n_out: int, engines: Sequence[dict]) -> dict:
    dtype = "float16" if opts.fp16 else "float32"
    if opts.dynamic_onnx:
        max_batch = opts.dynamic[2] if opts.dynamic else max(opts.batches)
        inputs, outputs = [TensorSpec("input", dtype, tuple(opts.input_shape))], [TensorSpec("output", dtype, (n_out,))]
    else:
        max_batch = 0
        b = opts.batches[0]
        inputs, outputs = [TensorSpec("input", dtype, (b, *opts.input_shape))], [TensorSpec("output", dtype, (b, n_out))]
    written = {"onnx": str(write_triton_model(opts.triton_repo, opts.model_name, out / "model.onnx", inputs, outputs, max_batch))}
    if len(engines) == 1:
        written["tensorrt"] = str(write_triton_model(opts.triton_repo, f"{opts.model_name}_trt", engines[0]["path"], inputs, outputs, max_batch))
    return written
