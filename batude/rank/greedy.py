"""Budget-constrained choice of how many singular triplets each unfolding keeps (METHOD.md section 4).

The Z-step of BC-ADL soft-thresholds the singular values ``s`` of every unfolding at
``t = lambda * alpha_n / rho``; keeping triplet ``i`` lowers the Z-subproblem objective by
``(rho / 2) * max(s_i - t, 0)^2`` (its *gain*), so every unfolding keeps a prefix. Rule (design):

1. start each unfolding at ``R = #{s > t}``, snapped up to its rank grid (``min_rank``,
   ``multiple_of``; triplets with zero gain kept by the snap are removed first);
2. while the whole-model cost exceeds the budget, remove one grid step from the unfolding whose
   gain lost per unit of cost saved is smallest (``score="gain_per_cost"``; ``"gain"`` ignores
   cost). The cost saved uses the layer's other rank at its current value, so a change to one
   mode re-scores the other. A heap with per-layer versions keeps it ``O(steps * log)``.

``score="joint_per_cost"`` (design, this project's) values a kxk layer's two unfoldings jointly:
the energy a Tucker-2 layer keeps is modelled as ``G * f1(R1) * f2(R2)``, with ``f_n`` the kept
fraction of unfolding ``n``'s gain and ``G`` its mean total, instead of the separable
``g1(R1) + g2(R2)``. Both unfoldings hold the same tensor, so keeping all of one mode while the
other is cut to rank 1 keeps almost nothing; the separable sum cannot see that and, with the
bilinear core cost, drifts to such corners (observed on ResNet-20: ranks like (11, 1)). For 1x1
convs and Linears (one unfolding) the two scores coincide.

Costs here are chain costs (the factorised layer's MACs, params or predicted ms at these ranks).
Extra limits (``also``: e.g. a latency cap on a MACs budget) are met after the budget, by the same
rule with cost saved measured in that limit's metric. Ties break by layer order then mode, so the
rule is deterministic. The result meets the budget (and every extra limit) or raises.
"""

from __future__ import annotations

import enum
import heapq
from typing import Callable, Sequence

import torch

from batude.errors import BatudeError
from batude.rank.budget import Metric
from batude.rank.problem import Limit, RankProblem

__all__ = ["Score", "kept_gain", "step_value", "budgeted_ranks", "enforce_limits", "fill_to_budget"]

Ranks = tuple[int, ...]
StepScore = Callable[[int, int, int, int, Ranks], float]  # (candidate, mode, current, next, its ranks) -> priority


class Score(str, enum.Enum):
    """What the greedy rule removes first: the smallest value lost (per unit of cost saved)."""

    GAIN_PER_COST = "gain_per_cost"  # (s_i - t)^2, per unit of cost saved: METHOD.md's rule
    GAIN = "gain"  # (s_i - t)^2, cost ignored
    ENERGY_PER_COST = "energy_per_cost"  # gain / the unfolding's energy sum(s^2), per unit of cost
    ENERGY = "energy"  # gain / the unfolding's energy, cost ignored
    JOINT_PER_COST = "joint_per_cost"  # normalised gain x the other mode's kept fraction, per cost

    @property
    def per_cost(self) -> bool:
        return self.value.endswith("_per_cost")

    @property
    def normalised(self) -> bool:
        return self.value.startswith(("energy", "joint"))

    @property
    def joint(self) -> bool:
        return self.value.startswith("joint")


def step_value(spectra, thresholds, ranks: Ranks, mode: int, lo: int, hi: int, score: Score) -> float:
    """Value of triplets ``lo..hi-1`` of unfolding ``mode`` of one layer at ``ranks`` (before cost).

    Raw: their gain ``sum max(s_i - t, 0)^2``. Normalised: divided by the unfolding's energy
    ``sum s_i^2`` (a conv followed by BatchNorm has an arbitrary weight scale, so raw gains do not
    compare across layers). Joint: also times the other unfolding's kept fraction.
    """
    value = kept_gain(spectra[mode], thresholds[mode], lo, hi)
    if score.normalised:
        value /= _energy(spectra[mode])
    if score.joint and len(ranks) == 2:
        other = 1 - mode
        value *= kept_gain(spectra[other], thresholds[other], 0, ranks[other]) / _energy(spectra[other])
    return value


def _energy(sigma: torch.Tensor) -> float:
    return max(float(sigma.square().sum()), 1e-300)


def kept_gain(sigma: torch.Tensor, threshold: float, start: int, stop: int) -> float:
    """Sum of ``max(s_i - t, 0)^2`` over triplets ``start <= i < stop`` (0-based), the gain / (rho/2)."""
    return float((sigma[start:stop] - threshold).clamp_min(0.0).square().sum())


def _start_ranks(problem: RankProblem, spectra, thresholds) -> list[Ranks]:
    ranks = []
    for cand, sig, thr in zip(problem.candidates, spectra, thresholds):
        ranks.append(tuple(cand.snap(m, max(int((s > t).sum()), 1)) for m, (s, t) in enumerate(zip(sig, thr))))
    return ranks


