"""Latency backends, speedup pairing, report files and ``batude bench`` on CPU (small real models)."""

import json

import pytest
import torch

import batude
from batude.bench.backends import measure
from batude.bench.roofline import Ceilings
from batude.bench.report import add_speedups, latency_table, plot_speedup
from batude.cli import main
from batude.nn import densify, flop_counter_macs

SHAPE = (1, 28, 28)  # the shared `compressed` fixture's input (conftest.py)


def test_densify_is_the_same_function_at_dense_cost(compressed):
    model, plan = compressed
    dense = densify(model)
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        assert float((dense(x) - model(x)).norm() / model(x).norm()) < 1e-5
    assert flop_counter_macs(dense, (1, *SHAPE)) == plan.dense_macs


def test_measure_reports_available_and_unavailable_backends(compressed):
    pytest.importorskip("onnxruntime")
    rows = measure(compressed[0], ["eager", "onnxruntime", "cuda-graph", "compile-graph", "tensorrt"], SHAPE, [1, 4],
                   iters=3, warmup=1, label="c")
    by = {(r["backend"], r["batch"]): r for r in rows}
    for backend in ("eager", "onnxruntime"):
        for batch in (1, 4):
            r = by[(backend, batch)]
            assert r["available"] and r["n"] == 3 and 0 < r["min_ms"] <= r["median_ms"] <= r["max_ms"]
    if not torch.cuda.is_available():
        for graphed in ("cuda-graph", "compile-graph"):
            assert not by[(graphed, 1)]["available"] and "CUDA GPU" in by[(graphed, 1)]["reason"]
        assert not by[("tensorrt", 1)]["available"]


