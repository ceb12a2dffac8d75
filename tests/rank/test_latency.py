"""Latency budgets: met on the table's predictions, aligned, keep-dense where a chain is slower,
mixed MACs + latency limits, deterministic, and the oracle (exact knapsack) against brute force.

Most tests use a :class:`LatencyTable` filled from a stated launch + throughput model (so the
right answers are known); one test builds a real table on the CPU.
"""

import copy
import itertools

import pytest
import torch

from batude.bench.lut import LatencyTable, LayerTable, _grid
from batude.errors import BatudeError
from batude.export.lower import Variant, variant_macs
from batude.functional.cost import LayerKind, layer_macs, max_ranks
from batude.models import resnet20
from batude.rank import select_ranks
from batude.rank.bcadl import BCADL, BCADLConfig
from batude.rank.budget import Budget, BudgetKind, Metric
from batude.rank.filter import LayerFilter
from batude.rank.greedy import budgeted_ranks, kept_value
from batude.rank.latency import fastest_plan, grid_points, oracle_share
from batude.rank.plan import RankPlan
from batude.rank.problem import RankProblem, SelectorConfig

torchvision = pytest.importorskip("torchvision")

LAUNCH_MS, MS_PER_GMAC = 0.01, 0.5  # per kernel launch; compute
_LAUNCHES = {"chain": 3, "merge_first": 2, "merge_last": 2}


def synthetic_table(model, input_shape, dtype="float16", points=5, multiple_of=16, batch=1) -> LatencyTable:
    """A table whose entries follow a launch + throughput model (dense: one launch, aligned)."""

    def _ms(macs: int, launches: int, ranks) -> float:
        slow = 1.5 if any(r % 16 for r in ranks) else 1.0  # unaligned ranks run 1.5x slower
        return launches * LAUNCH_MS + slow * MS_PER_GMAC * macs * batch / 1e9

    problem = RankProblem.from_model(model, (1, *input_shape), config=SelectorConfig(multiple_of=1))
    layers = {}
    for cand in problem.candidates:
        g, kind = cand.layer.geometry, cand.layer.kind
        grids = [_grid(full, points, multiple_of) for full in max_ranks(kind, g)]
        if kind is LayerKind.TUCKER2:
            ms = {v: [[_ms(variant_macs(Variant(v), g.out_channels, g.in_channels, g.kernel_area, (a, b),
                                        g.in_positions, g.out_positions), n, (a, b)) for b in grids[1]] for a in grids[0]]
                  for v, n in _LAUNCHES.items()}
        else:
            ms = {"chain": [_ms(layer_macs(kind, g, (r,)), 2, (r,)) for r in grids[0]]}
        layers[cand.name] = LayerTable(cand.name, kind.value, _ms(layer_macs(kind, g, None), 1, ()), grids, ms)
    other = 0.05
    key = {"device": "cuda", "hardware": "synthetic", "torch": torch.__version__, "dtype": dtype, "batch": batch, "backend": "eager"}
    return LatencyTable(key, list(input_shape), other + sum(t.dense_ms for t in layers.values()), other, layers)


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return torchvision.models.resnet18().eval()


@pytest.fixture(scope="module")
def lut18(resnet18):
    return synthetic_table(resnet18, (3, 224, 224))


def _predicted(plan: RankPlan) -> float:
    return plan.latency["predicted_ms"]


