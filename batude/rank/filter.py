"""Which layers may be factorised: name patterns, layer kinds and a channel floor."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from batude.errors import BatudeError
from batude.functional.cost import LayerKind
from batude.nn.profile import LayerProfile

__all__ = ["LayerFilter"]

_ALL_KINDS = tuple(LayerKind)


@dataclass(frozen=True)
class LayerFilter:
    """Eligibility rule for factorisation.

    A layer is eligible when it admits a factorisation (grouped/depthwise convs never do), its
    kind is in ``kinds``, its name matches one ``include`` glob and no ``exclude`` glob
    (``fnmatch`` syntax on the module's qualified name, e.g. ``layer1.*``), and it has at least
    ``min_in_channels`` input channels (features). The default floor of 16 leaves RGB stems dense.
    """

    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    kinds: tuple[LayerKind, ...] = _ALL_KINDS
    min_in_channels: int = 16

    def __post_init__(self) -> None:
        for attr in ("include", "exclude"):
            value = getattr(self, attr)
            if isinstance(value, str):
                value = (value,)
            object.__setattr__(self, attr, tuple(str(v) for v in value))
        try:
            kinds = tuple(LayerKind(k) for k in ((self.kinds,) if isinstance(self.kinds, str) else self.kinds))
        except ValueError:
            raise BatudeError(
                f"unknown layer kind in {self.kinds!r}; choose from {[k.value for k in LayerKind]}"
            ) from None
        object.__setattr__(self, "kinds", kinds)
        if int(self.min_in_channels) < 1:
            raise BatudeError(f"min_in_channels must be >= 1, got {self.min_in_channels}")

    def reason_excluded(self, layer: LayerProfile) -> str | None:
        """None when ``layer`` is eligible, else a short reason (for reports)."""
        if layer.kind is None:
            return f"{layer.module_type} with groups={layer.geometry.groups} is not factorisable"
        if layer.ranks is not None:
            return "already factorised"
        if layer.kind not in self.kinds:
            return f"kind {layer.kind.value} not selected"
        if not any(fnmatch.fnmatchcase(layer.name, p) for p in self.include):
            return "not matched by include patterns"
        if any(fnmatch.fnmatchcase(layer.name, p) for p in self.exclude):
            return "matched by an exclude pattern"
        if layer.geometry.in_channels < self.min_in_channels:
            return f"{layer.geometry.in_channels} input channels < min_in_channels={self.min_in_channels}"
        return None

    def to_dict(self) -> dict:
        return {
            "include": list(self.include),
            "exclude": list(self.exclude),
            "kinds": [k.value for k in self.kinds],
            "min_in_channels": self.min_in_channels,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "LayerFilter":
        return cls(
            include=tuple(d.get("include", ("*",))),
            exclude=tuple(d.get("exclude", ())),
            kinds=tuple(d.get("kinds", [k.value for k in LayerKind])),
            min_in_channels=int(d.get("min_in_channels", 16)),
        )
