"""The kernels compiled for sm_90 on this CPU machine with Triton's real compiler and ptxas (no GPU).

These catch what the interpreter cannot: code that Triton's compiler rejects, and tile configs that
need more shared memory than an H100 block may have. ``benchmarks/kernels_aot.py`` sweeps every
candidate; here a few representative launches are compiled on every CI run.
"""

import pytest

from kernel_cases import HAS_TRITON, INTERPRETED


def _reason() -> str | None:
    if INTERPRETED or not HAS_TRITON:
        return "needs triton, and no TRITON_INTERPRET"
    from batude.kernels.aot import aot_unavailable_reason

    return aot_unavailable_reason(90)


_REASON = _reason()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=str(_REASON))


def _heuristic_spec(specs, kind):
    """The spec of the heuristic config (``BATUDE_TRITON_AUTOTUNE=0``): the last one of its kind."""
    return [s for s in specs if s.kind == kind][-1]


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("mode", ["fused", "split"])
def test_resnet18_tucker2_layer_compiles_for_h100(mode, dtype):
    from batude.kernels.aot import SHARED_LIMIT, Layer, compile_spec, layer_specs

    specs = layer_specs(Layer(c=128, s=256, hw=28, k=3, stride=2, r1=128, r2=64, batch=1), dtype, mode)
    assert {s.kind for s in specs} == ({"tucker2"} if mode == "fused" else {"tucker2", "pointwise"})
    assert any(s.args["SPLIT_K"] > 1 for s in specs if s.kind == "tucker2")  # batch 1, 14x14: split-K candidates
    rec = compile_spec(_heuristic_spec(specs, "tucker2"))
    assert rec["ok"], rec["error"]
    assert 0 < rec["shared_bytes"] <= SHARED_LIMIT[90]
    assert 0 < rec["registers"] <= 255 and rec["spill_bytes"] is not None
    assert rec["fuse_first"] is (mode == "fused") and rec["rp"] == 128
    assert rec["occupancy"]["warps_per_sm"] >= rec["num_warps"]  # at least one block fits an SM


@pytest.mark.parametrize("mode", ["fused", "split"])
def test_split_n_candidates_compile_for_h100_with_tensor_cores_and_no_spills(mode):
    """The core's channels split over programs (SPLIT_N): ResNet-18's 512->512 3x3 at batch 1, R1p = 256."""
    from batude.kernels.aot import Layer, compile_spec, layer_specs

    specs = [s for s in layer_specs(Layer(c=512, s=512, hw=7, k=3, stride=1, r1=256, r2=256, batch=1), "fp16", mode)
             if s.kind == "tucker2" and s.args["SPLIT_N"] > 1]
    assert {s.args["SPLIT_N"] for s in specs} >= {4, 8}
    spec = max(specs, key=lambda s: s.args["SPLIT_K"] * s.args["SPLIT_N"])  # the most programs per row block
    rec = compile_spec(spec)
    assert rec["ok"], rec["error"]
    assert rec["tensor_core"] > 0 and rec["spill_bytes"] == 0 and rec["scalar_global"] == 0
    assert rec["config"]["SPLIT_N"] == spec.args["SPLIT_N"]


@pytest.mark.parametrize("dtype", ["fp16", "fp32"])
def test_resnet18_tucker2_halo_compiles_for_h100(dtype):
    from batude.kernels.aot import SHARED_LIMIT, Layer, compile_spec, layer_specs

    specs = layer_specs(Layer(c=64, s=128, hw=56, k=3, stride=2, r1=64, r2=32, batch=64), dtype, "halo")
    assert {s.kind for s in specs} == {"halo"} and len(specs) >= 2
    assert all(s.args["BLOCK_M"] >= s.args["TILE_H"] * s.args["TILE_W"] for s in specs)
    rec = compile_spec(_heuristic_spec(specs, "halo"))
    assert rec["ok"], rec["error"]
    assert 0 < rec["shared_bytes"] <= SHARED_LIMIT[90] and 0 < rec["registers"] <= 255
    assert {"TILE_H", "TILE_W", "HALO_BLOCK", "BLOCK_M"} <= set(rec["config"]) and rec["rp"] == 64


