"""Fused Tucker-2 conv on NHWC activations: the public launcher :func:`tucker2_conv`.

A Tucker-2 conv is ``1x1 C->R2``, ``kxk R2->R1`` (stride, zero padding, dilation), ``1x1 R1->S``; cuDNN
runs it as three kernels with two intermediates in memory. Here it is one or two Triton kernels
(code in :mod:`batude.kernels._jit`), both ending in the same epilogue
``out = act((core_out @ U_out) * scale + shift + residual)`` (every part optional; ``shift`` carries
the bias and a folded BatchNorm; fp32 accumulation, output in the input dtype):

``fused``  one kernel. An implicit-GEMM core whose A-operand loader computes the first 1x1 on the fly
           (``x[tap pixels] @ U_in``), i.e. the first 1x1 is recomputed for each of the ``kh*kw`` taps
           (``kh*kw``x its FLOPs) in exchange for no intermediate and one launch. The last 1x1 runs on
           the ``[BLOCK_M, R1p]`` core tile held in registers.
``split``  two kernels: a 1x1 GEMM writes the ``R2p``-channel intermediate (NHWC), then the same core
           kernel loads it instead of recomputing it. The first 1x1 costs its FLOPs once.
``halo``   one persistent kernel on ``TILE_H x TILE_W`` output tiles: the first 1x1 is computed once
           for each input pixel of the tile's halo (the pixels its taps read: 100 for an 8x8 tile
           of a 3x3 stride-1 conv, 1.56x the tile, against ``fused``'s 9x), staged in the program's
           own slot of a scratch buffer (written and read back by the same block, so it stays in
           L1/L2), then the core reads its taps from there. One launch and no full intermediate in
           memory. No split-K: where tiles are few (batch 1, late stages) ``SPLIT_S`` programs may
           share a tile, each recomputing halo and core for its share of the output channels.
``auto``   on CUDA, the first call for a shape times the three (after their own autotuning, each as a
           replayed CUDA graph: GPU time, not launch overhead; the median of 5 rounds, the modes
           in turn) and caches the fastest (a mode that fails to compile or launch there is left
           out, with a warning); on an H200 (BENCHMARKS.md) ``split`` was the fastest kernel on 11
           of 14 ResNet-18 layer/batch pairs and ``halo`` never clearly so; where timing
           is impossible (CUDA-graph capture, interpreter) a heuristic picks ``fused`` for at most
           4096 output pixels and at most 64 input channels, else ``split`` (``halo`` only when timed).

Tiling: one program owns ``BLOCK_M`` output pixels and ``R1p / SPLIT_N`` core channels, loops
over ``kh*kw`` taps x ``BLOCK_K`` rank chunks, then over ``S`` in ``BLOCK_S`` tiles for the
epilogue, multiplying its core channels by their rows of ``u_out``. Few row blocks (batch 1, late
stages) would leave most SMs idle, so the reduction may be split over ``SPLIT_K`` programs and the
core's channels over ``SPLIT_N`` programs. Each of those reads only its share of ``core`` and
``u_out`` and holds a ``SPLIT_N`` times smaller accumulator; in ``fused`` mode each also
recomputes the first 1x1 for its taps (``SPLIT_N`` times in all: the autotuner weighs that). The
``SPLIT_K * SPLIT_N`` programs of a row block atomically accumulate into an fp32 workspace and the
last applies the epilogue (:mod:`batude.kernels._configs`). With ``SPLIT_K = 1`` each core channel
is complete before it is rounded to the activation dtype, as in the 3-conv chain. ``BLOCK_M``,
``BLOCK_K``, ``BLOCK_S``, ``SPLIT_K``, ``SPLIT_N``, warps and stages are autotuned on the GPU (the
untuned heuristic keeps ``SPLIT_N = 1``: no GPU has timed it yet), keyed on rows
``M = N*H'*W'``, ``H'``, ``W'``, ``C``, ``R2p``, ``S``, ``R1p``, kernel size, stride and mode
(and the dtype); the candidates are pruned per key.
The epilogue's four switches are runtime arguments, so one compiled kernel per (``R1p``, mode, tile
config, dtype) serves every epilogue (fewer compilations while autotuning). fp32 inputs use TF32
dots on the GPU when ``torch.backends.cudnn.allow_tf32`` (as cuDNN's convs do), IEEE otherwise; the
interpreter computes in IEEE fp32.

Ranks are zero-padded (:mod:`batude.kernels.pack`): ``R1`` to a power of two (it is a register tile
width), ``R2`` to a multiple of 16, so unaligned ranks pay the padded FLOPs (R1 = 245 runs as 256).

Limits: zero padding only; ``R1p <= 512``; fewer than 2**31 elements per tensor; inference only (no
autograd). The first call per shape autotunes (and ``auto`` times the modes), which synchronises:
make it outside CUDA-graph capture (warm up first, as CUDA-graph and ``torch.compile`` users do).
Split-K sums in fp32 atomics (run-to-run nondeterministic in the last bits) and shares one
self-cleaning workspace per device, as ``halo`` shares one scratch buffer per device and dtype:
launches on concurrent streams must not overlap.
"""

