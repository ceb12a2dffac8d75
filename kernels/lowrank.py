"""The two-layer 1x1 low-rank chain in one kernel: the public launcher :func:`lowrank_chain`.

``LowRankConv1x1`` computes ``1x1 C->R`` (with the original conv's stride and zero padding) then
``1x1 R->S``: on NHWC that is a GEMM over N*H'*W' rows, ``x @ B @ A``. One program takes
``BLOCK_M`` rows, accumulates ``t = x @ B`` (``[BLOCK_M, Rp]``, fp32) over ``C`` in ``BLOCK_C``
chunks, rounds it to the input dtype (as the eager chain does) and runs the second GEMM and the
epilogue ``act(t @ A * scale + shift + residual)`` tile by tile over ``S``: the rank-R intermediate
never leaves registers. Where row blocks are too few to fill the GPU (batch 1, late stages)
``SPLIT_S`` programs share a row block, each computing ``t`` again and writing its share of ``S``
(ResNet-50's 512->2048 at 7x7, batch 1, is four row blocks on 132 SMs without it): the autotuner
may split maps up to 28x28 at batch 1, the untuned heuristic the 7x7 and 14x14 ones. Block sizes,
``SPLIT_S``, warps and stages are autotuned per shape on the GPU (:mod:`batude.kernels._configs`);
no split-K (``C`` is the only reduction and is short).
"""

from __future__ import annotations

from typing import Sequence

import torch

from batude.errors import BatudeError
from batude.kernels import _configs as cfg
from batude.kernels._runtime import autotune_enabled, interpreting, jit_module
from batude.kernels.tucker2 import _MAX_R, _pair, check_activation, check_epilogue, precision_for, tucker2_output_size

__all__ = ["lowrank_chain", "chain_args"]


def _check(x: torch.Tensor, b: torch.Tensor, a: torch.Tensor) -> tuple[int, int]:
    check_activation(x)
    c = x.shape[1]
    if b.dim() != 2 or a.dim() != 2 or b.shape[0] != c or a.shape[0] != b.shape[1]:
        raise BatudeError(f"factors must be packed as b (C={c}, Rp) and a (Rp, S), got b {tuple(b.shape)}, a {tuple(a.shape)}; "
                          "pack them with batude.kernels.pack_lowrank")
    rp, s = a.shape
    if rp < 16 or rp & (rp - 1) or rp > _MAX_R:
        raise BatudeError(f"padded rank Rp={rp} must be a power of two in [16, {_MAX_R}]")
    for name, t in (("b", b), ("a", a)):
        if t.dtype != x.dtype or t.device != x.device or not t.is_contiguous():
            raise BatudeError(f"{name} must be contiguous {x.dtype} on {x.device}, got {t.dtype} on {t.device}")
    return rp, s


def chain_args(nchw: tuple[int, int, int, int], out_hw: tuple[int, int], s: int, x_strides: tuple[int, int, int],
               stride: tuple[int, int], padding: tuple[int, int], flags: Sequence[bool]) -> dict:
    """The integer arguments of the chain kernel (shared with :mod:`batude.kernels.aot`)."""
    n, c, h, w = nchw
    (oh, ow), (sn, sh, sw) = out_hw, x_strides
    has_scale, has_shift, has_res, relu = (int(bool(f)) for f in flags)
    return dict(M=n * oh * ow, H=h, W=w, OH=oh, OW=ow, C=c, S=s, s_n=sn, s_h=sh, s_w=sw, STRIDE_H=stride[0],
                STRIDE_W=stride[1], PAD_H=padding[0], PAD_W=padding[1], HAS_SCALE=has_scale, HAS_SHIFT=has_shift,
                HAS_RES=has_res, RELU=relu)


def lowrank_chain(x: torch.Tensor, b: torch.Tensor, a: torch.Tensor, *, scale: torch.Tensor | None = None,
                  shift: torch.Tensor | None = None, residual: torch.Tensor | None = None,
                  stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0, relu: bool = False,
                  config: dict | None = None) -> torch.Tensor:
    """``act((x @ b) @ a * scale + shift + residual)`` over NHWC pixels (packed operands: :func:`batude.kernels.pack_lowrank`).

    Args:
        x: ``(N, C, H, W)`` fp16/bf16/fp32 channels_last; CUDA (or CPU under ``TRITON_INTERPRET=1``).
        b: ``(C, Rp)``, a: ``(Rp, S)`` in ``x``'s dtype. ``stride``/``padding`` apply to the first 1x1.
        scale, shift, residual, relu: the epilogue, as in :func:`batude.kernels.tucker2_conv`.
        config: fixed launch parameters instead of autotuning.

    Returns:
        ``(N, S, H', W')`` in ``x``'s dtype, channels_last.
    """
    rp, s = _check(x, b, a)
    stride, padding = _pair(stride, "stride"), _pair(padding, "padding")
    if min(stride) < 1 or min(padding) < 0:
        raise BatudeError(f"stride {stride} must be >= 1 and padding {padding} >= 0")
    n, c, h, w = x.shape
    oh, ow = tucker2_output_size(h, w, (1, 1), stride, padding, (1, 1))
    check_epilogue(x, s, (oh, ow), scale, shift, residual)
    m = n * oh * ow
    if max(x.numel(), m * max(s, rp)) >= 2 ** 31:
        raise BatudeError("tensors of 2**31 or more elements are not supported by the kernels; split the batch")
    out = torch.empty((n, s, oh, ow), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    dummy = cfg.dummy_f32(x.device)
    ptrs = (x, b, a, scale if scale is not None else dummy, shift if shift is not None else dummy,
            residual if residual is not None else out, out)
    args = chain_args((n, c, h, w), (oh, ow), s, (x.stride(0), x.stride(2), x.stride(3)), stride, padding,
                      (scale is not None, shift is not None, residual is not None, relu))
    args.update(RP=rp, PRECISION=precision_for(x.dtype))
    if config is None and autotune_enabled():
        grid = lambda META: (-(-m // META["BLOCK_M"]), META["SPLIT_S"])  # noqa: E731
        try:
            cfg.autotuned("lowrank")[grid](*ptrs, **args)
            return out
        except cfg.out_of_resources():  # no candidate fits this GPU's shared memory: the heuristic, shrunk until it does
            config = cfg.heuristic_lowrank(m, c, rp, s, False)
    launch = {"SPLIT_S": 1, **(config or cfg.heuristic_lowrank(m, c, rp, s, interpreting()))}
    warps, stages = launch.pop("num_warps", 4), launch.pop("num_stages", 2)
    if isinstance(launch["SPLIT_S"], bool) or not (isinstance(launch["SPLIT_S"], int) and launch["SPLIT_S"] >= 1):
        raise BatudeError(f"config SPLIT_S={launch['SPLIT_S']!r} must be a positive integer (programs sharing a row block)")

    def run(tile: dict, warps: int, stages: int) -> None:
        grid = (-(-m // tile["BLOCK_M"]), tile["SPLIT_S"])
        jit_module()._lowrank_kernel[grid](*ptrs, **args, **tile, num_warps=warps, num_stages=stages)

    cfg.launch_fitting(("lowrank", x.device.index, x.dtype, rp, tuple(sorted(launch.items())), warps, stages),
                       run, launch, warps, stages)
    return out
