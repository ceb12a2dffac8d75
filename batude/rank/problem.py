"""The rank-selection problem: eligible layers, their allowed ranks, and whole-model cost.

Every selector (uniform, energy, VBMF, and BC-ADL's budgeted thresholding) works on a
:class:`RankProblem`: one entry per eligible layer with a grid of allowed ranks per mode (multiples
of ``multiple_of`` at or above ``min_rank``, plus the full rank), and costs in each metric: MACs and
params from the cost model, latency (ms) from a :class:`~batude.rank.latency.LatencyModel` when one
is given. The *primary* metric is the budget's. Besides the budget, a plan may have to meet
further :class:`Limit` s ("``--also``"): e.g. 2.52x fewer MACs and not slower than dense, or 2x
faster and at least 2x fewer MACs. A layer whose chain would cost at least as much as the dense
layer in every limited metric is kept dense, so with one limit each layer's *effective* cost is
``min(chain, dense)``; with several, a layer stays dense only where that is no worse in any of
them (a chain that is slower but has fewer MACs is kept factorised under a MACs limit), unless
BC-ADL's greedy rule holds it dense (ranks ``None``; :func:`batude.rank.greedy.budgeted_ranks`).
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

from torch import nn

from batude.errors import BatudeError
from batude.functional.cost import layer_macs, layer_params, max_ranks
from batude.nn.profile import LayerProfile, ModelProfile, profile_model
from batude.rank.budget import Budget, Metric
from batude.rank.filter import LayerFilter
from batude.rank.latency import LatencyModel, default_multiple, grid_points, predict_layers
from batude.rank.plan import LayerPlan, RankPlan

__all__ = ["SelectorConfig", "Candidate", "Limit", "RankProblem", "rank_grid"]

Ranks = tuple[int, ...]


@dataclass(frozen=True)
class SelectorConfig:
    """Options shared by all rank selectors. ``None`` means the default.

    ``multiple_of=None``: 1 (no alignment) for MACs/params problems; with a latency table, what
    suits the table's dtype (16 for fp16/bf16, 8 for fp32; :func:`~batude.rank.latency.default_multiple`).
    """

    min_rank: int = 1
    multiple_of: int | None = None
    layer_filter: LayerFilter | None = None

    def __post_init__(self) -> None:
        if int(self.min_rank) < 1:
            raise BatudeError(f"min_rank must be >= 1, got {self.min_rank}")
        if self.multiple_of is not None and int(self.multiple_of) < 1:
            raise BatudeError(f"multiple_of must be >= 1, got {self.multiple_of} (use 1 for no alignment)")
        if self.layer_filter is None:
            object.__setattr__(self, "layer_filter", LayerFilter())

    def to_dict(self) -> dict:
        return {"min_rank": self.min_rank, "multiple_of": self.multiple_of, "layer_filter": self.layer_filter.to_dict()}


def rank_grid(full: int, min_rank: int, multiple_of: int) -> tuple[int, ...]:
    """Allowed ranks, ascending: multiples of ``multiple_of`` in ``[min_rank, full)``, then ``full``."""
    values = [r for r in range(multiple_of, full, multiple_of) if r >= min_rank]
    return tuple(values + [full])


@dataclass(frozen=True)
class Limit:
    """The largest allowed whole-model cost in one metric (MACs, params, or ms)."""

    metric: Metric
    value: float
    budget: Budget

    def to_dict(self) -> dict:
        return {"metric": self.metric.value, "value": self.value, "budget": str(self.budget)}


def _never_cheaper(layer: LayerProfile, grids: tuple[tuple[int, ...], ...], metric: Metric,
                   latency: LatencyModel | None) -> bool:
    if metric is Metric.LATENCY:  # no measured grid point of any factorised form beats dense
        options = (latency.factorised_ms(layer.name, r)[1] for r in grid_points(latency.grid(layer.name)))
        return min(options) >= latency.dense_ms(layer.name)
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

    @property
    def full_ranks(self) -> Ranks:
        return tuple(grid[-1] for grid in self.grids)

    def next_rank(self, mode: int, current: int) -> int | None:
        """The next allowed rank above ``current``, or None at the full rank."""
        grid = self.grids[mode]
        i = bisect.bisect_right(grid, current)
        return grid[i] if i < len(grid) else None


class RankProblem:
    """Eligible layers of one model at one input shape, costed in MACs, params and (with a table) ms.

    ``metric`` is the primary metric (the budget's); cost methods take ``metric=None`` for it.
    """

    def __init__(self, profile: ModelProfile, candidates: list[Candidate], skipped: dict[str, str],
                 metric: Metric, config: SelectorConfig, latency: LatencyModel | None = None,
                 extra_metrics: Sequence[Metric] = ()) -> None:
        self.profile = profile
        self.candidates = candidates
        self.skipped = skipped
        self.metric = metric
        self.config = config
        self.latency = latency
        self.limited = tuple(dict.fromkeys((metric, *extra_metrics)))  # metrics with a limit; keep-dense needs all
        names = {c.name for c in candidates}
        self._fixed = {m: sum(self._current(layer, m) for layer in profile.layers if layer.name not in names)
                       for m in (Metric.MACS, Metric.PARAMS)}
        self._dense = {m: [self._cost(m)(c.layer.kind, c.layer.geometry, None) for c in candidates]
                       for m in (Metric.MACS, Metric.PARAMS)}
        if latency is not None:
            self._fixed[Metric.LATENCY] = latency.other_ms + sum(
                latency.dense_ms(n) for n in latency.layer_names() if n not in names)
            self._dense[Metric.LATENCY] = [latency.dense_ms(c.name) for c in candidates]
        self.fixed = self._fixed[metric]
        self.dense_total = self._model_total(metric)  # candidates are dense layers (the filter refuses factorised ones)
        self._memo: dict[str, Any] = {}
        self._chain: dict[tuple[Metric, int, Ranks], float] = {}

    def memo(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per problem (e.g. singular values shared by repeated selections)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    @classmethod
    def from_model(cls, model: nn.Module, input_shape: Sequence[int], metric: Metric = Metric.MACS,
                   config: SelectorConfig | None = None, latency: LatencyModel | None = None,
                   extra_metrics: Sequence[Metric] = ()) -> "RankProblem":
        """The problem for ``model`` at ``input_shape``; ``latency`` (a table for this model) enables ms costs.

        ``extra_metrics``: metrics of further limits (``--also``). A layer stays dense (or is left
        out) only where dense is no costlier in the budget's metric *and* every one of those.
        """
        config = config or SelectorConfig()
        if config.multiple_of is None:
            config = replace(config, multiple_of=default_multiple(latency))
        if Metric.LATENCY in (metric, *extra_metrics) and latency is None:
            raise BatudeError("a latency budget needs a latency table; build one with `batude lut build` and pass --lut")
        profile = profile_model(model, input_shape)
        if latency is not None:
            _check_table(profile, latency)
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
            if reason is None and latency is not None and layer.name not in latency.layer_names():
                reason = "not in the latency table (built with another layer filter)"
            grids = ()
            if reason is None:
                grids = tuple(rank_grid(full, config.min_rank, config.multiple_of) for full in max_ranks(layer.kind, layer.geometry))
                if all(_never_cheaper(layer, grids, m, latency) for m in (metric, *extra_metrics)):
                    reason = ("the latency table has no factorised form faster than dense" if metric is Metric.LATENCY
                              else "factorised at the smallest allowed ranks it would cost as much as dense")
            if reason is not None:
                skipped[layer.name] = reason
                continue
            candidates.append(Candidate(layer, modules[layer.name], grids))
        if not candidates:
            raise BatudeError("no layer is eligible for factorisation; check the layer filter (include/exclude patterns, kinds, min_in_channels)")
        return cls(profile, candidates, skipped, metric, config, latency, extra_metrics)

    @staticmethod
    def _cost(metric: Metric) -> Callable:
        return layer_macs if metric is Metric.MACS else layer_params

    def _current(self, layer: LayerProfile, metric: Metric) -> int:
        """Cost of a layer as the model has it now (dense, or already factorised)."""
        return self._cost(metric)(layer.kind, layer.geometry, layer.ranks)

    def _metric(self, metric: Metric | None) -> Metric:
        metric = self.metric if metric is None else metric
        if metric is Metric.LATENCY and self.latency is None:
            raise BatudeError("a latency limit needs a latency table; build one with `batude lut build` and pass --lut")
        return metric

    def fixed_cost(self, metric: Metric | None = None) -> float:
        """Cost of everything that is not a candidate (layers left dense, the rest of the model)."""
        return self._fixed[self._metric(metric)]

    def dense_cost(self, i: int, metric: Metric | None = None) -> float:
        return self._dense[self._metric(metric)][i]

    def chain_cost(self, i: int, ranks: Ranks, metric: Metric | None = None) -> float:
        """Cost of candidate ``i`` factorised at ``ranks`` (even where dense would be cheaper).

        In latency, the fastest exact factorised variant's predicted ms.
        """
        metric = self._metric(metric)
        key = (metric, i, tuple(ranks))
        if key not in self._chain:  # the greedy rule asks for the same few thousand many times over
            layer = self.candidates[i].layer
            if metric is Metric.LATENCY:
                self._chain[key] = self.latency.factorised_ms(layer.name, ranks)[1]
            else:
                self._chain[key] = self._cost(metric)(layer.kind, layer.geometry, ranks)
        return self._chain[key]

    def keeps_dense(self, i: int, ranks: Ranks | None) -> bool:
        """Whether candidate ``i`` stays dense at ``ranks``: ``None`` (held dense by the greedy rule),
        or a chain no cheaper in any limited metric."""
        return ranks is None or all(self.chain_cost(i, ranks, m) >= self.dense_cost(i, m) for m in self.limited)

    def layer_cost(self, i: int, ranks: Ranks | None, metric: Metric | None = None) -> float:
        """Effective cost of candidate ``i`` at ``ranks``: dense or chain, as :meth:`keeps_dense` decides."""
        return self.dense_cost(i, metric) if self.keeps_dense(i, ranks) else self.chain_cost(i, ranks, metric)

    def total(self, ranks: Sequence[Ranks | None], metric: Metric | None = None) -> float:
        """Whole-model cost (fixed layers + effective cost of every candidate; ``None``: held dense)."""
        return self.fixed_cost(metric) + sum(self.layer_cost(i, r, metric) for i, r in enumerate(ranks))

    def least_total(self, metric: Metric | None = None) -> float:
        """A lower bound on the whole-model cost of any ranks: what the feasibility checks compare with.

        MACs and params fall with every rank, so that is the cost at minimum ranks. Measured latency
        need not (a rank-16 chain can be slower than a rank-32 one, and a layer can stay dense where
        it is faster): each layer counts at the least of its dense time and its fastest form at any
        of the table's grid points, which bounds the table's interpolation between those points too.
        """
        metric = self._metric(metric)
        if metric is not Metric.LATENCY:
            return self.total(self.minimal_ranks(), metric)
        least = self.fixed_cost(metric)
        for i, (cand, smallest) in enumerate(zip(self.candidates, self.minimal_ranks())):
            points = grid_points(self.latency.grid(cand.name)) + [smallest]
            least += min([self.dense_cost(i, metric)] + [self.chain_cost(i, r, metric) for r in points])
        return least

    def minimal_ranks(self) -> list[Ranks]:
        return [tuple(grid[0] for grid in c.grids) for c in self.candidates]

    def limit_of(self, budget: Budget) -> Limit:
        """``budget`` as a :class:`Limit` on this model (relative budgets: relative to its dense cost)."""
        metric = self._metric(budget.metric)
        return Limit(metric, budget.limit(self._model_total(metric)), budget)

    def _model_total(self, metric: Metric) -> float:
        """The model's cost as it is now: layers left out as they are, candidates dense."""
        return self._fixed[metric] + sum(self._dense[metric])

    def limit(self, budget: Budget) -> float:
        if budget.metric is not self.metric:
            raise BatudeError(f"budget {budget} is in {budget.metric.value}, the problem in {self.metric.value}")
        return self.limit_of(budget).value

    def limits(self, budget: Budget, also: Sequence[Budget] = ()) -> list[Limit]:
        """The primary budget's limit, then one per extra budget (each checked feasible at minimum ranks)."""
        self.check_feasible(budget)
        out = [self.limit_of(budget)]
        for extra in also:
            if extra.metric not in self.limited:
                raise BatudeError(f"--also {extra}: build the problem with extra_metrics including {extra.metric.value}")
            limit = self.limit_of(extra)
            least = self.least_total(limit.metric)
            if least > limit.value:
                raise BatudeError(
                    f"--also {extra} is infeasible: it allows {limit.value:.4g} {limit.metric.unit}, but no ranks "
                    f"cost less than {least:.4g} {limit.metric.unit}; loosen it or the budget {budget}")
            out.append(limit)
        return out

    def fits(self, ranks: Sequence[Ranks | None], limits: Sequence[Limit]) -> bool:
        return all(self.total(ranks, limit.metric) <= limit.value for limit in limits)

    def check_feasible(self, budget: Budget) -> float:
        """The budget's limit; raises when no ranks can meet it (:meth:`least_total` exceeds it)."""
        limit = self.limit(budget)
        least = self.least_total()
        if least > limit:
            raise BatudeError(
                f"budget {budget} is infeasible: it allows {limit:.4g} {self.metric.unit}, but no ranks "
                f"cost less than {least:.4g} {self.metric.unit} ({self.fixed:.4g} {self.metric.unit} of it in layers left dense); loosen the budget, "
                "lower --min-rank/--multiple-of, or make more layers eligible"
            )
        return limit

    def to_plan(self, ranks: Sequence[Ranks | None], method: str, budget: Budget | None, options: dict,
                keep: Sequence[bool] | None = None) -> RankPlan:
        """A :class:`RankPlan`; layers that stay dense (``keeps_dense``, or ``keep[i]``) get ``ranks=None``.

        With a latency table the plan records the predicted latency and each layer's fastest variant.
        """
        layers = []
        for i, (cand, r) in enumerate(zip(self.candidates, ranks)):
            layer = cand.layer
            dense_macs = layer_macs(layer.kind, layer.geometry, None)
            stays = keep[i] if keep is not None else self.keeps_dense(i, r)
            planned = None if stays else tuple(int(x) for x in r)
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
            latency=self._latency_record(layers),
        )

    def _latency_record(self, layers: Sequence[LayerPlan]) -> dict[str, Any] | None:
        if self.latency is None:
            return None
        total, variants = predict_layers(self.latency, layers)
        dense = self._model_total(Metric.LATENCY)
        return {"predicted_ms": total, "dense_ms": dense, "speedup": dense / total,
                "table": dict(self.latency.key), "variants": variants}


def _check_table(profile: ModelProfile, latency: LatencyModel) -> None:
    """Refuse a table built for another model or one with factorised layers."""
    if any(layer.ranks is not None for layer in profile.layers):
        raise BatudeError("latency costs need a dense model (latency tables are built from the dense model); start from the dense checkpoint")
    names = {layer.name for layer in profile.layers}
    unknown = [n for n in latency.layer_names() if n not in names]
    if unknown:
        raise BatudeError(f"the latency table has layer '{unknown[0]}', which this model does not have; build the table for this model")
