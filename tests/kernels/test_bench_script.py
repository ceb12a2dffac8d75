"""``benchmarks/kernels_vs_cudnn.py --smoke`` runs end to end under the interpreter and writes its report."""

import importlib.util
import json
from pathlib import Path

from kernel_cases import gpu, interp

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("kernels_vs_cudnn", ROOT / "benchmarks" / "kernels_vs_cudnn.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@interp
def test_smoke_run_writes_json_and_plot(tmp_path):
    assert _script().main(["--smoke", "--ceilings", "0.2,20", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "kernels_vs_cudnn.json").read_text())
    assert {"env", "args", "dtype", "layers", "model", "goals", "elapsed_s"} <= set(report)
    assert report["autotuned"] == {}  # the interpreter never autotunes (a GPU run records each kernel's winners)
    assert report["env"]["torch"]
    layers = [r for r in report["layers"] if "median_ms" in r]
    assert {r["variant"] for r in layers} == {"dense", "chain", "fused", "split", "halo"}
    assert {r["batch"] for r in layers} == {1, 2}
    for r in layers:
        assert r["median_ms"] > 0 and r["speedup_vs_chain"] > 0 and r["auto_choice"] in ("fused", "split")
        if r["variant"] in ("fused", "split", "halo"):
            assert r["rel_err_vs_chain"] < 1e-4  # fp32 under the interpreter: the kernels compute the chain
            assert r["tuned"] is None  # the interpreter does not autotune (the GPU run records the winners)
    models = {(r["model"], r["backend"], r["batch"]) for r in report["model"] if "median_ms" in r}
    assert models == {(m, b, n) for m, b in (("dense", "eager"), ("triton", "fused"), ("chain", "eager")) for n in (1, 2)}
    triton = [r for r in report["model"] if r["model"] == "triton"]
    assert all(r["rel_err_vs_chain"] < 1e-4 and r["speedup_vs_best_dense"] > 0 and r["flops_reduction"] > 1.9 for r in triton)
    # each whole-model row is profiled: the fused model's time is in its kernels' custom ops, the chain's in convs
    assert all(r["profile"]["categories"][0]["category"] == "batude kernels" for r in triton)
    chain = [r for r in report["model"] if r["model"] == "chain"]
    assert all(r["profile"]["categories"][0]["category"] == "convolution" for r in chain)
    assert report["goals"] and all(set(g) == {"goal", "target", "measured", "met"} for g in report["goals"])
    assert (tmp_path / "kernels_vs_cudnn.png").stat().st_size > 1000
    # every timed layer against its form's floor, under the given ceilings (measured at the start of the run without them)
    assert report["ceilings"]["source"] == "given" and report["args"]["ceilings"]["tflops"] == 0.2
    assert all(0 < r["roofline"]["floor_share"] and r["roofline"]["bound"] in ("compute", "memory") for r in layers)
    assert (tmp_path / "roofline.png").stat().st_size > 1000
    rows = {(r["model"], r["batch"]): r["roofline"] for r in report["model"] if "median_ms" in r}
    assert all(rows[("triton", b)]["flops"] == rows[("chain", b)]["flops"] < rows[("dense", b)]["flops"] for b in (1, 2))
    assert all(rows[("triton", b)]["bytes"] < rows[("chain", b)]["bytes"] for b in (1, 2))  # intermediates on chip


def test_rooflines_of_an_earlier_run_need_no_device(tmp_path, capsys):
    """``--from-json``: the committed H200 run against given ceilings, then against the datasheet's for its GPU."""
    committed = ROOT / "benchmarks" / "results" / "h200_kernels" / "kernels_vs_cudnn.json"
    assert _script().main(["--from-json", str(committed), "--ceilings", "788,4300", "--out", str(tmp_path / "given")]) == 0
    out = capsys.readouterr().out
    assert "| 64->64, 56², s1 | 64 | 44.6 / 18.8 (42%, compute) |" in out  # dense: 14.8 GFLOP at 788 TFLOP/s
    assert "| dense | compile | 64 | 0.937 | 0.295 | 31% | compute |" in out  # ResNet-18: 2 x 64 x 1.82 GMACs
    report = json.loads((tmp_path / "given" / "kernels_vs_cudnn.json").read_text())
    assert report["ceilings"]["source"] == "given" and report["rooflines_from"] == str(committed)
    assert sum("roofline" in r for r in report["layers"]) == 70  # 7 shapes x 2 batches x 5 forms
    assert _script().main(["--from-json", str(committed), "--out", str(tmp_path / "sheet")]) == 0
    assert "H200 SXM datasheet" in capsys.readouterr().out
    assert _script().main(["--from-json", str(tmp_path / "missing.json"), "--out", str(tmp_path / "x")]) == 2
    assert "cannot read a kernels_vs_cudnn report" in capsys.readouterr().err
    (tmp_path / "odd.json").write_text(json.dumps({"layers": [{"variant": "dense", "median_ms": 1.0}]}))
    assert _script().main(["--from-json", str(tmp_path / "odd.json"), "--ceilings", "1,1", "--out", str(tmp_path / "y")]) == 2
    assert "not a kernels_vs_cudnn report this script can read (KeyError" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()  # no partial output


def _compressed_resnet20():
    import torch

    from batude.models import resnet20
    from batude.rank import apply_plan_, select_ranks

    torch.manual_seed(0)
    model = resnet20(in_channels=1).eval()
    return apply_plan_(model, select_ranks(model, "2.52x", "uniform", input_shape=(1, 1, 28, 28)))


def test_bench_triton_backend_is_reported_unavailable_without_cuda():
    import torch

    from batude.bench.backends import Backend, measure

    assert Backend("triton") is Backend.TRITON and Backend("triton-compile") is Backend.TRITON_COMPILE
    if torch.cuda.is_available():
        return
    rows = measure(_compressed_resnet20(), ["triton", "triton-compile"], (1, 28, 28), [1], iters=1, warmup=0, label="c")
    assert all(r["available"] is False and "CUDA GPU" in r["reason"] for r in rows)


@gpu
def test_gpu_bench_triton_backend_runs_the_fused_model():
    import torch

    from batude.bench.backends import make_runner, measure

    model = _compressed_resnet20()
    runner = make_runner(model, "triton", (1, 28, 28), 4, torch.float16)
    runner.run()
    rows = measure(model, ["cuda-graph", "triton", "triton-compile"], (1, 28, 28), [1, 8], torch.float16, iters=5,
                   warmup=2, label="c", profile_calls=5)
    assert all(r["available"] and r["median_ms"] > 0 for r in rows), rows
    for r in rows:  # the kernels' time is in batude's kernels, compiled or not
        kernels = {c["category"]: c for c in r["profile"]["categories"]}
        assert ("batude kernels" in kernels) == (r["backend"] != "cuda-graph"), (r["backend"], kernels)
