"""``RankPlan``: the serialisable result of any rank selection, and ``apply_plan_``.

A plan lists every eligible layer with its kind, geometry, ranks (``None``: keep dense) and cost
before/after, plus whole-model totals, the method, the requested budget and what was achieved.
Costs are per image; MACs (FLOPs = 2 * MACs) of conv/linear layers, as in
:mod:`batude.nn.profile`. Plans round-trip through JSON and can be replayed on a fresh model.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from torch import nn

from batude._io import write_text_atomic
from batude.errors import BatudeError
from batude.functional.cost import ConvGeometry, LayerKind, max_ranks
from batude.nn.decompose import Init, decompose_module, decomposed_kind, kind_of
from batude.rank.budget import Budget

__all__ = ["FORMAT_VERSION", "LayerPlan", "RankPlan", "apply_plan_"]

FORMAT_VERSION = 1
_FORMAT = "batude-rank-plan"


@dataclass(frozen=True)
class LayerPlan:
    """One eligible layer: ``ranks`` is ``(R1, R2)`` for Tucker-2, ``(R,)`` otherwise, None = dense."""

    name: str
    kind: LayerKind
    geometry: ConvGeometry
    ranks: tuple[int, ...] | None
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int

    @property
    def decomposed(self) -> bool:
        return self.ranks is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind.value,
            "geometry": self.geometry.to_dict(),
            "ranks": None if self.ranks is None else list(self.ranks),
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "params_before": self.params_before,
            "params_after": self.params_after,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LayerPlan":
        ranks = d["ranks"]
        return cls(
            name=str(d["name"]),
            kind=LayerKind(d["kind"]),
            geometry=ConvGeometry.from_dict(d["geometry"]),
            ranks=None if ranks is None else tuple(int(r) for r in ranks),
            macs_before=int(d["macs_before"]),
            macs_after=int(d["macs_after"]),
            params_before=int(d["params_before"]),
            params_after=int(d["params_after"]),
        )


@dataclass(frozen=True)
class RankPlan:
    """Per-layer ranks with whole-model totals (per image) and provenance."""

    layers: tuple[LayerPlan, ...]
    method: str
    budget: Budget | None
    input_shape: tuple[int, ...]
    dense_macs: int
    dense_params: int
    macs: int
    params: int
    skipped: dict[str, str] = field(default_factory=dict)  # layer name -> why not eligible
    options: dict[str, Any] = field(default_factory=dict)  # selector options, for the record
    latency: dict[str, Any] | None = None  # predicted by a latency table: ms, speed-up, variants, table key
    arch: str | None = None
    version: int = FORMAT_VERSION

    @property
    def macs_reduction(self) -> float:
        """Dense MACs / planned MACs (the same ratio in FLOPs)."""
        return self.dense_macs / self.macs

    @property
    def params_reduction(self) -> float:
        return self.dense_params / self.params

    @property
    def variants(self) -> dict[str, str]:
        """Per factorised Tucker-2 layer, the exact variant a latency table found fastest (empty without one),
        and each low-rank 1x1 pair it found fastest on the ``triton`` kernel.

        (Otherwise a low-rank 1x1/Linear layer has one form, its two-layer chain.)
        """
        tucker = {l.name for l in self.layers if l.ranks is not None and l.kind is LayerKind.TUCKER2}
        pairs = {l.name for l in self.layers if l.ranks is not None and l.kind is LayerKind.LOWRANK_CONV}
        return {n: v for n, v in (self.latency or {}).get("variants", {}).items()
                if n in tucker or (n in pairs and v == "triton")}

    def layer(self, name: str) -> LayerPlan:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise BatudeError(f"the plan has no layer '{name}'")

    def with_arch(self, arch: str | None) -> "RankPlan":
        return replace(self, arch=arch)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "version": self.version,
            "method": self.method,
            "arch": self.arch,
            "budget": None if self.budget is None else self.budget.to_dict(),
            "input_shape": list(self.input_shape),
            "totals": {
                "counted": "conv+linear MACs per image (FLOPs = 2 * MACs); params of conv+linear",
                "dense_macs": self.dense_macs,
                "macs": self.macs,
                "macs_reduction": round(self.macs_reduction, 6),
                "dense_params": self.dense_params,
                "params": self.params,
                "params_reduction": round(self.params_reduction, 6),
            },
            "options": self.options,
            "latency": self.latency,
            "layers": [layer.to_dict() for layer in self.layers],
            "skipped": dict(self.skipped),
        }

    @classmethod
    def from_dict(cls, d: Any) -> "RankPlan":
        if not isinstance(d, dict) or d.get("format") != _FORMAT:
            raise BatudeError("not a batude rank plan (missing 'format': 'batude-rank-plan'); create one with `batude plan`")
        if d.get("version") != FORMAT_VERSION:
            raise BatudeError(
                f"rank plan format version {d.get('version')!r} is not supported (this batude reads "
                f"version {FORMAT_VERSION}); regenerate the plan with this batude"
            )
        try:
            totals = d["totals"]
            if min(int(totals[k]) for k in ("dense_macs", "dense_params", "macs", "params")) <= 0:
                raise ValueError("costs in 'totals' must be positive")
            return cls(
                layers=tuple(LayerPlan.from_dict(x) for x in d["layers"]),
                method=str(d["method"]),
                budget=None if d.get("budget") is None else Budget.from_dict(d["budget"]),
                input_shape=tuple(int(x) for x in d["input_shape"]),
                dense_macs=int(totals["dense_macs"]),
                dense_params=int(totals["dense_params"]),
                macs=int(totals["macs"]),
                params=int(totals["params"]),
                skipped=dict(d.get("skipped", {})),
                options=dict(d.get("options", {})),
                latency=_latency_record(d.get("latency")),
                arch=d.get("arch"),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise BatudeError(f"rank plan is malformed ({type(err).__name__}: {err}); regenerate it with `batude plan`") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def save(self, path: str | os.PathLike) -> None:
        """Write the plan as JSON (atomically)."""
        write_text_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RankPlan":
        p = Path(path)
        if not p.is_file():
            raise BatudeError(f"plan file {p} not found; create one with `batude plan ... --out {p}`")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise BatudeError(f"plan file {p} is not valid JSON ({err}); regenerate it with `batude plan`") from None
        return cls.from_dict(data)


def _latency_record(d: Any) -> dict[str, Any] | None:
    if d is None:
        return None
    if not isinstance(d, dict) or not isinstance(d.get("variants", {}), dict):
        raise ValueError("'latency' must be an object with a 'variants' object")
    bad = {v for v in d.get("variants", {}).values() if v not in ("chain", "merge_first", "merge_last", "triton")}
    if bad:
        raise ValueError(f"unknown variants {sorted(map(str, bad))} in 'latency'")
    return dict(d)


def _check_layer(module: nn.Module, layer: LayerPlan) -> None:
    g = layer.geometry
    kind = kind_of(module)
    if kind is not layer.kind:
        what = kind.value if kind else f"not factorisable ({type(module).__name__})"
        raise BatudeError(
            f"layer '{layer.name}' is {what}, but the plan says {layer.kind.value}; the plan was made for another "
            "architecture, make one for this model with `batude plan`"
        )
    if isinstance(module, nn.Conv2d):
        actual = (module.out_channels, module.in_channels, tuple(module.kernel_size))
    else:
        actual = (module.out_features, module.in_features, (1, 1))
    if actual != (g.out_channels, g.in_channels, g.kernel):
        raise BatudeError(
            f"layer '{layer.name}' has (out, in, kernel) = {actual} but the plan expects "
            f"{(g.out_channels, g.in_channels, g.kernel)}; the plan was made for another architecture, "
            "make one for this model with `batude plan`"
        )
    if layer.ranks is not None:
        limits = max_ranks(layer.kind, g)
        if len(layer.ranks) != len(limits) or not all(1 <= r <= m for r, m in zip(layer.ranks, limits)):
            raise BatudeError(
                f"layer '{layer.name}': ranks {list(layer.ranks)} are impossible for {layer.kind.value} "
                f"with out={g.out_channels}, in={g.in_channels} (each rank must be in 1..{list(limits)}); "
                "fix the plan or make a new one with `batude plan`"
            )


def apply_plan_(
    model: nn.Module,
    plan: RankPlan,
    *,
    init: Init | str = Init.DECOMPOSE,
    hooi_iters: int = 0,
    progress: Callable[[int, int, str], None] | None = None,
) -> nn.Module:
    """Replace, in place, every layer the plan decomposes by its factorised module; return ``model``.

    ``init="decompose"`` factorises the current dense weights (Tucker-2: truncated HOSVD, then
    ``hooi_iters`` HOOI iterations with tensorly; truncated SVD for 1x1/Linear);
    ``init="empty"`` only builds the structure (for loading a saved state_dict). All layers are
    checked before any is replaced, so an error leaves the model untouched. ``progress(i, n, name)``
    is called before each of the ``n`` replacements.

    Raises:
        BatudeError: unknown layer names, geometry mismatch, impossible ranks, already factorised.
    """
    init = Init(init)
    modules = dict(model.named_modules())
    todo = [layer for layer in plan.layers if layer.ranks is not None]
    for layer in todo:
        module = modules.get(layer.name)
        if module is None or layer.name == "":
            raise BatudeError(
                f"the plan names layer '{layer.name}', which this model does not have; the plan was "
                f"made for {plan.arch or 'another architecture'}, make one for this model with `batude plan`"
            )
        if decomposed_kind(module) is not None:
            raise BatudeError(f"layer '{layer.name}' is already factorised; apply plans to a dense model")
        _check_layer(module, layer)
    for i, layer in enumerate(todo):
        if progress is not None:
            progress(i, len(todo), layer.name)
        parent_name, _, child = layer.name.rpartition(".")
        parent = model.get_submodule(parent_name)
        new = decompose_module(
            modules[layer.name], layer.kind, layer.ranks, name=layer.name, init=init, hooi_iters=hooi_iters
        )
        setattr(parent, child, new)
    return model
