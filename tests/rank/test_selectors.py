"""Every selector meets its budget (within 1%, never above), aligns ranks, and is deterministic."""

import copy

import pytest
import torch

from batude.errors import BatudeError
from batude.models import resnet20
from batude.nn import flop_counter_macs
from batude.rank.budget import Budget, Metric
from batude.rank.filter import LayerFilter
from batude.rank.plan import apply_plan_
from batude.rank.problem import RankProblem, SelectorConfig, rank_grid
from batude.rank.selectors import Method, energy_ranks, select_ranks, uniform_ranks, vbmf_ranks

torchvision = pytest.importorskip("torchvision")

SELECTORS = {"uniform": uniform_ranks, "energy": energy_ranks, "vbmf": vbmf_ranks}
BUDGETS = ["1.5x", "2.52x", "4x"]


def _check_met(plan, budget: Budget):
    dense, got = (plan.dense_macs, plan.macs) if budget.metric is Metric.MACS else (plan.dense_params, plan.params)
    limit = budget.limit(dense)
    assert got <= limit, f"{plan.method} {budget}: {got} > {limit}"
    assert got >= 0.99 * limit, f"{plan.method} {budget}: only {got / limit:.4f} of the budget used"


@pytest.fixture(scope="module", params=["resnet18", "resnet50"])
def problem(request):
    torch.manual_seed(0)
    model = torchvision.models.get_model(request.param, weights=None).eval()
    return RankProblem.from_model(model, (1, 3, 224, 224))


@pytest.mark.parametrize("method", list(SELECTORS))
def test_budget_met_on_torchvision_resnets(problem, method):
    for text in BUDGETS:
        budget = Budget.parse(text)
        extra, ranks = SELECTORS[method](problem, budget)
        _check_met(problem.to_plan(ranks, method, budget, extra), budget)


@pytest.mark.parametrize("multiple", [8, 32])
@pytest.mark.parametrize("method", list(SELECTORS))
def test_multiple_of_aligns_and_meets_budget(method, multiple):
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    budget = Budget.parse("2.52x")
    plan = select_ranks(model, budget, method, config=SelectorConfig(multiple_of=multiple))
    _check_met(plan, budget)
    for layer in plan.layers:
        if layer.ranks is None:
            continue
        full = (layer.geometry.out_channels, layer.geometry.in_channels) if layer.kind.value == "tucker2" else (
            min(layer.geometry.out_channels, layer.geometry.in_channels),)
        assert all(r % multiple == 0 or r == f for r, f in zip(layer.ranks, full)), (layer.name, layer.ranks)


def test_applied_plan_measures_what_it_promises():
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    plan = select_ranks(model, "2.52x", "uniform")
    compressed = apply_plan_(copy.deepcopy(model), plan, init="empty")
    reduction = flop_counter_macs(model, (1, 3, 224, 224)) / flop_counter_macs(compressed, (1, 3, 224, 224))
    assert 2.52 <= reduction <= 2.52 * 1.01


def test_params_budget():
    torch.manual_seed(0)
    model = resnet20(in_channels=1)
    for method in Method:
        budget = Budget.parse("params:3x")
        _check_met(select_ranks(model, budget, method, input_shape=(1, 1, 28, 28)), budget)


def test_absolute_budget():
    model = resnet20(in_channels=1)
    budget = Budget.parse("10MMAC")
    plan = select_ranks(model, budget, "uniform", input_shape=(1, 1, 28, 28))
    assert 0.99e7 <= plan.macs <= 1e7


@pytest.mark.parametrize("method", [m.value for m in Method])
def test_deterministic(method):
    torch.manual_seed(0)
    model = resnet20(in_channels=1)
    a = select_ranks(model, "3x", method, input_shape=(1, 1, 28, 28))
    b = select_ranks(copy.deepcopy(model), "3x", method, input_shape=(1, 1, 28, 28))
    assert a.to_dict() == b.to_dict()


