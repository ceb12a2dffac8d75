"""Pure-PyTorch references of the kernels, on the same packed operands and with the same rounding.

They compute in fp32 and round the two intermediates (r_in and r_out channels) to the input dtype
exactly where the kernels do (and where the eager 3-conv chain does), so a kernel and its reference
differ only by fp32 summation order. They are also the custom ops' CPU implementation when the
Triton interpreter is not requested, and work on any device.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["tucker2_conv_reference", "lowrank_chain_reference", "epilogue_reference"]


def epilogue_reference(y: torch.Tensor, scale: torch.Tensor | None, shift: torch.Tensor | None,
                       residual: torch.Tensor | None, relu: bool, dtype: torch.dtype) -> torch.Tensor:
    """``act(y * scale + shift + residual)`` on fp32 ``y (N, S, H, W)``, returned in ``dtype``, channels_last."""
    if scale is not None:
        y = y * scale.float()[None, :, None, None]
    if shift is not None:
        y = y + shift.float()[None, :, None, None]
    if residual is not None:
        y = y + residual.float()
    if relu:
        y = torch.relu(y)
    return y.to(dtype).contiguous(memory_format=torch.channels_last)


def tucker2_conv_reference(x: torch.Tensor, u_in: torch.Tensor, core: torch.Tensor, u_out: torch.Tensor,
                           scale: torch.Tensor | None = None, shift: torch.Tensor | None = None,
                           residual: torch.Tensor | None = None, stride: Sequence[int] = (1, 1),
                           padding: Sequence[int] = (0, 0), dilation: Sequence[int] = (1, 1),
                           relu: bool = False) -> torch.Tensor:
    """Tucker-2 conv on packed operands: ``x (N, C, H, W)`` -> ``(N, S, H', W')`` (channels_last, ``x.dtype``).

    ``u_in (C, R2p)``, ``core (kh, kw, R2p, R1p)``, ``u_out (R1p, S)``; zero padding only.
    """
    dt = x.dtype
    t = F.conv2d(x.float(), u_in.float().t()[:, :, None, None]).to(dt).float()
    g = core.float().permute(3, 2, 0, 1)
    c = F.conv2d(t, g, stride=tuple(stride), padding=tuple(padding), dilation=tuple(dilation)).to(dt).float()
    y = F.conv2d(c, u_out.float().t()[:, :, None, None])
    return epilogue_reference(y, scale, shift, residual, relu, dt)


def lowrank_chain_reference(x: torch.Tensor, b: torch.Tensor, a: torch.Tensor, scale: torch.Tensor | None = None,
                            shift: torch.Tensor | None = None, residual: torch.Tensor | None = None,
                            stride: Sequence[int] = (1, 1), padding: Sequence[int] = (0, 0),
                            relu: bool = False) -> torch.Tensor:
    """Two chained 1x1 convs on packed operands ``b (C, Rp)``, ``a (Rp, S)``; the first is strided/padded."""
    dt = x.dtype
    t = F.conv2d(x.float(), b.float().t()[:, :, None, None], stride=tuple(stride), padding=tuple(padding)).to(dt).float()
    y = F.conv2d(t, a.float().t()[:, :, None, None])
    return epilogue_reference(y, scale, shift, residual, relu, dt)