def budgeted_ranks(
    problem: RankProblem,
    spectra: Sequence[Sequence[torch.Tensor]],
    thresholds: Sequence[Sequence[float]],
    limit: float,
    score: Score | str = Score.GAIN_PER_COST,
    also: Sequence[Limit] = (),
) -> list[Ranks]:
    """Ranks per candidate (per mode) that fit ``limit`` (and ``also``) under the greedy rule above.

    Args:
        spectra: ``spectra[l][n]``: descending singular values of unfolding ``n`` of candidate ``l``.
        thresholds: ``thresholds[l][n]``: the soft threshold ``t`` of that unfolding.
        limit: largest allowed whole-model cost (problem's metric).
        also: further limits, in any metric the problem can cost.
    """
    score = Score(score)
    ranks = _start_ranks(problem, spectra, thresholds)
    for metric, value in [(problem.metric, limit)] + [(extra.metric, extra.value) for extra in also]:
        _remove_until(problem, spectra, thresholds, ranks, metric, value, score)
    if problem.chain_total(ranks) > limit:  # a latency cap can, in principle, undo a latency budget
        _remove_until(problem, spectra, thresholds, ranks, problem.metric, limit, score)
    return ranks


def enforce_limits(problem: RankProblem, spectra, thresholds, ranks: Sequence[Ranks], limits: Sequence[Limit],
                   score: Score | str = Score.JOINT_PER_COST) -> list[Ranks]:
    """Lower ``ranks`` by the greedy rule until every limit holds on *effective* costs.

    Needed where a layer the primary metric keeps dense costs more in another metric than its chain
    (e.g. a latency budget keeps a slow chain dense, which adds MACs against a MACs limit).
    """
    ranks = [tuple(r) for r in ranks]
    for limit in limits:
        _remove_until(problem, spectra, thresholds, ranks, limit.metric, limit.value, Score(score), effective=True)
    if not problem.fits(ranks, limits):
        raise BatudeError("no ranks meet every limit together; loosen the budget or the --also limits")
    return ranks


def _remove_until(problem: RankProblem, spectra, thresholds, ranks: list[Ranks], metric: Metric, limit: float,
                  score: Score, effective: bool = False) -> None:
    """Remove grid steps, least value per ``metric`` saved first, until the total fits ``limit``.

    Chain totals (every candidate factorised; the Z-step's view), or with ``effective`` the
    totals of the plan the ranks describe (layers kept dense where the primary metric says so).
    """
    cost = problem.layer_cost if effective else problem.chain_cost
    total = problem.total(ranks, metric) if effective else problem.chain_total(ranks, metric)
    version = [0] * len(ranks)
    heap: list[tuple[float, int, int, int]] = []

    def push(i: int) -> None:
        for mode, current in enumerate(ranks[i]):
            grid = problem.candidates[i].grids[mode]
            lower = [g for g in grid if g < current]
            if not lower:
                continue
            trial = ranks[i][:mode] + (lower[-1],) + ranks[i][mode + 1:]
            saved = cost(i, ranks[i], metric) - cost(i, trial, metric)
            value = step_value(spectra[i], thresholds[i], ranks[i], mode, lower[-1], current, score)
            key = value if not score.per_cost else (value / saved if saved > 0 else float("inf"))
            heapq.heappush(heap, (key, i, mode, version[i]))

    for i in range(len(ranks)):
        push(i)
    while total > limit:
        if not heap:
            raise BatudeError(f"budget infeasible: even minimum ranks cost {total:.4g} > {limit:.4g} {metric.unit}; loosen the budget")
        _, i, mode, ver = heapq.heappop(heap)
        if ver != version[i]:
            continue  # stale: the layer changed since this entry was scored
        grid = problem.candidates[i].grids[mode]
        new = max(g for g in grid if g < ranks[i][mode])
        trial = ranks[i][:mode] + (new,) + ranks[i][mode + 1:]
        total += cost(i, trial, metric) - cost(i, ranks[i], metric)
        ranks[i] = trial
        version[i] += 1
        push(i)


def fill_to_budget(problem: RankProblem, ranks: Sequence[Ranks], limit: float, score: StepScore,
                   also: Sequence[Limit] = ()) -> list[Ranks]:
    """Raise ranks one grid step at a time, best ``score`` first, while the budget (and ``also``) allows.

    Uses effective costs (min(chain, dense)), so it spends slack that rounding or layers kept
    dense left. ``score(layer, mode, current, next, layer_ranks)``: higher goes first; ties by
    layer order.
    """
    ranks = [tuple(r) for r in ranks]
    total = problem.total(ranks)
    extra = [[lim, problem.total(ranks, lim.metric)] for lim in also]
    blocked: set[tuple[int, int]] = set()
    while True:
        best = None
        for i, cand in enumerate(problem.candidates):
            for mode in range(len(ranks[i])):
                nxt = cand.next_rank(mode, ranks[i][mode])
                if nxt is None or (i, mode) in blocked:
                    continue
                key = (score(i, mode, ranks[i][mode], nxt, ranks[i]), -i, -mode)
                if best is None or key > best[0]:
                    best = (key, i, mode, nxt)
        if best is None:
            return ranks
        _, i, mode, nxt = best
        trial = ranks[i][:mode] + (nxt,) + ranks[i][mode + 1:]
        new_total = total - problem.layer_cost(i, ranks[i]) + problem.layer_cost(i, trial)
        new_extra = [t - problem.layer_cost(i, ranks[i], lim.metric) + problem.layer_cost(i, trial, lim.metric)
                     for lim, t in extra]
        if new_total <= limit and all(t <= lim.value for (lim, _), t in zip(extra, new_extra)):
            ranks[i], total = trial, new_total
            for pair, t in zip(extra, new_extra):
                pair[1] = t
        else:  # costs (nearly always) only grow as other ranks grow: this step never fits again
            blocked.add((i, mode))
