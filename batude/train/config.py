"""Training and compression options (frozen, validating, serialisable). ``None`` means default."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from batude._device import parse_device, resolve_device
from batude.errors import BatudeError
from batude.rank.bcadl import BCADLConfig
from batude.rank.filter import LayerFilter
from batude.rank.greedy import Score

__all__ = ["TrainConfig", "CompressMethod", "CompressConfig", "COMPILE_MODES"]

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's modes


@dataclass(frozen=True)
class TrainConfig:
    """One training phase's optimiser and runtime options.

    SGD with (Nesterov) momentum, cosine learning-rate decay per step to 0 over the phase, weight
    decay, label smoothing. ``device=None`` picks CUDA when available; ``amp``/``channels_last``
    ``None`` mean "on for CUDA, off on CPU" (AMP uses bfloat16 autocast). ``compile``: a
    ``torch.compile`` mode for the training forward and backward (``"default"``,
    ``"reduce-overhead"`` (CUDA graphs), ``"max-autotune"``, ``"max-autotune-no-cudagraphs"``), or
    None for eager. A small model's GPU step is bound by launching kernels, which compiling cuts;
    each phase compiles once, in its first steps. Evaluation stays eager.
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    seed: int = 0
    device: str | None = None
    amp: bool | None = None
    channels_last: bool | None = None
    num_workers: int = 0
    compile: str | None = None

    def __post_init__(self) -> None:
        checks = [
            (int(self.epochs) >= 0, f"epochs must be >= 0, got {self.epochs}"),
            (int(self.batch_size) >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing}"),
            (int(self.seed) >= 0, f"seed must be >= 0, got {self.seed}"),
            (self.compile in (None, *COMPILE_MODES), f"compile must be one of {', '.join(COMPILE_MODES)} or None, got {self.compile!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise BatudeError(f"training config: {message}")
        if self.device is not None:
            parse_device(self.device)

    def resolved_device(self) -> torch.device:
        return resolve_device(self.device, default="auto")

    def use_amp(self, device: torch.device) -> bool:
        return device.type == "cuda" if self.amp is None else bool(self.amp) and device.type == "cuda"

    def use_channels_last(self, device: torch.device) -> bool:
        return device.type == "cuda" if self.channels_last is None else bool(self.channels_last)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class CompressMethod(str, enum.Enum):
    BATUDE = "batude"  # BC-ADL rank learning, then fine-tuning
    UNIFORM = "uniform"  # training-free selectors: plan, decompose, fine-tune
    ENERGY = "energy"
    VBMF = "vbmf"


@dataclass(frozen=True)
class CompressConfig:
    """``batude.compress`` options.

    BATUDE runs ``epochs_admm`` epochs of BC-ADL training at ``lr_admm`` then decomposes and
    fine-tunes ``epochs_ft`` epochs at ``lr_ft``. The training-free methods decompose at once and
    fine-tune ``epochs_admm + epochs_ft`` epochs at ``lr_ft``: every method gets the same number of
    epochs. ``updates_per_epoch`` sets BC-ADL's Z/U period (``bcadl.period`` is overridden).
    ``kd`` distils from the dense model during fine-tuning (``kd_alpha`` weight, temperature
    ``kd_temperature``).
    """

    method: CompressMethod = CompressMethod.BATUDE
    epochs_admm: int = 2
    epochs_ft: int = 2
    lr_admm: float = 0.01
    lr_ft: float = 0.005
    updates_per_epoch: int = 1
    bcadl: BCADLConfig = field(default_factory=BCADLConfig)
    kd: bool = False
    kd_alpha: float = 0.5
    kd_temperature: float = 4.0
    hooi_iters: int = 0
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "method", CompressMethod(self.method))
        except ValueError:
            raise BatudeError(f"unknown method '{self.method}'; choose from {[m.value for m in CompressMethod]}") from None
        checks = [
            (int(self.epochs_admm) >= 0 and int(self.epochs_ft) >= 0, "epochs must be >= 0"),
            (self.lr_admm > 0 and self.lr_ft > 0, "learning rates must be > 0"),
            (int(self.updates_per_epoch) >= 1, f"updates_per_epoch must be >= 1, got {self.updates_per_epoch}"),
            (0 <= self.kd_alpha <= 1, f"kd_alpha must be in [0, 1], got {self.kd_alpha}"),
            (self.kd_temperature > 0, f"kd_temperature must be > 0, got {self.kd_temperature}"),
            (int(self.hooi_iters) >= 0, f"hooi_iters must be >= 0, got {self.hooi_iters}"),
        ]
        for ok, message in checks:
            if not ok:
                raise BatudeError(f"compress config: {message}")

    @property
    def total_epochs(self) -> int:
        return self.epochs_admm + self.epochs_ft

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("bcadl", "train")}
        out["method"] = self.method.value
        out["bcadl"] = self.bcadl.to_dict()
        out["train"] = self.train.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CompressConfig":
        b = dict(d["bcadl"])
        bcadl = BCADLConfig(
            rho0=b["rho0"], rho_growth=b["rho_growth"], rho_max=b["rho_max"], lam=b["lam"], alpha=tuple(b["alpha"]),
            period=b["period"], min_rank=b["min_rank"], multiple_of=b["multiple_of"], score=Score(b["score"]),
            layer_filter=LayerFilter.from_dict(b["layer_filter"]),
            hold=b.get("hold", "never"),  # recorded before 2026-11-27: runs of the rule without holds
        )
        simple = {k: v for k, v in d.items() if k not in ("bcadl", "train")}
        return cls(**simple, bcadl=bcadl, train=TrainConfig.from_dict(d["train"]))
