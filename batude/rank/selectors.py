"""Training-free, budget-aware rank selectors: uniform ratio, energy threshold, VBMF.

Each selector is a one-parameter family of rank assignments whose whole-model cost is
non-decreasing in the parameter. Bisection finds the largest parameter that fits the budget;
a greedy *fill* then spends what the rounding left over, one grid step at a time, in the order
the selector's score prefers (ties: layer order), never exceeding the budget. The result meets the
budget from below, typically within a fraction of a percent. Everything is deterministic.

Where even the family's smallest ranks miss a limit, layers are *held dense* first, one at a time,
as BATUDE's greedy rule does (:mod:`batude.rank.greedy`, step 3, ``to-fit``): measured latency
need not fall with rank, and under a FLOPs limit with a latency cap (``--also latency:1x``) a chain
slower than its dense layer still counts as a chain (it saves FLOPs). Each round holds the layer,
among those whose dense form is cheaper than their smallest chain in a limited metric, whose
holding leaves the least overrun at the smallest ranks; the family then spans the other layers.
Plans the family alone can meet are unchanged. Only limits in two or more metrics call for it: under
one, a chain no cheaper than its dense layer already counts dense (:meth:`RankProblem.keeps_dense`),
so a budget between a latency table's floor and the cost at minimum ranks stays out of reach.
"""

from __future__ import annotations

import enum
import logging
from typing import Callable, Sequence

import torch
from torch import nn

from batude.errors import BatudeError
from batude.functional.tucker import spectrum, unfold
from batude.functional.vbmf import evbmf
from batude.rank.budget import Budget
from batude.rank.greedy import StepScore, cheaper_dense, fill_to_budget, overrun
from batude.rank.plan import RankPlan
from batude.rank.latency import LatencyModel
from batude.rank.problem import Candidate, Limit, RankProblem, SelectorConfig

__all__ = ["Method", "select_ranks", "uniform_ranks", "energy_ranks", "vbmf_ranks"]

log = logging.getLogger(__name__)

Ranks = tuple[int, ...]
Family = Callable[[float], list[Ranks | None]]  # None: a layer held dense


class Method(str, enum.Enum):
    UNIFORM = "uniform"
    ENERGY = "energy"
    VBMF = "vbmf"


def _unfoldings(cand: Candidate) -> list[torch.Tensor]:
    """Each mode's unfolding (Tucker: W(1), W(2); low-rank: the ``(S, C)`` matrix), float64 CPU."""
    weight = cand.module.weight.detach().to("cpu", torch.float64)
    return [unfold(weight, mode) for mode in range(cand.layer.kind.n_ranks)]


def _overrun(problem: RankProblem, ranks: Sequence[Ranks | None], limits: Sequence[Limit]) -> float:
    return overrun((problem.total(ranks, lim.metric), lim.value) for lim in limits)


def _held(ranks: Sequence[Ranks], held: frozenset[int]) -> list[Ranks | None]:
    return [None if i in held else r for i, r in enumerate(ranks)]


def _hold_to_fit(problem: RankProblem, family: Family, lo: float, limits: Sequence[Limit]) -> Family:
    """``family`` with layers held dense (``None``) while its smallest ranks miss ``limits`` (module docs)."""
    smallest = family(lo)
    held: frozenset[int] = frozenset()
    overrun = _overrun(problem, smallest, limits)
    while overrun > 0:
        options = cheaper_dense(problem, _held(smallest, held), [lim.metric for lim in limits])
        best = min(((_overrun(problem, _held(smallest, held | {i}), limits), i) for i in options), default=None)
        if best is None or best[0] >= overrun:
            break
        overrun, held = best[0], held | {best[1]}
    if held:
        log.info("holding %d layer(s) dense: the selector's smallest ranks alone miss the budget", len(held))
    return family if not held else (lambda p: _held(family(p), held))


def _bisect(problem: RankProblem, family: Family, lo: float, hi: float,
            limits: Sequence[Limit]) -> tuple[float, list[Ranks | None]]:
    """Largest parameter in [lo, hi] whose ranks fit ``limits``; raises when even ``family(lo)`` does not."""
    smallest = family(lo)
    for limit in limits:
        least = problem.total(smallest, limit.metric)
        if least > limit.value:  # feasible for some ranks (checked before), but not along this family
            held = sum(r is None for r in smallest)
            raise BatudeError(
                f"budget {limit.budget} is out of this selector's reach: its smallest ranks cost {least:.4g} "
                f"{limit.metric.unit} > {limit.value:.4g} allowed"
                + (f" with {held} layer(s) held dense" if held else "")
                + " (measured latency need not fall with rank); loosen the budget, or let BATUDE's greedy rule "
                "choose (`batude compress`)")
    if problem.fits(family(hi), limits):
        return hi, family(hi)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if problem.fits(family(mid), limits):
            lo = mid
        else:
            hi = mid
    return lo, family(lo)


def _select(problem: RankProblem, budget: Budget, family: Family, hi: float, score: StepScore,
            also: Sequence[Budget] = ()) -> tuple[float, list[Ranks | None]]:
    limits = problem.limits(budget, also)
    param, ranks = _bisect(problem, _hold_to_fit(problem, family, 0.0, limits), 0.0, hi, limits)
    return param, fill_to_budget(problem, ranks, limits[0].value, score, limits[1:])


