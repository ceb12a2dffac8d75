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

3. (design, this project's) where removing steps cannot meet every limit, layers are *held dense*
   one at a time: a layer whose dense form is cheaper than its chain in some limited metric (on a
   GPU at batch 1 most chains are slower than the dense conv; under a MACs limit the rule above
   never gives them up) is costed dense and left alone, and the rule reruns for the others. Each
   round holds the layer whose rerun leaves the least excess, or once the limits hold, keeps the
   most value; it stops when no layer improves on that (infeasible if the limits still fail).
   Where a limit is in latency the rounds go on while they keep more value: there, the Z-step's
   view (every chain at chain cost) spends the budget on chains the plan would drop for their
   dense layers anyway (BENCHMARKS.md, "Holding layers dense": more value kept at the same
   budget, measured by ``benchmarks/held_dense.py``). MACs and params plans change only where
   they would otherwise fail. Layers held dense come back as ``None``
   (:meth:`RankProblem.keeps_dense`). ``hold`` selects: ``"auto"`` (this), ``"to-fit"`` (only
   while the limits fail), ``"never"`` (steps 1-2 alone).
"""

from __future__ import annotations

import enum
import heapq
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch

from batude.errors import BatudeError
from batude.rank.budget import Metric
from batude.rank.problem import Limit, RankProblem

__all__ = ["HOLD", "Gains", "Score", "kept_gain", "kept_value", "budgeted_ranks", "cheaper_dense", "enforce_limits",
           "fill_to_budget", "overrun"]

Ranks = tuple[int, ...]
HOLD = ("auto", "to-fit", "never")  # when the rule holds layers dense (step 3)
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


class Gains:
    """The gains of every candidate's unfoldings (``spectra[l][n]``, thresholds ``thresholds[l][n]``)
    as running sums: the greedy rule asks for hundreds of thousands of step values when it holds
    layers dense. A step's gain comes from suffix sums, exact for the small gains of a spectrum's
    tail; the gain kept from triplet 0 from prefix sums."""

    def __init__(self, spectra, thresholds) -> None:
        gains = [[(s.double() - t).clamp_min(0.0).square() for s, t in zip(ss, tt)] for ss, tt in zip(spectra, thresholds)]
        self.prefix = [[[0.0] + g.cumsum(0).tolist() for g in gg] for gg in gains]
        self.suffix = [[g.flip(0).cumsum(0).flip(0).tolist() + [0.0] for g in gg] for gg in gains]
        self.energy = [[_energy(s) for s in ss] for ss in spectra]

    def _kept(self, i: int, mode: int, lo: int, hi: int) -> float:
        """Gain of triplets ``lo..hi-1`` (indices past the spectrum count as 0, as slicing does)."""
        if lo == 0:
            prefix = self.prefix[i][mode]
            return prefix[min(hi, len(prefix) - 1)]
        suffix = self.suffix[i][mode]
        return suffix[min(lo, len(suffix) - 1)] - suffix[min(hi, len(suffix) - 1)]

    def value(self, i: int, ranks: Ranks, score: Score) -> float:
        """What layer ``i`` keeps at ``ranks``, in the score's units: the sum over its unfoldings of
        the kept gain (normalised: kept fraction), or for a joint score the product of the fractions."""
        kept = [self._kept(i, mode, 0, r) / (self.energy[i][mode] if score.normalised else 1.0)
                for mode, r in enumerate(ranks)]
        return math.prod(kept) if score.joint else sum(kept)

    def kept(self, problem: RankProblem, ranks: Sequence[Ranks | None], score: Score) -> float:
        return sum(self.value(i, r or problem.candidates[i].full_ranks, score) for i, r in enumerate(ranks))

    def step(self, i: int, ranks: Ranks, mode: int, lo: int, hi: int, score: Score) -> float:
        """Value of triplets ``lo..hi-1`` of unfolding ``mode`` of layer ``i`` at ``ranks`` (before cost).

        Raw: their gain ``sum max(s_j - t, 0)^2``. Normalised: divided by the unfolding's energy
        ``sum s_j^2`` (a conv followed by BatchNorm has an arbitrary weight scale, so raw gains do
        not compare across layers). Joint: also times the other unfolding's kept fraction.
        """
        value = self._kept(i, mode, lo, hi)
        if score.normalised:
            value /= self.energy[i][mode]
        if score.joint and len(ranks) == 2:
            other = 1 - mode
            value *= self._kept(i, other, 0, ranks[other]) / self.energy[i][other]
        return value


def _energy(sigma: torch.Tensor) -> float:
    return max(float(sigma.square().sum()), 1e-300)


def kept_gain(sigma: torch.Tensor, threshold: float, start: int, stop: int) -> float:
    """Sum of ``max(s_i - t, 0)^2`` over triplets ``start <= i < stop`` (0-based), the gain / (rho/2)."""
    return float((sigma[start:stop] - threshold).clamp_min(0.0).square().sum())


def kept_value(problem: RankProblem, spectra, thresholds, ranks: Sequence[Ranks | None], score: Score | str) -> float:
    """What ``ranks`` keep, summed over the candidates in the score's units (:meth:`Gains.value`;
    a layer held dense, ``None``, keeps its full ranks): the quantity the greedy rule trades for cost."""
    return Gains(spectra, thresholds).kept(problem, ranks, Score(score))


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
    hold: str = "auto",
) -> list[Ranks | None]:
    """Ranks per candidate (per mode) that fit ``limit`` (and ``also``) under the greedy rule above.

    Args:
        spectra: ``spectra[l][n]``: descending singular values of unfolding ``n`` of candidate ``l``.
        thresholds: ``thresholds[l][n]``: the soft threshold ``t`` of that unfolding.
        limit: largest allowed whole-model cost (problem's metric).
        also: further limits, in any metric the problem can cost.
        hold: when step 3 holds layers dense: ``"auto"``, ``"to-fit"`` or ``"never"`` (module docs).

    Layers held dense come back as ``None``.
    """
    if hold not in HOLD:
        raise BatudeError(f"hold must be one of {HOLD}, got {hold!r}")
    score = Score(score)
    limits = [(problem.metric, limit)] + [(extra.metric, extra.value) for extra in also]
    gains, start = Gains(spectra, thresholds), _start_ranks(problem, spectra, thresholds)
    improve = hold == "auto" and any(metric is Metric.LATENCY for metric, _ in limits)  # see step 3
    best = _allocate(problem, gains, start, limits, score, frozenset())
    while hold != "never" and (best.excess > 0 or improve):
        trials = [_allocate(problem, gains, start, limits, score, best.dense | {i})
                  for i in cheaper_dense(problem, best.ranks, [metric for metric, _ in limits])]
        better = min(trials, key=_Allocation.order, default=None)
        if better is None or better.order() >= best.order():
            break
        best = better
    if best.excess > 0:
        reached = ", ".join(f"{_total(problem, best.ranks, m):.4g} {m.unit} (allowed {v:.4g})" for m, v in limits)
        raise BatudeError(f"budget infeasible: the greedy rule gets no closer than {reached}; loosen the budget")
    return best.ranks


@dataclass(frozen=True)
class _Allocation:
    ranks: list[Ranks | None]  # None: held dense
    excess: float  # sum over limits of the relative overrun; 0 when every limit holds
    kept: float  # the value the ranks keep (:meth:`Gains.value`)

    @property
    def dense(self) -> frozenset[int]:
        return frozenset(i for i, r in enumerate(self.ranks) if r is None)

    def order(self) -> tuple[bool, float]:
        """Smaller is better: meeting the limits first, then less excess, or more value kept."""
        return (self.excess > 0, self.excess if self.excess > 0 else -self.kept)


def _allocate(problem: RankProblem, gains: Gains, start: Sequence[Ranks], limits: Sequence[tuple[Metric, float]],
              score: Score, dense: frozenset[int]) -> _Allocation:
    """Steps 1-2 of the rule from ``start`` with the layers in ``dense`` held dense: the budget, each
    extra limit, the budget again."""
    ranks: list[Ranks | None] = [None if i in dense else r for i, r in enumerate(start)]
    for metric, value in [*limits, limits[0]]:  # a later limit can, in principle, undo the budget
        _remove_until(problem, gains, ranks, metric, value, score)
    excess = overrun((_total(problem, ranks, metric), value) for metric, value in limits)
    return _Allocation(ranks, excess, gains.kept(problem, ranks, score))


def overrun(totals: Iterable[tuple[float, float]]) -> float:
    """Sum of the relative overruns ``total / allowed - 1`` of ``(total, allowed)`` pairs; 0 when every
    limit holds. Below 1e-12 an overrun is the rounding of re-summing costs that met the limit."""
    return sum(over for over in (total / allowed - 1.0 for total, allowed in totals) if over > 1e-12)


def _cost(problem: RankProblem, i: int, ranks: Ranks | None, metric: Metric) -> float:
    """The Z-step's cost of a layer: its chain, even where dense is cheaper, unless held dense."""
    return problem.dense_cost(i, metric) if ranks is None else problem.chain_cost(i, ranks, metric)


def _total(problem: RankProblem, ranks: Sequence[Ranks | None], metric: Metric) -> float:
    return problem.fixed_cost(metric) + sum(_cost(problem, i, r, metric) for i, r in enumerate(ranks))


def cheaper_dense(problem: RankProblem, ranks: Sequence[Ranks | None], metrics: Sequence[Metric]) -> list[int]:
    """Layers not held dense whose dense form costs less than their chain at ``ranks`` in one of ``metrics``:
    the ones holding dense can help (step 3)."""
    return [i for i, r in enumerate(ranks)
            if r is not None and any(problem.dense_cost(i, m) < problem.chain_cost(i, r, m) for m in metrics)]


def enforce_limits(problem: RankProblem, spectra, thresholds, ranks: Sequence[Ranks | None], limits: Sequence[Limit],
                   score: Score | str = Score.JOINT_PER_COST) -> list[Ranks | None]:
    """Lower ``ranks`` by the greedy rule until every limit holds on *effective* costs.

    Needed where a layer the primary metric keeps dense costs more in another metric than its chain
    (e.g. a latency budget keeps a slow chain dense, which adds MACs against a MACs limit).
    """
    ranks = [None if r is None else tuple(r) for r in ranks]
    gains = Gains(spectra, thresholds)
    for limit in limits:
        _remove_until(problem, gains, ranks, limit.metric, limit.value, Score(score), effective=True)
    if not problem.fits(ranks, limits):
        raise BatudeError("no ranks meet every limit together; loosen the budget or the --also limits")
    return ranks


def _remove_until(problem: RankProblem, gains: Gains, ranks: list[Ranks | None], metric: Metric, limit: float,
                  score: Score, effective: bool = False) -> None:
    """Remove grid steps, least value per ``metric`` saved first, until the total fits ``limit`` or
    no step is left. Layers held dense (``None``) are left alone.

    Chain totals (every candidate factorised unless held dense; the Z-step's view), or with
    ``effective`` the totals of the plan the ranks describe (layers kept dense where
    :meth:`RankProblem.keeps_dense` says so).
    """
    def cost(i: int, r: Ranks, m: Metric) -> float:
        return problem.layer_cost(i, r, m) if effective else _cost(problem, i, r, m)

    total = problem.fixed_cost(metric) + sum(cost(i, r, metric) for i, r in enumerate(ranks))
    version = [0] * len(ranks)
    heap: list[tuple[float, int, int, int]] = []

    def push(i: int) -> None:
        if ranks[i] is None:
            return
        for mode, current in enumerate(ranks[i]):
            grid = problem.candidates[i].grids[mode]
            lower = [g for g in grid if g < current]
            if not lower:
                continue
            trial = ranks[i][:mode] + (lower[-1],) + ranks[i][mode + 1:]
            saved = cost(i, ranks[i], metric) - cost(i, trial, metric)
            value = gains.step(i, ranks[i], mode, lower[-1], current, score)
            key = value if not score.per_cost else (value / saved if saved > 0 else float("inf"))
            heapq.heappush(heap, (key, i, mode, version[i]))

    for i in range(len(ranks)):
        push(i)
    while total > limit and heap:
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


def fill_to_budget(problem: RankProblem, ranks: Sequence[Ranks | None], limit: float, score: StepScore,
                   also: Sequence[Limit] = ()) -> list[Ranks | None]:
    """Raise ranks one grid step at a time, best ``score`` first, while the budget (and ``also``) allows.

    Uses effective costs (min(chain, dense)), so it spends slack that rounding or layers kept
    dense left (layers held dense, ``None``, stay so). ``score(layer, mode, current, next,
    layer_ranks)``: higher goes first; ties by layer order.
    """
    ranks = [None if r is None else tuple(r) for r in ranks]
    total = problem.total(ranks)
    extra = [[lim, problem.total(ranks, lim.metric)] for lim in also]
    blocked: set[tuple[int, int]] = set()
    while True:
        best = None
        for i, cand in enumerate(problem.candidates):
            for mode in range(0 if ranks[i] is None else len(ranks[i])):
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
