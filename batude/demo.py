"""The quick-start job: inspect -> plan -> apply -> verify -> save/reload -> report.

Everything is checked against an independent measurement: the planned MACs against
``FlopCounterMode`` on the factorised model, the saved checkpoint against the in-memory model.
Output lines go to ``emit`` (the CLI passes ``print``); the report is JSON.
"""

from __future__ import annotations

import copy
import json
import platform
import time
from pathlib import Path
from typing import Callable

import torch

from batude._format import si
from batude._io import write_text_atomic
from batude._version import __version__
from batude.checkpoint import load_checkpoint, load_model, save
from batude.errors import BatudeError
from batude.nn.profile import flop_counter_macs, profile_model
from batude.rank.budget import Budget, Metric
from batude.rank.plan import apply_plan_
from batude.rank.problem import SelectorConfig
from batude.rank.selectors import select_ranks

__all__ = ["run_demo"]


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def run_demo(model_spec: str, budget: Budget, method: str, out: Path, multiple_of: int = 1,
             emit: Callable[[str], None] = lambda line: None) -> dict:
    """Run the pipeline on ``model_spec`` and write ``plan.json``, ``model.pt``, ``report.json``."""
    if budget.metric is not Metric.MACS:
        raise BatudeError("the demo verifies MACs with FlopCounterMode; give a MACs budget such as 2.52x")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ckpt = load_model(model_spec)
    shape = ckpt.input_shape
    profile = profile_model(ckpt.model, shape)
    counter_dense = flop_counter_macs(ckpt.model, shape)
    emit(f"[1/5] {model_spec} at input {list(shape)}: {si(profile.macs, 'MAC')} "
         f"({si(profile.flops, 'FLOP')}) per image, {len(profile.layers)} conv/linear layers; "
         f"FlopCounterMode agrees: {counter_dense == profile.macs}")

    plan = select_ranks(ckpt.model, budget, method, input_shape=shape, config=SelectorConfig(multiple_of=multiple_of))
    plan = plan.with_arch(ckpt.arch.ref if ckpt.arch else None)
    plan.save(out / "plan.json")
    emit(f"[2/5] {method} plan for {budget}: {sum(l.decomposed for l in plan.layers)}/{len(plan.layers)} "
         f"eligible layers factorised, predicted {plan.macs_reduction:.3f}x fewer MACs -> {out / 'plan.json'}")

    dense = copy.deepcopy(ckpt.model).eval()
    t1 = time.perf_counter()
    apply_plan_(ckpt.model, plan)
    model = ckpt.model.eval()
    counter_after = flop_counter_macs(model, shape)
    achieved = counter_dense / counter_after
    emit(f"[3/5] factorised in {time.perf_counter() - t1:.1f}s (tensorly partial_tucker / SVD); "
         f"FlopCounterMode: {si(counter_dense, 'MAC')} -> {si(counter_after, 'MAC')} = {achieved:.4f}x fewer")

    save(out / "model.pt", model, plan=plan, arch=ckpt.arch, metadata={"input_shape": list(shape)})
    reloaded = load_checkpoint(out / "model.pt").model
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y_model, y_reloaded, y_dense = model(x), reloaded(x), dense(x)
    reload_diff = float((y_model - y_reloaded).abs().max())
    emit(f"[4/5] saved {out / 'model.pt'} (weights_only checkpoint with plan); reloaded output max |diff| = {reload_diff:.3g}")

    limit = budget.limit(counter_dense)
    checks = {
        "cost_model_matches_flopcounter": counter_dense == profile.macs and counter_after == plan.macs,
        "budget_met": counter_after <= limit,
        "budget_within_1pct": counter_after >= 0.99 * limit,
        "reload_identical": reload_diff == 0.0,
    }
    checks["passed"] = all(checks.values())
    report = {
        "batude": __version__, "torch": str(torch.__version__), "python": platform.python_version(),
        "model": model_spec, "input_shape": list(shape), "method": method, "budget": budget.to_dict(),
        "counted": "conv+linear MACs per image (FLOPs = 2 * MACs), measured with FlopCounterMode",
        "dense_macs": counter_dense, "compressed_macs": counter_after, "macs_reduction": achieved,
        "dense_params": plan.dense_params, "compressed_params": plan.params, "params_reduction": plan.params_reduction,
        "output_relative_error_vs_dense": _relative_error(y_model, y_dense),
        "seconds": round(time.perf_counter() - t0, 2), "checks": checks,
    }
    write_text_atomic(out / "report.json", json.dumps(report, indent=2) + "\n")
    emit(f"[5/5] checks {'passed' if checks['passed'] else 'FAILED'}: "
         + ", ".join(f"{k}={v}" for k, v in checks.items() if k != "passed") + f" -> {out / 'report.json'}")
    return report
