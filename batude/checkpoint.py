"""Checkpoints without pickled code.

A batude checkpoint is a ``torch.save`` of plain data, read back with
``torch.load(weights_only=True)`` (no code can run)::

    {"format": "batude-checkpoint", "version": 1,
     "arch": {"ref": "torchvision:resnet18", "kwargs": {...}} | None,
     "plan": RankPlan.to_dict() | None,
     "state_dict": {name: tensor},
     "metadata": {"batude": ..., "torch": ..., "input_shape": [...], ...}}

Loading rebuilds the architecture from its reference, replays the plan structurally
(``apply_plan_(..., init="empty")``) and loads the weights strictly. Also accepted: a plain
state_dict (with ``arch=``), a ``torch.export`` program (``.pt2``), and - only with
``trust_pickle=True`` - a pickled whole ``nn.Module``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from batude._io import atomic_path
from batude._version import __version__
from batude.errors import BatudeError
from batude.models.registry import ArchRef
from batude.rank.plan import RankPlan, apply_plan_

__all__ = ["Checkpoint", "save", "load", "load_checkpoint", "load_model", "reference_model"]

FORMAT = "batude-checkpoint"
VERSION = 1


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns: the model plus how it was made."""

    model: nn.Module
    plan: RankPlan | None = None
    arch: ArchRef | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The input shape recorded with the model (plan, metadata), else the architecture's default."""
        if self.plan is not None:
            return self.plan.input_shape
        if "input_shape" in self.metadata:
            return tuple(int(d) for d in self.metadata["input_shape"])
        return self.arch.default_input_shape() if self.arch else (1, 3, 224, 224)


def _as_arch(arch: ArchRef | str | None, kwargs: dict | None = None) -> ArchRef | None:
    if arch is None or isinstance(arch, ArchRef):
        return arch
    return ArchRef(arch, kwargs or {})


def save(
    path: str | os.PathLike,
    model: nn.Module,
    plan: RankPlan | None = None,
    arch: ArchRef | str | None = None,
    arch_kwargs: dict | None = None,
    metadata: dict | None = None,
) -> None:
    """Write ``model``'s weights with its plan and architecture reference (atomically).

    Without ``arch`` the file can still be loaded by passing ``arch=`` to :func:`load`.
    """
    ref = _as_arch(arch, arch_kwargs)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "arch": None if ref is None else ref.to_dict(),
        "plan": None if plan is None else plan.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metadata": {"batude": __version__, "torch": str(torch.__version__), **(metadata or {})},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


# What zipfile raises on a damaged archive: a bad central directory or entry (BadZipFile), a short read
# (EOFError, OSError), a mangled header field (ValueError), an unknown compression method (NotImplementedError).
_ZIP_DAMAGE = (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError)


def _check_zip(path: Path) -> None:
    """torch's zip reader does not verify CRCs: a file damaged inside its tensor data would load silently."""
    if not zipfile.is_zipfile(path):
        return  # not a zip (legacy format, or truncated): torch.load reports it
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except _ZIP_DAMAGE as err:
        bad = f"({type(err).__name__})"
    if bad is not None:
        raise BatudeError(f"{path} is corrupt: {bad} fails its checksum; copy the file again or re-save the model")


