"""The kernel path of ``TuckerConv2d`` / ``LowRankConv1x1`` with ``impl="triton"``.

``batude.nn`` calls :func:`tucker2_forward` / :func:`lowrank_forward` lazily from ``forward``; they
return None whenever the eager chain must run instead:

* autograd needs the result (grad enabled and the input requires grad or the layer is training):
  the ops have no backward;
* the layer is being traced for lowering or export (``torch.fx`` proxies, TorchScript, ONNX export,
  ``torch.export``): deployment code sees the plain 3-conv chain;
* the geometry is not supported (:func:`kernel_unsupported_reason`).

The layers are duck-typed (``first``/``core``/``last`` convs) so that this level-1 package never
imports ``batude.nn``. Packed weights are cached on the layer (``_kernel_pack``), keyed by each
weight's storage, version counter, dtype and the activation dtype, so ``load_state_dict``,
optimiser steps and ``.to()`` repack on the next call. Under ``torch.compile`` the packing is traced
as ordinary ops instead (freezing folds it into constants).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["tucker2_forward", "lowrank_forward", "kernel_unsupported_reason", "conv_padding"]


def conv_padding(conv: nn.Conv2d) -> tuple[int, int] | None:
    """Symmetric integer padding of ``conv`` (resolving 'valid'/'same'), or None if it is asymmetric."""
    p = conv.padding
    if p == "valid":
        return (0, 0)
    if p == "same":
        total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        return None if any(t % 2 for t in total) else (total[0] // 2, total[1] // 2)
    return (int(p[0]), int(p[1]))


def kernel_unsupported_reason(layer: nn.Module) -> str | None:
    """Why ``layer`` cannot use the kernels (None when it can)."""
    conv = layer.core if hasattr(layer, "core") else layer.first
    if conv.padding_mode != "zeros":
        return f"padding_mode='{conv.padding_mode}' (the kernels implement zero padding only)"
    if conv_padding(conv) is None:
        return f"padding='same' with an even kernel {tuple(conv.kernel_size)} is asymmetric"
    if conv.groups != 1:
        return f"groups={conv.groups}"
    ranks = (layer.core.out_channels,) if hasattr(layer, "core") else (layer.first.out_channels,)
    if max(ranks) > 512:
        return f"rank {max(ranks)} > 512"
    return None


def _bypass(layer: nn.Module, x: torch.Tensor) -> bool:
    if isinstance(x, torch.fx.Proxy) or torch.jit.is_scripting() or torch.jit.is_tracing():
        return True
    if torch.onnx.is_in_onnx_export():
        return True
    exporting = getattr(torch.compiler, "is_exporting", None)
    if exporting is not None and exporting():
        return True
    if torch.is_grad_enabled() and (x.requires_grad or layer.training):
        return True
    return kernel_unsupported_reason(layer) is not None


def _cached(layer: nn.Module, tensors: Sequence[torch.Tensor | None], dtype: torch.dtype, build):
    if torch.compiler.is_compiling():
        return build()
    try:
        key = (dtype,) + tuple(None if t is None else (t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)
    except RuntimeError:  # inference tensors have no version counter: key on storage only
        key = (dtype,) + tuple(None if t is None else (t.data_ptr(), t.dtype, t.device) for t in tensors)
    cache = layer.__dict__.get("_kernel_pack")
    if cache is None or cache[0] != key:
        cache = (key, build())
        layer.__dict__["_kernel_pack"] = cache
    return cache[1]


def tucker2_forward(layer: nn.Module, x: torch.Tensor, mode: str = "auto") -> torch.Tensor | None:
    """``layer(x)`` through ``torch.ops.batude.tucker2_conv``, or None to run the eager chain."""
    if _bypass(layer, x):
        return None
    from batude.kernels._ops import tucker2_conv_op
    from batude.kernels.pack import pack_tucker2

    first, core, last = layer.first, layer.core, layer.last
    ws = (first.weight, core.weight, last.weight, last.bias)
    p = _cached(layer, ws, x.dtype, lambda: pack_tucker2(*ws, dtype=x.dtype))
    return tucker2_conv_op(x, p.u_in, p.core, p.u_out, p.scale, p.shift, None, list(core.stride),
                           list(conv_padding(core)), list(core.dilation), False, mode)


def lowrank_forward(layer: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """``layer(x)`` (a ``LowRankConv1x1``) through ``torch.ops.batude.lowrank_chain``, or None."""
    if _bypass(layer, x):
        return None
    from batude.kernels._ops import lowrank_chain_op
    from batude.kernels.pack import pack_lowrank

    first, last = layer.first, layer.last
    ws = (first.weight, last.weight, last.bias)
    p = _cached(layer, ws, x.dtype, lambda: pack_lowrank(*ws, dtype=x.dtype))
    return lowrank_chain_op(x, p.b, p.a, p.scale, p.shift, None, list(first.stride),
                            list(conv_padding(first)), False)
