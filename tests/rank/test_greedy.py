"""The greedy budget rule against exhaustive enumeration on small random instances.

Objective (to maximise): total kept gain sum_l,n sum_{i<R} max(s_i - t, 0)^2 subject to the budget.
The rule is a greedy knapsack heuristic, so it can miss the optimum; these tests pin its
feasibility (always) and its quality on random instances: over 40 instances the measured mean
ratio greedy/optimum is printed by `pytest -s`, and asserted to be >= 0.95 on average and >= 0.75
in the worst case (a regression guard; see the assertion message for the numbers).
"""

import itertools

import pytest
import torch
from torch import nn

from batude.errors import BatudeError
from batude.rank.greedy import budgeted_ranks, kept_gain
from batude.rank.problem import RankProblem, SelectorConfig
from batude.rank.filter import LayerFilter


def _problem(multiple_of=1, min_rank=1):
    model = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.Conv2d(8, 6, 3, stride=2, padding=1), nn.Conv2d(6, 7, 1))
    config = SelectorConfig(min_rank=min_rank, multiple_of=multiple_of, layer_filter=LayerFilter(min_in_channels=1))
    return RankProblem.from_model(model, (1, 6, 8, 8), config=config)


def _instance(problem, seed):
    g = torch.Generator().manual_seed(seed)
    spectra, thresholds = [], []
    for cand in problem.candidates:
        per_s, per_t = [], []
        for grid in cand.grids:
            decay = torch.rand(1, generator=g).item() * 1.5 + 0.1
            s = torch.exp(-decay * torch.arange(grid[-1], dtype=torch.float64)) * (1 + torch.rand(1, generator=g, dtype=torch.float64))
            per_s.append(s)
            per_t.append(float(torch.rand(1, generator=g) * 0.1))
        spectra.append(per_s)
        thresholds.append(per_t)
    return spectra, thresholds


def _objective(ranks, spectra, thresholds):
    return sum(kept_gain(s, t, 0, r) for rr, ss, tt in zip(ranks, spectra, thresholds) for r, s, t in zip(rr, ss, tt))


def _optimum(problem, spectra, thresholds, limit):
    best = -1.0
    choices = [list(itertools.product(*cand.grids)) for cand in problem.candidates]
    for combo in itertools.product(*choices):
        if problem.fixed + sum(problem.chain_cost(i, r) for i, r in enumerate(combo)) <= limit:
            best = max(best, _objective(combo, spectra, thresholds))
    return best


def _cost(problem, ranks):
    return problem.fixed + sum(problem.chain_cost(i, r) for i, r in enumerate(ranks))


def test_greedy_feasible_and_near_optimal_against_brute_force():
    problem = _problem()
    ratios = []
    for seed in range(40):
        spectra, thresholds = _instance(problem, seed)
        limit = problem.dense_total / (1.5 + 3 * (seed % 5) / 4)
        ranks = budgeted_ranks(problem, spectra, thresholds, limit)
        assert _cost(problem, ranks) <= limit
        best = _optimum(problem, spectra, thresholds, limit)
        ratios.append(_objective(ranks, spectra, thresholds) / best)
    mean, worst = sum(ratios) / len(ratios), min(ratios)
    print(f"greedy/optimum over {len(ratios)} instances: mean {mean:.4f}, worst {worst:.4f}")
    assert mean >= 0.95 and worst >= 0.75, f"mean {mean:.4f}, worst {worst:.4f}"


def test_aligned_grid_respected_and_feasible():
    problem = _problem(multiple_of=4, min_rank=2)
    spectra, thresholds = _instance(problem, 7)
    assert problem.candidates[0].grids == ((4, 8), (4, 6))
    limit = problem.dense_total / 1.6
    ranks = budgeted_ranks(problem, spectra, thresholds, limit)
    for cand, rr in zip(problem.candidates, ranks):
        for grid, r in zip(cand.grids, rr):
            assert r in grid
    assert _cost(problem, ranks) <= limit
    assert ranks != [tuple(g[-1] for g in c.grids) for c in problem.candidates]


def test_zero_gain_triplets_are_dropped_first():
    problem = _problem()
    spectra, _ = _instance(problem, 3)
    huge = [[float(s[1]) for s in per] for per in spectra]  # threshold above all but the top value
    ranks = budgeted_ranks(problem, spectra, huge, problem.dense_total)  # loose budget
    assert all(r == 1 for rr in ranks for r in rr)


def test_loose_budget_keeps_every_positive_gain():
    problem = _problem()
    spectra, thresholds = _instance(problem, 4)
    ranks = budgeted_ranks(problem, spectra, thresholds, float("inf"))
    expected = [tuple(max(int((s > t).sum()), 1) for s, t in zip(ss, tt)) for ss, tt in zip(spectra, thresholds)]
    assert ranks == expected


def test_deterministic_and_gain_score_option():
    problem = _problem()
    spectra, thresholds = _instance(problem, 9)
    limit = problem.dense_total / 3
    assert budgeted_ranks(problem, spectra, thresholds, limit) == budgeted_ranks(problem, spectra, thresholds, limit)
    by_gain = budgeted_ranks(problem, spectra, thresholds, limit, score="gain")
    assert _cost(problem, by_gain) <= limit


def test_infeasible_raises():
    problem = _problem(min_rank=6)
    spectra, thresholds = _instance(problem, 1)
    with pytest.raises(BatudeError, match="infeasible"):
        budgeted_ranks(problem, spectra, thresholds, problem.fixed + 10)
