"""Dense training with checkpoints every epoch, ``resume``, and a JSON log.

Under ``torchrun`` (see :mod:`batude.train.distributed`) each phase trains a DDP wrapper of the
model on sharded loaders; rank 0's BatchNorm statistics are copied to every rank after each epoch,
so evaluation, checkpoints and the returned model are the same on every rank.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from batude.train.config import TrainConfig
from batude.train.distributed import local_device, release_ddp, sync_buffers, wrap_ddp
from batude.train.loop import Diverged, Progress, compiled, evaluate, make_optimizer, seed_everything, train_one_epoch
from batude.train.runner import Run, set_rng_state

__all__ = ["TrainResult", "train_model", "run_phase", "epoch_seconds"]

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    model: nn.Module
    accuracy: float  # final test top-1, percent
    log: list[dict[str, Any]]


def prepare(model: nn.Module, cfg: TrainConfig) -> torch.device:
    """Move ``model`` to the configured device (and channels_last on CUDA); return the device.

    In a process group ``cuda`` means this process's GPU (``cuda:LOCAL_RANK``).
    """
    device = local_device(cfg.resolved_device())
    model.to(device)
    if cfg.use_channels_last(device):
        model.to(memory_format=torch.channels_last)
    return device


def run_phase(run: Run, phase: str, model: nn.Module, train_loader, test_loader, cfg: TrainConfig, device: torch.device,
              *, epochs: int, lr: float, progress: Progress | None = None, hooks: dict[str, Any] | None = None) -> float:
    """Train ``epochs`` epochs of ``phase`` (resuming inside it if the run's state says so); return test accuracy.

    ``hooks``: ``extra_loss``/``after_step``/``teacher``/``kd_alpha``/``kd_temperature`` for
    :func:`train_one_epoch`; ``epoch_info()`` adds fields to each log entry; ``state()`` adds
    fields to each checkpoint; ``load(state)`` restores them on resume.
    """
    hooks = dict(hooks or {})
    epoch_info, extra_state, restore = hooks.pop("epoch_info", None), hooks.pop("state", None), hooks.pop("load", None)
    optimizer, scheduler = make_optimizer(model, cfg, lr, epochs * len(train_loader))
    start = run.resume_point(phase)
    if start:
        state = run.state
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        if restore is not None:
            restore(state)
    accuracy = float("nan")
    trained = compiled(wrap_ddp(model, device), cfg) if start < epochs else model  # DDP: a collective, on every rank alike
    for epoch in range(start, epochs):
        train_loader.set_epoch(epoch)
        label = f"{phase} {epoch + 1}/{epochs}"
        try:
            stats = train_one_epoch(trained, train_loader, optimizer, scheduler, cfg, device, label=label, progress=progress, **hooks)
        except Diverged as err:
            kept = f"the last good state ({phase} epoch {epoch}) is in {run.dir} (--resume retries from it); " if run.dir and epoch else ""
            raise Diverged(f"{err} of {label}; {kept}a lower learning rate in a new run usually helps") from None
        sync_buffers(model)  # rank 0's BatchNorm statistics everywhere before evaluating and saving
        test_loss, accuracy = evaluate(model, test_loader, device, cfg)
        entry = {"phase": phase, "epoch": epoch + 1, "train_loss": stats.loss, "train_acc": stats.accuracy,
                 "test_loss": test_loss, "test_acc": accuracy, "lr": optimizer.param_groups[0]["lr"],
                 "seconds": round(stats.seconds, 3)}
        if epoch_info is not None:
            entry.update(epoch_info())
        run.record(entry)
        log.info("%s: train loss %.4f, test acc %.2f%%", label, stats.loss, accuracy)
        run.checkpoint(phase, epoch + 1, model, optimizer, scheduler, **(extra_state() if extra_state and run.write else {}))
    del trained
    release_ddp()
    if start >= epochs and epochs > 0:  # resumed after this phase's last epoch
        accuracy = evaluate(model, test_loader, device, cfg)[1]
    return accuracy


def train_model(model: nn.Module, train_loader, test_loader, cfg: TrainConfig, out_dir: str | Path | None = None,
                resume: bool = False, progress: Progress | None = None) -> TrainResult:
    """Train ``model`` for ``cfg.epochs`` epochs (SGD, cosine schedule); checkpoint each epoch to ``out_dir``."""
    seed_everything(cfg.seed)
    device = prepare(model, cfg)
    run = Run(out_dir, "train", {"train": cfg.to_dict()}, resume)
    accuracy = run_phase(run, "train", model, train_loader, test_loader, cfg, device, epochs=cfg.epochs, lr=cfg.lr, progress=progress)
    if cfg.epochs == 0:
        accuracy = evaluate(model, test_loader, device, cfg)[1]
    return TrainResult(model, accuracy, run.log)


def epoch_seconds(model: nn.Module, train_loader, cfg: TrainConfig, epochs: int = 2, hooks: dict[str, Any] | None = None) -> list[float]:
    """Train ``model`` (in place) ``epochs`` epochs as a phase trains it and return each epoch's seconds.

    Same device, memory format, optimiser and ``cfg.compile`` as :func:`run_phase`, without its
    checkpoints and evaluation: for speed measurements. ``hooks`` as in :func:`train_one_epoch`
    (build BC-ADL after :func:`prepare`, so that its state is on the model's device).
    """
    device = prepare(model, cfg)
    optimizer, scheduler = make_optimizer(model, cfg, cfg.lr, epochs * len(train_loader))
    trained = compiled(model, cfg)
    seconds = []
    for epoch in range(epochs):
        train_loader.set_epoch(epoch)
        seconds.append(train_one_epoch(trained, train_loader, optimizer, scheduler, cfg, device, **(hooks or {})).seconds)
    return seconds
