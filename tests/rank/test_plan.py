import copy
import dataclasses
import json

import pytest
import torch

from batude.errors import BatudeError
from batude.models import resnet20, resnet32
from batude.nn import LowRankConv1x1, LowRankLinear, TuckerConv2d, flop_counter_macs
from batude.rank.plan import RankPlan, apply_plan_
from batude.rank.problem import SelectorConfig
from batude.rank.filter import LayerFilter
from batude.rank.selectors import select_ranks

SHAPE = (1, 1, 28, 28)


@pytest.fixture(scope="module")
def dense():
    torch.manual_seed(0)
    return resnet20(in_channels=1).eval()


@pytest.fixture(scope="module")
def plan(dense):
    return select_ranks(dense, "2.5x", "uniform", input_shape=SHAPE)


def test_json_round_trip(plan, tmp_path):
    path = tmp_path / "plan.json"
    plan.save(path)
    again = RankPlan.load(path)
    assert again == plan
    data = json.loads(path.read_text())
    assert data["format"] == "batude-rank-plan" and data["version"] == 1
    assert data["budget"]["text"] == "2.5x" and data["method"] == "uniform"
    assert "FLOPs = 2 * MACs" in data["totals"]["counted"]
    assert {"name", "kind", "geometry", "ranks", "macs_before", "macs_after"} <= set(data["layers"][0])


def test_plan_records_costs_and_skips(plan, dense):
    assert plan.skipped == {"conv1": "1 input channels < min_in_channels=16"}
    assert plan.input_shape == SHAPE
    assert plan.dense_macs == flop_counter_macs(dense, SHAPE)
    assert sum(l.macs_before - l.macs_after for l in plan.layers) == plan.dense_macs - plan.macs


def test_apply_replaces_layers_with_right_types(plan, dense):
    model = apply_plan_(copy.deepcopy(dense), plan)
    for layer in plan.layers:
        module = model.get_submodule(layer.name)
        if layer.ranks is None:
            assert isinstance(module, torch.nn.Conv2d)
        else:
            expected = {"tucker2": TuckerConv2d, "lowrank_conv1x1": LowRankConv1x1, "lowrank_linear": LowRankLinear}[layer.kind.value]
            assert isinstance(module, expected) and module.ranks == layer.ranks
    assert flop_counter_macs(model, SHAPE) == plan.macs


def test_apply_decompose_matches_from_conv(plan, dense):
    model = apply_plan_(copy.deepcopy(dense), plan)
    name = next(l.name for l in plan.layers if l.kind.value == "tucker2" and l.ranks)
    direct = TuckerConv2d.from_conv(dense.get_submodule(name), plan.layer(name).ranks)
    x = torch.randn(1, direct.in_channels, 7, 7)
    with torch.no_grad():
        assert torch.allclose(model.get_submodule(name)(x), direct(x), atol=1e-6)


def test_full_rank_plan_is_exact(dense):
    plan = select_ranks(dense, "1.01x", "uniform", input_shape=SHAPE, config=SelectorConfig(layer_filter=LayerFilter(include=("layer3.*",))))
    full = dataclasses.replace(plan, layers=tuple(
        dataclasses.replace(l, ranks=(l.geometry.out_channels, l.geometry.in_channels) if l.kind.value == "tucker2" else (min(l.geometry.out_channels, l.geometry.in_channels),))
        for l in plan.layers
    ))
    model = apply_plan_(copy.deepcopy(dense), full)
    x = torch.randn(2, *SHAPE[1:])
    with torch.no_grad():
        ref, out = dense(x), model(x)
    assert float((out - ref).norm() / ref.norm()) < 1e-5


def test_linear_layers_are_factorised_when_eligible():
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64))
    plan = select_ranks(model, "2x", "uniform", input_shape=(1, 64))
    apply_plan_(model, plan)
    assert isinstance(model[0], LowRankLinear) and isinstance(model[2], LowRankLinear)


def _with_layer(plan, index, **changes):
    layers = list(plan.layers)
    layers[index] = dataclasses.replace(layers[index], **changes)
    return dataclasses.replace(plan, layers=tuple(layers))


def test_unknown_layer_named(plan, dense):
    bad = _with_layer(plan, 0, name="layer9.0.conv1")
    with pytest.raises(BatudeError, match="layer9.0.conv1"):
        apply_plan_(copy.deepcopy(dense), bad)


def test_impossible_ranks_named(plan, dense):
    idx = next(i for i, l in enumerate(plan.layers) if l.kind.value == "tucker2")
    bad = _with_layer(plan, idx, ranks=(999, 2))
    with pytest.raises(BatudeError, match=rf"{plan.layers[idx].name}.*impossible"):
        apply_plan_(copy.deepcopy(dense), bad)


def test_other_architecture_refused_and_model_untouched(plan):
    other = resnet32(in_channels=1)
    before = copy.deepcopy(other.state_dict())
    # resnet32 has every layer name resnet20 has, so the shapes must match; make one differ
    other.layer3[0].conv1 = torch.nn.Conv2d(32, 48, 3, stride=2, padding=1, bias=False)
    with pytest.raises(BatudeError, match="another architecture"):
        apply_plan_(other, plan)
    assert all(not isinstance(m, TuckerConv2d) for m in other.modules())
    assert set(before) - {"layer3.0.conv1.weight"} <= set(other.state_dict())


def test_applying_twice_refused(plan, dense):
    model = apply_plan_(copy.deepcopy(dense), plan)
    with pytest.raises(BatudeError, match="already factorised"):
        apply_plan_(model, plan)


def test_kind_mismatch_refused(plan, dense):
    idx = next(i for i, l in enumerate(plan.layers) if l.kind.value == "tucker2" and l.ranks)
    bad = _with_layer(plan, idx, kind=type(plan.layers[idx].kind)("lowrank_conv1x1"), ranks=(2,))
    with pytest.raises(BatudeError, match="another architecture|plan says"):
        apply_plan_(copy.deepcopy(dense), bad)


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda d: d.update(version=99), "version 99"),
        (lambda d: d.pop("format"), "not a batude rank plan"),
        (lambda d: d["layers"][0].pop("ranks"), "malformed"),
        (lambda d: d["layers"][0].update(kind="conv3d"), "malformed"),
    ],
    ids=["version", "format", "missing-field", "bad-kind"],
)
def test_bad_plan_files(plan, tmp_path, mutate, match):
    data = plan.to_dict()
    mutate(data)
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data))
    with pytest.raises(BatudeError, match=match):
        RankPlan.load(path)


def test_missing_and_non_json_plan_files(tmp_path):
    with pytest.raises(BatudeError, match="not found"):
        RankPlan.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(BatudeError, match="not valid JSON"):
        RankPlan.load(tmp_path / "bad.json")


def test_progress_callback(plan, dense):
    seen = []
    apply_plan_(copy.deepcopy(dense), plan, init="empty", progress=lambda i, n, name: seen.append((i, n, name)))
    decomposed = [l.name for l in plan.layers if l.ranks]
    assert [s[2] for s in seen] == decomposed and seen[-1][:2] == (len(decomposed) - 1, len(decomposed))