def test_latency_budget_strings():
    assert Budget.parse("latency:2x") == Budget(Metric.LATENCY, BudgetKind.RATIO, 2.0)
    assert Budget.parse("latency:60%") == Budget(Metric.LATENCY, BudgetKind.FRACTION, 0.6)
    assert Budget.parse("latency:1.5ms").value == 1.5 and Budget.parse("lat:250us").value == pytest.approx(0.25)
    assert Budget.parse("latency:0.002s").value == pytest.approx(2.0)
    assert str(Budget.parse("latency:2x")) == "latency:2x" and str(Budget.parse("latency:1.5ms")) == "latency:1.5ms"
    with pytest.raises(BatudeError, match="latency:50%"):
        Budget.parse("latency:0.5x")  # a slow-down factor: the message shows how to say it
    assert Budget.parse("latency:1x").value == 1.0 and Budget.parse("latency:100%").value == 1.0  # "not slower"
    with pytest.raises(BatudeError, match="no compression"):
        Budget.parse("1x")  # FLOPs and params budgets must compress
    with pytest.raises(BatudeError, match="does not parse"):
        Budget.parse("latency:3GMAC")
    assert Budget.from_dict(Budget.parse("latency:1.2x").to_dict()) == Budget.parse("latency:1.2x")


def test_latency_budget_needs_a_table(resnet18):
    with pytest.raises(BatudeError, match="lut build"):
        select_ranks(resnet18, "latency:1.2x", "uniform")
    with pytest.raises(BatudeError, match="lut build"):  # also as an extra limit
        select_ranks(resnet18, "1.5x", "uniform", also=["latency:1x"])


def test_not_slower_than_dense_limit(resnet18, lut18):
    plan = select_ranks(resnet18, "2.52x", "uniform", latency=lut18, also=["latency:1x"])
    assert plan.macs_reduction >= 2.52 and plan.latency["predicted_ms"] <= lut18.model_ms + 1e-12


def test_table_prediction_matches_the_plan_record_with_skipped_layers(resnet18, lut18):
    plan = select_ranks(resnet18, "latency:1.2x", "energy", latency=lut18,
                        config=SelectorConfig(layer_filter=LayerFilter(exclude=("layer1.*",))))
    assert any(name.startswith("layer1.") for name in plan.skipped)
    predicted, forms = lut18.predict(plan)
    assert predicted == pytest.approx(plan.latency["predicted_ms"])
    assert {n: v for n, v in forms.items() if n in plan.variants} == plan.variants


def test_a_plan_with_an_unknown_variant_is_refused(resnet18, lut18):
    d = select_ranks(resnet18, "latency:1.2x", "uniform", latency=lut18).to_dict()
    d["latency"]["variants"] = {next(iter(d["latency"]["variants"])): "fastest"}
    with pytest.raises(BatudeError, match="unknown variants"):
        RankPlan.from_dict(d)


@pytest.mark.parametrize("method", ["uniform", "energy", "vbmf"])
@pytest.mark.parametrize("budget", ["latency:1.15x", "latency:1.3x"])
def test_latency_budget_met_on_predictions_and_aligned(resnet18, lut18, method, budget):
    plan = select_ranks(resnet18, budget, method, (1, 3, 224, 224), latency=lut18)
    limit = Budget.parse(budget).limit(lut18.model_ms)
    assert _predicted(plan) <= limit + 1e-12
    assert _predicted(plan) >= 0.97 * limit  # the fill spends what is left
    assert plan.latency["dense_ms"] == pytest.approx(lut18.model_ms)
    # the record is the table's prediction for exactly these layers and variants
    planned = {layer.name for layer in plan.layers}
    total = lut18.other_ms + sum(lut18.dense_ms(n) for n in lut18.layer_names() if n not in planned)
    for layer in plan.layers:
        if layer.ranks is None:
            total += lut18.dense_ms(layer.name)
        else:
            variant, ms = lut18.factorised_ms(layer.name, layer.ranks)
            assert plan.variants.get(layer.name, "chain") == variant
            total += ms
            full = max_ranks(layer.kind, layer.geometry)
            assert all(r % 16 == 0 or r == f for r, f in zip(layer.ranks, full)), (layer.name, layer.ranks)  # fp16: x16
    assert total == pytest.approx(_predicted(plan))


