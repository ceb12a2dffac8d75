"""Launch configurations: autotuned candidate lists (pruned per shape), one heuristic config, workspaces.

Autotuning (GPU only) is keyed on the GEMM shape (rows ``M`` = N*H'*W', channels, padded ranks,
output channels, kernel and output size, mode); the candidate lists below are pruned per key so
that a handful of configs is timed, not dozens: split-K only where there are too few row blocks
to fill the GPU, tiny row blocks only for small ``M``, and ``BLOCK_M * RP <= 16384`` fp32
accumulators per program. Under the interpreter (or with ``BATUDE_TRITON_AUTOTUNE=0``) one config
from :func:`heuristic_tucker2` / :func:`heuristic_lowrank` is used.
"""

from __future__ import annotations

import functools
import inspect
import logging

import torch

__all__ = ["SPLIT_K_MAX_ROWS", "MIN_SPLIT_N_WIDTH", "SPLITS", "parts", "heuristic_tucker2", "heuristic_lowrank", "heuristic_pointwise",
           "heuristic_halo", "autotuned", "tuned_configs", "tuned_summary", "candidates", "KERNELS", "workspace", "scratch", "num_sms", "next_pow2", "launch_fitting", "out_of_resources",
           "halo_block_m", "halo_rows", "halo_grid", "halo_slot"]

log = logging.getLogger(__name__)

SPLIT_K_MAX_ROWS = 4096  # split-K (and its fp32 workspace of M*S) only for at most this many output pixels
_MAX_ACC = 16384  # fp32 accumulator elements per program (BLOCK_M * RP)

# (BLOCK_M, BLOCK_K, BLOCK_S, SPLIT_K, SPLIT_N, num_warps, num_stages)
_TUCKER2 = [
    (16, 64, 64, 1, 1, 4, 2), (16, 64, 64, 4, 1, 4, 2), (16, 32, 64, 9, 1, 4, 2),
    (32, 64, 64, 1, 1, 4, 3), (32, 64, 64, 3, 1, 4, 3),
    (64, 64, 64, 1, 1, 4, 3), (64, 64, 128, 1, 1, 8, 3), (64, 32, 64, 1, 1, 8, 4),
    (128, 32, 64, 1, 1, 8, 3),
    # 8 warps for large accumulators (R1p >= 256: BLOCK_M * R1p >= 8192). Before these, R1p = 256 kept
    # only BLOCK_M = 16 candidates (shared memory and the warp rule pruned the rest), and those
    # layers ran 0.53-0.86x of the cuDNN chain on an H100 (BENCHMARKS.md).
    (16, 64, 64, 1, 1, 8, 2), (16, 32, 64, 9, 1, 8, 2), (32, 64, 64, 1, 1, 8, 3), (32, 32, 64, 3, 1, 8, 2),
    (64, 64, 64, 1, 1, 8, 2), (64, 32, 64, 1, 1, 8, 3),
    # the core's output channels split (SPLIT_N) where rows are few and R1p large (batch 1; 7x7 maps at
    # batch 64): with split-K alone every program of a row block reads all of u_out ([R1p, S]: 256 KB at
    # 256->512, fp16) and holds a [BLOCK_M, R1p] accumulator; split over N each reads 1/SPLIT_N of core
    # and u_out. On an H200 the split mode ran 0.65x (b64) and 0.86x (b1) of the cuDNN chain at
    # 512->512, 7x7 (BENCHMARKS.md, H200 runs). Kept for R1p / SPLIT_N >= MIN_SPLIT_N_WIDTH only.
    (16, 64, 64, 4, 4, 4, 2), (16, 64, 64, 1, 8, 4, 2), (32, 64, 64, 3, 4, 4, 3), (64, 64, 64, 1, 4, 4, 3),
    (64, 64, 64, 2, 2, 8, 3), (64, 32, 64, 1, 2, 8, 3),
    # tall tiles for many rows and a narrow core (R1p 32-64: the early stages at batch 64), as cuDNN's
    # 128x32 / 256x32 GEMM tiles; before, the only tile of 128 rows had 8 warps for a [128, 32]
    # accumulator, and split ran 0.67x of dense at 64->64, 56x56, batch 64 on the H200.
    (128, 32, 64, 1, 1, 4, 4), (128, 64, 64, 1, 1, 8, 3), (256, 32, 64, 1, 1, 8, 3),
]
MIN_SPLIT_N_WIDTH = 32  # core output channels per program when they are split (SPLIT_N > 1)
SPLITS = ("SPLIT_K", "SPLIT_N", "SPLIT_S")  # the meta-parameters that spread one tile's work over programs
_LARGE_ACC = 8192  # BLOCK_M * R1p from which a program needs 8 warps; 8-warp tiles of BLOCK_M < 64 only from half that
# (BLOCK_M, BLOCK_C, BLOCK_S, SPLIT_S, num_warps, num_stages)
_LOWRANK = [(16, 64, 64, 1, 4, 2), (32, 64, 64, 1, 4, 3), (64, 64, 64, 1, 4, 3), (64, 32, 128, 1, 8, 3), (128, 32, 64, 1, 8, 3),
            (16, 64, 64, 1, 8, 2), (32, 64, 64, 1, 8, 3), (64, 32, 64, 1, 8, 2),  # 8 warps for R1p >= 256, as for tucker2
            # the output channels split (SPLIT_S) where row blocks are few: ResNet-50's 7x7 and 14x14 1x1s at batch 1
            # are 4-13 row blocks of 16 on 132 SMs (28x28: 49); each program redoes x @ b for its rows (the autotuner
            # weighs that)
            (16, 64, 64, 4, 4, 2), (16, 64, 64, 8, 4, 2), (32, 64, 64, 4, 4, 3), (16, 64, 64, 4, 8, 2), (16, 64, 64, 8, 8, 2)]