def test_speedups_table_and_plot(tmp_path):
    rows = [
        {"model": "dense", "backend": "eager", "batch": 1, "dtype": "float32", "available": True, "median_ms": 10.0,
         "p90_ms": 11.0, "cv": 0.01, "throughput": 100.0, "flops_reduction": 1.0},
        {"model": "compressed", "backend": "eager", "batch": 1, "dtype": "float32", "available": True, "median_ms": 4.0,
         "p90_ms": 4.5, "cv": 0.02, "throughput": 250.0, "flops_reduction": 2.5},
        {"model": "compressed", "backend": "tensorrt", "batch": 1, "dtype": "float32", "available": False, "reason": "no GPU"},
    ]
    add_speedups(rows)
    assert rows[1]["speedup"] == pytest.approx(2.5) and "speedup" not in rows[2]
    table = latency_table(rows)
    assert "| compressed | 2.50x | eager | 1 | float32 | 4.000 |" in table and "unavailable: no GPU" in table
    plot_speedup(rows, tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 1000


def test_bench_cli_writes_json_and_plot(compressed, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    model, plan = compressed
    ckpt = tmp_path / "c.pt"
    batude.save(ckpt, model, plan=plan, arch="batude:resnet20", arch_kwargs={"in_channels": 1}, metadata={"input_shape": [1, *SHAPE]})
    out = tmp_path / "bench"
    assert main(["bench", str(ckpt), "--backend", "eager,onnxruntime", "--batch", "2", "--compare-dense",
                 "--iters", "3", "--warmup", "1", "--out", str(out)]) == 0
    report = json.loads((out / "latency.json").read_text())
    assert report["env"]["torch"] and report["input_shape"] == list(SHAPE)
    models = {(r["model"], r["backend"]) for r in report["results"]}
    assert models == {("dense", "eager"), ("dense", "onnxruntime"), ("compressed", "eager"), ("compressed", "onnxruntime")}
    compressed_rows = [r for r in report["results"] if r["model"] == "compressed"]
    assert all(2.52 <= r["flops_reduction"] <= 2.55 and r["speedup"] > 0 for r in compressed_rows)
    assert (out / "speedup_vs_flops.png").is_file()
    printed = capsys.readouterr().out
    assert "| compressed |" in printed and "floor ms" not in printed  # no rooflines unless asked for
    assert report["ceilings"] is None and not any("roofline" in r for r in report["results"])


def test_bench_cli_roofline_floors_each_model_as_it_ran(compressed, tmp_path, capsys):
    """``--roofline --ceilings``: every row against its model's floor; the factorised model's floor is the lower one
    (fewer FLOPs; at 1 TFLOP/s and 1000 GB/s ResNet-20 is compute-bound at batch 8)."""
    model, plan = compressed
    ckpt = tmp_path / "c.pt"
    batude.save(ckpt, model, plan=plan, arch="batude:resnet20", arch_kwargs={"in_channels": 1}, metadata={"input_shape": [1, *SHAPE]})
    assert main(["bench", str(ckpt), "--batch", "8", "--compare-dense", "--roofline", "--ceilings", "1,1000",
                 "--iters", "2", "--warmup", "1", "--out", str(tmp_path / "b")]) == 0
    printed = capsys.readouterr().out
    assert "floor ms (share)" in printed and "floor (cpu): the model's roofline floor at 1 TFLOP/s and 1000 GB/s (given)" in printed
    report = json.loads((tmp_path / "b" / "latency.json").read_text())
    assert report["ceilings"]["cpu"]["source"] == "given" and (tmp_path / "b" / "roofline.png").stat().st_size > 0
    rows = {r["model"]: r["roofline"] for r in report["results"]}
    assert rows["dense"]["bound"] == rows["compressed"]["bound"] == "compute"
    assert rows["dense"]["floor_ms"] / rows["compressed"]["floor_ms"] == pytest.approx(
        next(r["flops_reduction"] for r in report["results"] if r["model"] == "compressed"), rel=1e-6)


def test_bench_cli_roofline_plot_falls_back_to_the_models_without_tucker_layers(tmp_path):
    """``--per-layer`` on a dense model times no layer: roofline.png then shows the whole-model rows."""
    assert main(["bench", "batude:resnet20", "--input", "1,3,32,32", "--per-layer", "--ceilings", "1,100", "--iters", "1",
                 "--warmup", "0", "--out", str(tmp_path / "d")]) == 0
    assert json.loads((tmp_path / "d" / "latency.json").read_text())["layers"]["rows"] == []
    assert (tmp_path / "d" / "roofline.png").stat().st_size > 0


def test_roofline_plot_takes_any_number_of_batches_and_variants(tmp_path):
    from batude.bench.report import plot_roofline

    rows = [{"variant": f"v{i % 13}", "batch": 1 + i % 9, "roofline": {"intensity": 1.0 + i, "achieved_tflops": 0.1 + i}}
            for i in range(40)]
    assert plot_roofline(rows, Ceilings(100.0, 1000.0).to_dict(), tmp_path / "r.png") and (tmp_path / "r.png").stat().st_size
    assert not plot_roofline([{"variant": "x", "batch": 1}], Ceilings(1.0, 1.0).to_dict(), tmp_path / "none.png")


def test_unknown_backend_is_a_usage_error(capsys):
    assert main(["bench", "batude:resnet20", "--backend", "tpu"]) == 2
    assert "error:" in capsys.readouterr().err


def test_per_layer_profile_times_every_variant_of_every_tucker_layer(compressed):
    from batude.bench.layers import profile_layers
    from batude.nn import TuckerConv2d

    model, _ = compressed
    rows = profile_layers(model, (1, *SHAPE), batch=2, iters=2, warmup=1, ceilings=Ceilings(1.0, 10.0))
    tucker = [n for n, m in model.named_modules() if isinstance(m, TuckerConv2d)]
    assert sorted({r["layer"] for r in rows}) == sorted(tucker)
    assert {r["variant"] for r in rows} == {"dense", "chain", "merge_first", "merge_last"}
    first = [r for r in rows if r["layer"] == "layer1.0.conv1"]
    assert first[0]["variant"] == "dense" and first[0]["speedup_vs_dense"] == 1.0 and first[0]["input_shape"] == [16, 28, 28]
    dense_macs = first[0]["macs"]
    assert all(r["macs"] < dense_macs for r in first[1:])  # at 2.52x every variant of this layer is cheaper in MACs
    for r in rows:  # each form against its floor: FLOPs as counted, time as measured
        assert r["roofline"]["flops"] == 2 * 2 * r["macs"]
        assert r["roofline"]["floor_share"] == pytest.approx(r["roofline"]["floor_ms"] / r["median_ms"])


def test_bench_cli_per_layer(compressed, tmp_path, capsys):
    model, plan = compressed
    ckpt = tmp_path / "c.pt"
    batude.save(ckpt, model, plan=plan, arch="batude:resnet20", arch_kwargs={"in_channels": 1}, metadata={"input_shape": [1, *SHAPE]})
    assert main(["bench", str(ckpt), "--per-layer", "--iters", "2", "--warmup", "1", "--out", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "| layer1.0.conv1 |" in out and "measured on CPU" in out
    layers = json.loads((tmp_path / "b" / "latency.json").read_text())["layers"]
    assert layers["ceilings"]["source"].startswith("measured on CPU")
    assert all(0 < r["roofline"]["floor_share"] for r in layers["rows"])
    assert (tmp_path / "b" / "roofline.png").stat().st_size > 0
    assert main(["bench", str(ckpt), "--per-layer", "--iters", "1", "--warmup", "0", "--ceilings", "2,20"]) == 0
    assert "at 2 TFLOP/s and 20 GB/s, given" in capsys.readouterr().out
    assert main(["bench", str(ckpt), "--per-layer", "--ceilings", "2"]) == 2
    assert "TFLOPS,GBPS" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_graphed_backends_run_on_the_gpu(compressed):
    """The graphed backends (compile-graph compiles with frozen weights first) time fp16 batches on the GPU."""
    rows = measure(compressed[0], ["eager", "cuda-graph", "compile-graph"], SHAPE, [1, 8], torch.float16, iters=5,
                   warmup=2, device="cuda", label="c")
    assert len(rows) == 6 and all(r["available"] and r["median_ms"] > 0 for r in rows), [r.get("reason") for r in rows]
