"""Epoch-level training mechanics: one epoch, evaluation, distillation loss, optimiser/schedule.

Everything here is stateless apart from the objects passed in; :mod:`batude.train.runner` owns
checkpoints, resume and logs. Progress goes to an optional callback (the CLI draws the bar).
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from batude.errors import BatudeError, Diverged
from batude.train.config import TrainConfig
from batude.train.distributed import all_reduce_sums

__all__ = ["Diverged", "EpochStats", "Progress", "epoch_lines", "seed_everything", "make_optimizer", "compiled", "train_one_epoch", "evaluate",
           "kd_loss"]

Progress = Callable[[str, int, int, float], None]  # (phase label, step, steps, running loss)


def epoch_lines(name: str, write: Callable[[str], None] | None = None) -> Progress:
    """A :data:`Progress` that writes one line per finished epoch (default: printed and flushed), so the logs
    of long unattended runs show how far they got."""
    started = time.perf_counter()
    write = write or (lambda line: print(line, flush=True))

    def report(label: str, step: int, steps: int, loss: float) -> None:
        if step == steps:
            write(f"  {name}: {label} done, loss {loss:.4f}, {time.perf_counter() - started:.0f}s into the run")
    return report


@dataclass(frozen=True)
class EpochStats:
    loss: float
    accuracy: float  # percent
    seconds: float
    steps: int


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(model: nn.Module, cfg: TrainConfig, lr: float, total_steps: int):
    """SGD (momentum, optional Nesterov, weight decay) with per-step cosine decay from ``lr`` to 0."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=cfg.momentum,
                                nesterov=cfg.nesterov and cfg.momentum > 0, weight_decay=cfg.weight_decay)
    total = max(int(total_steps), 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))
    return optimizer, scheduler


def compiled(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """``model`` under ``torch.compile`` in ``cfg.compile``'s mode (static shapes), or ``model`` when that is None.

    The result shares ``model``'s parameters and buffers; train through it, save and evaluate ``model``.
    Compiling resets dynamo's caches first: they are keyed by the forward's code, which every
    architecture of a sweep shares, and past the recompile limit (8) dynamo would silently run eager.
    Phases run one after another, so the previous phase's graphs are no longer needed.
    """
    if cfg.compile is None:
        return model
    torch._dynamo.reset()
    return torch.compile(model, mode=cfg.compile, dynamic=False)


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al. 2015 distillation term ``T^2 * KL(softmax(t/T) || softmax(s/T))`` (batch mean)."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1),
                    reduction="batchmean", log_target=True) * t * t


