"""The quick-start job on real data: train -> compress (BATUDE vs uniform) -> verify -> export -> report.

Default (CPU, a few minutes on 2 cores): CIFAR-style ResNet-20 on a 12,000-image stratified subset
of Fashion-MNIST, 3 dense epochs, then BATUDE at 2.52x fewer FLOPs (2 BC-ADL + 2 fine-tuning
epochs) and the uniform-rank baseline with the same 4 epochs. ``full=True`` runs the full schedule
(all 60,000 images, 30 dense epochs, 10 + 10 compression epochs), meant for a GPU. Every cost is
checked against ``FlopCounterMode``, the saved checkpoints are reloaded and compared, and the
BATUDE model is exported to ONNX (``export/``) and checked in onnxruntime.
"""

from __future__ import annotations

import copy
import json
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from batude._format import si
from batude._io import write_text_atomic
from batude._version import __version__
from batude.checkpoint import load_checkpoint, save
from batude.data import DataSpec, load_datasets, make_loader
from batude.models.registry import ArchRef
from batude.nn.profile import flop_counter_macs
from batude.errors import BatudeError
from batude.rank.budget import Budget, Metric
from batude.train import CompressConfig, TrainConfig, compress, train_model
from batude.train.loop import Progress, seed_everything

__all__ = ["DemoSchedule", "run_demo"]


@dataclass(frozen=True)
class DemoSchedule:
    subset: int | None
    dense_epochs: int
    epochs_admm: int
    epochs_ft: int

    def describe(self) -> str:
        data = "all 60,000" if self.subset is None else f"a {self.subset:,}-image subset of the 60,000"
        return (f"{data} Fashion-MNIST training images; {self.dense_epochs} dense epochs, "
                f"{self.epochs_admm} BC-ADL + {self.epochs_ft} fine-tuning epochs per compressed model")


SMALL = DemoSchedule(subset=12_000, dense_epochs=3, epochs_admm=2, epochs_ft=2)
FULL = DemoSchedule(subset=None, dense_epochs=30, epochs_admm=10, epochs_ft=10)


