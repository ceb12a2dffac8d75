"""Latency as a rank-selection cost: the interface a latency lookup table offers, and the oracle.

Rank selection (this layer) cannot import the benchmark layer that *measures* latency, so it
states what it needs as :class:`LatencyModel`; :class:`batude.bench.lut.LatencyTable` implements it.
A table gives, per eligible layer and at the table's device, batch and dtype, the dense layer's
latency and the fastest exact factorised form at any ranks (interpolated between measured grid
points), plus the latency of everything else in the model. With it a :class:`RankProblem` can cost
plans in milliseconds, keep a layer dense where that is faster, and record which chain variant
each factorised layer should be lowered to.

:func:`fastest_plan` is the check the latency-aware allocator is judged against: over the table's
measured grid points, the per-layer choice (keep dense, or ranks + fastest variant) with the lowest
predicted whole-model latency under the problem's non-latency limit (e.g. 2.52x fewer MACs),
accuracy ignored. It is solved exactly as a multiple-choice knapsack by dynamic programming, with
each choice's MACs (or params) rounded *up* to 1/``buckets`` of the limit, so the result always
meets the limit and is optimal up to that rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Sequence, runtime_checkable

import numpy as np

from batude.errors import BatudeError
from batude.rank.budget import Metric

if TYPE_CHECKING:
    from batude.rank.plan import LayerPlan, RankPlan
    from batude.rank.problem import Limit, RankProblem

__all__ = ["LatencyModel", "default_multiple", "fastest_plan", "grid_points", "oracle_share", "predict_layers"]

Ranks = tuple[int, ...]

# Rank alignment that suits each dtype's matrix units (tensor-core tiles: 16-bit types want
# multiples of 8, better 16; int8 32). ``--multiple-of`` overrides.
_MULTIPLE = {"float16": 16, "bfloat16": 16, "float32": 8, "int8": 32}


@runtime_checkable
class LatencyModel(Protocol):
    """Predicted latency (ms per batch) of a model's eligible layers at one device/batch/dtype."""

    key: dict[str, Any]  # device, hardware, torch, dtype, batch, backend
    model_ms: float  # the whole dense model
    other_ms: float  # the model minus the table's layers

    def layer_names(self) -> list[str]: ...

    def dense_ms(self, name: str) -> float: ...

    def factorised_ms(self, name: str, ranks: Sequence[int]) -> tuple[str, float]:
        """Fastest exact factorised form of layer ``name`` at ``ranks`` and its latency."""
        ...

    def grid(self, name: str) -> list[list[int]]:
        """The measured ranks of each mode."""
        ...


def predict_layers(latency: LatencyModel, layers: Sequence[LayerPlan]) -> tuple[float, dict[str, str]]:
    """Predicted model ms with ``layers`` as planned (factorised ones in their fastest variant), and those variants.

    Table layers not listed (left out of the plan) and layers planned dense count at dense latency.
    """
    listed = {layer.name for layer in layers}
    total = latency.other_ms + sum(latency.dense_ms(n) for n in latency.layer_names() if n not in listed)
    variants = {}
    for layer in layers:
        if layer.ranks is None:
            total += latency.dense_ms(layer.name)
        else:
            variants[layer.name], ms = latency.factorised_ms(layer.name, layer.ranks)
            total += ms
    return total, variants


def oracle_share(speedup: float, oracle_speedup: float) -> tuple[float, float | None]:
    """How close a plan comes to the oracle, two ways: ``speedup / oracle_speedup`` (the ratio of
    speed-ups over dense, the latency-aware issue's reading), and the share of the oracle's *gain*
    ``(speedup - 1) / (oracle_speedup - 1)`` (None unless the oracle is at least 1% faster than
    dense: a smaller gain makes the share noise). Near 1x the first flatters: a plan no faster than
    dense against a 1.11x oracle is 90% by the ratio, 0% of the gain.
    """
    gain = (speedup - 1.0) / (oracle_speedup - 1.0) if oracle_speedup >= 1.01 else None
    return speedup / oracle_speedup, gain


