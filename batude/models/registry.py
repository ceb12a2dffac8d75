"""Architecture references: how a checkpoint names the code that builds its model.

A reference is a string plus JSON-able keyword arguments:

* ``torchvision:resnet18`` - ``torchvision.models.get_model(name, weights=None, **kwargs)``;
* ``batude:resnet20`` - batude's own models (CIFAR-style ResNet-20/32/56);
* ``package.module:function`` - a user factory. Importing it runs that package's code, so a
  factory named *inside a file* is only used when the caller trusts it (see :meth:`ArchRef.build`).
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from batude.errors import BatudeError
from batude.models import cifar_resnet

__all__ = ["ArchRef", "BUILTIN_MODELS"]

BUILTIN_MODELS = {"resnet20": cifar_resnet.resnet20, "resnet32": cifar_resnet.resnet32, "resnet56": cifar_resnet.resnet56}
_FACTORY = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


@dataclass(frozen=True)
class ArchRef:
    """``ref`` (``namespace:name``) and the keyword arguments for its factory."""

    ref: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.ref, str) or not _FACTORY.fullmatch(self.ref):
            raise BatudeError(
                f"architecture reference {self.ref!r} is not of the form 'torchvision:NAME', "
                "'batude:NAME' or 'package.module:function'"
            )
        object.__setattr__(self, "kwargs", dict(self.kwargs or {}))

    @property
    def namespace(self) -> str:
        return self.ref.split(":", 1)[0]

    @property
    def name(self) -> str:
        return self.ref.split(":", 1)[1]

    @property
    def builtin(self) -> bool:
        """True for torchvision and batude models (no third-party code is imported)."""
        return self.namespace in ("torchvision", "batude")

    def default_input_shape(self) -> tuple[int, ...]:
        """``(1, C, H, W)`` a model of this kind expects by default."""
        if self.namespace == "batude":
            return (1, int(self.kwargs.get("in_channels", 3)), 32, 32)
        return (1, 3, 224, 224)

    def build(self, trusted: bool = True) -> nn.Module:
        """Instantiate the architecture with fresh weights.

        Args:
            trusted: a user factory (``package.module:function``) is imported only when True;
                callers pass False for references read from a file the user did not vouch for.
        """
        if self.namespace == "torchvision":
            return _torchvision(self.name, self.kwargs)
        if self.namespace == "batude":
            if self.name not in BUILTIN_MODELS:
                raise BatudeError(f"unknown batude model '{self.name}'; choose from {sorted(BUILTIN_MODELS)}")
            return _call(BUILTIN_MODELS[self.name], self.ref, self.kwargs)
        if not trusted:
            raise BatudeError(
                f"the file names the user factory '{self.ref}'; importing it would run that code. "
                f"If you trust it, pass arch='{self.ref}' (CLI: --arch {self.ref})"
            )
        module_name, attr = self.ref.split(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise BatudeError(f"cannot import model factory '{self.ref}' ({err}); check the name and PYTHONPATH") from None
        return _call(factory, self.ref, self.kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {"ref": self.ref, "kwargs": dict(self.kwargs)}

    @classmethod
    def from_dict(cls, d: Any) -> "ArchRef":
        if isinstance(d, str):
            return cls(d)
        if not isinstance(d, dict) or "ref" not in d:
            raise BatudeError(f"malformed architecture record {d!r}")
        return cls(d["ref"], d.get("kwargs") or {})


def _call(factory: Any, ref: str, kwargs: dict[str, Any]) -> nn.Module:
    try:
        model = factory(**kwargs)
    except BatudeError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure of a model factory is reported, not a crash
        raise BatudeError(f"model factory '{ref}' failed with arguments {kwargs} ({type(err).__name__}: {err})") from None
    if not isinstance(model, nn.Module):
        raise BatudeError(f"model factory '{ref}' returned a {type(model).__name__}, not an nn.Module")
    return model


def _torchvision(name: str, kwargs: dict[str, Any]) -> nn.Module:
    try:
        import torchvision
    except ImportError:
        raise BatudeError("torchvision is not installed; `pip install torchvision` to use torchvision: models") from None
    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise BatudeError(f"unknown torchvision classifier '{name}'; e.g. resnet18, resnet50, mobilenet_v2")
    if "weights" in kwargs:
        raise BatudeError("torchvision weights are not downloaded by batude; load them into a checkpoint instead")
    return _call(lambda **kw: torchvision.models.get_model(name, weights=None, **kw), f"torchvision:{name}", kwargs)