from __future__ import annotations

import functools
import logging
import statistics
from typing import Sequence

import torch

from batude.errors import BatudeError
from batude.kernels import _configs as cfg
from batude.kernels._runtime import autotune_enabled, check_device, interpreting, jit_module

__all__ = ["tucker2_conv", "tucker2_output_size", "auto_choice", "core_args", "MODES"]

log = logging.getLogger(__name__)

MODES = ("auto", "fused", "split", "halo")
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MAX_R = 512
_AUTO_CHOICE: dict[tuple, str] = {}
_HALO_SLOTS: dict[tuple, int] = {}  # scratch elements per program, per halo launch shape and config
FUSED_MAX_ROWS = 4096
FUSED_MAX_CHANNELS = 64


def _pair(v: int | Sequence[int], what: str) -> tuple[int, int]:
    t = (int(v), int(v)) if isinstance(v, int) else tuple(int(i) for i in v)
    if len(t) != 2:
        raise BatudeError(f"{what} must be an int or a pair of ints, got {v!r}")
    return t


def tucker2_output_size(h: int, w: int, kernel: tuple[int, int], stride: Sequence[int], padding: Sequence[int],
                        dilation: Sequence[int]) -> tuple[int, int]:
    """``(H', W')`` of a conv (PyTorch's formula)."""
    oh = (h + 2 * padding[0] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    ow = (w + 2 * padding[1] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    return oh, ow


def check_epilogue(x: torch.Tensor, s: int, out_hw: tuple[int, int], scale, shift, residual) -> None:
    """Shared checks of the optional epilogue operands."""
    for name, v in (("scale", scale), ("shift", shift)):
        if v is not None and (v.shape != (s,) or v.device != x.device or v.dtype not in (torch.float32, x.dtype)):
            raise BatudeError(f"{name} must be a ({s},) fp32 (or {x.dtype}) vector on {x.device}, got "
                              f"{tuple(v.shape)} {v.dtype} on {v.device}")
    if residual is not None:
        want = (x.shape[0], s, *out_hw)
        if tuple(residual.shape) != want or residual.dtype != x.dtype or residual.device != x.device:
            raise BatudeError(f"residual must be {want} {x.dtype} on {x.device} (the output's shape), got "
                              f"{tuple(residual.shape)} {residual.dtype}")
        if not residual.is_contiguous(memory_format=torch.channels_last):
            raise BatudeError("residual must be channels_last (NHWC); use .contiguous(memory_format=torch.channels_last)")


def check_activation(x: torch.Tensor) -> None:
    if x.dim() != 4 or x.dtype not in _DTYPES:
        raise BatudeError(f"x must be a 4-D fp16/bf16/fp32 tensor (N, C, H, W), got {tuple(x.shape)} {x.dtype}")
    if not x.is_contiguous(memory_format=torch.channels_last):
        raise BatudeError("x must be channels_last (NHWC); call x.contiguous(memory_format=torch.channels_last) "
                          "or model.to(memory_format=torch.channels_last)")
    check_device(x)
    if x.dtype == torch.bfloat16 and interpreting():
        raise BatudeError("Triton's interpreter computes bf16 dots wrongly (seen with triton 3.8); run bf16 on the GPU, "
                          "or fp16/fp32 under the interpreter")


def _check_factor(t: torch.Tensor, x: torch.Tensor, name: str, shape: tuple) -> None:
    if tuple(t.shape) != shape or t.dtype != x.dtype or t.device != x.device or not t.is_contiguous():
        raise BatudeError(f"{name} must be a contiguous {shape} {x.dtype} tensor on {x.device} (packed layout, see "
                          f"batude.kernels.pack), got {tuple(t.shape)} {t.dtype} on {t.device}")


def _check(x, u_in, core, u_out) -> tuple[int, int, int, int, int]:
    check_activation(x)
    if core.dim() != 4:
        raise BatudeError(f"core must be packed as (kh, kw, R2p, R1p), got {tuple(core.shape)}")
    kh, kw, rk, rp = core.shape
    c, s = x.shape[1], u_out.shape[-1]
    if rp < 16 or rp & (rp - 1) or rp > _MAX_R or rk % 16:
        raise BatudeError(f"padded ranks (R2p={rk}, R1p={rp}) must be a multiple of 16 and a power of two in [16, {_MAX_R}]; "
                          "pack the weights with batude.kernels.pack_tucker2")
    _check_factor(u_in, x, "u_in", (c, rk))
    _check_factor(core, x, "core", (kh, kw, rk, rp))
    _check_factor(u_out, x, "u_out", (rp, s))
    return kh, kw, rk, rp, s


def precision_for(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and not interpreting() and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "ieee" if dtype == torch.float32 else "tf32"  # the flag only matters for fp32 operands


def core_args(geo: tuple, src_strides: tuple[int, int, int] | None, flags: Sequence[bool]) -> dict:
    """The integer arguments of the core kernel (shared with :mod:`batude.kernels.aot`).

    ``src_strides``: the ``(n, h, w)`` element strides of the fused mode's NHWC input; None for the
    split mode's dense ``(N, H, W, R2p)`` intermediate. ``flags``: has scale, shift, residual; ReLU.
    """
    n, c, h, w, oh, ow, kh, kw, rk, rp, s, stride, padding, dilation = geo
    sn, sh, sw = src_strides if src_strides is not None else (h * w * rk, w * rk, rk)
    has_scale, has_shift, has_res, relu = (int(bool(f)) for f in flags)
    return dict(M=n * oh * ow, H=h, W=w, OH=oh, OW=ow, C=c, RK=rk, S=s, s_n=sn, s_h=sh, s_w=sw, KH=kh, KW=kw,
                STRIDE_H=stride[0], STRIDE_W=stride[1], PAD_H=padding[0], PAD_W=padding[1], DIL_H=dilation[0],
                DIL_W=dilation[1], HAS_SCALE=has_scale, HAS_SHIFT=has_shift, HAS_RES=has_res, RELU=relu)


def _launch_core(src, x, u_in, core, u_out, eps, out, geo, fuse: bool, config: dict | None) -> None:
    """One launch of the core kernel (``src`` is x when fused, the intermediate when split)."""
    n, c, h, w, oh, ow, kh, kw, rk, rp, s, stride, padding, dilation = geo
    m = n * oh * ow
    scale, shift, residual, relu = eps
    dummy = cfg.dummy_f32(x.device)
    tune = config is None and autotune_enabled()
    if config is None and not tune:
        config = cfg.heuristic_tucker2(m, c, rk, rp, kh * kw, interpreting())
    may_split = (tune and m <= cfg.SPLIT_K_MAX_ROWS) or (config is not None and cfg.parts(config) > 1)
    # always the real buffers (tiny when unused), so split and non-split launches share one kernel signature
    ws, cnt = cfg.workspace(x.device, m * s if may_split else 1, -(-m // 16) if may_split else 1)
    src_strides = (src.stride(0), src.stride(2), src.stride(3)) if fuse else None
    args = core_args(geo, src_strides, (scale is not None, shift is not None, residual is not None, relu))
    ptrs = (src, u_in, core, u_out, scale if scale is not None else dummy, shift if shift is not None else dummy,
            residual if residual is not None else out, out, ws, cnt)
    meta = dict(RP=rp, FUSE_FIRST=fuse, PRECISION=precision_for(x.dtype))
    if tune:
        grid = lambda META: (-(-m // META["BLOCK_M"]), cfg.parts(META))  # noqa: E731
        try:
            cfg.autotuned("tucker2")[grid](*ptrs, **args, **meta)
            return
        except cfg.out_of_resources():  # no candidate fits this GPU's shared memory: the heuristic, shrunk until it does
            config = cfg.heuristic_tucker2(m, c, rk, rp, kh * kw, False)
    launch = {"SPLIT_N": 1, **{k: v for k, v in config.items() if k not in ("pointwise", "halo")}}  # the other modes' parts
    if rp % launch["SPLIT_N"] or rp // launch["SPLIT_N"] < 16:  # tl.arange needs a power of two, tl.dot 16 columns
        raise BatudeError(f"config SPLIT_N={launch['SPLIT_N']} must divide the padded rank R1p={rp} into shares of at "
                          "least 16 channels; use a power of two up to R1p/16 (or leave it to the autotuner)")
    warps, stages = launch.pop("num_warps", 4), launch.pop("num_stages", 2)

    def run(tile: dict, warps: int, stages: int) -> None:
        grid = (-(-m // tile["BLOCK_M"]), cfg.parts(tile))
        jit_module()._tucker2_kernel[grid](*ptrs, **args, **meta, **tile, num_warps=warps, num_stages=stages)

    cfg.launch_fitting(("tucker2", x.device.index, x.dtype, rp, fuse, tuple(sorted(launch.items())), warps, stages),
                       run, launch, warps, stages)


def _launch_pointwise(x: torch.Tensor, u_in: torch.Tensor, t: torch.Tensor, config: dict | None) -> None:
    m, c, n_out = x.shape[0] * x.shape[2] * x.shape[3], x.shape[1], u_in.shape[1]
    prec = precision_for(x.dtype)
    if config is None and autotune_enabled():
        grid = lambda META: (-(-m // META["BLOCK_M"]), -(-n_out // META["BLOCK_N"]))  # noqa: E731
        cfg.autotuned("pointwise")[grid](x, u_in, t, M=m, C=c, N_OUT=n_out, PRECISION=prec)
        return
    launch = dict(config or cfg.heuristic_pointwise(m, n_out, interpreting()))
    warps, stages = launch.pop("num_warps", 4), launch.pop("num_stages", 2)

    def run(tile: dict, warps: int, stages: int) -> None:
        grid = (-(-m // tile["BLOCK_M"]), -(-n_out // tile["BLOCK_N"]))
        jit_module()._pointwise_kernel[grid](x, u_in, t, M=m, C=c, N_OUT=n_out, PRECISION=prec, **tile,
                                             num_warps=warps, num_stages=stages)

    cfg.launch_fitting(("pointwise", x.device.index, x.dtype, tuple(sorted(launch.items())), warps, stages),
                       run, launch, warps, stages)


def _launch_halo(x, u_in, core, u_out, eps, out, geo, config: dict | None) -> None:
    """One launch of the halo kernel (``config``: a fixed halo config, else autotuned or the heuristic).

    ``config["PROGRAMS"]`` caps the persistent grid's axis 0 (default ``HALO_PROGRAMS_PER_SM`` per SM,
    shared with the ``SPLIT_S`` programs of axis 1): tests use it to make programs loop over several
    tiles and reuse their slot.
    """
    n, c, h, w, oh, ow, kh, kw, rk, rp, s, stride, padding, dilation = geo
    scale, shift, residual, relu = eps
    dummy = cfg.dummy_f32(x.device)
    args = core_args(geo, (x.stride(0), x.stride(2), x.stride(3)), (scale is not None, shift is not None, residual is not None, relu))
    meta = dict(RP=rp, PRECISION=precision_for(x.dtype))
    shape = {**args, "RP": rp, "x_ptr": x}
    tune = config is None and autotune_enabled()
    if config is None and not tune:
        config = cfg.heuristic_halo(shape, interpreting())
    launch = dict(config or {})
    programs = launch.pop("PROGRAMS", None)
    # room for what runs: the tuner's candidates, and the heuristic it falls back to when none fits
    # (pruning the candidates per call would cost eager callers; the answer depends on the shape only)
    slot_key = (geo, x.dtype, tune, tuple(sorted(launch.items())))
    if slot_key not in _HALO_SLOTS:
        slot = cfg.halo_slot(shape, None if tune else [launch])
        _HALO_SLOTS[slot_key] = max(slot, cfg.halo_slot(shape, [cfg.heuristic_halo(shape, False)])) if tune else slot
    slot = _HALO_SLOTS[slot_key]
    # programs on both grid axes: at most HALO_PROGRAMS_PER_SM per SM (halo_grid divides that by SPLIT_S)
    most = programs * launch.get("SPLIT_S", 1) if programs is not None else cfg.HALO_PROGRAMS_PER_SM * cfg.num_sms()
    scratch = cfg.scratch(x.device, x.dtype, most * slot)
    ptrs = (x, u_in, core, u_out, scale if scale is not None else dummy, shift if shift is not None else dummy,
            residual if residual is not None else out, out, scratch)
    if tune:
        grid = lambda META: (cfg.halo_grid(n, oh, ow, META["TILE_H"], META["TILE_W"], split_s=META["SPLIT_S"]),  # noqa: E731
                             META["SPLIT_S"])
        try:
            cfg.autotuned("halo")[grid](*ptrs, **args, SLOT=slot, **meta)
            return
        except cfg.out_of_resources():  # no candidate fits this GPU's shared memory: the heuristic, shrunk until it does
            launch = cfg.heuristic_halo(shape, False)
    launch.setdefault("BLOCK_M", cfg.halo_block_m(launch["TILE_H"], launch["TILE_W"]))
    launch.setdefault("SPLIT_S", 1)
    warps, stages = launch.pop("num_warps", 4), launch.pop("num_stages", 2)

    def run(tile: dict, warps: int, stages: int) -> None:
        grid = (cfg.halo_grid(n, oh, ow, tile["TILE_H"], tile["TILE_W"], programs, tile["SPLIT_S"]), tile["SPLIT_S"])
        jit_module()._tucker2_halo_kernel[grid](*ptrs, **args, SLOT=slot, **meta, **tile, num_warps=warps, num_stages=stages)

    cfg.launch_fitting(("halo", x.device.index, x.dtype, rp, tuple(sorted(launch.items())), warps, stages, programs),
                       run, launch, warps, stages)


def _run(mode: str, x, u_in, core, u_out, eps, geo, config: dict | None) -> torch.Tensor:
    n, _, h, w, oh, ow, _, _, rk, _, s = geo[:11]
    out = torch.empty((n, s, oh, ow), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    if mode == "halo":
        _launch_halo(x, u_in, core, u_out, eps, out, geo, None if config is None else config.get("halo"))
        return out
    if mode == "fused":
        _launch_core(x, x, u_in, core, u_out, eps, out, geo, True, config)
        return out
    t = torch.empty((n, h, w, rk), dtype=x.dtype, device=x.device)
    _launch_pointwise(x, u_in, t, None if config is None else config.get("pointwise"))
    _launch_core(t, x, u_in, core, u_out, eps, out, geo, False, config)
    return out


class _CaptureFailed(RuntimeError):
    """A mode could not be captured in a CUDA graph, so it cannot be timed as a graphed model runs it."""


AUTO_CALLS, AUTO_ROUNDS, AUTO_REPLAYS = 10, 5, 3  # calls per captured graph; timing rounds; replays per sample


def _graphed(fn, calls: int = AUTO_CALLS):
    """``fn`` run ``calls`` times from one CUDA graph: the replay callable, what a graphed model pays.

    Timing eager calls would measure Python's launch overhead instead (tens of microseconds per Triton
    launch, as long as these kernels run), which favoured the one-kernel ``fused`` mode: on an H100
    ``auto`` picked it for 13 of 14 ResNet-18 shapes, 10 of them where ``split`` ran faster in CUDA
    graphs (up to 2x; BENCHMARKS.md, kernels).

    Raises:
        _CaptureFailed: the capture was refused; the caller's stream is current again.
    """
    caller = torch.cuda.current_stream()
    stream = torch.cuda.Stream()
    stream.wait_stream(caller)
    with torch.cuda.stream(stream):
        fn()  # autotuning and workspace allocation happen here, outside the capture
    caller.wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    try:  # thread_local: a capture here must not fail CUDA calls of other threads (data loaders, servers)
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            for _ in range(calls):
                fn()
    except RuntimeError as err:
        torch.cuda.set_stream(caller)  # a failed capture_end leaves the capture stream current
        raise _CaptureFailed(str(err)) from err
    graph.replay()  # warm: the first replay uploads the graph
    return graph.replay


def _sample_ms(replay, replays: int = AUTO_REPLAYS) -> float:
    """GPU milliseconds of ``replays`` back-to-back replays (CUDA events)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / replays


def _median_ms(replays: dict[str, object], rounds: int = AUTO_ROUNDS, sample=_sample_ms,
               calls: int = AUTO_CALLS) -> dict[str, float]:
    """Milliseconds per call of each graphed mode: the median over ``rounds`` samples, the modes taken in
    turn within each round, so a clock ramp or a busy spell weighs on every mode alike (one sample per
    mode, modes one after another, let the first H200 run pick ``halo`` at 1.46x ``split``'s time on
    a batch-1 shape, as measured per call by the benchmark)."""
    samples: dict[str, list[float]] = {mode: [] for mode in replays}
    for _ in range(rounds):
        for mode, replay in replays.items():
            samples[mode].append(sample(replay))
    return {mode: statistics.median(xs) / calls for mode, xs in samples.items()}


def _auto_key(x: torch.Tensor, geo: tuple) -> tuple:
    return (x.device.type, x.device.index, x.dtype) + tuple(geo[:12])


def _guess(geo: tuple) -> str:
    """The mode ``auto`` runs where it cannot time both (CUDA-graph capture, the interpreter).

    ``fused`` recomputes the first 1x1 for each tap, ``8 * C * R2`` extra MACs per output pixel: it
    pays only while launches dominate (few output pixels) and ``C`` is small. On an H100 (fp16, CUDA
    graphs, ResNet-18 shapes at rank ratio 0.5) ``fused`` won at batch 1 for C = 64 only, ``split``
    for C >= 128 and everywhere at batch 64.
    """
    n, c, _, _, oh, ow, kh, kw = geo[:8]
    return "fused" if kh * kw == 1 or (n * oh * ow <= FUSED_MAX_ROWS and c <= FUSED_MAX_CHANNELS) else "split"


def auto_choice(x: torch.Tensor, core: torch.Tensor, u_out: torch.Tensor, stride: int | Sequence[int] = 1,
                padding: int | Sequence[int] = 0, dilation: int | Sequence[int] = 1) -> tuple[str, bool]:
    """What ``mode="auto"`` runs for this call: ``(mode, measured)`` (False: the heuristic, nothing timed yet)."""
    stride, padding, dilation = _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")
    n, c, h, w = x.shape
    kh, kw, rk, rp = core.shape
    oh, ow = tucker2_output_size(h, w, (kh, kw), stride, padding, dilation)
    geo = (n, c, h, w, oh, ow, kh, kw, rk, rp, u_out.shape[1], stride)
    key = _auto_key(x, geo)
    return (_AUTO_CHOICE[key], True) if key in _AUTO_CHOICE else (_guess(geo), False)


def _auto_mode(x: torch.Tensor, geo: tuple, run) -> str:
    key = _auto_key(x, geo)
    if key in _AUTO_CHOICE:
        return _AUTO_CHOICE[key]
    guess = _guess(geo)
    if x.device.type != "cuda" or torch.cuda.is_current_stream_capturing():
        return guess
    replays: dict[str, object] = {}
    try:
        for mode in MODES[1:]:
            try:
                replays[mode] = _graphed(functools.partial(run, mode))
            except _CaptureFailed:
                raise
            except Exception as err:  # e.g. a mode that does not compile for this GPU: the others still serve
                log.warning("tucker2 auto mode for %s: %s failed (%s: %s); choosing among the others",
                            key, mode, type(err).__name__, err)
                if mode == MODES[-1] and not replays:
                    raise
        times = _median_ms(replays)
    except _CaptureFailed as err:  # all graphed or none: eager times would favour fused again
        log.debug("tucker2 auto mode for %s: CUDA-graph timing failed (%s); using the heuristic", key, err)
        times = {guess: 0.0}
    _AUTO_CHOICE[key] = min(times, key=times.get)
    log.debug("tucker2 auto mode for %s: %s (%s)", key, _AUTO_CHOICE[key], times)
    return _AUTO_CHOICE[key]


def tucker2_conv(x: torch.Tensor, u_in: torch.Tensor, core: torch.Tensor, u_out: torch.Tensor, *,
                 scale: torch.Tensor | None = None, shift: torch.Tensor | None = None,
                 residual: torch.Tensor | None = None, stride: int | Sequence[int] = 1,
                 padding: int | Sequence[int] = 0, dilation: int | Sequence[int] = 1, relu: bool = False,
                 mode: str = "auto", config: dict | None = None) -> torch.Tensor:
    """Tucker-2 conv with a fused epilogue on packed operands (:func:`batude.kernels.pack_tucker2`).

    Args:
        x: ``(N, C, H, W)`` fp16/bf16/fp32, channels_last; CUDA (or CPU under ``TRITON_INTERPRET=1``).
        u_in: ``(C, R2p)``; core: ``(kh, kw, R2p, R1p)``; u_out: ``(R1p, S)``; all in ``x``'s dtype.
        scale, shift: ``(S,)`` epilogue vectors (fp32 or ``x``'s dtype); residual: ``(N, S, H', W')``
            channels_last in ``x``'s dtype, added after scale/shift and before the ReLU.
        mode: ``fused``, ``split``, ``halo`` or ``auto`` (module docs). ``config``: fixed launch parameters
            instead of autotuning (tests, benchmarks); ``config["pointwise"]`` for the split's 1x1,
            ``config["halo"]`` for the halo mode (``TILE_H``, ``TILE_W``, ``HALO_BLOCK``, ``BLOCK_K``,
            ``BLOCK_C``, ``BLOCK_S``, warps, stages; optional ``SPLIT_S``, ``PROGRAMS``; the heuristic
            where absent).

    Returns:
        ``(N, S, H', W')`` in ``x``'s dtype, channels_last.
    """
    if mode not in MODES:
        raise BatudeError(f"unknown tucker2 mode '{mode}'; use one of {', '.join(MODES)}")
    kh, kw, rk, rp, s = _check(x, u_in, core, u_out)
    stride, padding, dilation = _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")
    if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        raise BatudeError(f"stride {stride} and dilation {dilation} must be >= 1, padding {padding} >= 0")
    n, c, h, w = x.shape
    oh, ow = tucker2_output_size(h, w, (kh, kw), stride, padding, dilation)
    if oh < 1 or ow < 1:
        raise BatudeError(f"the {kh}x{kw} kernel does not fit the {h}x{w} input with padding {padding}, dilation {dilation}")
    check_epilogue(x, s, (oh, ow), scale, shift, residual)
    if max(x.numel(), n * oh * ow * max(s, rp), n * h * w * rk) >= 2 ** 31:
        raise BatudeError("tensors of 2**31 or more elements are not supported by the kernels; split the batch")
    geo = (n, c, h, w, oh, ow, kh, kw, rk, rp, s, stride, padding, dilation)
    eps = (scale, shift, residual, bool(relu))

    def run(m: str) -> torch.Tensor:
        return _run(m, x, u_in, core, u_out, eps, geo, config)

    return run(_auto_mode(x, geo, run) if mode == "auto" else mode)