def test_energy_prefers_layers_with_concentrated_spectra():
    # Two identical-cost layers: one nearly rank-2, one full-rank noise. The energy selector
    # must spend more rank on the noisy one (it needs more to keep the same energy fraction).
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.Conv2d(32, 32, 3, padding=1))
    with torch.no_grad():
        low = torch.randn(32, 2) @ torch.randn(2, 32 * 9)
        model[0].weight.copy_(low.reshape(32, 32, 3, 3) + 1e-3 * torch.randn(32, 32, 3, 3))
    plan = select_ranks(model, "3x", "energy", input_shape=(1, 32, 8, 8))
    assert sum(plan.layer("0").ranks) < sum(plan.layer("1").ranks)


def test_vbmf_recovers_planted_ranks_when_budget_is_loose():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1)
    with torch.no_grad():  # Tucker ranks (6, 6) plus small noise
        core, u, v = torch.randn(6, 6, 3, 3), torch.randn(64, 6), torch.randn(64, 6)
        conv.weight.copy_(torch.einsum("abhw,sa,cb->schw", core, u, v) + 0.01 * torch.randn(64, 64, 3, 3))
    plan = select_ranks(torch.nn.Sequential(conv), "1.01x", "vbmf", input_shape=(1, 64, 8, 8))
    assert plan.options["method_params"]["vbmf_ranks"]["0"] == [6, 6]


def test_infeasible_budget_is_a_clear_error():
    model = resnet20(in_channels=1)
    with pytest.raises(BatudeError, match="infeasible"):
        select_ranks(model, "1000x", "uniform", input_shape=(1, 1, 28, 28))
    with pytest.raises(BatudeError, match="infeasible"):
        select_ranks(model, "4x", "uniform", input_shape=(1, 1, 28, 28), config=SelectorConfig(min_rank=16))


def test_no_eligible_layer_and_bad_method():
    model = resnet20(in_channels=1)
    with pytest.raises(BatudeError, match="no layer is eligible"):
        select_ranks(model, "2x", "uniform", input_shape=(1, 1, 28, 28),
                     config=SelectorConfig(layer_filter=LayerFilter(include=("nothing*",))))
    with pytest.raises(BatudeError, match="unknown method"):
        select_ranks(model, "2x", "random", input_shape=(1, 1, 28, 28))


def test_rank_grid():
    assert rank_grid(10, 1, 1) == tuple(range(1, 11))
    assert rank_grid(40, 1, 16) == (16, 32, 40)
    assert rank_grid(40, 20, 16) == (32, 40)
    assert rank_grid(10, 1, 16) == (10,)


def test_config_validation():
    with pytest.raises(BatudeError, match="multiple_of"):
        SelectorConfig(multiple_of=0)
    with pytest.raises(BatudeError, match="min_rank"):
        SelectorConfig(min_rank=0)


def test_thin_kernels_rank_cap_energy_selector():
    # W(1) of a 16->256 1x3 conv has rank <= 16*3 = 48 < S: ranks are capped there
    model = torch.nn.Sequential(torch.nn.Conv2d(16, 256, (1, 3), padding=(0, 1)))
    plan = select_ranks(model, "1.05x", "energy", input_shape=(1, 16, 8, 8))
    assert plan.layer("0").ranks is None or plan.layer("0").ranks[0] <= 48


def test_shared_layer_is_skipped_with_a_reason():
    class Shared(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Conv2d(32, 32, 3, padding=1)
            self.b = torch.nn.Conv2d(32, 32, 3, padding=1)

        def forward(self, x):
            return self.b(self.b(self.a(x)))

    model = Shared()
    plan = select_ranks(model, "1.2x", "uniform", input_shape=(1, 32, 8, 8))
    assert "shared weights" in plan.skipped["b"] and plan.layer("a").ranks is not None
    assert plan.dense_macs == flop_counter_macs(model, (1, 32, 8, 8))  # both calls of b counted


def test_layers_never_cheaper_than_dense_are_not_candidates():
    # 16-channel layers with ranks on a grid of 32 can only be full rank: never cheaper than dense
    problem = RankProblem.from_model(resnet20(in_channels=1), (1, 1, 28, 28), config=SelectorConfig(multiple_of=32))
    assert all(not c.name.startswith("layer1.") for c in problem.candidates)
    assert "cost as much as dense" in problem.skipped["layer1.0.conv1"]