def test_alignment_follows_dtype_and_is_overridable(resnet18):
    lut32 = synthetic_table(resnet18, (3, 224, 224), dtype="float32", multiple_of=8)
    plan = select_ranks(resnet18, "latency:1.2x", "uniform", (1, 3, 224, 224), latency=lut32)
    assert plan.options["multiple_of"] == 8
    plan = select_ranks(resnet18, "latency:1.2x", "uniform", (1, 3, 224, 224), latency=lut32,
                        config=SelectorConfig(multiple_of=32))
    assert plan.options["multiple_of"] == 32
    assert all(r % 32 == 0 or r == f for layer in plan.layers if layer.ranks
               for r, f in zip(layer.ranks, max_ranks(layer.kind, layer.geometry)))
    assert select_ranks(resnet18, "2x", "uniform").options["multiple_of"] == 1  # no table: no alignment


def test_keep_dense_where_the_table_says_a_chain_is_slower():
    torch.manual_seed(0)
    model = resnet20(in_channels=1).eval()
    lut = synthetic_table(model, (1, 28, 28), points=3, batch=64)
    # make one layer's factorised forms all slower than dense, and one layer's much faster
    slow, fast = "layer1.0.conv1", "layer3.2.conv2"
    for v, rows in lut.layers[slow].ms.items():
        lut.layers[slow].ms[v] = [[lut.layers[slow].dense_ms * 2 for _ in row] for row in rows]
    for v, rows in lut.layers[fast].ms.items():
        lut.layers[fast].ms[v] = [[lut.layers[fast].dense_ms * 0.01 for _ in row] for row in rows]
    plan = select_ranks(model, "latency:1.01x", "uniform", (1, 1, 28, 28), latency=lut)
    assert plan.layer(fast).ranks is not None
    assert "no factorised form faster" in plan.skipped[slow]
    assert all(lut.factorised_ms(l.name, l.ranks)[1] < lut.dense_ms(l.name) for l in plan.layers if l.ranks)


def test_mixed_macs_budget_with_latency_limit(resnet18, lut18):
    free = select_ranks(resnet18, "2.52x", "uniform", latency=lut18)
    assert free.macs_reduction >= 2.52
    # cap latency below what the unconstrained plan predicts: both limits must hold
    cap = 0.97 * _predicted(free)
    plan = select_ranks(resnet18, "2.52x", "uniform", latency=lut18, also=[f"latency:{cap}ms"])
    assert plan.macs <= plan.dense_macs / 2.52 and _predicted(plan) <= cap + 1e-12
    assert plan.options["method_params"]["also"] == [f"latency:{cap:.6g}ms"]
    # the reverse: a latency budget that must also cut MACs 2x
    plan = select_ranks(resnet18, "latency:1.1x", "energy", latency=lut18, also=["2x"])
    assert plan.macs_reduction >= 2.0 and _predicted(plan) <= lut18.model_ms / 1.1 + 1e-12
    with pytest.raises(BatudeError, match="infeasible"):
        select_ranks(resnet18, "2x", "uniform", latency=lut18, also=["latency:100x"])


def test_bcadl_with_latency_budget_and_extra_limit_meets_both():
    torch.manual_seed(0)
    model = resnet20(in_channels=1).eval()
    lut = synthetic_table(model, (1, 28, 28), points=3, multiple_of=8, batch=64)
    admm = BCADL(model, "latency:1.2x", BCADLConfig(period=1, multiple_of=8), input_shape=(1, 1, 28, 28),
                 latency=lut, also=["1.5x"])
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(3):
        x = torch.randn(4, 1, 28, 28)
        (model(x).square().mean() + admm.penalty()).backward()
        opt.step(), opt.zero_grad(), admm.step()
    plan = admm.plan()
    assert _predicted(plan) <= lut.model_ms / 1.2 + 1e-12 and plan.macs_reduction >= 1.5
    assert plan.options["also"] == ["1.5x"]
    assert all(r % 8 == 0 or r == f for l in plan.layers if l.ranks for r, f in zip(l.ranks, max_ranks(l.kind, l.geometry)))


