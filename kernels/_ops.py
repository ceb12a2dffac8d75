"""The kernels as torch custom ops: ``torch.ops.batude.tucker2_conv`` and ``torch.ops.batude.lowrank_chain``.

Registered with :func:`torch.library.custom_op` (opaque to ``torch.compile``, which traces them
through the fake implementations below; safe inside CUDA graphs once warmed up, since autotuning,
workspace allocation and the ``auto`` mode's timing happen on the first call). Dispatch:

* CUDA tensors -> the Triton kernels (the launchers' checks apply);
* CPU tensors -> the Triton kernels under the interpreter when ``TRITON_INTERPRET=1`` was set before
  triton was imported (fp16/fp32 only: the interpreter's bf16 dots are wrong), otherwise the
  pure-PyTorch reference (:mod:`batude.kernels.reference`), so a model using the ops runs anywhere;
* other devices -> the reference.

Inputs that are not channels_last/contiguous are made so first (a copy). No autograd formula:
inference only. FLOP formulas are registered so ``FlopCounterMode`` counts the ops (the padded
ranks the kernels actually multiply, FLOPs = 2 * MACs, epilogue not counted); importing
``torch.utils.flop_counter`` for that imports triton where it is installed, so this module is
imported only when the ops are used.
"""

from __future__ import annotations

from typing import Optional

import torch

from batude.kernels._runtime import cpu_kernels_requested
from batude.kernels.reference import lowrank_chain_reference, tucker2_conv_reference
from batude.kernels.tucker2 import tucker2_output_size

__all__ = ["tucker2_conv_op", "lowrank_chain_op"]

_CL = torch.channels_last


def _use_kernels(x: torch.Tensor) -> bool:
    if x.device.type == "cuda":
        return True
    return x.device.type == "cpu" and x.dtype != torch.bfloat16 and cpu_kernels_requested()


def _nhwc(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.contiguous(memory_format=_CL)


def _vec(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.contiguous()


@torch.library.custom_op(
    "batude::tucker2_conv", mutates_args=(),
    schema="(Tensor x, Tensor u_in, Tensor core, Tensor u_out, Tensor? scale, Tensor? shift, Tensor? residual, "
           "int[] stride, int[] padding, int[] dilation, bool relu, str mode) -> Tensor",
)
def tucker2_conv_op(x: torch.Tensor, u_in: torch.Tensor, core: torch.Tensor, u_out: torch.Tensor,
                    scale: Optional[torch.Tensor], shift: Optional[torch.Tensor], residual: Optional[torch.Tensor],
                    stride: list[int], padding: list[int], dilation: list[int], relu: bool, mode: str) -> torch.Tensor:
    x, residual = _nhwc(x), _nhwc(residual)
    u_in, core, u_out, scale, shift = map(_vec, (u_in, core, u_out, scale, shift))
    if _use_kernels(x):
        from batude.kernels.tucker2 import tucker2_conv

        return tucker2_conv(x, u_in, core, u_out, scale=scale, shift=shift, residual=residual, stride=stride,
                            padding=padding, dilation=dilation, relu=relu, mode=mode)
    return tucker2_conv_reference(x, u_in, core, u_out, scale, shift, residual, stride, padding, dilation, relu)


@tucker2_conv_op.register_fake
def _(x, u_in, core, u_out, scale, shift, residual, stride, padding, dilation, relu, mode):
    oh, ow = tucker2_output_size(x.shape[2], x.shape[3], (core.shape[0], core.shape[1]), stride, padding, dilation)
    return torch.empty((x.shape[0], u_out.shape[1], oh, ow), dtype=x.dtype, device=x.device, memory_format=_CL)


@torch.library.custom_op(
    "batude::lowrank_chain", mutates_args=(),
    schema="(Tensor x, Tensor b, Tensor a, Tensor? scale, Tensor? shift, Tensor? residual, int[] stride, "
           "int[] padding, bool relu) -> Tensor",
)
def lowrank_chain_op(x: torch.Tensor, b: torch.Tensor, a: torch.Tensor, scale: Optional[torch.Tensor],
                     shift: Optional[torch.Tensor], residual: Optional[torch.Tensor], stride: list[int],
                     padding: list[int], relu: bool) -> torch.Tensor:
    x, residual = _nhwc(x), _nhwc(residual)
    b, a, scale, shift = map(_vec, (b, a, scale, shift))
    if _use_kernels(x):
        from batude.kernels.lowrank import lowrank_chain

        return lowrank_chain(x, b, a, scale=scale, shift=shift, residual=residual, stride=stride, padding=padding, relu=relu)
    return lowrank_chain_reference(x, b, a, scale, shift, residual, stride, padding, relu)


@lowrank_chain_op.register_fake
def _(x, b, a, scale, shift, residual, stride, padding, relu):
    oh, ow = tucker2_output_size(x.shape[2], x.shape[3], (1, 1), stride, padding, (1, 1))
    return torch.empty((x.shape[0], a.shape[1], oh, ow), dtype=x.dtype, device=x.device, memory_format=_CL)


def _register_flops() -> None:
    from torch.utils.flop_counter import register_flop_formula

    def _prod(shape) -> int:
        out = 1
        for d in shape:
            out *= int(d)
        return out

    @register_flop_formula(torch.ops.batude.tucker2_conv)
    def _tucker2_flops(x_shape, u_in_shape, core_shape, u_out_shape, *args, out_shape=None, **kwargs) -> int:
        n, c, h, w = x_shape
        kh, kw, rk, rp = core_shape
        pixels = _prod(out_shape[2:]) if out_shape is not None else h * w
        return 2 * n * (h * w * c * rk + pixels * kh * kw * rk * rp + pixels * rp * u_out_shape[1])

    @register_flop_formula(torch.ops.batude.lowrank_chain)
    def _lowrank_flops(x_shape, b_shape, a_shape, *args, out_shape=None, **kwargs) -> int:
        pixels = _prod(out_shape) // out_shape[1] if out_shape is not None else x_shape[0] * x_shape[2] * x_shape[3]
        return 2 * pixels * (b_shape[0] * b_shape[1] + a_shape[0] * a_shape[1])


_register_flops()
