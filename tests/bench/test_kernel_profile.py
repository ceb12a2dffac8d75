"""Where the time goes: kernel/operator names grouped, per-call sums, and real profiles of real models."""

import json

import pytest
import torch

import batude
from batude.bench.backends import make_runner, measure
from batude.bench.profile import TOP, categorize, profile_runner, summarize_events
from batude.bench.report import plot_profiles, profile_tables
from batude.cli import main

SHAPE = (1, 28, 28)  # the shared `compressed` fixture's input (conftest.py)


@pytest.mark.parametrize("name, group", [
    # kernel names as CUPTI reports them (cuDNN, CUTLASS, cuBLAS, ATen, Triton) and CPU operator names
    ("sm90_xmma_fprop_implicit_gemm_f16f16_f16f32_f32_nhwckrsc_nhwc_tilesize128x64x64_warpgroupsize1x1x1_execute_kernel__5x_cudnn",
     "convolution"),
    ("void implicit_convolve_sgemm<float, float, 128, 5, 5, 3, 3, 3, 1, false, false, true>(int, int, int)", "convolution"),
    ("void cudnn::engines_precompiled::nchwToNhwcKernel<__half, __half, float, false, true>(cudnn::NchwToNhwcParams)",
     "layout and copy"),
    ("ampere_fp16_s16816gemm_fp16_128x128_ldg8_f2f_stages_32x5_nn", "gemm"),
    ("void cutlass::Kernel2<cutlass_80_wmma_tensorop_f16_s161616gemm_f16_32x32_128x2_tn_align8>(Params)", "gemm"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::(anonymous namespace)::launch_clamp_scalar>", "elementwise and norm"),
    ("void at::native::(anonymous namespace)::max_pool_forward_nhwc<c10::Half, float>(...)", "pooling"),
    ("_tucker2_kernel", "batude kernels"), ("_pointwise_kernel", "batude kernels"), ("_lowrank_kernel", "batude kernels"),
    ("triton_poi_fused_add_relu_0", "inductor fused"), ("triton_per_fused_mean_3", "inductor fused"),
    ("Memcpy DtoD (Device -> Device)", "layout and copy"), ("Memset (Device)", "layout and copy"),
    ("aten::conv2d", "convolution"), ("batude::tucker2_conv", "batude kernels"), ("aten::linear", "gemm"),
    ("aten::relu_", "elementwise and norm"), ("aten::batch_norm", "elementwise and norm"), ("aten::max_pool2d", "pooling"),
    ("aten::contiguous", "layout and copy"), ("some_unknown_kernel", "other"),
    ("void cudnn::bn_fw_inf_1C11_kernel_NCHW<__half, float, true, 1>(float, float, ...)", "elementwise and norm"),
    ("void at::native::batch_norm_transform_input_kernel<c10::Half, float, float, int>(...)", "elementwise and norm"),
])
def test_names_fall_into_their_group(name, group):
    assert categorize(name) == group


def test_events_summed_per_call_grouped_and_ranked():
    events = [("conv_a", 30.0), ("conv_a", 50.0), ("triton_poi_fused_relu", 10.0), ("conv_b", 20.0)] * 2
    events += [(f"k{i}", 1.0) for i in range(TOP + 2)]
    p = summarize_events(events, calls=2, level="kernels", measured_ms=0.2)
    assert p.busy_ms == pytest.approx((220.0 + TOP + 2) / 1000 / 2)
    cats = {c["category"]: c for c in p.categories}
    assert cats["convolution"]["ms"] == pytest.approx(0.2 / 2 * 1) and cats["convolution"]["launches"] == 3
    assert cats["inductor fused"]["ms"] == pytest.approx(0.01) and cats["other"]["launches"] == (TOP + 2) / 2
    assert sum(c["share"] for c in p.categories) == pytest.approx(1.0)
    assert [c["category"] for c in p.categories] == ["convolution", "inductor fused", "other"]
    assert len(p.top) == TOP and p.top[0]["name"] == "conv_a" and p.top[0]["ms"] == pytest.approx(0.08)
    assert p.top[0]["launches"] == 2 and p.top[0]["category"] == "convolution"
    assert p.idle_share == pytest.approx(1 - p.busy_ms / 0.2)
    assert summarize_events(events, 2, "operators", 0.2).idle_share is None  # CPU operators overlap Python: no idle share
    empty = summarize_events([], 3, "kernels", 1.0)
    assert empty.busy_ms == 0 and empty.categories == [] and empty.top == [] and empty.idle_share is None


def test_a_cpu_profile_counts_the_top_level_operators_of_a_real_model(compressed):
    model, _ = compressed
    runner = make_runner(model, "eager", SHAPE, 2)
    runner.run()
    p = profile_runner(runner.run, runner.device, calls=3)
    assert p.level == "operators" and p.calls == 3 and p.idle_share is None
    top = {t["name"]: t for t in p.top}
    # every conv module runs once: the stem, 3 per Tucker-2 layer, the projection shortcuts (2 where low-rank)
    convs = sum(1 for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert top["aten::conv2d"]["launches"] == convs and top["aten::conv2d"]["category"] == "convolution"
    assert top["aten::linear"]["launches"] == 1
    assert p.categories[0]["category"] == "convolution" and 0 < p.busy_ms
    assert sum(c["ms"] for c in p.categories) == pytest.approx(p.busy_ms)


def test_operators_inside_a_user_annotation_still_count_as_top_level(compressed):
    """Inductor runs a compiled graph inside a record_function range (a user annotation); its operators are
    the model's top-level ones all the same, or a compiled model's CPU profile would come out empty."""
    model, _ = compressed
    x = torch.randn(2, *SHAPE)

    def run():
        with torch.profiler.record_function("## Call CompiledFxGraph ##"):
            return model(x)

    p = profile_runner(run, torch.device("cpu"), calls=2)
    top = {t["name"]: t for t in p.top}
    assert "## Call CompiledFxGraph ##" not in top and top["aten::conv2d"]["launches"] > 20


def test_a_failed_profile_keeps_the_timing_and_says_why(compressed, monkeypatch):
    import batude.bench.profile as profile

    def broken(*args, **kwargs):
        raise RuntimeError("Can't disable Kineto profiler when it's not running")

    monkeypatch.setattr(profile, "profile_runner", broken)  # a profiler that will not start here
    (row,) = measure(compressed[0], ["eager"], SHAPE, [2], iters=2, warmup=1, label="compressed", profile_calls=2)
    assert row["available"] and row["median_ms"] > 0 and "profile" not in row
    assert "RuntimeError: Can't disable Kineto" in row["profile_error"]
    assert "compressed eager b2: not profiled (RuntimeError" in profile_tables([row])


def test_measure_profiles_each_row_and_the_report_sets_models_side_by_side(compressed):
    pytest.importorskip("onnxruntime")
    model, _ = compressed
    rows = measure(model, ["eager", "onnxruntime"], SHAPE, [2], iters=3, warmup=1, label="compressed", profile_calls=2)
    rows += measure(batude.nn.densify(model), ["eager"], SHAPE, [2], iters=3, warmup=1, label="dense", profile_calls=2)
    assert all(r["profile"]["calls"] == 2 for r in rows)
    ort = next(r for r in rows if r["backend"] == "onnxruntime")
    assert ort["profile"]["events"] == 0  # onnxruntime's own threads: nothing in PyTorch's profiler
    text = profile_tables(rows)
    assert "where the time goes: eager, batch 2, float32" in text and "| category | compressed | dense |" in text
    assert "| convolution |" in text and "dense, top" in text and "onnxruntime, batch 2: nothing recorded (it runs outside" in text
    assert measure(model, ["eager"], SHAPE, [2], iters=2, warmup=1)[0].get("profile") is None  # off by default


def test_bench_cli_profile(compressed, tmp_path, capsys):
    model, plan = compressed
    ckpt = tmp_path / "c.pt"
    batude.save(ckpt, model, plan=plan, arch="batude:resnet20", arch_kwargs={"in_channels": 1}, metadata={"input_shape": [1, *SHAPE]})
    out = tmp_path / "b"
    assert main(["bench", str(ckpt), "--compare-dense", "--iters", "2", "--warmup", "1", "--profile-calls", "2",
                 "--out", str(out)]) == 0  # --profile-calls implies --profile
    printed = capsys.readouterr().out
    assert "where the time goes: eager, batch 1" in printed and "| measured median |" in printed
    results = json.loads((out / "latency.json").read_text())["results"]
    assert {r["model"] for r in results} == {"dense", "compressed"}
    assert all(r["profile"]["level"] == "operators" and r["profile"]["busy_ms"] > 0 and r["profile"]["calls"] == 2
               for r in results)
    assert (out / "time_breakdown.png").stat().st_size > 1000 and "wrote" in printed


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_gpu_profile_sees_the_kernels_of_a_replayed_cuda_graph(compressed):
    """CUPTI reports the kernels a graph replay launches; their sum is at most the measured time per call (plus noise)."""
    rows = measure(compressed[0], ["eager", "cuda-graph"], SHAPE, [8], torch.float16, iters=20, warmup=5, device="cuda",
                   label="c", profile_calls=10)
    for r in rows:
        p = r["profile"]
        assert p["level"] == "kernels" and p["events"] > 0, r["backend"]
        assert any(c["category"] == "convolution" for c in p["categories"]), p["categories"]
        assert 0 < p["busy_ms"] < 1.5 * r["median_ms"] and p["idle_share"] is not None


def test_kernel_profiles_report_the_gpu_idle_share_side_by_side(tmp_path):
    dense = summarize_events([("sm90_xmma_fprop_implicit_gemm_nhwc", 80.0), ("vectorized_elementwise_kernel", 20.0)], 1,
                             "kernels", measured_ms=0.125)
    tucker = summarize_events([("_tucker2_kernel", 60.0), ("_pointwise_kernel", 10.0)], 1, "kernels", measured_ms=0.1)
    row = lambda model, p: {"model": model, "backend": "cuda-graph", "batch": 64, "dtype": "float16",  # noqa: E731
                            "median_ms": p.measured_ms, "profile": p.to_dict()}
    text = profile_tables([row("dense", dense), row("compressed", tucker)])
    assert "(GPU kernel time, ms per call)" in text
    assert "| convolution | 0.080 (80%) | - |" in text and "| batude kernels | - | 0.070 (100%) |" in text
    assert "| GPU idle share | 20% | 30% |" in text
    assert "compressed, top 2 (ms per call, calls per call): _tucker2_kernel 0.060 x1; _pointwise_kernel 0.010 x1" in text
    assert plot_profiles([row("dense", dense), row("compressed", tucker)], tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 1000
    nothing = summarize_events([], 1, "kernels", 0.1)
    assert not plot_profiles([row("dense", nothing)], tmp_path / "none.png") and not (tmp_path / "none.png").exists()