def test_plans_are_deterministic_and_round_trip(resnet18, lut18, tmp_path):
    a = select_ranks(resnet18, "latency:1.2x", "energy", latency=lut18)
    b = select_ranks(copy.deepcopy(resnet18), "latency:1.2x", "energy", latency=lut18)
    assert a.to_dict() == b.to_dict()
    a.save(tmp_path / "p.json")
    back = RankPlan.load(tmp_path / "p.json")
    assert back.latency == a.latency and back.variants == a.variants and back.budget == a.budget


def test_table_for_another_model_is_refused(lut18):
    with pytest.raises(BatudeError, match="another model|build the table for this model"):
        select_ranks(resnet20(in_channels=1), "latency:1.2x", "uniform", (1, 1, 28, 28), latency=lut18)


def _brute_force(problem, limit):
    """Least predicted latency over every per-layer choice on the table's grid (tiny problems only)."""
    per_layer = []
    for i, cand in enumerate(problem.candidates):
        opts = [(problem.dense_cost(i, Metric.MACS), problem.dense_cost(i, Metric.LATENCY))]
        for r in grid_points(problem.latency.grid(cand.name)):
            macs = problem.chain_cost(i, r, Metric.MACS)
            if macs < opts[0][0]:
                opts.append((macs, problem.chain_cost(i, r, Metric.LATENCY)))
        per_layer.append(opts)
    best = float("inf")
    for combo in itertools.product(*per_layer):
        if problem.fixed_cost(Metric.MACS) + sum(c[0] for c in combo) <= limit.value:
            best = min(best, problem.fixed_cost(Metric.LATENCY) + sum(c[1] for c in combo))
    return best


@pytest.mark.parametrize("budget", ["1.05x", "1.1x", "1.2x"])
def test_oracle_is_optimal_on_small_instances(budget):
    torch.manual_seed(0)
    model = resnet20(in_channels=1).eval()
    lut = synthetic_table(model, (1, 28, 28), points=2, multiple_of=8, batch=64)
    full = RankProblem.from_model(model, (1, 1, 28, 28), Metric.MACS, SelectorConfig(multiple_of=8), lut)
    keep = {c.name for c in full.candidates[-5:]}  # 5 layers x (1 + 4) choices: 3125 combinations
    small = RankProblem.from_model(model, (1, 1, 28, 28), Metric.MACS,
                                   SelectorConfig(multiple_of=8, layer_filter=LayerFilter(include=tuple(keep))), lut)
    assert len(small.candidates) == 5
    limit = small.limit_of(Budget.parse(budget))
    plan = fastest_plan(small, limit, buckets=20000)
    assert plan.macs <= limit.value
    optimum = _brute_force(small, limit)
    assert optimum < float("inf") and any(layer.ranks for layer in plan.layers)
    assert plan.latency["predicted_ms"] == pytest.approx(optimum, rel=1e-3)


def test_oracle_bounds_every_selector(resnet18, lut18):
    problem = RankProblem.from_model(resnet18, (1, 3, 224, 224), Metric.MACS, SelectorConfig(), lut18)
    oracle = fastest_plan(problem, problem.limit_of(Budget.parse("2.52x")))
    assert oracle.macs_reduction >= 2.52 and oracle.method == "oracle"
    for method in ("uniform", "energy"):
        plan = select_ranks(resnet18, "2.52x", method, latency=lut18)
        assert _predicted(plan) >= _predicted(oracle) * (1 - 1e-9)
    with pytest.raises(BatudeError, match="non-latency"):
        fastest_plan(problem, problem.limit_of(Budget.parse("latency:1.1x")))


