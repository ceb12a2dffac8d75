"""Latency-aware planning from the command line: `lut build` -> `plan --lut [--also] [--oracle]` ->
`bench` (predicted vs measured) -> `batude-export` (the table's variants)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import batude
from batude.bench.lut import LatencyTable
from batude.cli import export_main, main
from batude.models import resnet20
from batude.rank import RankPlan

from rank.test_latency import synthetic_table
from test_cli import assert_one_error_line, run_cli

MODEL = ["batude:resnet20", "--input", "1,3,28,28"]


@pytest.fixture(scope="module")
def real_lut(tmp_path_factory):
    path = tmp_path_factory.mktemp("lut") / "lut.json"
    assert main(["lut", "build", *MODEL, "--batch", "4", "--points", "2", "--iters", "3", "--out", str(path)]) == 0
    return path


@pytest.fixture(scope="module")
def synthetic_lut(tmp_path_factory):
    """A table in the file format with stated launch + throughput numbers (a cuda fp16 table)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("lut") / "synthetic.json"
    synthetic_table(resnet20(), (3, 28, 28), points=3, multiple_of=16, batch=64).save(path)
    return path


def test_lut_build_records_backend_and_default_alignment(real_lut):
    table = LatencyTable.load(real_lut)
    assert table.key["backend"] == "eager" and table.key["device"] == "cpu"
    assert all(r % 8 == 0 or r == g[-1] for t in table.layers.values() for g in t.grids for r in g)  # fp32: x8


def test_plan_with_latency_budget_also_limit_and_oracle(capsys, tmp_path, synthetic_lut):
    out = tmp_path / "plan.json"
    rc, stdout, err = run_cli(capsys, ["plan", *MODEL, "--budget", "latency:1.2x", "--also", "1.5x", "--lut", synthetic_lut,
                                       "--method", "energy", "--oracle", "--out", out])
    assert rc == 0, err
    plan = RankPlan.load(out)
    assert plan.latency["predicted_ms"] <= plan.latency["dense_ms"] / 1.2 + 1e-12 and plan.macs_reduction >= 1.5
    assert "predicted latency (cuda float16 batch 64 eager)" in stdout and "oracle (exhaustive search" in stdout
    oracle = plan.options["oracle"]
    share, gain = oracle["share"], oracle["share_of_gain"]
    assert 0 < share <= 1.0 + 1e-9 and f"{share:.1%}" in stdout
    assert gain == pytest.approx((plan.latency["speedup"] - 1) / (oracle["speedup"] - 1)) and gain <= share + 1e-9
    assert f"{gain:.1%} of its gain over dense" in stdout
    assert all(r % 16 == 0 or r == f for l in plan.layers if l.ranks  # fp16 table: ranks x16 by default
               for r, f in zip(l.ranks, (l.geometry.out_channels, l.geometry.in_channels)))


@pytest.mark.parametrize("argv, phrase, prefix", [
    (["--budget", "latency:1.2x"], "need a latency table", "batude: error:"),
    (["--budget", "2x", "--oracle"], "need a latency table", "batude: error:"),
    (["--budget", "latency:0.5x"], "latency:50%", "batude plan: error: argument --budget"),  # a usage error
])
def test_latency_options_without_what_they_need_fail_in_one_line(capsys, tmp_path, argv, phrase, prefix):
    rc, _, err = run_cli(capsys, ["plan", *MODEL, *argv, "--out", tmp_path / "p.json"])
    assert_one_error_line(rc, err, prefix)
    assert phrase in err and not (tmp_path / "p.json").exists()


def test_table_for_another_input_shape_is_refused(capsys, tmp_path, synthetic_lut):
    rc, _, err = run_cli(capsys, ["plan", "batude:resnet20", "--input", "1,3,32,32", "--budget", "2x", "--lut", synthetic_lut,
                                  "--out", tmp_path / "p.json"])
    assert_one_error_line(rc, err)
    assert "measured at input [3, 28, 28]" in err