def uniform_ranks(problem: RankProblem, budget: Budget, also: Sequence[Budget] = ()) -> tuple[dict, list[Ranks | None]]:
    """One ratio ``r`` for every rank: ``R = ceil(r * full)`` snapped up to the grid."""
    fulls = [[g[-1] for g in c.grids] for c in problem.candidates]

    def family(r: float) -> list[Ranks]:
        return [tuple(c.snap(m, r * f) for m, f in enumerate(full)) for c, full in zip(problem.candidates, fulls)]

    def score(i: int, mode: int, cur: int, nxt: int, _: Ranks) -> float:
        return -cur / fulls[i][mode]  # lowest ratio first keeps the ratios uniform

    r, ranks = _select(problem, budget, family, 1.0, score, also)
    return {"ratio": r}, ranks


def _energy_curves(problem: RankProblem) -> list[list[torch.Tensor]]:
    curves = []
    for cand in problem.candidates:
        per_mode = []
        for sv in map(spectrum, _unfoldings(cand)):
            energy = sv.square().cumsum(0)
            per_mode.append(energy / energy[-1].clamp_min(torch.finfo(torch.float64).tiny))
        curves.append(per_mode)
    return curves


def energy_ranks(problem: RankProblem, budget: Budget, also: Sequence[Budget] = ()) -> tuple[dict, list[Ranks | None]]:
    """One global threshold ``t`` on the kept fraction of singular-value energy (sum of s^2).

    Each unfolding keeps the smallest rank whose leading singular values hold at least ``t`` of
    its energy, snapped up to the grid.
    """
    curves = problem.memo("energy_curves", lambda: _energy_curves(problem))

    def family(t: float) -> list[Ranks]:
        out = []
        for cand, per_mode in zip(problem.candidates, curves):
            out.append(tuple(
                cand.snap(m, int(torch.searchsorted(curve, torch.tensor(t - 1e-12, dtype=curve.dtype)).item()) + 1)
                for m, curve in enumerate(per_mode)
            ))
        return out

    def score(i: int, mode: int, cur: int, nxt: int, _: Ranks) -> float:
        curve = curves[i][mode]
        return float(curve[nxt - 1] - curve[cur - 1])  # energy the step adds

    t, ranks = _select(problem, budget, family, 1.0, score, also)
    return {"energy_threshold": t}, ranks


def vbmf_ranks(problem: RankProblem, budget: Budget, also: Sequence[Budget] = ()) -> tuple[dict, list[Ranks | None]]:
    """EVBMF rank estimate per unfolding (Kim et al. 2016), scaled by one factor ``s`` to the budget."""
    estimates = problem.memo("vbmf_ranks", lambda: [
        [max(evbmf(matrix).rank, 1) for matrix in _unfoldings(c)] for c in problem.candidates
    ])

    def family(s: float) -> list[Ranks]:
        return [tuple(c.snap(m, s * est) for m, est in enumerate(e)) for c, e in zip(problem.candidates, estimates)]

    def score(i: int, mode: int, cur: int, nxt: int, _: Ranks) -> float:
        return -cur / estimates[i][mode]

    hi = max(g[-1] / est for c, e in zip(problem.candidates, estimates) for g, est in zip(c.grids, e))
    s, ranks = _select(problem, budget, family, float(hi), score, also)
    return {"vbmf_scale": s, "vbmf_ranks": {c.name: e for c, e in zip(problem.candidates, estimates)}}, ranks


_SELECTORS = {Method.UNIFORM: uniform_ranks, Method.ENERGY: energy_ranks, Method.VBMF: vbmf_ranks}


def select_ranks(
    model: nn.Module,
    budget: Budget | str,
    method: Method | str = Method.UNIFORM,
    input_shape: Sequence[int] = (1, 3, 224, 224),
    config: SelectorConfig | None = None,
    latency: LatencyModel | None = None,
    also: Sequence[Budget | str] = (),
) -> RankPlan:
    """A :class:`RankPlan` for ``model`` meeting ``budget`` with a training-free selector.

    Args:
        model: a dense model (layers already factorised are left as they are).
        budget: a :class:`Budget` or its string form (``"2.52x"``, ``"params:3x"``, ``"latency:2x"``...).
        method: ``uniform``, ``energy`` or ``vbmf``.
        input_shape: ``N, C, H, W`` used to measure each layer's spatial size.
        config: min rank, rank multiple, layer filter.
        latency: a latency table for this model (needed by latency budgets; with it the plan
            records predicted latency and each layer's fastest variant).
        also: further budgets the plan must meet too (e.g. ``"latency:1x"``: not slower than dense).
    """
    budget = Budget.parse(budget) if isinstance(budget, str) else budget
    also = [Budget.parse(b) if isinstance(b, str) else b for b in also]
    try:
        method = Method(method)
    except ValueError:
        raise BatudeError(f"unknown method '{method}'; choose from {[m.value for m in Method]}") from None
    problem = RankProblem.from_model(model, input_shape, budget.metric, config, latency, [b.metric for b in also])
    extra, ranks = _SELECTORS[method](problem, budget, also)
    if also:
        extra["also"] = [str(b) for b in also]
    plan = problem.to_plan(ranks, method.value, budget, {"method_params": extra})
    log.info("%s plan: %.3fx fewer MACs, %.3fx fewer params", method.value, plan.macs_reduction, plan.params_reduction)
    return plan