def test_real_cpu_table_drives_a_latency_plan():
    """A measured table (whatever this CPU finds faster) costs the plan; a loose latency limit is always feasible."""
    torch.manual_seed(0)
    model = resnet20(in_channels=1).eval()
    lut = LatencyTable.build(model, (1, 28, 28), batch=8, iters=3, warmup=1, points=2)
    # loose whatever the timings: twice the dense model and twice every layer at minimum ranks (on a
    # busy machine a 3-call table can put the chains at minimum ranks far above the dense model)
    problem = RankProblem.from_model(model, (1, 1, 28, 28), Metric.MACS, SelectorConfig(multiple_of=8), lut, [Metric.LATENCY])
    limit = 2 * max(lut.model_ms, problem.total(problem.minimal_ranks(), Metric.LATENCY))
    plan = select_ranks(model, "1.5x", "uniform", (1, 1, 28, 28), latency=lut, also=[f"latency:{limit}ms"])
    assert plan.macs_reduction >= 1.5 and plan.latency["predicted_ms"] <= limit
    assert plan.latency["predicted_ms"] == pytest.approx(lut.predict(plan)[0])
    assert plan.latency["table"]["device"] == "cpu" and plan.options["multiple_of"] == 8  # fp32 table: x8


def test_a_flops_limit_factorises_layers_whose_chains_are_slower():
    torch.manual_seed(0)
    model = resnet20(in_channels=1).eval()
    lut = synthetic_table(model, (1, 28, 28), points=3, multiple_of=8, batch=1)  # launches dominate: chains are slower
    slower = [n for n in lut.layer_names() if lut.dense_ms(n) < min(lut.factorised_ms(n, r)[1] for r in grid_points(lut.grid(n)))]
    assert len(slower) > 10
    with pytest.raises(BatudeError, match="no layer is eligible"):  # a pure latency budget: nothing to gain
        select_ranks(model, "latency:1.01x", "uniform", (1, 1, 28, 28), latency=lut)
    loose = f"latency:{2 * lut.model_ms:.6f}ms"
    plan = select_ranks(model, loose, "uniform", (1, 1, 28, 28), latency=lut, also=["1.5x"])  # 16-ch layers: x16 is full rank
    assert plan.macs_reduction >= 1.5 and plan.latency["predicted_ms"] <= 2 * lut.model_ms
    assert any(plan.layer(n).ranks is not None for n in slower if n in {l.name for l in plan.layers})


def test_oracle_share_reads_both_the_speedup_ratio_and_the_gain():
    assert oracle_share(1.0, 1.11) == (pytest.approx(1 / 1.11), pytest.approx(0.0))  # no faster than dense: no gain
    ratio, gain = oracle_share(1.12, 1.11)
    assert ratio > 1 and gain == pytest.approx(0.12 / 0.11)  # measured above the oracle's plan: over 100% both ways
    assert oracle_share(0.9, 0.97)[1] is None  # an oracle slower than dense has no gain to share
    assert oracle_share(0.98, 1.002)[1] is None  # nor one within 1% of dense: the share would be noise


def _slow_at_the_lowest_rank(lut: LatencyTable) -> LatencyTable:
    """``lut`` with every factorised form 1.6x slower at the lowest grid ranks: measured tables do
    this (tile quantisation, launch-bound tiny GEMMs), so latency need not fall with rank."""
    layers = {}
    for name, t in lut.layers.items():
        ms = {}
        for variant, cells in t.ms.items():
            if len(t.grids) == 1:
                ms[variant] = [1.6 * c if i == 0 else c for i, c in enumerate(cells)]
            else:
                ms[variant] = [[1.6 * c if i == j == 0 else c for j, c in enumerate(row)] for i, row in enumerate(cells)]
        layers[name] = LayerTable(name, t.kind, t.dense_ms, t.grids, ms)
    return LatencyTable(lut.key, lut.input_shape, lut.model_ms, lut.other_ms, layers)