def default_multiple(latency: LatencyModel | None) -> int:
    """Rank multiple for a problem: 1 without a latency table, else by the table's dtype."""
    if latency is None:
        return 1
    return _MULTIPLE.get(str(latency.key.get("dtype")), 8)


def grid_points(grids: Sequence[Sequence[int]]) -> list[Ranks]:
    """Every combination of one rank per mode (the cartesian product of ``grids``), in order."""
    points: list[Ranks] = [()]
    for grid in grids:
        points = [p + (int(r),) for p in points for r in grid]
    return points


@dataclass(frozen=True)
class _Choice:
    ranks: Ranks | None  # None: keep dense
    cost: float  # in the limit's metric
    ms: float


def _choices(problem: RankProblem, i: int, metric: Metric) -> list[_Choice]:
    cand = problem.candidates[i]
    dense = problem.dense_cost(i, metric)
    out = [_Choice(None, dense, problem.dense_cost(i, Metric.LATENCY))]
    grids = problem.latency.grid(cand.name)
    for r in grid_points(grids):
        cost = problem.chain_cost(i, r, metric)
        if cost < dense:  # a chain at least as costly as dense would be kept dense anyway
            out.append(_Choice(r, cost, problem.chain_cost(i, r, Metric.LATENCY)))
    return out


def fastest_plan(problem: RankProblem, limit: Limit, buckets: int = 4096) -> RankPlan:
    """The lowest-latency plan over the latency table's grid points that meets ``limit`` (see module docs).

    Args:
        problem: a problem built with a latency table (any primary metric).
        limit: the MACs or params limit to respect (:meth:`RankProblem.limit_of`).
        buckets: resolution of the knapsack's cost axis.
    """
    if problem.latency is None:
        raise BatudeError("the oracle needs a latency table; build one with `batude lut build` and pass --lut")
    if limit.metric is Metric.LATENCY:
        raise BatudeError("the oracle minimises latency under a MACs or params limit; give a non-latency budget (e.g. 2.52x)")
    room = limit.value - problem.fixed_cost(limit.metric)
    if room < 0:
        raise BatudeError(f"the oracle's limit is infeasible: layers left dense already cost {problem.fixed_cost(limit.metric):.4g}")
    unit = max(room, 1e-12) / buckets
    best = np.zeros(buckets + 1)  # best[b]: least latency of the layers so far within b units
    picks = []
    for i in range(len(problem.candidates)):
        options = _choices(problem, i, limit.metric)
        new = np.full(buckets + 1, np.inf)
        pick = np.full(buckets + 1, -1, dtype=np.int64)
        for c, opt in enumerate(options):
            w = math.ceil(opt.cost / unit - 1e-9)
            if w > buckets:
                continue
            trial = np.full(buckets + 1, np.inf)
            trial[w:] = best[: buckets + 1 - w] + opt.ms
            better = trial < new
            new[better], pick[better] = trial[better], c
        picks.append((options, pick))
        best = new
    if not np.isfinite(best[buckets]):
        raise BatudeError("the oracle found no plan on the table's grid that meets the limit; loosen the budget or rebuild the table with more points")
    ranks: list[Ranks | None] = [None] * len(picks)
    b = buckets
    for i in range(len(picks) - 1, -1, -1):
        options, pick = picks[i]
        chosen = options[int(pick[b])]
        ranks[i] = chosen.ranks
        b -= math.ceil(chosen.cost / unit - 1e-9)
    full = [r if r is not None else c.full_ranks for r, c in zip(ranks, problem.candidates)]
    plan = problem.to_plan(full, "oracle", None, {"oracle": {"limit": limit.to_dict(), "buckets": buckets}},
                           keep=[r is None for r in ranks])
    return plan
