"""Latency lookup tables: interpolation, keying and refusal, JSON round trip, prediction vs measurement."""

import json

import pytest
import torch

from batude.bench.lut import LatencyTable, LayerTable, _grid, deployed_model
from batude.cli import main
from batude.errors import BatudeError
from batude.models import resnet20
from batude.rank import select_ranks


def test_bilinear_interpolation_is_exact_at_grid_points_and_linear_between():
    t = LayerTable("l", "tucker2", 6.0, [[8, 16], [8, 24]], {"chain": [[1.0, 3.0], [5.0, 7.0]]})
    assert t.predict((8, 8), "chain") == 1.0 and t.predict((16, 24), "chain") == 7.0
    assert t.predict((12, 8), "chain") == pytest.approx(3.0)  # halfway in R1
    assert t.predict((12, 16), "chain") == pytest.approx(4.0)  # centre
    assert t.predict((4, 100), "chain") == 3.0  # clamped at the grid's ends
    low = LayerTable("f", "lowrank_linear", 2.0, [[8, 16]], {"chain": [1.0, 2.0]})
    assert low.predict((12,), "chain") == pytest.approx(1.5)
    assert low.best((8,)) == ("chain", 1.0)
    assert t.best((8, 8)) == ("chain", 1.0) and t.best((16, 24)) == ("dense", 6.0)  # keep dense when a chain is slower


def test_grid_is_aligned_and_ends_at_full_rank():
    assert _grid(64, 4, 8) == [8, 24, 48, 64]
    assert _grid(10, 4, 16) == [10]


@pytest.fixture(scope="module")
def table():
    torch.manual_seed(0)
    model = resnet20(in_channels=1).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lut = LatencyTable.build(model, (1, 28, 28), batch=4, iters=3, warmup=1, points=3)
    # the caller's model is timed on a copy: same mode, dtype and weights afterwards
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    return model.eval(), lut


def test_fp16_tables_are_refused_on_the_cpu():
    with pytest.raises(BatudeError, match="fp16 on the CPU is not a meaningful latency target"):
        LatencyTable.build(resnet20(in_channels=1), (1, 28, 28), dtype=torch.float16)


def test_build_covers_every_eligible_layer_and_round_trips(table, tmp_path):
    model, lut = table
    plan = select_ranks(model, "2x", "uniform", input_shape=(1, 1, 28, 28))
    assert set(lut.layers) == {l.name for l in plan.layers}
    assert lut.model_ms > 0 and all(t.dense_ms > 0 for t in lut.layers.values())
    assert lut.timed_with == "eager" and lut.layer_calls == 1  # eager layers: one call per sample (launches are real)
    lut.save(tmp_path / "lut.json")
    again = LatencyTable.load(tmp_path / "lut.json")
    assert again.predict(plan) == lut.predict(plan) and again.layer_calls == 1
    saved = json.loads((tmp_path / "lut.json").read_text())
    (tmp_path / "graphed.json").write_text(json.dumps({**saved, "layer_calls": 10}))
    graphed = LatencyTable.load(tmp_path / "graphed.json")
    assert graphed.layer_calls == 10
    lut.check("cpu", torch.float32, lut.key["batch"], "eager")  # as built: accepted
    with pytest.raises(BatudeError, match="timed each layer 10 call\\(s\\) per sample, tables are timed with 1 here"):
        graphed.check("cpu", torch.float32, lut.key["batch"], "eager")  # timed another way: refused
    del saved["layer_calls"]  # a table built before the field: its layers were timed one call per sample
    (tmp_path / "old.json").write_text(json.dumps(saved))
    assert LatencyTable.load(tmp_path / "old.json").layer_calls == 1


def test_refuses_other_settings_and_other_models(table, tmp_path):
    model, lut = table
    lut.check("cpu", torch.float32, 4)
    with pytest.raises(BatudeError, match="batch"):
        lut.check("cpu", torch.float32, 64)
    with pytest.raises(BatudeError, match="dtype"):
        lut.check("cpu", torch.float16, 4)
    other = select_ranks(resnet20(in_channels=3), "2x", "uniform", input_shape=(1, 3, 32, 32))
    renamed = other.layers[0].__class__(**{**vars(other.layers[0]), "name": "nope"})
    with pytest.raises(BatudeError, match="no layer 'nope'"):
        lut.predict(other.__class__(**{**vars(other), "layers": (renamed,)}))
    (tmp_path / "bad.json").write_text(json.dumps({"format": "x"}))
    with pytest.raises(BatudeError, match="not a batude latency table"):
        LatencyTable.load(tmp_path / "bad.json")


