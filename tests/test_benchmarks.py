"""Smoke tests of the benchmark scripts on tiny real inputs (schema and plot files)."""

import importlib.util
import json
from pathlib import Path

import pytest

import batude
from batude.errors import BatudeError
from batude.models import resnet20

ROOT = Path(__file__).resolve().parents[1]
FMNIST = Path("/usr/share/datasets/fashion-mnist")


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dense_checkpoint(tmp_path: Path) -> Path:
    """An untrained Fashion-MNIST ResNet-20 checkpoint (the scripts read any dense batude checkpoint)."""
    dense = tmp_path / "dense.pt"
    batude.save(dense, resnet20(in_channels=1), arch="batude:resnet20", arch_kwargs={"in_channels": 1})
    return dense


@pytest.mark.skipif(not FMNIST.is_dir(), reason="Fashion-MNIST Debian package (dataset-fashion-mnist) not installed")
def test_accuracy_vs_budget_writes_results_and_plot(tmp_path, capsys):
    dense = _dense_checkpoint(tmp_path)
    bench = _script("accuracy_vs_budget")
    assert bench.main(["--dense", str(dense), "--out", str(tmp_path / "out"), "--subset", "200", "--budgets", "2x",
                       "--methods", "batude,uniform", "--epochs-admm", "1", "--epochs-ft", "0", "--device", "cpu"]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {"env", "args", "dense_accuracy", "plain_epoch_seconds", "dense_macs", "runs"} <= set(results)
    assert results["env"]["torch"] and results["env"]["cpu"]
    assert [(r["method"], r["score"]) for r in results["runs"]] == [("batude", "joint_per_cost"), ("uniform", None)]
    for run in results["runs"]:
        assert 2.0 <= run["macs_reduction"] <= 2.02
    assert results["runs"][0]["bcadl_epoch_vs_plain"] > 0
    assert (tmp_path / "out" / "accuracy_vs_budget.png").stat().st_size > 1000
    assert "| 2x | batude (joint_per_cost) | 1 |" in bench.table(results)
    assert "2x seed 0 batude: " in capsys.readouterr().out  # a line per finished epoch: a long run's log shows its progress

    # a second call (the next GPU session) keeps the first call's runs and adds the missing ones
    common = ["--dense", str(dense), "--subset", "200", "--budgets", "2x", "--methods", "batude,uniform,energy",
              "--epochs-admm", "1", "--device", "cpu", "--skip-epoch-timing", "--continue-from", str(tmp_path / "out" / "results.json")]
    with pytest.raises(SystemExit, match="--epochs-ft 0 there, 1 here"):
        bench.main([*common, "--epochs-ft", "1", "--out", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()
    assert bench.main([*common, "--epochs-ft", "0", "--out", str(tmp_path / "more")]) == 0
    merged = json.loads((tmp_path / "more" / "results.json").read_text())
    assert merged["runs"][:2] == [{**r, "from": str(tmp_path / "out" / "results.json")} for r in results["runs"]]
    assert [r["method"] for r in merged["runs"]] == ["batude", "uniform", "energy"] and "from" not in merged["runs"][2]
    # continuing a continued file keeps where each run was measured, and reruns nothing that is there
    again = [*common[:-1], str(tmp_path / "more" / "results.json"), "--epochs-ft", "0", "--out", str(tmp_path / "again")]
    assert bench.main(again) == 0
    runs = json.loads((tmp_path / "again" / "results.json").read_text())["runs"]
    assert [r["from"] for r in runs] == [str(tmp_path / "out" / "results.json")] * 2 + [str(tmp_path / "more" / "results.json")]
    assert runs[0]["plain_epoch_seconds"] == results["plain_epoch_seconds"] and runs[0]["bcadl_epoch_vs_plain"] > 0
    assert {r["device"] for r in runs} == {"CPU, fp32"}  # kept runs carry where they were trained
    assert bench.main(["--replot", str(tmp_path / "more" / "results.json"), "--out", str(tmp_path / "replot")]) == 0
    assert "| 2x | energy | 1 |" in capsys.readouterr().out and (tmp_path / "replot" / "accuracy_vs_budget.png").is_file()


def test_latency_vs_flops_writes_results_and_plot(tmp_path):
    pytest.importorskip("torchvision")
    bench = _script("latency_vs_flops")
    assert bench.main(["--models", "resnet18", "--budgets", "2.52x", "--methods", "uniform,batude", "--batches", "1",
                       "--dtypes", "fp32", "--backends", "eager,cuda-graph", "--iters", "2", "--warmup", "1",
                       "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "latency_vs_flops.json").read_text())
    rows = {(r["model"], r["backend"]): r for r in report["results"]}
    assert set(rows) == {(m, b) for m in ("resnet18 dense", "resnet18 uniform 2.52x", "resnet18 batude 2.52x")
                         for b in ("eager", "cuda-graph")}
    for method in ("uniform", "batude"):
        row = rows[(f"resnet18 {method} 2.52x", "eager")]
        assert 2.52 <= row["flops_reduction"] <= 2.55 and row["speedup"] > 0
    assert (tmp_path / "latency_vs_flops.png").stat().st_size > 1000


def test_latency_aware_compares_plans_with_the_oracle_in_one_run(tmp_path, monkeypatch):
    # the CIFAR ResNet-20: torchvision's ResNet-18 (the default) took 160 s here, most of it the budget
    # search's BC-ADL first Z-steps on its large unfoldings; the flow is the same
    from batude.kernels import _configs

    monkeypatch.setattr(_configs, "_BUILT", {})  # autotuners that earlier GPU tests of this process filled
    bench = _script("latency_aware")
    model = ["--model", "batude:resnet20"]
    assert bench.main([*model, "--device", "cpu", "--dtype", "fp32", "--batches", "2", "--input", "3,32,32", "--backends",
                       "eager", "--points", "2", "--iters", "3", "--warmup", "1", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "latency_aware.json").read_text())
    assert report["env"]["torch"] and report["args"]["flops"] == "2.52x"
    assert report["autotuned"] == {}  # no kernel ran (on a GPU with the triton backend: each kernel's tuned configs)
    (batch,) = report["batches"]
    assert batch["lut_backend"] == "eager" and batch["latency_budget"].startswith("latency:")
    rows = {r["plan"]: r for r in batch["rows"]}
    assert set(rows) == {"dense", "uniform", "batude", "batude-latency", "oracle"}
    for name, row in rows.items():
        assert row["available"] and row["median_ms"] > 0 and row["speedup"] > 0
        assert name == "dense" or row["macs_reduction"] >= 2.52  # every plan meets the FLOPs budget
    assert rows["oracle"]["share_of_oracle"] == 1.0
    assert rows["oracle"]["predicted_ms"] == pytest.approx(report["batches"][0]["plans"]["oracle"]["latency"]["predicted_ms"])
    assert rows["uniform"]["predicted_speedup"] is None  # the naive chain is not a table-guided plan
    assert "prediction_error" not in rows["uniform"]
    for name in ("dense", "batude", "oracle"):  # the table's error where the row is timed as the table was (eager)
        r = rows[name]
        assert r["prediction_error"] == pytest.approx((r["predicted_ms"] - r["median_ms"]) / r["median_ms"])
    assert "| 2 | eager | batude-latency |" in bench.table(report["batches"])
    # each row against its floor under ceilings measured at the start, counting the FLOPs each model executes as
    # deployed: the uniform plan's chains exactly its cut, the table's plans more where they run merged variants
    assert report["ceilings"]["source"].startswith("measured on CPU")
    floors = {n: r["roofline"] for n, r in rows.items()}
    assert floors["dense"]["flops"] / floors["uniform"]["flops"] == pytest.approx(rows["uniform"]["macs_reduction"])
    assert all(floors[n]["flops"] < floors["dense"]["flops"] and 0 < floors[n]["floor_share"] for n in rows if n != "dense")

    # the saved table is reused by a later run (an experiment split across device sessions), and refused elsewhere
    assert (tmp_path / "lut_b2.json").is_file() and batch["lut_seconds"] > 0
    again = tmp_path / "again"
    argv = [*model, "--device", "cpu", "--dtype", "fp32", "--batches", "2", "--backends", "eager", "--points", "2",
            "--iters", "3", "--warmup", "1", "--lut-dir", str(tmp_path)]
    assert bench.main([*argv, "--input", "3,32,32", "--dense-backends", "compile-graph", "--out", str(again)]) == 0
    (reused,) = json.loads((again / "latency_aware.json").read_text())["batches"]
    assert reused["lut_seconds"] is None and reused["plans"]["oracle"] == batch["plans"]["oracle"]
    graphed = [r for r in reused["rows"] if r["backend"] == "compile-graph"]  # a dense-only baseline backend
    assert [r["plan"] for r in graphed] == ["dense"] and not graphed[0]["available"] and "CUDA GPU" in graphed[0]["reason"]
    with pytest.raises(BatudeError, match="measured at input"):
        bench.main([*argv, "--input", "3,16,16", "--out", str(tmp_path / "other")])

    # the saved run planned again offline: this code's plans on its tables, the predictions side by side
    assert bench.main(["--replan", str(tmp_path), "--out", str(tmp_path / "replan")]) == 0
    rows = {r["plan"]: r for r in json.loads((tmp_path / "replan" / "replan.json").read_text())["rows"]}
    assert set(rows) == {"batude", "batude-latency", "oracle"}
    # replanned by the code that planned them: the replan rebuilds the run's model, seeded weights, table and
    # FLOPs budget from the saved files, or these differ
    assert rows["oracle"]["predicted_ms_now"] == pytest.approx(rows["oracle"]["predicted_ms_then"])
    assert rows["batude"]["predicted_ms_now"] == pytest.approx(rows["batude"]["predicted_ms_then"])
    assert all(r["macs_reduction"] >= 2.52 for r in rows.values())

    # and the greedy rule's hold settings on that table (value kept, plan predictions; nothing measured)
    held = _script("held_dense")
    assert held.main([*model, "--lut", str(tmp_path / "lut_b2.json"), "--input", "3,32,32", "--budgets", "1.0,3.0",
                      "--also", "2.52x", "--out", str(tmp_path / "held")]) == 0
    rows = json.loads((tmp_path / "held" / "held_dense.json").read_text())["rows"]
    assert [(r["factor"], r["hold"]) for r in rows] == [(f, h) for f in (1.0, 3.0) for h in ("auto", "to-fit", "never")]
    for r in (r for r in rows if r["feasible"]):
        assert r["predicted_ms"] <= r["factor"] * r["dense_ms"] * (1 + 1e-9) and r["macs_reduction"] >= 2.52
        assert 0 < r["value_per_layer"] <= 1 + 1e-9  # joint score: a product of kept fractions per layer
    loose = {r["hold"]: r for r in rows if r["factor"] == 3.0}
    assert all(r["feasible"] for r in loose.values()) and loose["never"]["held"] == 0  # 3x the dense time: all meet it


def test_latency_aware_table_from_a_saved_report_measures_nothing(capsys):
    bench = _script("latency_aware")
    saved = Path(__file__).resolve().parents[1] / "benchmarks/results/h100_latency_aware/latency_aware.json"
    assert bench.main(["--table-from", str(saved)]) == 0
    out = capsys.readouterr().out
    # the committed H100 run: batude-latency 1.12x against a 1.11x oracle in CUDA graphs at batch 64
    assert "| 64 | cuda-graph | batude-latency | 2.52x |" in out and "| 101% | 114% |" in out
    # the H200 run with layers held dense: the table counts them from the saved plans
    assert bench.main(["--table-from", str(saved.parents[1] / "h200_latency_aware/latency_aware.json")]) == 0
    out = capsys.readouterr().out
    assert "| 64 | cuda-graph | batude-latency | 2.52x | 8 of 20 | 1.10x |" in out and "| 64 | cuda-graph | dense | 1.00x | - |" in out


def test_latency_aware_triton_rows_are_compared_with_graphed_cudnn_dense():
    """The kernel backends measure no dense model of their own: triton's baseline is dense cuDNN in a CUDA graph,
    triton-compile's dense compiled and graphed (compile-graph), like for like."""
    bench = _script("latency_aware")
    row = lambda plan, backend, ms: {"plan": plan, "backend": backend, "median_ms": ms, "available": True}  # noqa: E731
    rows = [row("dense", "cuda-graph", 2.0), row("dense", "compile", 1.0), row("oracle", "cuda-graph", 1.6),
            row("batude", "triton", 1.0), row("oracle", "triton", 0.8), row("dense", "compile-graph", 0.9),
            row("batude", "triton-compile", 0.6), row("oracle", "triton-compile", 0.5)]
    bench._speedups(rows)
    assert rows[3]["speedup"] == 2.0 and rows[4]["speedup"] == 2.5  # over the cuda-graph dense
    assert rows[6]["speedup"] == pytest.approx(1.5) and rows[7]["speedup"] == pytest.approx(1.8)  # over compile-graph
    assert rows[6]["share_of_oracle"] == pytest.approx(1.5 / 1.8) and rows[6]["speedup_vs_best_dense"] == pytest.approx(1.5)
    assert rows[3]["share_of_oracle"] == pytest.approx(0.8)  # within the triton backend
    assert rows[3]["share_of_oracle_gain"] == pytest.approx(1.0 / 1.5)  # 2x of a 2.5x oracle: 1.0 of its 1.5 gain
    assert rows[3]["speedup_vs_best_dense"] == pytest.approx(0.9)  # the compiled and graphed dense is the best dense
    # a kernel backend asked for alone still gets its dense baseline measured; dense never runs on a kernel
    assert bench.dense_backends(["triton"], "") == ["cuda-graph"]
    assert bench.dense_backends(["cuda-graph", "triton-compile"], "compile-graph") == ["cuda-graph", "compile-graph"]
    assert "| 1 | triton | batude |" in bench.table([{"batch": 1, "rows": [{**rows[3], "macs_reduction": 2.5,
                                                                           "predicted_speedup": None, "predicted_ms": None}]}])


@pytest.mark.skipif(not FMNIST.is_dir(), reason="Fashion-MNIST Debian package (dataset-fashion-mnist) not installed")
def test_latency_budget_accuracy_runs_both_budgets_on_one_table(tmp_path, capsys):
    dense = _dense_checkpoint(tmp_path)
    bench = _script("latency_budget_accuracy")
    assert bench.main(["--dense", str(dense), "--out", str(tmp_path / "out"), "--subset", "200", "--epochs-admm", "1",
                       "--epochs-ft", "0", "--batch", "8", "--points", "2", "--iters", "2", "--flops", "1.5x"]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["table_key"]["device"] == "cpu" and results["dense_ms"] > 0
    flops, latency = results["runs"]
    assert flops["budget"] == "1.5x" and flops["macs_reduction"] >= 1.5
    assert latency["budget"] == f"latency:{flops['predicted_ms']:.6f}ms"
    assert latency["predicted_ms"] <= flops["predicted_ms"] + 1e-5  # the same predicted time, or less
    assert "| latency:" in bench.table(results)
    plan = batude.RankPlan.load(tmp_path / "out" / "plan_latency.json")
    assert plan.latency["predicted_ms"] == pytest.approx(latency["predicted_ms"])
    assert (tmp_path / "out" / "plan_flops.json").is_file()
    log = capsys.readouterr().out
    assert "latency table: dense " in log and "  flops (1.5x): admm 1/1 done" in log and "latency (latency:" in log


def test_kernels_aot_compiles_for_sm90_and_writes_its_table(tmp_path):
    bench = _script("kernels_aot")  # imports batude.kernels
    from batude.kernels.aot import aot_unavailable_reason

    reason = aot_unavailable_reason(90)  # no triton NVIDIA backend / ptxas here: nothing to compile with
    if reason:
        pytest.skip(reason)
    assert bench.main(["--models", "resnet20", "--dtypes", "fp16", "--batches", "1", "--jobs", "1", "--limit", "4",
                       "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "kernels_aot.json").read_text())
    assert len(report["records"]) == 4 and all(r["ok"] and r["shared_bytes"] > 0 for r in report["records"])
    assert report["summary"] and report["arch"] == 90
    assert bench.main(["--models", "nope", "--out", str(tmp_path)]) == 2


def test_decompose_speed_times_both_and_they_agree(tmp_path):
    bench = _script("decompose_speed")
    assert bench.main(["--models", "resnet18", "--out", str(tmp_path)]) == 0
    row = json.loads((tmp_path / "decompose_speed.json").read_text())["rows"][0]
    assert row["layers"] == 16 and row["batude_s"] > 0 and row["tensorly_s"] > 0 and row["max_rel_difference"] < 1e-9


def test_bcadl_penalty_ops_matches_the_definition_with_far_fewer_operators(tmp_path):
    bench = _script("bcadl_penalty_ops")
    assert bench.main(["--out", str(tmp_path), "--iters", "2"]) == 0
    report = json.loads((tmp_path / "bcadl_penalty_ops.json").read_text())
    assert report["value_rel_diff"] < 1e-5 and report["grad_max_abs_diff"] < 1e-6
    assert report["unfoldings"] > report["layers"] > 0
    assert report["ops_batude"] * 5 < report["ops_definition"]  # a few per step, not a few per unfolding


@pytest.mark.skipif(not FMNIST.is_dir(), reason="Fashion-MNIST Debian package (dataset-fashion-mnist) not installed")
def test_train_speed_times_every_model_and_mode(tmp_path, capsys):
    bench = _script("train_speed")
    assert bench.main(["--dense", str(_dense_checkpoint(tmp_path)), "--out", str(tmp_path / "out"), "--subset", "256",
                       "--batch-size", "64", "--modes", "eager", "--device", "cpu"]) == 0
    rows = json.loads((tmp_path / "out" / "train_speed.json").read_text())["results"]
    assert [(r["model"], r["mode"], r["steps"]) for r in rows] == [(m, "eager", 4) for m in ("dense", "bcadl", "decomposed")]
    assert all(r["epoch_s"] > 0 and r["ms_per_step"] == pytest.approx(r["epoch_s"] / 4 * 1e3) for r in rows)
    assert "| decomposed | eager |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bench.main(["--dense", "x", "--out", str(tmp_path / "bad"), "--modes", "eager,fast"])


def test_accuracy_vs_budget_finds_each_kept_runs_plain_epoch(tmp_path):
    """Files written before runs stored their own plain epoch: it comes from the file of the call that measured them."""
    bench = _script("accuracy_vs_budget")
    first = tmp_path / "first.json"
    first.write_text(json.dumps({"plain_epoch_seconds": 2.0, "runs": []}))
    log = [{"phase": "admm", "seconds": s} for s in (9.0, 3.0, 5.0)] + [{"phase": "finetune", "seconds": 1.0}]
    run = {"budget": "2x", "seed": 0, "score": "joint_per_cost", "log": log}
    earlier = {"plain_epoch_seconds": None, "env": {"gpu": "NVIDIA H100"}, "args": {"device": "cuda"},
               "runs": [{**run, "method": "batude", "from": str(first)}, {**run, "method": "uniform"}]}
    kept = bench._kept_runs([("second.json", earlier)])
    assert [(r["plain_epoch_seconds"], r["bcadl_epoch_vs_plain"], r["from"]) for r in kept] == [
        (2.0, 2.0, str(first)), (None, None, "second.json")]  # (3 + 5) / 2 / 2: the first BC-ADL epoch warms up
    assert [r["device"] for r in kept] == ["CPU, fp32", "NVIDIA H100, bf16"]  # first.json has no GPU in its env

    # several files merge (calls on different machines); a run in two of them is refused, not counted twice
    cpu = {"env": {}, "args": {"device": "cpu"}, "runs": [{**run, "budget": "4x", "method": "uniform"}]}
    merged = bench._kept_runs([("second.json", earlier), ("cpu.json", cpu)])
    assert [(r["budget"], r["method"], r["device"], r["from"]) for r in merged][1:] == [
        ("2x", "uniform", "NVIDIA H100, bf16", "second.json"), ("4x", "uniform", "CPU, fp32", "cpu.json")]
    with pytest.raises(SystemExit, match="2x seed 0 batude is in both second.json and again.json"):
        bench._kept_runs([("second.json", earlier), ("again.json", earlier)])


def test_accuracy_vs_budget_table_shows_each_seed(tmp_path):
    """With several seeds the table gives each seed's accuracy beside the mean, and the plot draws their range."""
    bench = _script("accuracy_vs_budget")
    run = {"budget": "4x", "method": "uniform", "score": None, "macs_reduction": 4.0, "drop": 0.0,
           "decomposed_accuracy": 50.0, "bcadl_epoch_vs_plain": None}
    results = {"dense_accuracy": 94.5, "dense_macs": 1000, "env": {"gpu": "NVIDIA H100"}, "args": {"device": None},
               "runs": [{**run, "seed": 1, "accuracy": 93.0, "device": "CPU, fp32"}, {**run, "seed": 0, "accuracy": 92.0}]}
    # the run without a label was trained by this file's call (on its GPU); the other one on a CPU
    assert "| 4x | uniform | 2 | CPU, fp32 + NVIDIA H100, bf16 | 4.000x | 92.50 | 92.00, 93.00 |" in bench.table(results)
    bench.plot(results, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_accuracy_vs_budget_table_lists_budgets_in_order():
    """A merged file holds its origins' runs first (4x) and a later call's after (2.5x): the table still goes 2.5x, 4x."""
    bench = _script("accuracy_vs_budget")
    run = {"method": "vbmf", "score": None, "seed": 0, "accuracy": 93.0, "macs_reduction": 4.0, "drop": 0.5,
           "decomposed_accuracy": 20.0, "bcadl_epoch_vs_plain": None, "device": "CPU, fp32"}
    results = {"dense_accuracy": 94.5, "dense_macs": 1000, "runs": [
        {**run, "budget": "4x"}, {**run, "budget": "2.5x", "method": "uniform"}, {**run, "budget": "2.5x"},
        {**run, "budget": "10x"}, {**run, "budget": "50%"}]}
    rows = [line.split(" | ")[:2] for line in bench.table(results).splitlines()[2:]]
    assert rows == [["| 50%", "vbmf"], ["| 2.5x", "uniform"], ["| 2.5x", "vbmf"], ["| 4x", "vbmf"], ["| 10x", "vbmf"]]


def test_gpu_suite_packs_its_results_into_one_tarball(tmp_path):
    """PACK=1: whatever the parts wrote comes back as $OUT/gpu_suite.tgz (the device tool returns at most 8 files)."""
    import os
    import subprocess
    import sys
    import tarfile

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "PACK": "1",
           "OUT": str(tmp_path / "out"), "PART": "none"}  # no part: only the environment record
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh")], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["gpu_suite.tgz"]
    with tarfile.open(tmp_path / "out" / "gpu_suite.tgz") as tar:
        record = json.load(tar.extractfile("./env.json"))
    assert record["torch"] and record["batude"] == batude.__version__


def test_gpu_suite_profile_part_runs_its_smoke_schedule_on_the_cpu(tmp_path):
    """SMOKE=1 PART=profile: plan, bench with --profile, both models profiled, the tables printed and saved."""
    import os
    import subprocess
    import sys

    out = tmp_path / "out"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "SMOKE": "1",
           "OUT": str(out), "PART": "profile"}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh")], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((out / "profile" / "latency.json").read_text())["results"]
    assert {r["model"] for r in results} == {"dense", "compressed"}
    assert all(r["profile"]["categories"][0]["category"] == "convolution" for r in results)
    assert "where the time goes: eager, batch 2" in (out / "profile.txt").read_text()
