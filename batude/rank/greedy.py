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

Costs here are chain costs (the factorised layer's MACs or params at these ranks). Ties break by
layer order then mode, so the rule is deterministic. The result meets the budget or raises.
"""

from __future__ import annotations

import enum
import heapq
from typing import Callable, Sequence

import torch

from batude.errors import BatudeError
from batude.rank.problem import RankProblem

__all__ = ["Score", "kept_gain", "budgeted_ranks", "fill_to_budget"]

Ranks = tuple[int, ...]
StepScore = Callable[[int, int, int, int], float]  # (candidate, mode, current, next) -> priority


class Score(str, enum.Enum):
    GAIN_PER_COST = "gain_per_cost"
    GAIN = "gain"


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
) -> list[Ranks]:
    """Ranks per candidate (per mode) that fit ``limit`` under the greedy rule above.

    Args:
        spectra: ``spectra[l][n]``: descending singular values of unfolding ``n`` of candidate ``l``.
        thresholds: ``thresholds[l][n]``: the soft threshold ``t`` of that unfolding.
        limit: largest allowed whole-model cost (problem's metric).
    """
    score = Score(score)
    ranks = _start_ranks(problem, spectra, thresholds)
    total = problem.fixed + sum(problem.chain_cost(i, r) for i, r in enumerate(ranks))
    version = [0] * len(ranks)
    heap: list[tuple[float, int, int, int]] = []

    def push(i: int) -> None:
        for mode, current in enumerate(ranks[i]):
            grid = problem.candidates[i].grids[mode]
            lower = [g for g in grid if g < current]
            if not lower:
                continue
            trial = ranks[i][:mode] + (lower[-1],) + ranks[i][mode + 1:]
            saved = problem.chain_cost(i, ranks[i]) - problem.chain_cost(i, trial)
            gain = kept_gain(spectra[i][mode], thresholds[i][mode], lower[-1], current)
            key = gain / saved if score is Score.GAIN_PER_COST else gain
            heapq.heappush(heap, (key, i, mode, version[i]))

    for i in range(len(ranks)):
        push(i)
    while total > limit:
        if not heap:
            raise BatudeError(f"budget infeasible: even minimum ranks cost {total:.4g} > {limit:.4g}; loosen the budget")
        _, i, mode, ver = heapq.heappop(heap)
        if ver != version[i]:
            continue  # stale: the layer changed since this entry was scored
        grid = problem.candidates[i].grids[mode]
        new = max(g for g in grid if g < ranks[i][mode])
        trial = ranks[i][:mode] + (new,) + ranks[i][mode + 1:]
        total += problem.chain_cost(i, trial) - problem.chain_cost(i, ranks[i])
        ranks[i] = trial
        version[i] += 1
        push(i)
    return ranks


def fill_to_budget(problem: RankProblem, ranks: Sequence[Ranks], limit: float, score: StepScore) -> list[Ranks]:
    """Raise ranks one grid step at a time, best ``score`` first, while the budget allows.

    Uses effective costs (min(chain, dense)), so it spends slack that rounding or layers kept
    dense left. ``score(layer, mode, current, next)``: higher goes first; ties by layer order.
    """
    ranks = [tuple(r) for r in ranks]
    total = problem.total(ranks)
    blocked: set[tuple[int, int]] = set()
    while True:
        best = None
        for i, cand in enumerate(problem.candidates):
            for mode in range(len(ranks[i])):
                nxt = cand.next_rank(mode, ranks[i][mode])
                if nxt is None or (i, mode) in blocked:
                    continue
                key = (score(i, mode, ranks[i][mode], nxt), -i, -mode)
                if best is None or key > best[0]:
                    best = (key, i, mode, nxt)
        if best is None:
            return ranks
        _, i, mode, nxt = best
        trial = ranks[i][:mode] + (nxt,) + ranks[i][mode + 1:]
        new_total = total - problem.layer_cost(i, ranks[i]) + problem.layer_cost(i, trial)
        if new_total <= limit:
            ranks[i], total = trial, new_total
        else:  # costs only grow as other ranks grow: this step never fits again
            blocked.add((i, mode))