# halo mode: (TILE_H, TILE_W, HALO_BLOCK, BLOCK_K, BLOCK_S, SPLIT_S, num_warps, num_stages); BLOCK_M = next_pow2(TILE_H * TILE_W).
# Square-ish tiles keep the halo small (8x8 at 3x3, stride 1: 100 input pixels for 64 outputs); 7- and
# 14-wide tiles fit the 7/14/28/56-pixel maps of ImageNet ResNets without masked columns. SPLIT_S > 1
# (small tiles only) spreads a tile's output channels over programs where there are few tiles.
_HALO = ([(th, tw, 64, 64, 64, 1, w, 2) for th, tw in ((8, 8), (4, 8), (4, 4), (7, 7), (4, 7), (2, 7), (4, 14), (2, 14),
                                                       (8, 16), (16, 16)) for w in (4, 8)]
         + [(th, tw, 64, 64, 64, ss, w, 2) for th, tw in ((4, 4), (2, 7), (4, 7), (4, 8)) for ss in (4, 8) for w in (4, 8)])
HALO_MIN_USE = 0.7  # tiles whose rows are at least this share real output pixels (image edges, pow2 padding)
HALO_KEEP = 6  # autotune at most this many halo configs per shape (the cheapest by :func:`_halo_cost`)
HALO_PROGRAMS_PER_SM = 2  # persistent grid: at most this many programs per SM, each with its own scratch slot
# (BLOCK_M, BLOCK_N, BLOCK_C, num_warps, num_stages)
_POINTWISE = [(64, 64, 64, 4, 3), (128, 64, 32, 4, 4), (128, 128, 32, 8, 3), (64, 128, 64, 4, 3),
              # narrow outputs (the split mode's R2p = 32 intermediate at 56x56, batch 64): no masked half tile
              (128, 32, 64, 4, 3), (256, 32, 64, 8, 3), (256, 64, 64, 8, 3)]


def next_pow2(v: int) -> int:
    return 1 << max(0, int(v) - 1).bit_length()


def parts(config: dict) -> int:
    """Programs that share one row block of the tucker2 kernel (grid axis 1): ``SPLIT_K * SPLIT_N``."""
    return config.get("SPLIT_K", 1) * config.get("SPLIT_N", 1)


def _clamp_pow2(v: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, next_pow2(v)))


@functools.lru_cache(maxsize=None)
def num_sms(index: int = 0) -> int:
    if not torch.cuda.is_available():
        return 132
    return torch.cuda.get_device_properties(index).multi_processor_count


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _element_size(a: dict, ptr: str) -> int:
    t = a.get(ptr)
    return t.element_size() if isinstance(t, torch.Tensor) else 2