@pytest.mark.parametrize("mode, dtype", [("fused", "fp16"), ("split", "fp16"), ("chain", "fp16"), ("halo", "fp16"),
                                         ("halo", "fp32")])
def test_global_memory_moves_in_vectors_and_dots_use_tensor_cores(mode, dtype):
    """With channel counts and padded ranks multiples of 16 every global load and store is a 64/128-bit
    vector. The halo kernel's scratch traffic was one fp16 element per instruction (48 per thread and
    tile) while its per-program slot size was an unspecialised integer, so its alignment was unknown."""
    from batude.kernels.aot import Layer, compile_spec, layer_specs

    k = 1 if mode == "chain" else 3
    specs = layer_specs(Layer(c=128, s=128, hw=28, k=k, stride=1, r1=64, r2=40, batch=64), dtype, mode)
    for kind in sorted({s.kind for s in specs}):
        rec = compile_spec(_heuristic_spec(specs, kind))
        assert rec["ok"], rec["error"]
        assert rec["scalar_global"] == 0, (kind, rec["config"])
        # fp16 dots on tensor cores; fp32 is compiled with IEEE precision here (FMAs)
        assert (rec["tensor_core"] > 0) == (dtype == "fp16"), (kind, rec["tensor_core"])


def test_scalar_global_accesses_are_told_from_vectors_whatever_their_qualifiers():
    from batude.kernels.aot import _SCALAR_GLOBAL

    ptx = """@%p1 ld.global.b16 {%rs1}, [%rd1];
    ld.global.nc.f32 %f1, [%rd2];
    @%p2 st.global.L1::evict_last.b16 [%rd3], {%rs2};
    ld.global.v4.b32 {%r1, %r2, %r3, %r4}, [%rd4];
    @%p3 ld.global.L1::evict_last.v2.b32 {%r5, %r6}, [%rd5];
    st.global.v4.b32 [%rd6], {%r7, %r8, %r9, %r10};
    ld.shared.b16 %rs3, [%r11];
    ld.param.b64 %rd7, [k_param_0];"""
    assert _SCALAR_GLOBAL.findall(ptx) == ["ld.global.b16", "ld.global.nc.f32", "st.global.L1::evict_last.b16"]


def test_lowrank_chain_compiles_for_h100():
    from batude.kernels.aot import Layer, compile_spec, layer_specs

    specs = layer_specs(Layer(c=256, s=512, hw=14, k=1, stride=2, r1=61, r2=0, batch=64), "fp16", "chain")
    rec = compile_spec(_heuristic_spec(specs, "lowrank"))
    assert rec["ok"], rec["error"]
    assert rec["kind"] == "lowrank" and rec["rp"] == 64


def test_split_s_candidates_of_the_lowrank_chain_compile_for_h100_with_tensor_cores_and_no_spills():
    """ResNet-50's 512->2048 1x1 at 7x7, batch 1, R = 128: 4 row blocks of 16, the output channels split over programs."""
    from batude.kernels.aot import Layer, compile_spec, layer_specs

    specs = [s for s in layer_specs(Layer(c=512, s=2048, hw=7, k=1, stride=1, r1=128, r2=0, batch=1), "fp16", "chain")
             if s.args["SPLIT_S"] > 1]
    assert {s.args["SPLIT_S"] for s in specs} == {4, 8}
    rec = compile_spec(max(specs, key=lambda s: s.args["SPLIT_S"]))
    assert rec["ok"], rec["error"]
    assert rec["tensor_core"] > 0 and rec["spill_bytes"] == 0 and rec["scalar_global"] == 0
    assert rec["config"]["SPLIT_S"] == 8