def test_real_table_plan_bench_and_export_use_its_variants(capsys, tmp_path, real_lut):
    plan_path = tmp_path / "plan.json"
    rc, _, err = run_cli(capsys, ["plan", *MODEL, "--budget", "2x", "--lut", real_lut, "--oracle", "--out", plan_path])
    assert rc == 0, err
    plan = RankPlan.load(plan_path)
    assert plan.latency["table"]["device"] == "cpu" and plan.macs_reduction >= 2.0
    rc, stdout, err = run_cli(capsys, ["bench", *MODEL, "--plan", plan_path, "--batch", "4", "--iters", "3", "--warmup", "1",
                                       "--out", tmp_path / "bench"])
    assert rc == 0, err
    assert "predicted" in stdout and "by the plan's latency table, measured" in stdout
    rows = json.loads((tmp_path / "bench" / "latency.json").read_text())["results"]
    assert rows[0]["predicted_ms"] == pytest.approx(plan.latency["predicted_ms"])
    rc, _, err = run_cli(capsys, ["batude:resnet20", "--plan", plan_path, "--input-shape", "3,28,28", "--legacy-exporter",
                                  "--out", tmp_path / "export"], entry=export_main)
    assert rc == 0, err
    report = json.loads((tmp_path / "export" / "report.json").read_text())
    assert report["variants"] == {**{n: "chain" for n in report["variants"]}, **plan.variants}


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="Fashion-MNIST Debian package (dataset-fashion-mnist) not installed")
@pytest.mark.parametrize("method", ["batude", "uniform"])
def test_compress_with_a_latency_budget_and_an_extra_flops_limit(capsys, tmp_path, method):
    torch.manual_seed(0)
    dense = tmp_path / "dense.pt"
    batude.save(dense, resnet20(in_channels=1), arch="batude:resnet20", arch_kwargs={"in_channels": 1},
                metadata={"input_shape": [1, 1, 28, 28]})
    lut = tmp_path / "lut.json"
    synthetic_table(resnet20(in_channels=1), (1, 28, 28), points=3, multiple_of=8, batch=64).save(lut)
    out = tmp_path / "run"
    rc, stdout, err = run_cli(capsys, ["compress", dense, "--method", method, "--budget", "latency:1.15x", "--also", "1.5x",
                                       "--lut", lut, "--multiple-of", "8", "--epochs-admm", "1", "--epochs-ft", "0",
                                       "--data", "fashion-mnist", "--subset", "200", "--batch-size", "50", "--device", "cpu",
                                       "--out", out])
    assert rc == 0, err
    plan = RankPlan.load(out / "plan.json")
    assert plan.latency["predicted_ms"] <= plan.latency["dense_ms"] / 1.15 + 1e-12 and plan.macs_reduction >= 1.5
    assert json.loads((out / "report.json").read_text())["latency"] == plan.latency
    assert "predicted latency (cuda float16 batch 64 eager)" in stdout


def test_a_kernel_table_plan_benches_on_the_cpu_and_exports_its_kernel_layers_as_chains(capsys, tmp_path, real_lut):
    """A plan whose table chose the Triton kernel for some layers (as a GPU `lut build --backend triton` would):
    `bench` runs them (on the CPU the kernel layers' custom ops run their PyTorch reference, the others plain
    cuDNN-style convs), and `batude-export` writes them as chains."""
    plan_path = tmp_path / "plan.json"
    assert run_cli(capsys, ["plan", *MODEL, "--budget", "2x", "--lut", real_lut, "--out", plan_path])[0] == 0
    d = json.loads(Path(plan_path).read_text())
    tucker = [l["name"] for l in d["layers"] if l.get("ranks") and l["kind"] == "tucker2"]
    pair = next(l for l in d["layers"] if l["kind"] == "lowrank_conv1x1")
    pair["ranks"] = [8]  # this CPU table may keep the 1x1s dense; factorise one to put it on the kernel
    pairs = [pair["name"]]
    d["latency"]["table"]["backend"] = "triton"
    d["latency"]["variants"].update({tucker[0]: "triton", pairs[0]: "triton"})
    Path(plan_path).write_text(json.dumps(d))
    assert RankPlan.load(plan_path).variants[pairs[0]] == "triton"
    rc, stdout, err = run_cli(capsys, ["bench", *MODEL, "--plan", plan_path, "--batch", "2", "--iters", "2", "--warmup", "1"])
    assert rc == 0, err
    assert "compressed" in stdout
    rc, _, err = run_cli(capsys, ["batude:resnet20", "--plan", plan_path, "--input-shape", "3,28,28", "--legacy-exporter",
                                  "--out", tmp_path / "export"], entry=export_main)
    assert rc == 0, err
    report = json.loads((tmp_path / "export" / "report.json").read_text())
    assert report["variants"][tucker[0]] == "chain" and pairs[0] not in report["variants"]