def run_demo(out: Path, budget: Budget | str = "2.52x", schedule: DemoSchedule = SMALL, device: str | None = None,
             data_dir: str | None = None, emit: Callable[[str], None] = lambda line: None,
             progress: Progress | None = None) -> dict:
    """Run the pipeline; write ``dense.pt``, ``batude.pt``, ``uniform.pt``, ``plan.json``, ``report.json``.

    Runs are kept in memory (the demo does not resume), so it can be rerun into the same folder.
    """
    budget = Budget.parse(budget) if isinstance(budget, str) else budget
    if budget.metric is not Metric.MACS:
        raise BatudeError(f"the demo compares FLOPs; give a FLOPs budget such as 2.52x, not {budget}")
    sched = schedule
    t0 = time.perf_counter()
    note = {SMALL: "small CPU demo; --full for the full schedule", FULL: "full"}.get(sched, "custom")
    emit(f"schedule ({note}): {sched.describe()}")
    train, test, info = load_datasets(DataSpec("fashion-mnist", root=data_dir, subset=sched.subset))
    out.mkdir(parents=True, exist_ok=True)  # only once the data is there: a failure leaves no empty folder
    train_loader, test_loader = make_loader(train, 128, True, 0), make_loader(test, 512, False, 0)
    shape = (1, info.in_channels, *info.image_size)
    arch = ArchRef("batude:resnet20", {"in_channels": info.in_channels, "num_classes": info.num_classes})

    dense_cfg = TrainConfig(epochs=sched.dense_epochs, lr=0.1, device=device)
    seed_everything(dense_cfg.seed)
    dense = train_model(arch.build(), train_loader, test_loader, dense_cfg, progress=progress)
    dense_model = dense.model.cpu().float()
    save(out / "dense.pt", dense_model, arch=arch, metadata={"input_shape": list(shape), "test_accuracy": dense.accuracy})
    emit(f"[1/4] dense ResNet-20: {dense.accuracy:.2f}% test accuracy, {si(flop_counter_macs(dense_model, shape), 'MAC')} per image")

    results = {}
    for method in ("batude", "uniform"):
        cfg = CompressConfig(method=method, epochs_admm=sched.epochs_admm, epochs_ft=sched.epochs_ft,
                             train=replace(dense_cfg, epochs=sched.epochs_admm + sched.epochs_ft))
        res = compress(copy.deepcopy(dense_model), train_loader, test_loader, budget, cfg, progress=progress)
        model = res.model.cpu().float()
        save(out / f"{method}.pt", model, plan=res.plan, arch=arch, metadata={"input_shape": list(shape), "test_accuracy": res.accuracy})
        if method == "batude":
            res.plan.with_arch(arch.ref).save(out / "plan.json")
        results[method] = _verify(out / f"{method}.pt", model, res, shape, budget)
        emit(f"[{2 if method == 'batude' else 3}/4] {method}: {results[method]['macs_reduction']:.3f}x fewer FLOPs "
             f"(FlopCounterMode), accuracy {res.dense_accuracy:.2f}% -> {res.accuracy:.2f}% "
             f"(drop {res.dense_accuracy - res.accuracy:+.2f} pt)")
    exported = _export(out, results, shape, emit)
    checks = {f"{m}_{k}": v for m, r in results.items() for k, v in r["checks"].items()}
    checks["onnx_matches_pytorch"] = exported["onnx"]["rel_error"] <= exported["onnx"]["tolerance"]
    checks["passed"] = all(checks.values())
    report = {
        "batude": __version__, "torch": str(torch.__version__), "python": platform.python_version(),
        "schedule": sched.describe(), "budget": budget.to_dict(), "dense_accuracy": dense.accuracy,
        "counted": "conv+linear MACs per image (FLOPs = 2 * MACs), measured with FlopCounterMode",
        "methods": results, "export": {"folder": str(out / "export"), "onnx": exported["onnx"], "variants": exported["variants"]},
        "checks": checks, "seconds": round(time.perf_counter() - t0, 1),
    }
    write_text_atomic(out / "report.json", json.dumps(report, indent=2) + "\n")
    emit(f"checks {'passed' if checks['passed'] else 'FAILED'} in {report['seconds']:.0f}s -> {out / 'report.json'}")
    return report


def _export(out: Path, results: dict, shape: tuple[int, ...], emit: Callable[[str], None]) -> dict:
    """Export the BATUDE model like ``batude-export out/batude.pt --out out/export`` and check it."""
    from batude.export.pipeline import ExportOptions, export_model

    ckpt = load_checkpoint(out / "batude.pt")
    options = ExportOptions(input_shape=tuple(shape[1:]), batches=(1, 64))
    report = export_model(ckpt.model, out / "export", options, plan=ckpt.plan)
    onnx = report["onnx"]
    emit(f"[4/4] exported the BATUDE model to {out / 'export' / 'model.onnx'}: {onnx['op_counts'].get('Conv', 0)} Conv "
         f"nodes, onnxruntime vs PyTorch relative error {onnx['rel_error']:.1e} (limit {onnx['tolerance']:g})")
    return report


def _verify(path: Path, model: torch.nn.Module, res, shape: tuple[int, ...], budget: Budget) -> dict:
    dense_macs, macs = res.plan.dense_macs, flop_counter_macs(model, shape)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = float((load_checkpoint(path).model(x) - model.eval()(x)).abs().max())
    limit = budget.limit(dense_macs)
    return {
        "accuracy": {"dense": res.dense_accuracy, "decomposed": res.decomposed_accuracy, "final": res.accuracy},
        "dense_macs": dense_macs, "macs": macs, "macs_reduction": dense_macs / macs,
        "ranks": {l.name: (list(l.ranks) if l.ranks else None) for l in res.plan.layers},
        "checks": {"plan_matches_flopcounter": macs == res.plan.macs, "budget_met": macs <= limit,
                   "budget_within_1pct": macs >= 0.99 * limit, "reload_identical": diff == 0.0},
    }