def test_a_config_over_the_shared_memory_limit_is_reported_and_pruned():
    """(64, 32, 128) x 8 warps x 3 stages at R1p = 256 was an autotuning candidate until the sweep found it
    needs 245760 bytes of shared memory (an H100 block may have 232448); pruning now drops it."""
    from batude.kernels import _configs
    from batude.kernels.aot import Layer, compile_spec, layer_specs

    specs = layer_specs(Layer(c=256, s=512, hw=14, k=1, stride=2, r1=192, r2=0, batch=1), "fp16", "chain")
    big = (64, 32, 128, 8, 3)
    assert all((s.args["BLOCK_M"], s.args["BLOCK_C"], s.args["BLOCK_S"], s.num_warps, s.num_stages) != big for s in specs)
    spec = specs[-1]
    spec.args.update(BLOCK_M=64, BLOCK_C=32, BLOCK_S=128)
    spec.num_warps, spec.num_stages = 8, 3
    rec = compile_spec(spec)
    assert not rec["ok"] and rec["shared_bytes"] > 232448
    assert "shared memory" in rec["error"] and "sm_90 allows 232448" in rec["error"]
    assert (64, 32, 128, 1, 8, 3) in _configs._LOWRANK  # still a candidate elsewhere


def test_equal_specialisations_share_a_key_and_different_ones_do_not():
    from batude.kernels.aot import Layer, layer_specs, spec_key

    a = layer_specs(Layer(c=64, s=64, hw=56, k=3, stride=1, r1=32, r2=32, batch=64), "fp16", "fused")
    b = layer_specs(Layer(c=64, s=64, hw=56, k=3, stride=1, r1=32, r2=32, batch=32), "fp16", "fused")
    # M, H, W are not specialised: another batch compiles the same kernels (for the configs both keep)
    assert {spec_key(s) for s in a} & {spec_key(s) for s in b}
    c = layer_specs(Layer(c=64, s=64, hw=56, k=3, stride=1, r1=64, r2=32, batch=64), "fp16", "fused")
    assert not {spec_key(s) for s in a} & {spec_key(s) for s in c}  # another padded R1: another kernel


def test_arguments_that_do_not_match_the_kernel_are_refused():
    from batude.errors import BatudeError
    from batude.kernels.aot import Layer, compile_spec, layer_specs

    spec = layer_specs(Layer(c=64, s=64, hw=8, k=3, stride=1, r1=16, r2=16, batch=1), "fp16", "fused")[0]
    del spec.args["s_n"]
    spec.args["s_x"] = 1
    with pytest.raises(BatudeError, match=r"missing \['s_n'\], unknown \['s_x'\]"):
        compile_spec(spec)


def test_unknown_mode_and_a_chain_on_a_3x3_are_refused():
    from batude.errors import BatudeError
    from batude.kernels.aot import Layer, layer_specs

    layer = Layer(c=64, s=64, hw=8, k=3, stride=1, r1=16, r2=16, batch=1)
    with pytest.raises(BatudeError, match="unknown mode 'nope'"):
        layer_specs(layer, "fp16", "nope")
    with pytest.raises(BatudeError, match="1x1 low-rank pair"):
        layer_specs(layer, "fp16", "chain")


@pytest.mark.parametrize("dtype,r1,split", [("fp16", 512, 1), ("bf16", 256, 9), ("fp32", 256, 36)])
def test_the_gpu_tests_fixed_configs_fit_an_h100(dtype, r1, split):
    """The largest padded ranks the ``gpu`` tests launch with :func:`fixed_gpu_config` (split-K race test: fp32, 36)."""
    from batude.kernels.aot import Layer, compile_spec, layer_specs
    from kernel_cases import fixed_gpu_config

    spec = _heuristic_spec(layer_specs(Layer(c=512, s=512, hw=7, k=3, stride=1, r1=r1, r2=256, batch=1), dtype, "fused"),
                           "tucker2")
    fixed = fixed_gpu_config(spec.args["RP"], split)
    config = {k: v for k, v in fixed.items() if k not in ("pointwise", "halo")}
    spec.num_warps, spec.num_stages = config.pop("num_warps"), config.pop("num_stages")
    spec.args.update(config, BLOCK_M=16 if split > 1 else config["BLOCK_M"])
    rec = compile_spec(spec)
    assert rec["ok"], rec["error"]
    halo = _heuristic_spec(layer_specs(Layer(c=512, s=512, hw=7, k=3, stride=1, r1=r1, r2=256, batch=1), dtype, "halo"), "halo")
    config = dict(fixed["halo"])
    halo.num_warps, halo.num_stages = config.pop("num_warps"), config.pop("num_stages")
    halo.args.update(config, BLOCK_M=config["TILE_H"] * config["TILE_W"])
    rec = compile_spec(halo)
    assert rec["ok"], rec["error"]