def test_a_table_slower_at_minimum_ranks_is_checked_against_its_true_floor():
    torch.manual_seed(0)
    model = resnet20(in_channels=1).eval()
    lut = _slow_at_the_lowest_rank(synthetic_table(model, (1, 28, 28), points=3, multiple_of=8, batch=64))
    problem = RankProblem.from_model(model, (1, 1, 28, 28), Metric.LATENCY, SelectorConfig(multiple_of=8), lut)
    at_minimum, floor = problem.total(problem.minimal_ranks()), problem.least_total()
    assert floor < at_minimum  # the fastest ranks are not the smallest
    budget = f"latency:{0.5 * (floor + at_minimum):.6f}ms"  # reachable, but not by minimum ranks
    # the selectors' one-parameter families end at minimum ranks: refused, never a plan over budget
    with pytest.raises(BatudeError, match="out of this selector's reach"):
        select_ranks(model, budget, "uniform", input_shape=(1, 1, 28, 28), latency=lut, config=SelectorConfig(multiple_of=8))
    # BATUDE's greedy rule stops when the budget holds, before the slow lowest ranks
    plan = BCADL(model, budget, BCADLConfig(multiple_of=8), input_shape=(1, 1, 28, 28), latency=lut).plan()
    assert _predicted(plan) <= 0.5 * (floor + at_minimum) + 1e-9
    with pytest.raises(BatudeError, match="infeasible"):  # below the floor nothing can help
        select_ranks(model, f"latency:{0.99 * floor:.6f}ms", "uniform", input_shape=(1, 1, 28, 28), latency=lut)


@pytest.mark.parametrize("method", ["uniform", "energy", "vbmf"])
def test_selectors_hold_layers_dense_where_their_smallest_ranks_miss_a_mixed_budget(method):
    # the batch-1 table of the test below: every chain slower than its dense layer; 1.5x fewer MACs and
    # at most 1.3x the dense time cannot both hold with every layer a chain, even at minimum ranks
    from batude.rank.selectors import _hold_to_fit, uniform_ranks

    torch.manual_seed(0)
    model = resnet20(in_channels=1).eval()
    lut = synthetic_table(model, (1, 28, 28), points=3, multiple_of=8, batch=1)
    config, shape = SelectorConfig(multiple_of=8), (1, 1, 28, 28)
    budget, limit = f"latency:{1.3 * lut.model_ms:.6f}ms", 1.3 * lut.model_ms
    problem = RankProblem.from_model(model, shape, Metric.LATENCY, config, lut, [Metric.MACS])
    limits = problem.limits(Budget.parse(budget), [Budget.parse("1.5x")])
    smallest = problem.minimal_ranks()
    assert not problem.fits(smallest, limits)  # what the selectors refused before holding layers dense
    plan = select_ranks(model, budget, method, input_shape=shape, latency=lut, config=config, also=["1.5x"])
    assert _predicted(plan) <= limit + 1e-9 and plan.macs_reduction >= 1.5
    held = [c.name for c in problem.candidates if plan.layer(c.name).ranks is None]
    assert held and all(lut.dense_ms(n) < min(lut.factorised_ms(n, r)[1] for r in grid_points(lut.grid(n))) for n in held)
    assert len(held) < len(problem.candidates)  # the family still spans the others
    # a budget the family meets by itself holds nothing (the family is returned as it is)
    def family(r):
        return [tuple(c.snap(m, r * g[-1]) for m, g in enumerate(c.grids)) for c in problem.candidates]
    loose = problem.limits(Budget.parse(f"latency:{1.8 * lut.model_ms:.6f}ms"), [Budget.parse("1.5x")])
    assert _hold_to_fit(problem, family, 0.0, loose) is family
    assert None not in uniform_ranks(problem, Budget.parse(f"latency:{1.8 * lut.model_ms:.6f}ms"), [Budget.parse("1.5x")])[1]
    with pytest.raises(BatudeError, match="out of this selector's reach: .* with [0-9]+ layer\\(s\\) held dense"):
        select_ranks(model, f"latency:{1.0 * lut.model_ms:.6f}ms", method, input_shape=shape, latency=lut, config=config,
                     also=["1.5x"])


