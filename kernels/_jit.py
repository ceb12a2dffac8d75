"""The Triton code itself (imported only by the launchers, never at ``import batude``).

Four kernels and three helpers; the launchers in :mod:`batude.kernels.tucker2` and
:mod:`batude.kernels.lowrank` own all checks, padding conventions and grids. Conventions shared by
all of them (the packed layouts come from :mod:`batude.kernels.pack`):

* activations are NHWC: row ``m`` of a GEMM is output pixel ``(n, oh, ow)``, channels are unit-stride;
  outputs and residuals are dense NHWC, so element ``(m, s)`` lives at ``m * S + s``;
* factor matrices are row-major ``(K, N)`` with the rank dimensions zero-padded, so padded rows and
  columns contribute exact zeros; masks guard image borders and the ends of chunked loops;
* accumulation is fp32; operands of every ``tl.dot`` are in the activation dtype (so the r_in- and
  r_out-channel intermediates are rounded to it exactly where the 3-conv chain rounds them).

Whether ``triton.jit`` compiles or interprets these is decided by ``TRITON_INTERPRET`` when triton is
first imported (process-wide): see :mod:`batude.kernels._runtime`.
"""

import triton
import triton.language as tl


@triton.jit
def _epilogue(o, offs_m, offs_s, M, S, scale_ptr, shift_ptr, res_ptr, out_ptr, HAS_SCALE, HAS_SHIFT, HAS_RES, RELU):
    """``out[m, s] = act(o * scale[s] + shift[s] + res[m, s])`` for one ``[BLOCK_M, BLOCK_S]`` fp32 tile.

    The four flags are runtime 0/1 integers (uniform branches; one compiled kernel serves every
    epilogue), the absent operands' pointers are never dereferenced.
    """
    mask_s = offs_s < S
    if HAS_SCALE != 0:
        o = o * tl.load(scale_ptr + offs_s, mask=mask_s, other=1.0).to(tl.float32)[None, :]
    if HAS_SHIFT != 0:
        o = o + tl.load(shift_ptr + offs_s, mask=mask_s, other=0.0).to(tl.float32)[None, :]
    offs = offs_m[:, None] * S + offs_s[None, :]
    mask = (offs_m < M)[:, None] & mask_s[None, :]
    if HAS_RES != 0:
        o = o + tl.load(res_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if RELU != 0:
        o = tl.maximum(o, 0.0)
    tl.store(out_ptr + offs, o.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _last_1x1(t, offs_m, pid_m, M, S, w_ptr, scale_ptr, shift_ptr, res_ptr, out_ptr, ws_ptr, cnt_ptr,
              HAS_SCALE, HAS_SHIFT, HAS_RES, RELU, RP: tl.constexpr, BLOCK_M: tl.constexpr,
              BLOCK_S: tl.constexpr, PARTS: tl.constexpr, PRECISION: tl.constexpr, S_LO, S_HI, R_LO):
    """The last 1x1 (``t [BLOCK_M, RP] @ w [R_LO:R_LO + RP, S]``) as an epilogue, looping over ``S`` in ``BLOCK_S`` tiles.

    ``S_LO``/``S_HI`` (``PARTS == 1`` only; else ``0, S``): output channels ``[S_LO, S_HI)`` only
    (``S_LO`` a multiple of ``BLOCK_S``), for programs that share a row block's ``S``. ``R_LO``: the
    first row of ``w`` that ``t``'s columns multiply (programs that share the core's output channels).

    ``PARTS == 1``: each tile goes straight through :func:`_epilogue`. ``PARTS > 1`` programs share
    this row block (split-K, or the core's output channels split): ``t @ w`` is a partial sum; tiles
    are atomically added into the fp32 workspace and the last of the ``PARTS`` programs of this row
    block (per-row-block arrival counter, released after a CTA barrier like CUTLASS's serial split-K
    semaphore) reads the sums back, applies the epilogue and leaves workspace and counter zeroed for
    the next launch.
    """
    offs_r = R_LO + tl.arange(0, RP)
    mask_m = offs_m < M
    for s0 in range(S_LO, S_HI, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        w = tl.load(w_ptr + offs_r[:, None] * S + offs_s[None, :], mask=(offs_s < S)[None, :], other=0.0)
        o = tl.dot(t, w, input_precision=PRECISION)
        if PARTS == 1:
            _epilogue(o, offs_m, offs_s, M, S, scale_ptr, shift_ptr, res_ptr, out_ptr,
                      HAS_SCALE, HAS_SHIFT, HAS_RES, RELU)
        else:
            mask = mask_m[:, None] & (offs_s < S)[None, :]
            tl.atomic_add(ws_ptr + offs_m[:, None] * S + offs_s[None, :], o, mask=mask, sem="relaxed")
    if PARTS > 1:
        tl.debug_barrier()
        arrived = tl.atomic_add(cnt_ptr + pid_m, 1, sem="acq_rel")
        if arrived == PARTS - 1:
            for s0 in range(0, S, BLOCK_S):
                offs_s = s0 + tl.arange(0, BLOCK_S)
                mask = mask_m[:, None] & (offs_s < S)[None, :]
                ptrs = ws_ptr + offs_m[:, None] * S + offs_s[None, :]
                zero = tl.zeros([BLOCK_M, BLOCK_S], tl.float32)
                o = tl.atomic_add(ptrs, zero, mask=mask, sem="relaxed")  # an L2-coherent read
                tl.store(ptrs, zero, mask=mask)
                _epilogue(o, offs_m, offs_s, M, S, scale_ptr, shift_ptr, res_ptr, out_ptr,
                          HAS_SCALE, HAS_SHIFT, HAS_RES, RELU)
            tl.atomic_xchg(cnt_ptr + pid_m, 0)


@triton.jit
def _pixels_times(x_ptr, row, valid, w_ptr, offs_n, C, N, ROWS: tl.constexpr, COLS: tl.constexpr,
                  BLOCK_C: tl.constexpr, PRECISION: tl.constexpr):
    """``x[pixels, :C] @ w[:C, offs_n]`` in fp32 for ``ROWS`` NHWC pixels at element offsets ``row`` (``valid``
    False: a zero row, e.g. outside the image), ``w`` row-major ``(C, N)``: a 1x1 conv on gathered pixels."""
    acc = tl.zeros([ROWS, COLS], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        xt = tl.load(x_ptr + row[:, None] + offs_c[None, :], mask=valid[:, None] & (offs_c < C)[None, :], other=0.0)
        w = tl.load(w_ptr + offs_c[:, None] * N + offs_n[None, :], mask=(offs_c < C)[:, None] & (offs_n < N)[None, :], other=0.0)
        acc = tl.dot(xt, w, acc, input_precision=PRECISION)
    return acc


_GEOMETRY = ["M", "H", "W", "OH", "OW", "KH", "KW", "STRIDE_H", "STRIDE_W", "PAD_H", "PAD_W", "DIL_H", "DIL_W"]
_FLAGS = ["HAS_SCALE", "HAS_SHIFT", "HAS_RES", "RELU"]


@triton.jit(do_not_specialize=_GEOMETRY + _FLAGS)
def _tucker2_kernel(
    src_ptr, uin_ptr, core_ptr, uout_ptr, scale_ptr, shift_ptr, res_ptr, out_ptr, ws_ptr, cnt_ptr,
    M, H, W, OH, OW, C, RK, S, s_n, s_h, s_w, KH, KW,
    STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W, HAS_SCALE, HAS_SHIFT, HAS_RES, RELU,
    RP: tl.constexpr, FUSE_FIRST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, SPLIT_K: tl.constexpr, SPLIT_N: tl.constexpr, PRECISION: tl.constexpr,
):
    """Implicit-GEMM core conv + last 1x1 epilogue for one ``BLOCK_M`` block of output pixels.

    Reduction: ``KH*KW`` taps x ``cdiv(RK, BLOCK_K)`` rank chunks, split over ``SPLIT_K`` programs.
    The core's ``RP`` output channels are split over ``SPLIT_N`` programs, each computing
    ``RN = RP // SPLIT_N`` of them and multiplying those by their ``RN`` rows of ``u_out`` (so each
    reads only its share of ``core`` and ``u_out``; its accumulator is ``[BLOCK_M, RN]``). Grid axis 1
    holds the ``SPLIT_K * SPLIT_N`` programs of a row block; with more than one, :func:`_last_1x1`
    sums their partial products in the workspace. The A operand of each step is ``[BLOCK_M, BLOCK_K]``
    r_in-channel activations at the tap's input pixels (zero outside the image: zero padding of the
    intermediate): ``FUSE_FIRST`` computes it on the fly as ``x[pixels, :C] @ u_in[:C, chunk]`` (the
    first 1x1, recomputed per tap), otherwise it is loaded from the precomputed intermediate ``src``
    (``N, H, W, RK``). B is ``core[tap, chunk, n-share]``; the ``[BLOCK_M, RN]`` result feeds
    :func:`_last_1x1`.
    """
    RN: tl.constexpr = RP // SPLIT_N
    pid_m = tl.program_id(0)
    if SPLIT_N == 1:  # a compile-time 0: the unsplit kernel stays the one it was before SPLIT_N
        pid_k = tl.program_id(1)
        r_lo = 0
    else:
        pid_k = tl.program_id(1) % SPLIT_K
        r_lo = (tl.program_id(1) // SPLIT_K) * RN
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    ow = offs_m % OW
    oh = (offs_m // OW) % OH
    n = offs_m // (OW * OH)
    ih0 = oh * STRIDE_H - PAD_H
    iw0 = ow * STRIDE_W - PAD_W
    base = n.to(tl.int64) * s_n
    offs_r = r_lo + tl.arange(0, RN)
    n_chunks = tl.cdiv(RK, BLOCK_K)
    total = KH * KW * n_chunks
    per_split = tl.cdiv(total, SPLIT_K)
    k_begin = pid_k * per_split
    k_end = tl.minimum(k_begin + per_split, total)
    acc = tl.zeros([BLOCK_M, RN], dtype=tl.float32)
    for ks in range(k_begin, k_end):
        tap = ks // n_chunks
        offs_k = (ks % n_chunks) * BLOCK_K + tl.arange(0, BLOCK_K)
        ih = ih0 + (tap // KW) * DIL_H
        iw = iw0 + (tap % KW) * DIL_W
        valid = mask_m & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        row = base + ih * s_h + iw * s_w
        if FUSE_FIRST:
            a = _pixels_times(src_ptr, row, valid, uin_ptr, offs_k, C, RK, BLOCK_M, BLOCK_K, BLOCK_C, PRECISION)
            a = a.to(src_ptr.dtype.element_ty)
        else:
            a = tl.load(src_ptr + row[:, None] + offs_k[None, :], mask=valid[:, None] & (offs_k < RK)[None, :], other=0.0)
        w = tl.load(core_ptr + (tap * RK + offs_k)[:, None] * RP + offs_r[None, :], mask=(offs_k < RK)[:, None], other=0.0)
        acc = tl.dot(a, w, acc, input_precision=PRECISION)
    _last_1x1(acc.to(src_ptr.dtype.element_ty), offs_m, pid_m, M, S, uout_ptr, scale_ptr, shift_ptr, res_ptr,
              out_ptr, ws_ptr, cnt_ptr, HAS_SCALE, HAS_SHIFT, HAS_RES, RELU, RN, BLOCK_M, BLOCK_S, SPLIT_K * SPLIT_N,
              PRECISION, 0, S, r_lo)


# SLOT (a multiple of RK, itself of 16) stays specialised: Triton then knows each slot starts 16-element
# aligned and moves the scratch in 128-bit vectors (unspecialised, one element per instruction)
@triton.jit(do_not_specialize=_GEOMETRY + _FLAGS)
def _tucker2_halo_kernel(
    x_ptr, uin_ptr, core_ptr, uout_ptr, scale_ptr, shift_ptr, res_ptr, out_ptr, scratch_ptr,
    M, H, W, OH, OW, C, RK, S, s_n, s_h, s_w, KH, KW,
    STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W, HAS_SCALE, HAS_SHIFT, HAS_RES, RELU, SLOT,
    RP: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_M: tl.constexpr, HALO_BLOCK: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, SPLIT_S: tl.constexpr, PRECISION: tl.constexpr,
):
    """The whole Tucker-2 conv on ``TILE_H x TILE_W`` output tiles, the first 1x1 computed once per halo pixel.

    Persistent: program ``pid`` takes tiles ``pid, pid + nprog, ...`` (tile = one image's block of
    output rows and columns; ``BLOCK_M >= TILE_H * TILE_W`` rows, the rest masked). With few tiles
    (batch 1, late stages) ``SPLIT_S`` programs (grid axis 1) share each tile, each computing halo
    and core in full but only its ``BLOCK_S``-aligned share of the ``S`` output channels: more
    programs at the price of recomputing the core, with no atomics. Per tile:

    1. the first 1x1 on every input pixel the tile's taps read (its halo, ``((TILE_H - 1) * STRIDE_H +
       (KH - 1) * DIL_H + 1) x (...)`` pixels, zero outside the image), in ``HALO_BLOCK``-row chunks,
       stored into this program's own ``SLOT``-element region of ``scratch`` (``[halo pixel, RK]``);
    2. a CTA barrier (global writes of a block are visible to the whole block after it), then the
       implicit-GEMM core reading each tap's ``[BLOCK_M, BLOCK_K]`` operand from the slot (L1/L2
       resident: written by this program just before);
    3. a barrier (the slot is overwritten by the next tile), then :func:`_last_1x1` and the epilogue.

    Unlike ``FUSE_FIRST`` in :func:`_tucker2_kernel` the first 1x1 is not recomputed per tap (only
    the halo's overlap with neighbouring tiles is), and unlike the split mode the intermediate
    never makes a round trip through memory in full, and there is one launch.
    """
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    pid_s = tl.program_id(1)
    s_share = tl.cdiv(tl.cdiv(S, BLOCK_S), SPLIT_S) * BLOCK_S
    s_lo = pid_s * s_share
    s_hi = tl.minimum(s_lo + s_share, S)
    tiles_w = tl.cdiv(OW, TILE_W)
    per_image = tl.cdiv(OH, TILE_H) * tiles_w
    n_tiles = (M // (OH * OW)) * per_image
    halo_w = (TILE_W - 1) * STRIDE_W + (KW - 1) * DIL_W + 1
    halo_pix = ((TILE_H - 1) * STRIDE_H + (KH - 1) * DIL_H + 1) * halo_w
    slot = scratch_ptr + (pid * SPLIT_S + pid_s).to(tl.int64) * SLOT
    offs_i = tl.arange(0, BLOCK_M)
    th = offs_i // TILE_W
    tw = offs_i % TILE_W
    offs_r = tl.arange(0, RP)
    n_chunks = tl.cdiv(RK, BLOCK_K)
    for tile in range(pid, n_tiles, nprog):
        n = tile // per_image
        oh = ((tile % per_image) // tiles_w) * TILE_H + th
        ow = (tile % tiles_w) * TILE_W + tw
        mask_m = (th < TILE_H) & (oh < OH) & (ow < OW)
        offs_m = tl.where(mask_m, (n * OH + oh) * OW + ow, M)  # rows outside the image: masked by the epilogue
        ih0 = ((tile % per_image) // tiles_w) * TILE_H * STRIDE_H - PAD_H
        iw0 = (tile % tiles_w) * TILE_W * STRIDE_W - PAD_W
        base = n.to(tl.int64) * s_n
        for p0 in range(0, halo_pix, HALO_BLOCK):
            offs_p = p0 + tl.arange(0, HALO_BLOCK)
            ih = ih0 + offs_p // halo_w
            iw = iw0 + offs_p % halo_w
            valid = (offs_p < halo_pix) & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            row = base + ih * s_h + iw * s_w
            for k0 in range(0, RK, BLOCK_K):
                offs_k = k0 + tl.arange(0, BLOCK_K)
                t = _pixels_times(x_ptr, row, valid, uin_ptr, offs_k, C, RK, HALO_BLOCK, BLOCK_K, BLOCK_C, PRECISION)
                tl.store(slot + offs_p[:, None] * RK + offs_k[None, :], t.to(x_ptr.dtype.element_ty), mask=(offs_k < RK)[None, :])
        tl.debug_barrier()
        acc = tl.zeros([BLOCK_M, RP], dtype=tl.float32)
        for ks in range(0, KH * KW * n_chunks):
            tap = ks // n_chunks
            offs_k = (ks % n_chunks) * BLOCK_K + tl.arange(0, BLOCK_K)
            prow = (th * STRIDE_H + (tap // KW) * DIL_H) * halo_w + tw * STRIDE_W + (tap % KW) * DIL_W
            a = tl.load(slot + prow[:, None] * RK + offs_k[None, :], mask=mask_m[:, None] & (offs_k < RK)[None, :], other=0.0)
            w = tl.load(core_ptr + (tap * RK + offs_k)[:, None] * RP + offs_r[None, :], mask=(offs_k < RK)[:, None], other=0.0)
            acc = tl.dot(a, w, acc, input_precision=PRECISION)
        tl.debug_barrier()
        _last_1x1(acc.to(x_ptr.dtype.element_ty), offs_m, pid, M, S, uout_ptr, scale_ptr, shift_ptr, res_ptr, out_ptr,
                  out_ptr, out_ptr, HAS_SCALE, HAS_SHIFT, HAS_RES, RELU, RP, BLOCK_M, BLOCK_S, 1, PRECISION, s_lo, s_hi, 0)


@triton.jit(do_not_specialize=["M"])
def _pointwise_kernel(x_ptr, w_ptr, t_ptr, M, C, N_OUT,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, PRECISION: tl.constexpr):
    """``t[M, N_OUT] = x[M, C] @ w[C, N_OUT]``: the first 1x1 of the split mode (dense NHWC rows)."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = offs_m.to(tl.int64) * C
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        x = tl.load(x_ptr + rows[:, None] + offs_c[None, :], mask=(offs_m < M)[:, None] & (offs_c < C)[None, :], other=0.0)
        w = tl.load(w_ptr + offs_c[:, None] * N_OUT + offs_n[None, :],
                    mask=(offs_c < C)[:, None] & (offs_n < N_OUT)[None, :], other=0.0)
        acc = tl.dot(x, w, acc, input_precision=PRECISION)
    mask = (offs_m < M)[:, None] & (offs_n < N_OUT)[None, :]
    tl.store(t_ptr + offs_m.to(tl.int64)[:, None] * N_OUT + offs_n[None, :], acc.to(t_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=_GEOMETRY[:5] + _GEOMETRY[7:11] + _FLAGS)
def _lowrank_kernel(
    x_ptr, b_ptr, a_ptr, scale_ptr, shift_ptr, res_ptr, out_ptr,
    M, H, W, OH, OW, C, S, s_n, s_h, s_w, STRIDE_H, STRIDE_W, PAD_H, PAD_W, HAS_SCALE, HAS_SHIFT, HAS_RES, RELU,
    RP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, SPLIT_S: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Two chained 1x1s: ``t = x[pixels] @ b [C, RP]`` kept in registers, then :func:`_last_1x1` with ``a [RP, S]``.

    The first 1x1 may be strided and zero-padded (as ``LowRankConv1x1.first`` is): row ``m`` reads
    input pixel ``(n, oh*STRIDE_H - PAD_H, ow*STRIDE_W - PAD_W)``, zero outside the image. Where row
    blocks are few (batch 1, late stages) ``SPLIT_S`` programs (grid axis 1) share each: every one
    computes ``t`` and writes its own run of the ``BLOCK_S`` tiles of the ``S`` output channels, the
    tiles spread evenly (``SPLIT_S`` at most the tiles: each program gets at least one).
    """
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    s_tiles = tl.cdiv(S, BLOCK_S)
    s_lo = (pid_s * s_tiles // SPLIT_S) * BLOCK_S
    s_hi = tl.minimum(((pid_s + 1) * s_tiles // SPLIT_S) * BLOCK_S, S)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    ow = offs_m % OW
    oh = (offs_m // OW) % OH
    n = offs_m // (OW * OH)
    ih = oh * STRIDE_H - PAD_H
    iw = ow * STRIDE_W - PAD_W
    valid = mask_m & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    row = n.to(tl.int64) * s_n + ih * s_h + iw * s_w
    t = _pixels_times(x_ptr, row, valid, b_ptr, tl.arange(0, RP), C, RP, BLOCK_M, RP, BLOCK_C, PRECISION)
    _last_1x1(t.to(x_ptr.dtype.element_ty), offs_m, pid_m, M, S, a_ptr, scale_ptr, shift_ptr, res_ptr, out_ptr,
              out_ptr, out_ptr, HAS_SCALE, HAS_SHIFT, HAS_RES, RELU, RP, BLOCK_M, BLOCK_S, 1, PRECISION, s_lo, s_hi, 0)