def _fits_shared(rp: int, block_s: int, stages: int, element_size: int) -> bool:
    """False for the tile configs that need more shared memory than an H100 block may have (227 KB).

    Found by compiling every candidate for sm_90 (``benchmarks/kernels_aot.py``): with ``R1p >= 256``
    the epilogue's ``[R1p, BLOCK_S]`` tiles are multi-buffered like the main loop's, so
    ``BLOCK_S = 128`` at 3 stages, or 4 stages in fp32, overflow (245-344 KB).
    """
    if rp < 256:
        return True
    return block_s <= 64 and stages <= (3 if element_size <= 2 else 2)


def _warps_ok(bm: int, rp: int, warps: int) -> bool:
    """The ``[BLOCK_M, R1p]`` fp32 accumulator fits (at most ``_MAX_ACC``), with 8 warps where it is large
    and not on small tiles (8 warps on a tile of BLOCK_M < 64 and under 4096 accumulators idle)."""
    acc = bm * rp
    return acc <= _MAX_ACC and not (acc >= _LARGE_ACC and warps < 8) and not (acc < _LARGE_ACC // 2 and warps > 4 and bm < 64)


def _tucker2_ok(bm: int, bk: int, split: int, warps: int, a: dict, split_n: int = 1) -> bool:
    m, rp, sms = a["M"], a["RP"], num_sms()
    if split_n > 1 and rp // split_n < MIN_SPLIT_N_WIDTH:
        return False
    if not _warps_ok(bm, rp // split_n, warps):
        return False
    tiles = _cdiv(m, bm)
    if split * split_n > 1 and (m > SPLIT_K_MAX_ROWS or tiles * 2 > sms):
        return False
    if split > 1 and split > a["KH"] * a["KW"] * _cdiv(a["RK"], bk):
        return False
    if split_n > 1 and tiles * split * split_n > 4 * sms:  # more programs than SMs can take in a wave or so
        return False
    if bm <= 16 and _cdiv(m, 64) >= 2 * sms:
        return False
    return not (bm >= 128 and _cdiv(m, 128) < sms)


def _prune_tucker2(configs, named_args, **kwargs):
    import triton

    a = {**named_args, **kwargs}
    out, seen = [], set()
    for cfg in configs:
        kw = dict(cfg.kwargs)
        kw["BLOCK_K"] = min(kw["BLOCK_K"], _clamp_pow2(a["RK"], 16, 64))
        kw["BLOCK_C"] = _clamp_pow2(a["C"], 16, 64)
        if not _tucker2_ok(kw["BLOCK_M"], kw["BLOCK_K"], kw["SPLIT_K"], cfg.num_warps, a, kw["SPLIT_N"]):
            continue
        if not _fits_shared(a["RP"] // kw["SPLIT_N"], kw["BLOCK_S"], cfg.num_stages, _element_size(a, "src_ptr")):
            continue
        sig = (tuple(sorted(kw.items())), cfg.num_warps, cfg.num_stages)
        if sig not in seen:
            seen.add(sig)
            out.append(triton.Config(kw, num_warps=cfg.num_warps, num_stages=cfg.num_stages))
    return out or [_as_config(heuristic_tucker2(a["M"], a["C"], a["RK"], a["RP"], a["KH"] * a["KW"], False))]


def _split_s_ok(tiles: int, split: int, s: int, block_s: int) -> bool:
    """``SPLIT_S`` programs per row block (lowrank) or tile (halo) only where those leave most SMs idle, and at
    most one program per ``BLOCK_S`` tile of the ``s`` output channels (the lowrank kernel spreads the tiles
    evenly, so each of its programs gets one or more)."""
    return split == 1 or (tiles * 2 <= num_sms() and split <= _cdiv(s, block_s))


def _prune_lowrank(configs, named_args, **kwargs):
    import triton

    a = {**named_args, **kwargs}
    out, seen = [], set()
    for cfg in configs:
        kw = dict(cfg.kwargs)
        kw["BLOCK_C"] = min(kw["BLOCK_C"], _clamp_pow2(a["C"], 16, 64))
        bm = kw["BLOCK_M"]
        if not _warps_ok(bm, a["RP"], cfg.num_warps) or not _split_s_ok(_cdiv(a["M"], bm), kw["SPLIT_S"], a["S"], kw["BLOCK_S"]):
            continue
        if (bm <= 16 and _cdiv(a["M"], 64) >= 2 * num_sms()) or (bm >= 128 and _cdiv(a["M"], 128) < num_sms()):
            continue
        if not _fits_shared(a["RP"], kw["BLOCK_S"], cfg.num_stages, _element_size(a, "x_ptr")):
            continue
        sig = (tuple(sorted(kw.items())), cfg.num_warps, cfg.num_stages)
        if sig not in seen:
            seen.add(sig)
            out.append(triton.Config(kw, num_warps=cfg.num_warps, num_stages=cfg.num_stages))
    return out or [_as_config(heuristic_lowrank(a["M"], a["C"], a["RP"], a["S"], False))]


def halo_block_m(tile_h: int, tile_w: int) -> int:
    """Rows of a halo tile's GEMM: the tile's pixels rounded up to a power of two (at least 16, tl.dot's minimum)."""
    return max(16, next_pow2(tile_h * tile_w))


def halo_rows(tile_h: int, tile_w: int, kh: int, kw: int, stride: tuple[int, int], dilation: tuple[int, int],
              halo_block: int) -> int:
    """Input pixels a tile's taps read (its halo), rounded up to whole ``HALO_BLOCK`` chunks: the slot's rows."""
    pix = ((tile_h - 1) * stride[0] + (kh - 1) * dilation[0] + 1) * ((tile_w - 1) * stride[1] + (kw - 1) * dilation[1] + 1)
    return _cdiv(pix, halo_block) * halo_block


def _halo_tiles(n: int, oh: int, ow: int, tile_h: int, tile_w: int) -> int:
    return n * _cdiv(oh, tile_h) * _cdiv(ow, tile_w)


def halo_grid(n: int, oh: int, ow: int, tile_h: int, tile_w: int, programs: int | None = None, split_s: int = 1) -> int:
    """Grid axis 0 of a halo launch: one program per tile, at most ``programs`` (default: ``HALO_PROGRAMS_PER_SM``
    per SM, shared by the ``split_s`` programs of axis 1)."""
    cap = programs if programs is not None else max(1, HALO_PROGRAMS_PER_SM * num_sms() // split_s)
    return max(1, min(_halo_tiles(n, oh, ow, tile_h, tile_w), cap))


def _halo_use(oh: int, ow: int, tile_h: int, tile_w: int) -> float:
    """Share of a launch's GEMM rows that are real output pixels (the rest: past the image's edge, pow2 padding)."""
    covered = _cdiv(oh, tile_h) * tile_h * _cdiv(ow, tile_w) * tile_w
    return oh * ow / covered * tile_h * tile_w / halo_block_m(tile_h, tile_w)


def _halo_cost(a: dict, tile_h: int, tile_w: int, halo_block: int, split_s: int = 1) -> float:
    """A rough time model for ranking tiles: tiles per program (waves) x a program's MACs and elements moved per tile."""
    kh, kw, rk, rp, s, c = a["KH"], a["KW"], a["RK"], a["RP"], a["S"], a["C"]
    n = a["M"] // (a["OH"] * a["OW"])
    bm = halo_block_m(tile_h, tile_w)
    rows = halo_rows(tile_h, tile_w, kh, kw, (a["STRIDE_H"], a["STRIDE_W"]), (a["DIL_H"], a["DIL_W"]), halo_block)
    per_tile = (bm * kh * kw * rk * rp + bm * rp * s / split_s + rows * c * rk
                + 8 * (rows * (c + rk) + bm * (kh * kw * rk + s / split_s)))
    tiles = _halo_tiles(n, a["OH"], a["OW"], tile_h, tile_w)
    return _cdiv(tiles, halo_grid(n, a["OH"], a["OW"], tile_h, tile_w, split_s=split_s)) * per_tile


def _halo_ok(cfg_kw: dict, warps: int, a: dict) -> bool:
    th, tw = cfg_kw["TILE_H"], cfg_kw["TILE_W"]
    tiles = _halo_tiles(a["M"] // (a["OH"] * a["OW"]), a["OH"], a["OW"], th, tw)
    if not _split_s_ok(tiles, cfg_kw["SPLIT_S"], a["S"], cfg_kw["BLOCK_S"]):
        return False
    return _halo_use(a["OH"], a["OW"], th, tw) >= HALO_MIN_USE and _warps_ok(halo_block_m(th, tw), a["RP"], warps)


def _halo_meta(kw: dict, a: dict) -> dict:
    """A halo config completed for these arguments: ``BLOCK_M`` from the tile, chunk sizes clamped to the channels."""
    kw = dict(kw)
    kw["BLOCK_M"] = halo_block_m(kw["TILE_H"], kw["TILE_W"])
    kw["BLOCK_K"] = min(kw["BLOCK_K"], _clamp_pow2(a["RK"], 16, 64))
    kw["BLOCK_C"] = _clamp_pow2(a["C"], 16, 64)
    return kw


def _prune_halo(configs, named_args, **kwargs):
    import triton

    a = {**named_args, **kwargs}
    kept, seen = [], set()
    for cfg in configs:
        kw = _halo_meta(cfg.kwargs, a)
        if not _halo_ok(kw, cfg.num_warps, a) or not _fits_shared(a["RP"], kw["BLOCK_S"], cfg.num_stages, _element_size(a, "x_ptr")):
            continue
        sig = (tuple(sorted(kw.items())), cfg.num_warps, cfg.num_stages)
        if sig not in seen:
            seen.add(sig)
            kept.append((_halo_cost(a, kw["TILE_H"], kw["TILE_W"], kw["HALO_BLOCK"], kw["SPLIT_S"]), len(kept),
                         triton.Config(kw, num_warps=cfg.num_warps, num_stages=cfg.num_stages)))
    out = [c for _, _, c in sorted(kept, key=lambda t: t[:2])[:HALO_KEEP]]
    return out or [_as_config(heuristic_halo(a, False))]


def heuristic_halo(a: dict, interpret: bool) -> dict:
    """One config for :func:`_tucker2_halo_kernel` for the kernel arguments ``a`` (:func:`batude.kernels.tucker2.core_args`
    plus ``RP``): the cheapest usable tile by :func:`_halo_cost` (small blocks under the interpreter)."""
    if interpret:
        return dict(TILE_H=4, TILE_W=4, BLOCK_M=16, HALO_BLOCK=16, BLOCK_K=16, BLOCK_C=16, BLOCK_S=16, SPLIT_S=1,
                    num_warps=4, num_stages=1)
    best = None
    for th, tw, hb, bk, bs, split, warps, stages in _HALO:
        kw = _halo_meta(dict(TILE_H=th, TILE_W=tw, HALO_BLOCK=hb, BLOCK_K=bk, BLOCK_S=bs, SPLIT_S=split), a)
        if not (_warps_ok(kw["BLOCK_M"], a["RP"], warps) and (split == 1 or _halo_ok(kw, warps, a))):
            continue
        cost = _halo_cost(a, th, tw, hb, split) / min(1.0, _halo_use(a["OH"], a["OW"], th, tw) / HALO_MIN_USE)
        if best is None or cost < best[0]:
            best = (cost, dict(kw, num_warps=warps, num_stages=2 if a["RP"] >= 256 else stages))
    if best is None:  # R1p = 512 at 16 rows: the smallest tile, 8 warps
        best = (0.0, dict(_halo_meta(dict(TILE_H=4, TILE_W=4, HALO_BLOCK=64, BLOCK_K=64, BLOCK_S=64, SPLIT_S=1), a),
                          num_warps=8, num_stages=2))
    return best[1]


def halo_slot(a: dict, configs: list[dict] | None = None) -> int:
    """Scratch elements one program needs (its slot): the largest halo of ``configs`` times ``RK``.

    ``a``: the kernel's arguments (:func:`batude.kernels.tucker2.core_args`, ``RP``, ``x_ptr`` for
    its dtype). ``configs`` None: what autotuning may launch, the candidates pruned for ``a``.
    """
    if configs is None:
        configs = [c.kwargs for c in _prune_halo(candidates("halo")[0], a)]
    return a["RK"] * max(halo_rows(c["TILE_H"], c["TILE_W"], a["KH"], a["KW"], (a["STRIDE_H"], a["STRIDE_W"]),
                                   (a["DIL_H"], a["DIL_W"]), c["HALO_BLOCK"]) for c in configs)


def _prune_pointwise(configs, named_args, **kwargs):
    a = {**named_args, **kwargs}
    small = _cdiv(a["M"], 128) < num_sms()
    kept = [c for c in configs if not (small and c.kwargs["BLOCK_M"] >= 128) and c.kwargs["BLOCK_N"] <= max(64, next_pow2(a["N_OUT"]))]
    return kept or configs[:1]


def _as_config(d: dict):
    import triton

    d = dict(d)
    warps, stages = d.pop("num_warps"), d.pop("num_stages")
    return triton.Config(d, num_warps=warps, num_stages=stages)


def heuristic_tucker2(m: int, c: int, rk: int, rp: int, taps: int, interpret: bool) -> dict:
    """One config for :func:`_tucker2_kernel` (small blocks under the interpreter, for coverage and speed)."""
    if interpret:
        return dict(BLOCK_M=32, BLOCK_K=16, BLOCK_C=16, BLOCK_S=16, SPLIT_K=1, SPLIT_N=1, num_warps=4, num_stages=1)
    sms = num_sms()
    bm = 64 if m >= 64 * sms else (32 if m >= 16 * sms else 16)
    bm = min(bm, _MAX_ACC // rp)
    bk = _clamp_pow2(rk, 16, 64)
    tiles, steps = _cdiv(m, bm), taps * _cdiv(rk, bk)
    split = 1 if (m > SPLIT_K_MAX_ROWS or tiles * 2 > sms) else max(1, min(steps, sms // tiles, 9))
    # SPLIT_N stays 1 here: the heuristic is what runs untuned, and no GPU has timed SPLIT_N yet
    return dict(BLOCK_M=bm, BLOCK_K=bk, BLOCK_C=_clamp_pow2(c, 16, 64), BLOCK_S=64, SPLIT_K=split, SPLIT_N=1,
                num_warps=8 if bm * rp >= _LARGE_ACC else 4, num_stages=2)


def heuristic_lowrank(m: int, c: int, rp: int, s: int, interpret: bool) -> dict:
    """One config for :func:`_lowrank_kernel` (small blocks under the interpreter).

    Where row blocks leave most SMs idle, ``SPLIT_S`` doubles (up to 8) while :func:`_split_s_ok` allows it
    and the programs stay within one wave: the shares write disjoint output channels (no workspace, no
    atomics) and run side by side, so splitting adds only the recomputed ``x @ b`` on otherwise idle SMs.
    Unlike ``SPLIT_N`` in :func:`heuristic_tucker2` it is on before a GPU has timed it, because the latency
    tables time this heuristic (``benchmarks/latency_aware.py``) and one program per 16 rows of ResNet-50's
    7x7 maps would make them undervalue the kernel there.
    """
    if interpret:
        return dict(BLOCK_M=32, BLOCK_C=16, BLOCK_S=16, SPLIT_S=1, num_warps=4, num_stages=1)
    sms = num_sms()
    bm = min(64 if m >= 64 * sms else (32 if m >= 16 * sms else 16), _MAX_ACC // rp)
    tiles, split = _cdiv(m, bm), 1
    while split < 8 and tiles * split * 2 <= sms and _split_s_ok(tiles, split * 2, s, 64):
        split *= 2
    # 2 stages from R1p = 256 on: 3 overflow shared memory in fp32 at R1p = 512 (kernels_aot.py)
    return dict(BLOCK_M=bm, BLOCK_C=_clamp_pow2(c, 16, 64), BLOCK_S=64, SPLIT_S=split, num_warps=8 if bm * rp >= _LARGE_ACC else 4,
                num_stages=2 if rp >= 256 else 3)


def heuristic_pointwise(m: int, n_out: int, interpret: bool) -> dict:
    if interpret:
        return dict(BLOCK_M=32, BLOCK_N=16, BLOCK_C=16, num_warps=4, num_stages=1)
    return dict(BLOCK_M=64 if _cdiv(m, 128) < num_sms() else 128, BLOCK_N=_clamp_pow2(n_out, 16, 64), BLOCK_C=64,
                num_warps=4, num_stages=3)


def _bench_kwargs() -> dict:
    """Short autotuning runs (each config ~25 ms) where this triton lets us say so."""
    import triton

    params = inspect.signature(triton.autotune).parameters
    if "do_bench" in params:
        from triton.testing import do_bench

        return {"do_bench": lambda fn, quantiles=None: do_bench(fn, warmup=5, rep=20, quantiles=quantiles)}
    return {"warmup": 5, "rep": 20} if "warmup" in params else {}


def candidates(kind: str) -> tuple[list, list[str], object]:
    """``(configs, key, prune)`` of one kernel (``tucker2``, ``lowrank``, ``pointwise`` or ``halo``): the autotuning
    candidates, the arguments that key the tuning cache and the per-key pruning function."""
    import triton

    if kind == "tucker2":
        configs = [triton.Config(dict(BLOCK_M=bm, BLOCK_K=bk, BLOCK_C=64, BLOCK_S=bs, SPLIT_K=sk, SPLIT_N=sn), num_warps=w,
                                 num_stages=st) for bm, bk, bs, sk, sn, w, st in _TUCKER2]
        return configs, ["M", "OH", "OW", "C", "RK", "S", "KH", "KW", "STRIDE_H", "RP", "FUSE_FIRST"], _prune_tucker2
    if kind == "lowrank":
        configs = [triton.Config(dict(BLOCK_M=bm, BLOCK_C=bc, BLOCK_S=bs, SPLIT_S=ss), num_warps=w, num_stages=st)
                   for bm, bc, bs, ss, w, st in _LOWRANK]
        return configs, ["M", "OH", "OW", "C", "S", "STRIDE_H", "RP"], _prune_lowrank
    if kind == "halo":
        configs = [triton.Config(dict(TILE_H=th, TILE_W=tw, HALO_BLOCK=hb, BLOCK_K=bk, BLOCK_C=64, BLOCK_S=bs, SPLIT_S=ss),
                                 num_warps=w, num_stages=st) for th, tw, hb, bk, bs, ss, w, st in _HALO]
        return configs, ["M", "OH", "OW", "C", "RK", "S", "KH", "KW", "STRIDE_H", "RP"], _prune_halo
    if kind == "pointwise":
        configs = [triton.Config(dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_C=bc), num_warps=w, num_stages=st) for bm, bn, bc, w, st in _POINTWISE]
        return configs, ["M", "C", "N_OUT"], _prune_pointwise
    raise ValueError(f"unknown kernel kind {kind!r}")


KERNELS = {"tucker2": "_tucker2_kernel", "lowrank": "_lowrank_kernel", "pointwise": "_pointwise_kernel",
           "halo": "_tucker2_halo_kernel"}


@functools.lru_cache(maxsize=None)
def autotuned(kind: str):
    """The autotuned wrapper of one kernel (``tucker2``, ``lowrank``, ``pointwise`` or ``halo``), built on first use."""
    import triton

    from batude.kernels._runtime import jit_module

    configs, key, prune = candidates(kind)
    fn = getattr(jit_module(), KERNELS[kind])
    _BUILT[kind] = triton.autotune(configs=configs, key=key, prune_configs_by={"early_config_prune": prune}, **_bench_kwargs())(fn)
    return _BUILT[kind]


_BUILT: dict[str, object] = {}  # the autotuners :func:`autotuned` has built in this process


def _plain(v):
    return v if isinstance(v, (int, float, str, bool)) or v is None else str(v)


def tuned_configs() -> dict[str, list[dict]]:
    """What the autotuners chose in this process, per kernel: ``{kind: [{"key": {argument: value}, "dtypes": [...],
    "config": {meta-parameter: value, "num_warps": w, "num_stages": s}}]}``, one entry per tuned shape, for the
    kernels whose autotuner was built (none where autotuning is off or under the interpreter). Benchmarks
    record it, so a GPU run says which candidates won where (e.g. ``SPLIT_S`` on ResNet-50's 7x7 1x1s)."""
    out = {}
    for kind, tuner in sorted(_BUILT.items()):
        names = list(getattr(tuner, "keys", []))
        rows = []
        for key, best in getattr(tuner, "cache", {}).items():
            key = tuple(key) if isinstance(key, (tuple, list)) else (key,)
            if len(key) < len(names):  # not keyed as this reader expects (another triton): say nothing wrong
                continue
            rows.append({"key": {n: _plain(v) for n, v in zip(names, key)}, "dtypes": [_plain(v) for v in key[len(names):]],
                         "config": {**{k: _plain(v) for k, v in best.kwargs.items()}, "num_warps": best.num_warps,
                                    "num_stages": best.num_stages}})
        if rows:
            out[kind] = rows
    return out


def tuned_summary(tuned: dict[str, list[dict]]) -> list[str]:
    """One line per kernel of :func:`tuned_configs`: shapes tuned, and how often a split or a tile size won."""
    lines = []
    for kind, rows in tuned.items():
        parts = [f"{len(rows)} shape(s)"]
        for name in SPLITS:
            won = sum(r["config"].get(name, 1) > 1 for r in rows)
            if any(name in r["config"] for r in rows):
                parts.append(f"{name} > 1 won {won}")
        tiles = sorted({r["config"].get("BLOCK_M") for r in rows if r["config"].get("BLOCK_M")})
        if tiles:
            parts.append("BLOCK_M " + "/".join(map(str, tiles)))
        lines.append(f"autotuned {kind}: " + ", ".join(parts))
    return lines


_FITTED: dict[tuple, tuple[dict, int]] = {}
_SHRINK = ("BLOCK_S", "BLOCK_N", "BLOCK_K", "BLOCK_C", "HALO_BLOCK", "BLOCK_M")  # halved in this order, down to 16


def _smaller(meta: dict, stages: int) -> tuple[dict, int] | None:
    """The next smaller config: one pipeline stage less, then one tile dimension halved; None at the floor.

    A halo tile's ``BLOCK_M`` holds the whole ``TILE_H x TILE_W`` tile and is never halved."""
    if stages > 1:
        return meta, stages - 1
    for k in _SHRINK:
        if meta.get(k, 0) > 16 and not (k == "BLOCK_M" and "TILE_H" in meta):
            return {**meta, k: meta[k] // 2}, stages
    return None


def out_of_resources() -> type[Exception]:
    """Triton's ``OutOfResources``: raised when a kernel needs more shared memory than the GPU has."""
    from triton.runtime.errors import OutOfResources

    return OutOfResources


def launch_fitting(key: tuple, launch, meta: dict, warps: int, stages: int) -> None:
    """``launch(meta, warps, stages)``, shrunk until it fits where this GPU has less shared memory than it needs.

    Every heuristic config fits an H100/H200 block (227 KB), but not a GPU with 99 KB per block
    (``benchmarks/kernels_aot.py --arch 89``: large ranks, and fp32). Triton raises ``OutOfResources``
    when it loads such a kernel, before anything runs; the launch is then retried with one pipeline
    stage less, then with tiles halved (:func:`_smaller`), and what fits is remembered under ``key``.
    """
    meta, stages = _FITTED.get(key, (meta, stages))
    while True:
        try:
            launch(meta, warps, stages)
        except out_of_resources() as err:
            smaller = _smaller(meta, stages)
            if smaller is None:
                raise
            log.info("%s does not fit this GPU (%s); retrying with %s, %d stages", meta, err, *smaller)
            meta, stages = smaller
            continue
        _FITTED[key] = (meta, stages)
        return


_WORKSPACES: dict[tuple[str, int | None], list[tuple[torch.Tensor, torch.Tensor]]] = {}
_DUMMIES: dict[tuple[str, int | None], torch.Tensor] = {}


def workspace(device: torch.device, floats: int, counters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zeroed split-K buffers ``(fp32 >= floats, int32 >= counters)`` on ``device``.

    The kernels leave them zeroed again, so one pair serves every launch on a stream. Buffers are
    never freed (a captured CUDA graph may hold their addresses); growth is geometric. Not safe
    for concurrent launches on different streams.
    """
    key = (device.type, device.index)
    pool = _WORKSPACES.setdefault(key, [])
    if pool and pool[-1][0].numel() >= floats and pool[-1][1].numel() >= counters:
        return pool[-1]
    old_f, old_c = (pool[-1][0].numel(), pool[-1][1].numel()) if pool else (0, 0)
    pair = (torch.zeros(max(floats, 2 * old_f), dtype=torch.float32, device=device),
            torch.zeros(max(counters, 2 * old_c, 1024), dtype=torch.int32, device=device))
    pool.append(pair)
    return pair


_SCRATCH: dict[tuple[str, int | None, torch.dtype], list[torch.Tensor]] = {}


def scratch(device: torch.device, dtype: torch.dtype, elements: int) -> torch.Tensor:
    """A buffer of at least ``elements`` of ``dtype`` for the halo kernel's per-program slots.

    Its contents do not matter (each tile writes its slot before reading it); like :func:`workspace`
    it is never freed (a captured CUDA graph may hold its address), grows geometrically and is not
    safe for concurrent launches on different streams.
    """
    pool = _SCRATCH.setdefault((device.type, device.index, dtype), [])
    if not pool or pool[-1].numel() < elements:
        pool.append(torch.empty(max(elements, 2 * (pool[-1].numel() if pool else 0)), dtype=dtype, device=device))
    return pool[-1]


def dummy_f32(device: torch.device) -> torch.Tensor:
    """A 1-element fp32 tensor passed for absent scale/shift (keeps the kernel signature stable)."""
    key = (device.type, device.index)
    if key not in _DUMMIES:
        _DUMMIES[key] = torch.zeros(1, dtype=torch.float32, device=device)
    return _DUMMIES[key]
