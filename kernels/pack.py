"""Prepacking factor weights into the kernels' layouts (pure PyTorch; no triton needed).

``batude.nn`` stores a Tucker-2 layer as three conv weights (``first (R2, C, 1, 1)``,
``core (R1, R2, kh, kw)``, ``last (S, R1, 1, 1)`` plus ``bias (S,)``) and a rank-R 1x1 pair as
``first (R, C, 1, 1)``, ``last (S, R, 1, 1)``. The kernels want row-major GEMM operands with the rank
dimensions zero-padded:

==========  =========================  ==================================================
``u_in``    ``(C, R2p)``               ``R2p = roundup(R2, 16)`` (the reduction is chunked)
``core``    ``(kh, kw, R2p, R1p)``     ``R1p = next_pow2(max(R1, 16))`` (held whole in registers)
``u_out``   ``(R1p, S)``               rows beyond R1 are zero
``b``       ``(C, Rp)``                low-rank pair, ``Rp = next_pow2(max(R, 16))``
``a``       ``(Rp, S)``
``scale``   ``(S,)`` fp32 or None      epilogue multiplier
``shift``   ``(S,)`` fp32 or None      epilogue addend: ``bias * bn_scale + bn_shift``
==========  =========================  ==================================================

Zero padding is exact (padded channels are identically zero), so unaligned ranks cost the padded
FLOPs but never change the result. A BatchNorm that follows the layer (eval mode) is folded:
``out = (y + bias) * g + h`` with ``g = gamma / sqrt(var + eps)``, ``h = beta - mean * g``; by default
``g`` is folded into the output factor's columns (in fp32, then cast once), leaving only ``shift``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from batude.errors import BatudeError

__all__ = ["Tucker2Pack", "LowRankPack", "pack_tucker2", "pack_lowrank", "bn_affine", "pad_rank_in", "pad_rank_out"]


def pad_rank_out(r: int) -> int:
    """Padded width of a rank held whole in registers: the next power of two, at least 16."""
    return max(16, 1 << (int(r) - 1).bit_length())


def pad_rank_in(r: int) -> int:
    """Padded width of a rank that is a chunked reduction dimension: a multiple of 16."""
    return -(-int(r) // 16) * 16


@dataclass
class Tucker2Pack:
    """Packed operands of :func:`batude.kernels.tucker2_conv` (see the module table)."""

    u_in: torch.Tensor
    core: torch.Tensor
    u_out: torch.Tensor
    scale: torch.Tensor | None
    shift: torch.Tensor | None
    ranks: tuple[int, int]  # true (R1, R2)


@dataclass
class LowRankPack:
    """Packed operands of :func:`batude.kernels.lowrank_chain`."""

    b: torch.Tensor
    a: torch.Tensor
    scale: torch.Tensor | None
    shift: torch.Tensor | None
    rank: int


def bn_affine(bn: torch.nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """``(g, h)`` in fp32 with ``bn(y) == y * g + h`` for an eval-mode BatchNorm2d."""
    if bn.training or not bn.track_running_stats or bn.running_var is None:
        raise BatudeError("only an eval-mode BatchNorm2d with running statistics can be folded; call model.eval() first")
    g = torch.rsqrt(bn.running_var.float() + bn.eps)
    if bn.affine:
        g = g * bn.weight.float()
    h = -bn.running_mean.float() * g
    if bn.affine:
        h = h + bn.bias.float()
    return g, h


def _epilogue_vectors(out_w: torch.Tensor, bias: torch.Tensor | None, bn_scale: torch.Tensor | None,
                      bn_shift: torch.Tensor | None, fold_scale: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Output factor (fp32, ``(R, S)``), epilogue scale and shift (fp32 or None)."""
    s = out_w.shape[1]
    shift = None if bias is None else bias.detach().float().clone()
    scale = None
    if bn_scale is not None:
        g = bn_scale.detach().float().reshape(s)
        shift = g * shift if shift is not None else None
        if fold_scale:
            out_w = out_w * g[None, :]
        else:
            scale = g
    if bn_shift is not None:
        h = bn_shift.detach().float().reshape(s)
        shift = h if shift is None else shift + h
    return out_w, scale, shift


@torch.no_grad()
def pack_tucker2(first: torch.Tensor, core: torch.Tensor, last: torch.Tensor, bias: torch.Tensor | None = None, *,
                 bn_scale: torch.Tensor | None = None, bn_shift: torch.Tensor | None = None, fold_scale: bool = True,
                 dtype: torch.dtype | None = None) -> Tucker2Pack:
    """Pack ``TuckerConv2d`` weights (``first.weight``, ``core.weight``, ``last.weight``, ``last.bias``).

    ``bn_scale``/``bn_shift`` (``(S,)``, e.g. from :func:`bn_affine`) fold a following BatchNorm.
    Factors are cast to ``dtype`` (default: ``core``'s dtype); epilogue vectors stay fp32.
    """
    r2, c = first.shape[:2]
    r1, r2_core, kh, kw = core.shape
    s = last.shape[0]
    if tuple(first.shape[2:]) != (1, 1) or tuple(last.shape[1:]) != (r1, 1, 1) or r2_core != r2:
        raise BatudeError(f"Tucker-2 factor shapes do not chain: first {tuple(first.shape)}, core {tuple(core.shape)}, "
                          f"last {tuple(last.shape)}; expected (R2, C, 1, 1), (R1, R2, kh, kw), (S, R1, 1, 1)")
    dtype = dtype or core.dtype
    r1p, r2p = pad_rank_out(r1), pad_rank_in(r2)
    u_in = F.pad(first.detach().float().reshape(r2, c).t(), (0, r2p - r2))
    g = F.pad(core.detach().float().permute(2, 3, 1, 0), (0, r1p - r1, 0, r2p - r2))
    u_out, scale, shift = _epilogue_vectors(last.detach().float().reshape(s, r1).t(), bias, bn_scale, bn_shift, fold_scale)
    u_out = F.pad(u_out, (0, 0, 0, r1p - r1))
    return Tucker2Pack(u_in.to(dtype).contiguous(), g.to(dtype).contiguous(), u_out.to(dtype).contiguous(),
                       scale, shift, (int(r1), int(r2)))


@torch.no_grad()
def pack_lowrank(first: torch.Tensor, last: torch.Tensor, bias: torch.Tensor | None = None, *,
                 bn_scale: torch.Tensor | None = None, bn_shift: torch.Tensor | None = None, fold_scale: bool = True,
                 dtype: torch.dtype | None = None) -> LowRankPack:
    """Pack ``LowRankConv1x1`` weights (``first.weight (R, C, 1, 1)``, ``last.weight (S, R, 1, 1)``, ``last.bias``)."""
    r, c = first.shape[:2]
    s = last.shape[0]
    if first.numel() != r * c or last.numel() != s * r:
        raise BatudeError(f"low-rank factor shapes do not chain: first {tuple(first.shape)}, last {tuple(last.shape)}; "
                          "expected (R, C, 1, 1) and (S, R, 1, 1)")
    dtype = dtype or first.dtype
    rp = pad_rank_out(r)
    b = F.pad(first.detach().float().reshape(r, c).t(), (0, rp - r))
    a, scale, shift = _epilogue_vectors(last.detach().float().reshape(s, r).t(), bias, bn_scale, bn_shift, fold_scale)
    a = F.pad(a, (0, 0, 0, rp - r))
    return LowRankPack(b.to(dtype).contiguous(), a.to(dtype).contiguous(), scale, shift, int(r))