def _read(path: Path, trust_pickle: bool) -> Any:
    _check_zip(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" not in str(err):
            raise BatudeError(f"{path} is not a readable checkpoint (bad pickle data); it may be truncated or corrupt, "
                              "copy it again or re-save the model") from None
        if not trust_pickle:
            raise BatudeError(
                f"{path} contains pickled Python objects (e.g. a whole model saved with "
                "torch.save(model)); loading it could run arbitrary code. If you trust the file, "
                "pass trust_pickle=True (CLI: --trust-pickle), or re-save it with batude.save"
            ) from None
    except Exception as err:  # noqa: BLE001 - torch's readers raise many types for corrupt files
        raise BatudeError(f"{path} is not a readable checkpoint ({type(err).__name__}); it may be truncated or corrupt, "
                          "copy it again or re-save the model") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any failure of an untrusted unpickle is a bad file
        raise BatudeError(f"{path} could not be unpickled ({type(err).__name__}: {err})") from None


@contextlib.contextmanager
def _weights_only_everywhere(enabled: bool) -> Iterator[None]:
    """Force every ``torch.load`` inside (torch.export's included) to ``weights_only=True``.

    ``torch.export.load`` falls back to a full unpickle when a weights-only load fails; the
    ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` switch closes that door unless the user trusts the file.
    """
    if not enabled:
        yield
        return
    saved = {k: os.environ.pop(k, None) for k in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        os.environ.update({k: v for k, v in saved.items() if v is not None})


def _load_exported(path: Path, trust_pickle: bool) -> nn.Module:
    quiet = logging.getLogger("torch.export")  # it logs a traceback before re-raising
    _check_zip(path)
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        with _weights_only_everywhere(not trust_pickle):
            return torch.export.load(path).module()
    except pickle.UnpicklingError:
        raise BatudeError(
            f"{path} contains pickled Python objects beyond tensors; loading it could run arbitrary "
            "code. If you trust the file, pass trust_pickle=True (CLI: --trust-pickle)"
        ) from None
    except Exception as err:  # noqa: BLE001 - torch.export raises many types for bad files
        raise BatudeError(f"{path} is not a readable torch.export program ({type(err).__name__})") from None
    finally:
        quiet.setLevel(level)


def _check_finite(state_dict: dict[str, torch.Tensor], path: Path) -> None:
    for name, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            raise BatudeError(f"{path}: state_dict entry '{name}' is a {type(tensor).__name__}, not a tensor")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise BatudeError(f"{path}: '{name}' contains NaN or Inf; the checkpoint is corrupt or training diverged, "
                              "use an earlier checkpoint or retrain with a lower learning rate")


def _build(arch: ArchRef | None, plan: RankPlan | None, state_dict: dict, trusted: bool, path: Path) -> nn.Module:
    if arch is None:
        raise BatudeError(f"{path} does not say which architecture it holds; pass arch= (CLI: --arch), e.g. torchvision:resnet18")
    model = arch.build(trusted=trusted)
    if plan is not None:
        apply_plan_(model, plan, init="empty")
    _check_finite(state_dict, path)
    own = model.state_dict()
    problems = [f"missing {k}" for k in own if k not in state_dict]
    problems += [f"unexpected {k}" for k in state_dict if k not in own]
    problems += [
        f"{k} has shape {list(v.shape)}, expected {list(own[k].shape)}"
        for k, v in state_dict.items() if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if problems:
        raise BatudeError(
            f"{path} does not fit architecture {arch.ref} ({', '.join(problems[:3])}"
            f"{', ...' if len(problems) > 3 else ''}); pass the right --arch or plan"
        )
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def load_checkpoint(
    path: str | os.PathLike,
    arch: ArchRef | str | None = None,
    arch_kwargs: dict | None = None,
    trust_pickle: bool = False,
) -> Checkpoint:
    """Load a checkpoint safely (see the module docstring for accepted formats).

    Args:
        arch: overrides the file's architecture reference; needed for plain state_dicts, and the
            only way to use a user factory (``package.module:function``) with a file.
        trust_pickle: allow unpickling arbitrary objects (only for files you trust).
    """
    p = Path(path)
    if not p.is_file():
        raise BatudeError(f"checkpoint {p} not found; check the path (or name an architecture such as batude:resnet20)")
    if p.stat().st_size == 0:
        raise BatudeError(f"checkpoint {p} is empty (0 bytes); it was not written completely, save or copy it again")
    if p.suffix in (".onnx", ".plan", ".engine"):
        raise BatudeError(f"{p} is an exported model, not a checkpoint; pass the batude checkpoint it came from "
                          "(or run it with batude.runtime.load)")
    ref = _as_arch(arch, arch_kwargs)
    if p.suffix == ".pt2":
        return Checkpoint(_load_exported(p, trust_pickle), metadata={"format": "torch.export"})
    obj = _read(p, trust_pickle)
    if isinstance(obj, nn.Module):
        return Checkpoint(obj.eval(), metadata={"format": "pickled module"})
    if not isinstance(obj, dict):
        raise BatudeError(f"{p} holds a {type(obj).__name__}, not a checkpoint or state_dict")
    if obj.get("format") != FORMAT:
        return Checkpoint(_build(ref, None, obj, True, p), arch=ref, metadata={"format": "state_dict"})
    if obj.get("version") != VERSION:
        raise BatudeError(f"{p} has checkpoint format version {obj.get('version')!r}; this batude reads version {VERSION}, "
                          "use the batude that wrote it (or re-save the model with this one)")
    plan = None if obj.get("plan") is None else RankPlan.from_dict(obj["plan"])
    file_arch = None if obj.get("arch") is None else ArchRef.from_dict(obj["arch"])
    if ref is not None and file_arch is not None and ref.ref == file_arch.ref and not ref.kwargs:
        ref = file_arch  # the caller vouches for the file's factory; keep its recorded arguments
    use = ref or file_arch
    model = _build(use, plan, obj.get("state_dict") or {}, trusted=ref is not None, path=p)
    return Checkpoint(model, plan, use, dict(obj.get("metadata") or {}))


def load(path: str | os.PathLike, **kwargs: Any) -> nn.Module:
    """The model of :func:`load_checkpoint` (same arguments), in eval mode."""
    return load_checkpoint(path, **kwargs).model


def load_model(spec: str, arch: str | None = None, trust_pickle: bool = False) -> Checkpoint:
    """A model from a CLI-style spec: a checkpoint path, or an architecture reference.

    ``torchvision:resnet50`` / ``batude:resnet20`` / ``package.module:function`` build fresh
    randomly initialised models, from a fixed seed (0, without touching the caller's random state)
    so that every command builds the same weights: ``batude plan`` and a later ``batude apply`` of
    the same reference see one model. Anything that names an existing file is loaded as a checkpoint.
    """
    if Path(spec).exists() or ":" not in spec:
        return load_checkpoint(spec, arch=arch, trust_pickle=trust_pickle)
    ref = ArchRef(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = ref.build(trusted=True).eval()
    return Checkpoint(model, arch=ref)


def reference_model(spec: str) -> torch.nn.Module:
    """:func:`load_model`'s model in eval mode, a bare name (``resnet18``) read as ``torchvision:resnet18``:
    the benchmarks' ``--model``, whose saved runs name torchvision models bare."""
    return load_model(spec if ":" in spec or Path(spec).exists() else f"torchvision:{spec}").model.eval()
