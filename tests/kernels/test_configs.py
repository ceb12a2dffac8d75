"""Autotuning candidate pruning and the heuristic configs (pure Python; the timing itself needs a GPU)."""

import pytest

from kernel_cases import HAS_TRITON

pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")

SMS = 132


@pytest.fixture(autouse=True)
def _h100_sms(monkeypatch):
    from batude.kernels import _configs

    monkeypatch.setattr(_configs, "num_sms", lambda index=0: SMS)


def _tucker2_candidates():
    from batude.kernels import _configs

    return _configs.candidates("tucker2")[0]


def _args(m, c, rk, rp, taps=9):
    return {"M": m, "C": c, "RK": rk, "RP": rp, "KH": 3 if taps == 9 else 1, "KW": 3 if taps == 9 else 1}


@pytest.mark.parametrize("m,c,rk,rp", [(49, 512, 256, 256), (196, 256, 128, 128), (3136, 64, 32, 32),
                                       (64 * 3136, 64, 32, 32), (64 * 49, 512, 256, 256), (200704, 64, 16, 16)],
                         ids=["b1-7²", "b1-14²", "b1-56²", "b64-56²", "b64-7²", "b64-56²-r16"])
def test_tucker2_pruning_keeps_a_few_valid_configs(m, c, rk, rp):
    from batude.kernels import _configs

    kept = _configs._prune_tucker2(_tucker2_candidates(), _args(m, c, rk, rp))
    assert 1 <= len(kept) <= len(_configs._TUCKER2)
    for cfg in kept:
        kw = cfg.kwargs
        assert kw["BLOCK_M"] * rp // kw["SPLIT_N"] <= 16384 and kw["BLOCK_K"] <= max(16, rk) and kw["BLOCK_C"] <= max(16, c)
        if kw["SPLIT_K"] * kw["SPLIT_N"] > 1:
            assert m <= _configs.SPLIT_K_MAX_ROWS and -(-m // kw["BLOCK_M"]) * 2 <= SMS
        if kw["SPLIT_N"] > 1:  # each program keeps at least MIN_SPLIT_N_WIDTH core channels, in at most ~4 waves
            assert rp // kw["SPLIT_N"] >= _configs.MIN_SPLIT_N_WIDTH
            assert -(-m // kw["BLOCK_M"]) * kw["SPLIT_K"] * kw["SPLIT_N"] <= 4 * SMS
    splits = {cfg.kwargs["SPLIT_K"] for cfg in kept}
    split_n = {cfg.kwargs["SPLIT_N"] for cfg in kept}
    if m <= 200:  # a handful of row blocks: split-K candidates must be there to fill the GPU
        assert max(splits) > 1
    if m <= 64 * 49 and rp >= 128:  # few rows, a wide core: the core's channels may be split too
        assert max(split_n) > 1
    if m >= 64 * 3136 // 2:
        assert splits == split_n == {1} and min(cfg.kwargs["BLOCK_M"] for cfg in kept) >= 32


def test_lowrank_and_pointwise_pruning():
    import triton

    from batude.kernels import _configs

    lowrank = _configs.candidates("lowrank")[0]
    for m, rp, s in ((49, 512, 2048), (49, 128, 2048), (196, 64, 1024), (64 * 784, 64, 512), (49, 128, 64)):
        kept = _configs._prune_lowrank(lowrank, {"M": m, "C": 256, "RP": rp, "S": s})
        assert kept and all(c.kwargs["BLOCK_M"] * rp <= 16384 for c in kept)
        split = {c.kwargs["SPLIT_S"] for c in kept}
        if m <= 196 and s > 64:  # few row blocks: the output channels may be split, each program keeps a BLOCK_S tile
            assert max(split) > 1 and all(c.kwargs["SPLIT_S"] * c.kwargs["BLOCK_S"] <= s for c in kept)
        else:  # many row blocks, or one BLOCK_S tile of output channels in all: never split
            assert split == {1}
    pointwise = [triton.Config(dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_C=bc), num_warps=w, num_stages=st)
                 for bm, bn, bc, w, st in _configs._POINTWISE]
    assert all(c.kwargs["BLOCK_M"] < 128 for c in _configs._prune_pointwise(pointwise, {"M": 196, "N_OUT": 32}))


@pytest.mark.parametrize("m,c,rp,s,split", [(49, 512, 128, 2048, 8), (49, 2048, 256, 512, 8), (196, 1024, 128, 256, 4),
                                             (64 * 49, 512, 128, 2048, 1), (49, 256, 64, 64, 1)],
                         ids=["b1-7²-expand", "b1-7²-reduce", "b1-14²-reduce", "b64-7²", "one-S-tile"])
def test_lowrank_heuristic_splits_the_output_channels_where_row_blocks_are_few(m, c, rp, s, split):
    from batude.kernels import _configs

    cfg = _configs.heuristic_lowrank(m, c, rp, s, interpret=False)
    assert cfg["SPLIT_S"] == split
    assert -(-m // cfg["BLOCK_M"]) * split <= SMS and split * cfg["BLOCK_S"] <= max(s, cfg["BLOCK_S"])  # one wave, a tile each
    assert _configs.heuristic_lowrank(m, c, rp, s, interpret=True)["SPLIT_S"] == 1


@pytest.mark.parametrize("m,rp,taps", [(49, 256, 9), (3136, 32, 9), (200704, 64, 9), (98, 512, 1)])
def test_heuristic_configs(m, rp, taps):
    from batude.kernels import _configs

    cfg = _configs.heuristic_tucker2(m, 128, rp, rp, taps, interpret=False)
    assert cfg["BLOCK_M"] * rp <= 16384 and cfg["num_warps"] in (4, 8)
    tiles = -(-m // cfg["BLOCK_M"])
    assert (cfg["SPLIT_K"] > 1) == (m <= _configs.SPLIT_K_MAX_ROWS and tiles * 2 <= SMS and taps * -(-rp // cfg["BLOCK_K"]) > 1)
    assert cfg["SPLIT_K"] <= taps * -(-rp // cfg["BLOCK_K"])
    assert _configs.heuristic_tucker2(m, 16, 16, 16, taps, interpret=True)["SPLIT_K"] == 1


def test_autotuned_wrappers_build_without_a_gpu():
    from batude.kernels import _configs
    from batude.kernels._runtime import interpreting

    if interpreting():
        pytest.skip("the interpreter never autotunes")
    for kind in ("tucker2", "lowrank", "pointwise"):
        tuned = _configs.autotuned(kind)
        assert len(tuned.configs) >= 4 and tuned.keys
        # what tuned_configs reads: the cache, keyed on the key arguments in this order (then the tensors' dtypes)
        assert isinstance(tuned.cache, dict) and list(tuned.keys) == _configs.candidates(kind)[1]


def test_a_launch_that_does_not_fit_is_retried_smaller_and_remembered():
    """What a GPU with less shared memory than a config needs gets (the retry logic; Triton raises ``OutOfResources``
    when it loads the kernel, before anything runs)."""
    from triton.runtime.errors import OutOfResources

    from batude.kernels import _configs

    tried = []

    def launch(meta, warps, stages):
        tried.append((dict(meta), stages))
        need = stages * (meta["BLOCK_M"] * meta["BLOCK_K"] + meta["BLOCK_K"] * 64) * 2 + meta["BLOCK_S"] * 64 * 2
        if need > 15000:
            raise OutOfResources(need, 15000, "shared memory")

    meta = dict(BLOCK_M=64, BLOCK_K=64, BLOCK_C=64, BLOCK_S=64, SPLIT_K=1)
    key = ("test", 0, "fp16", 64, tuple(sorted(meta.items())), 4, 3)
    _configs._FITTED.pop(key, None)
    _configs.launch_fitting(key, launch, meta, 4, 3)
    assert [s for _, s in tried[:3]] == [3, 2, 1]  # stages first
    assert tried[3][0]["BLOCK_S"] == 32 and tried[-1][0]["BLOCK_S"] == 16  # then BLOCK_S, before BLOCK_K
    final = tried[-1]
    assert final[0]["BLOCK_K"] == 32 and final[0]["BLOCK_M"] == 64 and final[1] == 1
    tried.clear()
    _configs.launch_fitting(key, launch, meta, 4, 3)
    assert tried == [final]  # remembered: no second search

    def never(meta, warps, stages):
        raise OutOfResources(10 ** 9, 20000, "shared memory")

    with pytest.raises(OutOfResources):
        _configs.launch_fitting(("never",), never, meta, 4, 3)


@pytest.mark.parametrize("n,c,hw,k,mode", [(1, 64, 56, 3, "fused"), (1, 64, 28, 3, "fused"), (1, 128, 28, 3, "split"),
                                           (1, 512, 7, 3, "split"), (64, 64, 56, 3, "split"), (64, 512, 7, 3, "split"),
                                           (64, 512, 7, 1, "fused")])
def test_auto_mode_heuristic_follows_the_h100_measurements(n, c, hw, k, mode):
    """Where ``auto`` cannot time both modes: ``fused`` only for few pixels and few input channels (or a 1x1 core)."""
    from batude.kernels import tucker2

    geo = (n, c, hw, hw, hw, hw, k, k, c // 2, c // 2, c, (1, 1))
    assert tucker2._guess(geo) == mode


@pytest.mark.parametrize("m", [49, 64 * 49, 64 * 196], ids=["b1-7²", "b64-7²", "b64-14²"])
def test_large_ranks_get_tiles_beyond_16_rows_with_8_warps(m):
    """R1p = 256 once kept only BLOCK_M = 16 candidates; those layers were the H100's slowest (0.53-0.86x of cuDNN)."""
    from batude.kernels import _configs

    kept = _configs._prune_tucker2(_tucker2_candidates(), _args(m, 512, 256, 256))
    assert any(c.kwargs["BLOCK_M"] >= 32 and c.num_warps == 8 for c in kept)
    assert all(c.num_warps == 8 for c in kept if c.kwargs["BLOCK_M"] * 256 // c.kwargs["SPLIT_N"] >= 8192)
    kept = _configs._prune_lowrank(_configs.candidates("lowrank")[0], {"M": m, "C": 512, "RP": 256, "S": 512})
    assert any(c.kwargs["BLOCK_M"] >= 32 and c.num_warps == 8 for c in kept)
    small = _configs._prune_tucker2(_tucker2_candidates(), _args(m, 64, 32, 32))
    assert not any(c.num_warps == 8 and c.kwargs["BLOCK_M"] < 64 for c in small)  # 8 warps only where tiles are big


def test_auto_mode_times_every_mode_and_falls_back_to_the_heuristic_when_capture_fails(monkeypatch):
    """The mode choice logic around the (GPU-only) CUDA-graph timing: the faster mode, or the guess, cached per shape."""
    from types import SimpleNamespace

    from batude.kernels import tucker2

    x = SimpleNamespace(device=SimpleNamespace(type="cuda", index=0), dtype="fp16")
    monkeypatch.setattr(tucker2.torch.cuda, "is_current_stream_capturing", lambda: False)
    monkeypatch.setattr(tucker2, "_AUTO_CHOICE", {})
    geo = (64, 512, 7, 7, 7, 7, 3, 3, 256, 256, 512, (1, 1))  # the guess: split
    def graphed(fn):  # runs fn once, as the capture's warm-up does (a mode that fails, fails here)
        fn()
        return fn  # the "replay" returns the mode's time
    monkeypatch.setattr(tucker2, "_graphed", graphed)
    monkeypatch.setattr(tucker2, "_median_ms", lambda replays: {mode: replay() for mode, replay in replays.items()})
    assert tucker2._auto_mode(x, geo, lambda mode: {"fused": 1.0, "split": 2.0, "halo": 1.5}[mode]) == "fused"  # measured beats the guess
    assert tucker2._auto_mode(x, geo, lambda mode: pytest.fail("timed twice")) == "fused"  # cached per shape

    def refuse(fn):
        raise tucker2._CaptureFailed("operation not permitted when stream is capturing")

    def broken(mode):  # a mode that fails on this GPU is left out; the others are still timed
        if mode == "halo":
            raise RuntimeError("does not compile")
        return {"fused": 2.0, "split": 1.0}[mode]

    third = (64, 256, 14, 14, 14, 14, 3, 3, 128, 128, 256, (1, 1))
    assert tucker2._auto_mode(x, third, broken) == "split"

    def all_broken(mode):
        raise RuntimeError(f"{mode} does not compile")

    with pytest.raises(RuntimeError, match="halo does not compile"):
        tucker2._auto_mode(x, (2, *third[1:]), all_broken)

    monkeypatch.setattr(tucker2, "_graphed", refuse)
    other = (1, 64, 56, 56, 56, 56, 3, 3, 32, 32, 64, (1, 1))  # the guess: fused
    assert tucker2._auto_mode(x, other, lambda mode: None) == "fused"
    assert tucker2._AUTO_CHOICE[tucker2._auto_key(x, other)] == "fused"


def test_auto_mode_timing_takes_the_modes_in_turn_and_keeps_each_ones_median():
    """A slow spell (a clock ramp, another process) hits every mode in its round, and one outlier
    sample does not decide: per-call medians over the rounds (the GPU sampling is replaced here)."""
    from batude.kernels import tucker2

    order, clock = [], iter([9.0, 9.5, 9.9,  2.0, 1.0, 1.8,  2.1, 1.1, 9.0,  2.0, 1.2, 1.7,  1.9, 40.0, 1.8])

    def sample(replay):
        order.append(replay)
        return next(clock)

    times = tucker2._median_ms({"fused": "F", "split": "S", "halo": "H"}, rounds=5, sample=sample, calls=10)
    assert order == ["F", "S", "H"] * 5  # interleaved: round by round, not mode by mode
    assert times == pytest.approx({"fused": 0.20, "split": 0.12, "halo": 0.18})  # medians / 10 calls per graph
    assert min(times, key=times.get) == "split"  # means would pick fused (split's 40 ms outlier, the slow round)


def _halo_args(n, c, hw, stride, rk, rp, s, k=3):
    from batude.kernels.tucker2 import core_args, tucker2_output_size

    oh, ow = tucker2_output_size(hw, hw, (k, k), (stride,) * 2, (k // 2,) * 2, (1, 1))
    geo = (n, c, hw, hw, oh, ow, k, k, rk, rp, s, (stride,) * 2, (k // 2,) * 2, (1, 1))
    return {**core_args(geo, (hw * hw * c, hw * c, c), (False, True, True, True)), "RP": rp}


def _halo_candidates():
    from batude.kernels import _configs

    return _configs.candidates("halo")[0]


HALO_SHAPES = [(n, c, hw, st, c // 2, s // 2, s) for n in (1, 64) for c, s, hw, st in
               [(64, 64, 56, 1), (64, 128, 56, 2), (128, 128, 28, 1), (256, 512, 14, 2), (512, 512, 7, 1), (16, 16, 28, 1)]]


@pytest.mark.parametrize("n,c,hw,stride,rk,r1,s", HALO_SHAPES, ids=[f"b{h[0]}-{h[1]}to{h[6]}-{h[2]}-s{h[3]}" for h in HALO_SHAPES])
def test_halo_pruning_and_heuristic_keep_tiles_that_fit_the_map(n, c, hw, stride, rk, r1, s):
    from batude.kernels import _configs

    rp = _configs.next_pow2(r1)
    a = _halo_args(n, c, hw, stride, rk, rp, s)
    kept = _configs._prune_halo(_halo_candidates(), a)
    heuristic = _configs.heuristic_halo(a, False)
    assert 1 <= len(kept) <= _configs.HALO_KEEP
    for kw, warps in [(c.kwargs, c.num_warps) for c in kept] + [(heuristic, heuristic["num_warps"])]:
        th, tw, bm = kw["TILE_H"], kw["TILE_W"], kw["BLOCK_M"]
        assert bm >= th * tw and bm == _configs.next_pow2(bm) and bm * rp <= 16384
        assert _configs._halo_use(a["OH"], a["OW"], th, tw) >= _configs.HALO_MIN_USE  # few masked rows
        assert kw["BLOCK_K"] <= max(16, rk) and kw["BLOCK_C"] <= max(16, c)
        assert warps == 8 or bm * rp < 8192
        if kw["SPLIT_S"] > 1:  # only where tiles are too few to fill the GPU, with a BLOCK_S tile per program
            assert n * -(-a["OH"] // th) * -(-a["OW"] // tw) * 2 <= SMS and kw["SPLIT_S"] * kw["BLOCK_S"] <= -(-s // 64) * 64
    if n == 64:
        assert all(c.kwargs["SPLIT_S"] == 1 for c in kept)
    if (n, c, hw) == (1, 512, 7):  # 4 tiles of 4x4: the output channels are split to occupy more SMs
        assert heuristic["SPLIT_S"] > 1
    # the slot the launcher allocates covers every candidate's halo
    slot = _configs.halo_slot(a)
    for kw in [c.kwargs for c in kept]:
        rows = _configs.halo_rows(kw["TILE_H"], kw["TILE_W"], 3, 3, (stride,) * 2, (1, 1), kw["HALO_BLOCK"])
        assert rows * rk <= slot
        assert rows >= ((kw["TILE_H"] - 1) * stride + 3) * ((kw["TILE_W"] - 1) * stride + 3)


def test_halo_tile_model():
    from batude.kernels import _configs

    assert _configs.halo_block_m(8, 8) == 64 and _configs.halo_block_m(7, 7) == 64 and _configs.halo_block_m(2, 3) == 16
    assert _configs.halo_rows(8, 8, 3, 3, (1, 1), (1, 1), 64) == 128  # 10x10 = 100 pixels in two 64-row chunks
    assert _configs.halo_rows(8, 8, 3, 3, (2, 2), (1, 1), 64) == 320  # 17x17 = 289
    assert _configs._halo_use(56, 56, 8, 8) == 1.0 and _configs._halo_use(7, 7, 8, 8) == 49 / 64
    assert _configs.halo_grid(64, 56, 56, 8, 8) == 2 * SMS and _configs.halo_grid(1, 7, 7, 4, 4) == 4
    assert _configs.halo_grid(64, 56, 56, 8, 8, programs=3) == 3 and _configs.halo_grid(64, 56, 56, 8, 8, split_s=4) == SMS // 2
    # launch_fitting shrinks a halo config without ever cutting BLOCK_M below its tile
    meta = dict(TILE_H=8, TILE_W=8, BLOCK_M=64, HALO_BLOCK=64, BLOCK_K=64, BLOCK_C=64, BLOCK_S=64)
    stages, seen = 2, []
    while (step := _configs._smaller(meta, stages)) is not None:
        meta, stages = step
        seen.append(meta["BLOCK_M"])
    assert set(seen) == {64} and meta["HALO_BLOCK"] == 16 and meta["BLOCK_S"] == 16


def test_halo_scratch_grows_and_is_reused():
    import torch

    from batude.kernels import _configs

    dev = torch.device("cpu")
    a = _configs.scratch(dev, torch.float16, 1000)
    assert a.numel() >= 1000 and a.dtype == torch.float16
    assert _configs.scratch(dev, torch.float16, 10) is a
    b = _configs.scratch(dev, torch.float16, a.numel() + 1)
    assert b.numel() >= 2 * a.numel() and _configs.scratch(dev, torch.float32, 10).dtype == torch.float32


@pytest.mark.parametrize("m,c,rp", [(64 * 3136, 64, 32), (64 * 784, 128, 64)], ids=["b64-56²-r32", "b64-28²-r64"])
def test_many_rows_and_a_narrow_core_get_tall_tiles(m, c, rp):
    """Early stages at batch 64 (the H200's worst kernel/dense ratios): tiles of 128 and 256 rows are candidates,
    each with the warps its accumulator needs; the pointwise kernel gets 32-wide tiles for a 32-channel output."""
    from batude.kernels import _configs

    kept = _configs._prune_tucker2(_tucker2_candidates(), _args(m, c, rp, rp))
    tall = {(cfg.kwargs["BLOCK_M"], cfg.num_warps) for cfg in kept if cfg.kwargs["BLOCK_M"] >= 128}
    assert 256 in {bm for bm, _ in tall} and all(warps == 8 for bm, warps in tall if bm * rp >= 8192)
    assert (128, 4) in tall if rp == 32 else (128, 8) in tall
    pointwise = _configs._prune_pointwise(_configs.candidates("pointwise")[0], {"M": m, "C": c, "N_OUT": rp})
    assert (rp == 32) <= any(cfg.kwargs["BLOCK_N"] == 32 and cfg.kwargs["BLOCK_M"] >= 128 for cfg in pointwise)
    small = _configs._prune_tucker2(_tucker2_candidates(), _args(49, c, rp, rp))  # batch 1, 7x7: no tall tiles
    assert max(cfg.kwargs["BLOCK_M"] for cfg in small) <= 64


def test_tuned_configs_read_what_each_autotuner_chose(monkeypatch):
    """The autotuners' caches (keyed as Triton keys them: the key arguments, then the tensors' dtypes) as JSON rows."""
    import json
    import types

    import triton

    from batude.kernels import _configs

    monkeypatch.setattr(_configs, "_BUILT", {})
    assert _configs.tuned_configs() == {} and _configs.tuned_summary({}) == []
    keys = ["M", "OH", "OW", "C", "S", "STRIDE_H", "RP"]
    won = {(49, 7, 7, 512, 2048, 1, 128, "torch.float16"): triton.Config(dict(BLOCK_M=16, BLOCK_C=64, BLOCK_S=64, SPLIT_S=8),
                                                                         num_warps=4, num_stages=2),
           (3136, 7, 7, 512, 2048, 1, 128, "torch.float16"): triton.Config(dict(BLOCK_M=64, BLOCK_C=64, BLOCK_S=64, SPLIT_S=1),
                                                                           num_warps=4, num_stages=3)}
    _configs._BUILT["lowrank"] = types.SimpleNamespace(keys=keys, cache=won)
    _configs._BUILT["halo"] = types.SimpleNamespace(keys=["M"], cache={})  # built, never launched: left out
    tuned = _configs.tuned_configs()
    assert list(tuned) == ["lowrank"] and len(tuned["lowrank"]) == 2
    first = tuned["lowrank"][0]
    assert first["key"] == dict(zip(keys, (49, 7, 7, 512, 2048, 1, 128))) and first["dtypes"] == ["torch.float16"]
    assert first["config"] == dict(BLOCK_M=16, BLOCK_C=64, BLOCK_S=64, SPLIT_S=8, num_warps=4, num_stages=2)
    assert json.loads(json.dumps(tuned)) == tuned
    assert _configs.tuned_summary(tuned) == ["autotuned lowrank: 2 shape(s), SPLIT_S > 1 won 1, BLOCK_M 16/64"]
