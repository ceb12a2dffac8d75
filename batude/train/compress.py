"""``compress``: rank selection (BC-ADL or a training-free selector), decomposition, fine-tuning.

BATUDE (``method="batude"``): ``epochs_admm`` epochs of BC-ADL training of the dense model, ranks
read from the last Z-step (filled to the budget), decomposition at those ranks, ``epochs_ft``
epochs of fine-tuning. Baselines: plan at once, decompose, fine-tune ``epochs_admm + epochs_ft``
epochs, so every method trains for the same number of epochs. Optional knowledge distillation
from the dense model during fine-tuning. Resumable from any epoch via :class:`~batude.train.runner.Run`.

Data-parallel (``torchrun``): every rank runs BC-ADL's Z/U steps on its copy of the DDP-averaged
weights, then rank 0's BC-ADL state (Z, U, ranks, rho, spectra) is broadcast and loaded on the
other ranks, after the initial Z-step, after every update and after a resume. The plan is taken
from rank 0 as well and the decomposed weights are copied from rank 0, so every rank fine-tunes
the same factorised model and the plan cannot differ between ranks even if an SVD did.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from batude.rank.bcadl import BCADL
from batude.rank.budget import Budget
from batude.rank.latency import LatencyModel
from batude.rank.plan import RankPlan, apply_plan_
from batude.rank.problem import RankProblem
from batude.rank.selectors import select_ranks
from batude.train.config import CompressConfig, CompressMethod
from batude.train.distributed import broadcast_tree, is_distributed, sync_state, sync_weights
from batude.train.fit import prepare, run_phase
from batude.train.loop import Progress, evaluate, seed_everything
from batude.train.runner import Run

__all__ = ["CompressResult", "compress"]

log = logging.getLogger(__name__)


@dataclass
class CompressResult:
    model: nn.Module
    plan: RankPlan
    dense_accuracy: float  # percent, test top-1 of the input model
    decomposed_accuracy: float  # right after decomposition, before fine-tuning
    accuracy: float  # after fine-tuning
    log: list[dict[str, Any]]


def _input_shape(loader) -> tuple[int, ...]:
    x, _ = next(iter(loader))
    return (1, *x.shape[1:])


def _learn_ranks(run: Run, model: nn.Module, budget: Budget, cfg: CompressConfig, loaders, device, shape, progress,
                 latency: LatencyModel | None = None, also: Sequence[Budget] = ()) -> RankPlan:
    train_loader, test_loader = loaders
    period = max(1, len(train_loader) // cfg.updates_per_epoch)
    admm = BCADL(model, budget, replace(cfg.bcadl, period=period), input_shape=shape, latency=latency, also=also)
    sync_state(admm)  # data-parallel: rank 0's Z, U, ranks, rho, spectra and step count on every rank

    def after_step() -> None:
        if admm.step():  # every rank updates at the same step: all take part in the broadcast
            sync_state(admm)

    def load(state: dict) -> None:
        admm.load_state_dict(state["bcadl"])
        sync_state(admm)

    hooks = {
        "extra_loss": admm.penalty, "after_step": after_step,
        "epoch_info": lambda: {"ranks": {c.name: None if r is None else list(r) for c, r in zip(admm.problem.candidates, admm.ranks)},
                               "budget_used": admm.cost() / admm.limit, "rho": admm.rho},
        "state": lambda: {"bcadl": admm.state_dict()},
        "load": load,
    }
    run_phase(run, "admm", model, train_loader, test_loader, cfg.train, device,
              epochs=cfg.epochs_admm, lr=cfg.lr_admm, progress=progress, hooks=hooks)
    return admm.plan()


def compress(model: nn.Module, train_loader, test_loader, budget: Budget | str, cfg: CompressConfig | None = None,
             out_dir: str | Path | None = None, resume: bool = False, progress: Progress | None = None,
             latency: LatencyModel | None = None, also: Sequence[Budget | str] = ()) -> CompressResult:
    """Compress a trained dense ``model`` to ``budget``; see the module docstring.

    ``train_loader`` must be a :func:`batude.data.make_loader` loader (epoch-aware). The model is
    modified in place and returned in the result together with its :class:`RankPlan`. ``latency``
    (a latency table of this model) enables latency budgets and records predicted latency and
    variants in the plan; ``also``: further limits the plan must meet (see :func:`select_ranks`).
    """
    cfg = cfg or CompressConfig()
    budget = Budget.parse(budget) if isinstance(budget, str) else budget
    also = [Budget.parse(b) if isinstance(b, str) else b for b in also]
    seed_everything(cfg.train.seed)
    device = prepare(model, cfg.train)
    shape = _input_shape(train_loader)
    if not resume:  # an impossible budget fails before any folder is created or epoch is run
        RankProblem.from_model(model, shape, budget.metric, cfg.bcadl.selector(), latency,
                               [b.metric for b in also]).limits(budget, also)
    record = {"compress": cfg.to_dict(), "budget": budget.to_dict()}
    if also or latency is not None:  # a resumed run must plan against the same limits and table
        record.update(also=[b.to_dict() for b in also], latency_table=None if latency is None else dict(latency.key))
    run = Run(out_dir, "compress", record, resume)
    teacher = copy.deepcopy(model).eval() if cfg.kd else None
    dense_acc = evaluate(model, test_loader, device, cfg.train)[1]
    state = run.state or {}
    plan = RankPlan.from_dict(state["plan"]) if state.get("plan") else None
    if plan is None:
        if cfg.method is CompressMethod.BATUDE:
            plan = _learn_ranks(run, model, budget, cfg, (train_loader, test_loader), device, shape, progress, latency, also)
        else:
            plan = select_ranks(model, budget, cfg.method.value, input_shape=shape, config=cfg.bcadl.selector(),
                                latency=latency, also=also)
        if is_distributed():
            plan = RankPlan.from_dict(broadcast_tree(plan.to_dict()))
        apply_plan_(model, plan, hooi_iters=cfg.hooi_iters)
        sync_weights(model)  # rank 0's factorisation everywhere
    else:  # resuming in fine-tuning: rebuild the factorised structure; run_phase loads the weights
        apply_plan_(model, plan, init="empty")
    prepare(model, cfg.train)
    if run.resume_point("finetune") == 0:
        decomposed_acc = evaluate(model, test_loader, device, cfg.train)[1]
    else:
        decomposed_acc = float(state["decomposed_accuracy"])
    epochs_ft = cfg.epochs_ft if cfg.method is CompressMethod.BATUDE else cfg.total_epochs
    hooks = {"state": lambda: {"plan": plan.to_dict(), "decomposed_accuracy": decomposed_acc}}
    if teacher is not None:
        hooks.update(teacher=teacher, kd_alpha=cfg.kd_alpha, kd_temperature=cfg.kd_temperature)
    accuracy = run_phase(run, "finetune", model, train_loader, test_loader, cfg.train, device,
                         epochs=epochs_ft, lr=cfg.lr_ft, progress=progress, hooks=hooks)
    if epochs_ft == 0:
        accuracy = decomposed_acc
    return CompressResult(model, plan, dense_acc, decomposed_acc, accuracy, run.log)