def test_validate_reports_prediction_error(table):
    model, lut = table
    plan = select_ranks(model, "3x", "uniform", input_shape=(1, 1, 28, 28))
    result = lut.validate(model, plan, iters=5)
    assert result["predicted_ms"] > 0 and result["measured_ms"] > 0
    assert result["error"] == pytest.approx(abs(result["predicted_ms"] - result["measured_ms"]) / result["measured_ms"])


def test_tables_time_the_model_as_deployed_with_batchnorm_folded():
    """Whole-model times (table and validation) are of the deployed model: BN folded first, then factorised."""
    from batude.nn import TuckerConv2d

    torch.manual_seed(0)
    model = resnet20(in_channels=1).eval()
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):  # non-trivial statistics
        bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 1, 28, 28)
    deployed = deployed_model(model, (1, 1, 28, 28))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in deployed.modules())
    assert torch.allclose(deployed(x), model(x), atol=1e-4)  # folding is exact
    plan = select_ranks(model, "2x", "uniform", input_shape=(1, 1, 28, 28))
    tucker = [l.name for l in plan.layers if l.kind.value == "tucker2" and l.ranks]
    variants = {tucker[0]: "merge_last", tucker[1]: "triton", tucker[2]: "chain"}
    for plain in (False, True):
        planned = deployed_model(model, (1, 1, 28, 28), plan, variants, plain=plain)
        modules = dict(planned.named_modules())
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in modules.values())
        assert isinstance(modules[tucker[1]], TuckerConv2d) and modules[tucker[1]].impl == "triton"  # the kernel layer stays
        assert not isinstance(modules[tucker[0]], TuckerConv2d)  # merged into two convs
        assert isinstance(modules[tucker[2]], TuckerConv2d) != plain  # plain: chain layers as plain convs
        assert planned(x).shape == model(x).shape


def test_lut_cli_build_and_validate(tmp_path, capsys):
    plan = select_ranks(resnet20(), "2x", "uniform", input_shape=(1, 3, 32, 32))
    plan.save(tmp_path / "p.json")
    assert main(["lut", "build", "batude:resnet20", "--batch", "2", "--points", "2", "--iters", "2", "--out", str(tmp_path / "l.json")]) == 0
    validate = ["lut", "validate", str(tmp_path / "l.json"), "batude:resnet20", "--plan", str(tmp_path / "p.json"), "--iters", "3"]
    assert main(validate) == 0
    assert "predicted" in capsys.readouterr().out
    assert main([*validate, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)  # one JSON object, nothing else on stdout
    assert result["error"] == pytest.approx(abs(result["predicted_ms"] - result["measured_ms"]) / result["measured_ms"])
    assert main(["lut", "show", str(tmp_path / "l.json"), "--plan", str(tmp_path / "p.json")]) == 0
    out = capsys.readouterr().out
    assert "factorisable layers" in out and "at dense speed per FLOP" in out
    assert main(["lut", "show", str(tmp_path / "l.json"), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["key"]["batch"] == 2 and "flops_bound_ms" not in shown  # no plan, no bound


def test_summary_splits_the_dense_time_and_bounds_a_plan_by_its_flops(table):
    model, lut = table
    s = lut.summary()
    assert s["eligible_ms"] == pytest.approx(sum(t.dense_ms for t in lut.layers.values()))
    assert s["eligible_ms"] + s["other_ms"] == pytest.approx(s["model_ms"]) or s["other_ms"] == 0.0
    plan = select_ranks(model, "2x", "uniform", input_shape=(1, 1, 28, 28))
    s = lut.summary(plan)
    assert s["predicted_ms"] == lut.predict(plan)[0] and s["predicted_speedup"] == pytest.approx(lut.model_ms / s["predicted_ms"])
    scaled = sum(lut.layers[l.name].dense_ms * l.macs_after / l.macs_before for l in plan.layers if l.ranks is not None)
    kept = sum(t.dense_ms for n, t in lut.layers.items() if n not in {l.name for l in plan.layers if l.ranks is not None})
    assert s["flops_bound_ms"] == pytest.approx(lut.other_ms + scaled + kept)
    assert lut.other_ms < s["flops_bound_ms"] < lut.model_ms  # every factorised layer got cheaper, the rest did not


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_tables_time_layers_back_to_back_and_the_model_once():
    from batude.bench.lut import LAYER_CALLS

    model = resnet20(in_channels=1).eval()
    lut = LatencyTable.build(model, (1, 28, 28), batch=1, dtype=torch.float16, device="cuda", points=2, iters=5,
                             warmup=2, backend="cuda-graph")
    assert lut.layer_calls == LAYER_CALLS > 1 and lut.to_dict()["layer_calls"] == LAYER_CALLS
    # layers timed as they run inside the graphed model leave the rest of it a share of its time
    assert 0 < sum(t.dense_ms for t in lut.layers.values()) < lut.model_ms and lut.other_ms > 0
