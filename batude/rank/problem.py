"""The rank-selection problem: eligible layers, their allowed ranks, and whole-model cost.

Every selector (uniform, energy, VBMF, and BC-ADL's budgeted thresholding) works on a
:class:`RankProblem`: one entry per eligible layer with a grid of allowed ranks per mode (multiples
of ``multiple_of`` at or above ``min_rank``, plus the full rank), and a cost function in the budget's
metric. A layer whose chain would cost at least as much as the dense layer is kept dense, so each
layer's *effective* cost is ``min(chain, dense)``: non-decreasing in every rank.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from torch import nn

from batude.errors import BatudeError
from batude.functional.cost import layer_macs, layer_params, max_ranks
from batude.nn.profile import LayerProfile, ModelProfile, profile_model
from batude.rank.budget import Budget, Metric
from batude.rank.filter import LayerFilter
from batude.rank.plan import LayerPlan, RankPlan

__all__ = ["SelectorConfig", "Candidate", "RankProblem", "rank_grid"]

Ranks = tuple[int, ...]


@dataclass(frozen=True)
class SelectorConfig:
    """Options shared by all rank selectors. ``None`` means the default."""

    min_rank: int = 1
    multiple_of: int = 1
    layer_filter: LayerFilter | None = None

    def __post_init__(self) -> None:
        if int(self.min_rank) < 1:
            raise BatudeError(f"min_rank must be >= 1, got {self.min_rank}")
        if int(self.multiple_of) < 1:
            raise BatudeError(f"multiple_of must be >= 1, got {self.multiple_of} (use 1 for no alignment)")
        if self.layer_filter is None:
            object.__setattr__(self, "layer_filter", LayerFilter())

    def to_dict(self) -> dict:
        return {"min_rank": self.min_rank, "multiple_of": self.multiple_of, "layer_filter": self.layer_filter.to_dict()}


def rank_grid(full: int, min_rank: int, multiple_of: int) -> tuple[int, ...]:
    """Allowed ranks, ascending: multiples of ``multiple_of`` in ``[min_rank, full)``, then ``full``."""
    values = [r for r in range(multiple_of, full, multiple_of) if r >= min_rank]
    return tuple(values + [full])


def _never_cheaper(layer: LayerProfile, grids: tuple[tuple[int, ...], ...], metric: Metric) -> bool:
    cost = layer_macs if metric is Metric.MACS else layer_params
    smallest = tuple(grid[0] for grid in grids)
    return cost(layer.kind, layer.geometry, smallest) >= cost(layer.kind, layer.geometry, None)


@dataclass(frozen=True)
class Candidate:
    """An eligible layer: its profile, the dense module (for weights) and its rank grids."""

    layer: LayerProfile
    module: nn.Module
    grids: tuple[tuple[int, ...], ...]

    @property
    def name(self) -> str:
        return self.layer.name

    def snap(self, mode: int, value: float) -> int:
        """Smallest allowed rank >= ``value`` for ``mode`` (the full rank if none)."""
        grid = self.grids[mode]
        i = bisect.bisect_left(grid, math.ceil(value - 1e-9))
        return grid[min(i, len(grid) - 1)]

    def next_rank(self, mode: int, current: int) -> int | None:
        """The next allowed rank above ``current``, or None at the full rank."""
        grid = self.grids[mode]
        i = bisect.bisect_right(grid, current)
        return grid[i] if i < len(grid) else None


class RankProblem:
    """Eligible layers of one model at one input shape, costed in one metric."""

    def __init__(self, profile: ModelProfile, candidates: list[Candidate], skipped: dict[str, str],
                 metric: Metric, config: SelectorConfig) -> None:
        self.profile = profile
        self.candidates = candidates
        self.skipped = skipped
        self.metric = metric
        self.config = config
        names = {c.name for c in candidates}
        self._cost = layer_macs if metric is Metric.MACS else layer_params
        self.fixed = sum(self._current(layer) for layer in profile.layers if layer.name not in names)
        self.dense_total = sum(self._current(layer) for layer in profile.layers)
        self._memo: dict[str, Any] = {}

    def memo(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per problem (e.g. singular values shared by repeated selections)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    @classmethod
    def from_model(cls, model: nn.Module, input_shape: Sequence[int], metric: Metric = Metric.MACS,
                   config: SelectorConfig | None = None) -> "RankProblem":
        config = config or SelectorConfig()
        profile = profile_model(model, input_shape)
        modules = dict(model.named_modules())
        calls = Counter(layer.name for layer in profile.layers)
        candidates, skipped, seen = [], {}, set()
        for layer in profile.layers:
            if layer.name in seen:
                continue
            seen.add(layer.name)
            reason = config.layer_filter.reason_excluded(layer)
            if reason is None and calls[layer.name] > 1:
                reason = f"runs {calls[layer.name]} times per forward (shared weights)"
            grids = ()
            if reason is None:
                grids = tuple(rank_grid(full, config.min_rank, config.multiple_of) for full in max_ranks(layer.kind, layer.geometry))
                if _never_cheaper(layer, grids, metric):
                    reason = "factorised at the smallest allowed ranks it would cost as much as dense"
            if reason is not None:
                skipped[layer.name] = reason
                continue
            candidates.append(Candidate(layer, modules[layer.name], grids))
        if not candidates:
            raise BatudeError("no layer is eligible for factorisation; check the layer filter (include/exclude patterns, kinds, min_in_channels)")
        return cls(profile, candidates, skipped, metric, config)

    def _current(self, layer: LayerProfile) -> int:
        """Cost of a layer as the model has it now (dense, or already factorised)."""
        return self._cost(layer.kind, layer.geometry, layer.ranks)

    def chain_cost(self, i: int, ranks: Ranks) -> int:
        """Cost of candidate ``i`` factorised at ``ranks`` (even where dense would be cheaper)."""
        layer = self.candidates[i].layer
        return self._cost(layer.kind, layer.geometry, ranks)

    def layer_cost(self, i: int, ranks: Ranks) -> int:
        """Effective cost of candidate ``i`` at ``ranks``: min(chain, dense)."""
        layer = self.candidates[i].layer
        return min(self.chain_cost(i, ranks), self._cost(layer.kind, layer.geometry, None))

    def total(self, ranks: Sequence[Ranks]) -> int:
        """Whole-model cost (fixed layers + effective cost of every candidate)."""
        return self.fixed + sum(self.layer_cost(i, r) for i, r in enumerate(ranks))

    def minimal_ranks(self) -> list[Ranks]:
        return [tuple(grid[0] for grid in c.grids) for c in self.candidates]

    def limit(self, budget: Budget) -> float:
        if budget.metric is not self.metric:
            raise BatudeError(f"budget {budget} is in {budget.metric.value}, the problem in {self.metric.value}")
        return budget.limit(self.dense_total)

    def check_feasible(self, budget: Budget) -> float:
        """The budget's limit; raises when even the minimal ranks exceed it."""
        limit = self.limit(budget)
        least = self.total(self.minimal_ranks())
        if least > limit:
            unit = "MACs" if self.metric is Metric.MACS else "params"
            raise BatudeError(
                f"budget {budget} is infeasible: it allows {limit:.4g} {unit}, but even minimum ranks "
                f"cost {least:.4g} ({self.fixed:.4g} of it in layers left dense); loosen the budget, "
                "lower --min-rank/--multiple-of, or make more layers eligible"
            )
        return limit

    def to_plan(self, ranks: Sequence[Ranks], method: str, budget: Budget | None, options: dict) -> RankPlan:
        """A :class:`RankPlan`; layers whose chain is not cheaper than dense get ``ranks=None``."""
        layers = []
        for i, (cand, r) in enumerate(zip(self.candidates, ranks)):
            layer = cand.layer
            dense_macs = layer_macs(layer.kind, layer.geometry, None)
            keep = self._cost(layer.kind, layer.geometry, r) >= self._cost(layer.kind, layer.geometry, None)
            planned = None if keep else tuple(int(x) for x in r)
            layers.append(LayerPlan(
                name=layer.name, kind=layer.kind, geometry=layer.geometry, ranks=planned,
                macs_before=dense_macs, macs_after=layer_macs(layer.kind, layer.geometry, planned),
                params_before=layer_params(layer.kind, layer.geometry, None),
                params_after=layer_params(layer.kind, layer.geometry, planned),
            ))
        names = {c.name for c in self.candidates}
        fixed = [l for l in self.profile.layers if l.name not in names]
        return RankPlan(
            layers=tuple(layers), method=method, budget=budget, input_shape=self.profile.input_shape,
            dense_macs=self.profile.macs, dense_params=self.profile.params,
            macs=sum(l.macs for l in fixed) + sum(l.macs_after for l in layers),
            params=sum(l.params for l in fixed) + sum(l.params_after for l in layers),
            skipped=dict(self.skipped), options={**self.config.to_dict(), **options},
        )