def _autocast(device: torch.device, enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _sharded(loader: Iterable) -> bool:
    """True for a loader that holds only this rank's shard (its counts must be summed over ranks)."""
    return getattr(getattr(loader, "sampler", None), "world_size", 1) > 1


def _to(batch: Iterable[torch.Tensor], device: torch.device, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = batch
    x = x.to(device, non_blocking=True)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    scheduler,
    cfg: TrainConfig,
    device: torch.device,
    *,
    extra_loss: Callable[[], torch.Tensor] | None = None,
    after_step: Callable[[], object] | None = None,
    teacher: nn.Module | None = None,
    kd_alpha: float = 0.5,
    kd_temperature: float = 4.0,
    label: str = "train",
    progress: Progress | None = None,
) -> EpochStats:
    """One pass over ``loader``: ``loss = CE(+label smoothing) [+ KD] [+ extra_loss()]``.

    ``after_step`` runs after each optimiser step (BC-ADL's ``step``). Raises :class:`Diverged` (a
    :class:`BatudeError`) when a loss is not finite, at most one step later (see :class:`_Tally`).
    ``model`` may be a DDP wrapper; with a sharded loader the returned loss and accuracy are over
    all ranks' examples.
    """
    model.train()
    amp, channels_last = cfg.use_amp(device), cfg.use_channels_last(device)
    start, steps = time.perf_counter(), len(loader)  # type: ignore[arg-type]
    sharded = _sharded(loader)
    tally = _Tally(sharded, steps, label, progress)
    for step, batch in enumerate(loader):
        x, y = _to(batch, device, channels_last)
        with _autocast(device, amp):
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            if teacher is not None:
                with torch.no_grad():
                    t_logits = teacher(x)
                loss = (1 - kd_alpha) * loss + kd_alpha * kd_loss(logits.float(), t_logits.float(), kd_temperature)
        if extra_loss is not None:
            loss = loss + extra_loss()
        hits = (logits.argmax(1) == y).sum()  # now: under CUDA graphs (compile reduce-overhead) a later replay may reuse its memory
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        tally.read_back()  # the previous step's numbers: its kernels ran while this step's were queued
        tally.hold(step, loss.detach(), hits, len(y))
        if after_step is not None:
            after_step()
    tally.read_back()
    total_loss, correct, seen = tally.loss, tally.correct, tally.seen
    if sharded:
        total_loss, correct, seen = all_reduce_sums([total_loss, correct, seen])
    return EpochStats(total_loss / max(seen, 1), 100.0 * correct / max(seen, 1), time.perf_counter() - start, steps)


class _Tally:
    """Running loss and accuracy of an epoch, read back one step late.

    Reading a CUDA value waits for the GPU. Reading step k's loss right after queueing step k would
    leave the GPU idle while Python queues step k + 1; reading it after step k + 1 is queued keeps
    the GPU busy. That gains only where the GPU's work is the bottleneck: the Fashion-MNIST
    ResNet-20 epoch on an H100, bound by the host's kernel launches, stayed at 5.9 s. Cost of the
    delay: a NaN loss is reported one step later, after one more optimizer step, so the weights in
    memory are then NaN too; the run stops with :class:`Diverged` either way and its last
    checkpoint is from before the bad epoch.
    """

    def __init__(self, sharded: bool, steps: int, label: str, progress: Progress | None) -> None:
        self.sharded, self.steps, self.label, self.progress = sharded, steps, label, progress
        self.loss, self.correct, self.seen = 0.0, 0, 0
        self._held: tuple[int, torch.Tensor, torch.Tensor, int] | None = None

    def hold(self, step: int, loss: torch.Tensor, correct: torch.Tensor, n: int) -> None:
        self._held = (step, loss, correct, n)

    def read_back(self) -> None:
        if self._held is None:
            return
        (step, loss, correct, n), self._held = self._held, None
        value = float(loss)
        finite = math.isfinite(value)
        if self.sharded:  # every process must stop together, or the others wait in backward's all-reduce
            finite = all_reduce_sums([0.0 if finite else 1.0])[0] == 0.0
        if not finite:
            raise Diverged(f"training diverged: the loss is {value} (here, or on another process) "
                           f"at step {step + 1}/{self.steps}")
        self.loss += value * n
        self.correct += int(correct)
        self.seen += n
        if self.progress is not None:
            self.progress(self.label, step + 1, self.steps, self.loss / self.seen)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device, cfg: TrainConfig | None = None) -> tuple[float, float]:
    """``(mean cross-entropy, top-1 accuracy in percent)`` over ``loader`` in eval mode.

    A sharded loader (data-parallel run) has its sums added over all ranks, so every rank returns
    the whole test set's numbers. Pass the plain model, not its DDP wrapper.
    """
    cfg = cfg or TrainConfig()
    was_training = model.training
    model.eval()
    amp, channels_last = cfg.use_amp(device), cfg.use_channels_last(device)
    sums, seen = torch.zeros(2, dtype=torch.float64, device=device), 0  # summed on the device: one read at the end
    try:
        for batch in loader:
            x, y = _to(batch, device, channels_last)
            with _autocast(device, amp):
                logits = model(x)
            sums += torch.stack([F.cross_entropy(logits.float(), y, reduction="sum"), (logits.argmax(1) == y).sum()])
            seen += len(y)
    finally:
        model.train(was_training)
    total_loss, correct = sums.tolist()
    if _sharded(loader):  # every rank reports the whole test set's numbers
        total_loss, correct, seen = all_reduce_sums([total_loss, correct, seen])
    if seen == 0:
        raise BatudeError("the evaluation set is empty; check the dataset or --subset")
    return total_loss / seen, 100.0 * correct / seen
