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
from batude.rank.budget import Budget, Metric
from batude.rank.greedy import HOLD, Gains, Score, budgeted_ranks, enforce_limits, kept_gain
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
    """The best objective over every rank combination within ``limit``: each layer's choices are tabulated once as
    (cost, gain), so the enumeration only adds numbers."""
    tables = [[(problem.chain_cost(i, rr), sum(kept_gain(s, t, 0, r) for r, s, t in zip(rr, spectra[i], thresholds[i])))
               for rr in itertools.product(*cand.grids)] for i, cand in enumerate(problem.candidates)]
    best = -1.0
    for combo in itertools.product(*tables):
        if problem.fixed + sum(c for c, _ in combo) <= limit:
            best = max(best, sum(g for _, g in combo))
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


def _step_value(spectra, thresholds, ranks, mode, lo, hi, score):
    """The rule's step value summed directly over the slice (METHOD.md's gains; the reference)."""
    value = kept_gain(spectra[mode], thresholds[mode], lo, hi)
    if score.normalised:
        value /= float(spectra[mode].square().sum())
    if score.joint and len(ranks) == 2:
        other = 1 - mode
        value *= kept_gain(spectra[other], thresholds[other], 0, ranks[other]) / float(spectra[other].square().sum())
    return value


def test_running_sums_give_the_step_values_of_the_rule():
    problem = _problem()
    spectra, thresholds = _instance(problem, 5)
    spectra[0][0] = torch.tensor([1000.0, 0.10001, 0.05, 0.0], dtype=torch.float64)  # a tail gain 1e-17 of the head's
    thresholds[0][0] = 0.1
    gains = Gains(spectra, thresholds)
    for score in Score:
        for i, cand in enumerate(problem.candidates):
            full = cand.full_ranks
            for mode in range(len(full)):
                for lo, hi in [(0, 1), (1, 2), (1, full[mode]), (2, full[mode] + 3), (full[mode], full[mode] + 1)]:
                    expected = _step_value(spectra[i], thresholds[i], full, mode, lo, hi, score)
                    assert gains.step(i, full, mode, lo, hi, score) == pytest.approx(expected, rel=1e-9, abs=0)
    assert gains.step(0, problem.candidates[0].full_ranks, 0, 1, 2, Score.GAIN) == pytest.approx(0.00001 ** 2, rel=1e-6)


@pytest.mark.parametrize("seed", range(8))
def test_macs_and_params_budgets_hold_nothing_dense_where_steps_fit(seed):
    problem = _problem()
    spectra, thresholds = _instance(problem, seed)
    limit = problem.dense_total / (1.5 + seed / 4)
    ranks = {hold: budgeted_ranks(problem, spectra, thresholds, limit, hold=hold) for hold in HOLD}
    assert ranks["auto"] == ranks["to-fit"] == ranks["never"] and None not in ranks["auto"]


def test_enforce_limits_leaves_layers_held_dense_alone():
    problem = _problem()
    spectra, thresholds = _instance(problem, 2)
    full = [c.full_ranks for c in problem.candidates]
    start = [None, *full[1:]]  # the first layer held dense, the others at full rank (costed dense too)
    limit = problem.limit_of(Budget.parse("1.1x"))
    assert problem.total(start, Metric.MACS) > limit.value
    ranks = enforce_limits(problem, spectra, thresholds, start, [limit])
    assert ranks[0] is None and problem.total(ranks, Metric.MACS) <= limit.value