def test_layers_are_held_dense_where_ranks_alone_cannot_meet_a_latency_budget_and_a_flops_limit(tmp_path):
    # batch 1: launches dominate, so every chain is slower than its dense layer, and a 1.5x MACs limit
    # forces chains somewhere; removing rank steps alone gets no closer than 1.73x the dense time
    torch.manual_seed(0)
    model = resnet20(in_channels=1).eval()
    lut = synthetic_table(model, (1, 28, 28), points=3, multiple_of=8, batch=1)
    budget = f"latency:{1.3 * lut.model_ms:.6f}ms"
    admm = BCADL(model, budget, BCADLConfig(period=1, multiple_of=8), input_shape=(1, 1, 28, 28), latency=lut, also=["1.5x"])
    held = [c.name for c, r in zip(admm.problem.candidates, admm.ranks) if r is None]
    assert held and all(lut.dense_ms(n) < min(lut.factorised_ms(n, r)[1] for r in grid_points(lut.grid(n))) for n in held)
    # the rule's settings: rank steps alone fail; holding only to fit keeps no more than the default
    spectra, thresholds = [[sp.sigma for sp in s] for s in admm.splits], admm.last_thresholds
    args = (admm.problem, spectra, thresholds, admm.limit, admm.config.score, admm.extra_limits)
    with pytest.raises(BatudeError, match="gets no closer than"):
        budgeted_ranks(*args, hold="never")
    assert None in budgeted_ranks(*args, hold="to-fit") and budgeted_ranks(*args) == admm.ranks
    # at 1.8x the dense time rank steps alone fit, and hold nothing; the default holds the slow layers
    # whose chains spent the Z-step's budget, and keeps more of the spectra for the rest
    loose = BCADL(model, f"latency:{1.8 * lut.model_ms:.6f}ms", BCADLConfig(multiple_of=8), input_shape=(1, 1, 28, 28),
                  latency=lut, also=["1.5x"])
    args = (loose.problem, spectra, thresholds, loose.limit, loose.config.score, loose.extra_limits)
    never, auto = budgeted_ranks(*args, hold="never"), budgeted_ranks(*args)
    assert None not in never and budgeted_ranks(*args, hold="to-fit") == never
    assert auto.count(None) >= 3
    assert kept_value(*args[:3], auto, loose.config.score) > 1.02 * kept_value(*args[:3], never, loose.config.score)
    with pytest.raises(BatudeError, match="hold must be one of"):
        budgeted_ranks(*args, hold="sometimes")
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(2):  # Z-steps with layers held dense: their Z is thresholded at full rank
        (model(torch.randn(4, 1, 28, 28)).square().mean() + admm.penalty()).backward()
        opt.step(), opt.zero_grad(), admm.step()
    plan = admm.plan()
    assert _predicted(plan) <= 1.3 * lut.model_ms + 1e-9 and plan.macs_reduction >= 1.5
    held_last = [c.name for c, r in zip(admm.problem.candidates, admm.ranks) if r is None]  # the last Z-step's
    assert held_last and all(plan.layer(n).ranks is None for n in held_last)
    # the state round-trips with held layers (None ranks)
    other = BCADL(model, budget, BCADLConfig(period=1, multiple_of=8), input_shape=(1, 1, 28, 28), latency=lut, also=["1.5x"])
    other.load_state_dict(admm.state_dict())
    assert other.ranks == admm.ranks and other.plan().to_dict()["layers"] == plan.to_dict()["layers"]
    with pytest.raises(BatudeError, match="gets no closer than .* ms"):  # and below what holding layers can reach
        BCADL(model, f"latency:{1.0 * lut.model_ms:.6f}ms", BCADLConfig(multiple_of=8), input_shape=(1, 1, 28, 28),
              latency=lut, also=["1.5x"])
