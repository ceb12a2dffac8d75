"""Block-epilogue fusion for ResNets: :func:`fuse_resnet_`.

An eval-mode torchvision ``BasicBlock``/``Bottleneck`` or batude CIFAR ``BasicBlock`` computes::

    out = relu(bn1(conv1(x)));  [out = relu(bn2(conv2(out)))];  out = relu(bnL(convL(out)) + shortcut(x))

Each conv (+ its BatchNorm, + the ReLU that follows) becomes one :class:`FusedConv`: the BatchNorm
is folded into the packed factors (scale into the output factor's columns, shift into the
epilogue's ``shift``), the ReLU is the epilogue's activation, and the last conv of the block takes
the shortcut's output as the epilogue's ``residual`` (add, then ReLU). With Tucker-2 and low-rank
1x1 layers (duck-typed: ``first``/``core``/``last`` convs) every unit is one custom-op call
(:mod:`batude.kernels._ops`); dense convs (stem, layers left dense) and ``Sequential`` chains of
convs (factorised layers lowered to cuDNN variants by ``apply_variants(..., plain=True)``) get BN
folded into their (last) conv and the add/ReLU in PyTorch (``torch.compile`` fuses those). A
projection shortcut ``Sequential(conv, BN)`` becomes a unit too. The stem's ``bn1`` is folded into
``conv1``.

The rewritten model is for inference only; its packed buffers follow ``.to()``/``.half()``.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from batude.errors import BatudeError
from batude.kernels._ops import lowrank_chain_op, tucker2_conv_op
from batude.kernels.layers import conv_padding, kernel_unsupported_reason
from batude.kernels.pack import bn_affine, pack_lowrank, pack_tucker2

__all__ = ["FusedConv", "FusedBlock", "fuse_unit", "fuse_resnet_"]

_BLOCK_MODULES = ("torchvision.models.resnet", "batude.models.cifar_resnet")
_BLOCK_NAMES = ("BasicBlock", "Bottleneck")


def _is_tucker2(m: nn.Module) -> bool:
    return all(isinstance(getattr(m, a, None), nn.Conv2d) for a in ("first", "core", "last"))


def _is_lowrank_conv(m: nn.Module) -> bool:
    return (not hasattr(m, "core") and all(isinstance(getattr(m, a, None), nn.Conv2d) for a in ("first", "last"))
            and tuple(m.first.kernel_size) == (1, 1))


class FusedConv(nn.Module):
    """One conv (+ folded BN) with optional ReLU and residual add: ``forward(x, residual=None)``.

    ``kind``: ``tucker2`` / ``lowrank`` (custom ops, packed buffers) or ``dense`` (an ``nn.Conv2d``
    with the BN folded in; add and ReLU in PyTorch).
    """

    def __init__(self, kind: str, relu: bool, geometry: dict, buffers: dict[str, torch.Tensor | None],
                 conv: nn.Conv2d | None = None, mode: str = "auto") -> None:
        super().__init__()
        self.kind, self.relu, self.mode = kind, bool(relu), mode
        self.stride, self.padding, self.dilation = (list(geometry.get(k, [1, 1])) for k in ("stride", "padding", "dilation"))
        for name, t in buffers.items():
            self.register_buffer(name, t)
        self.conv = conv

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if self.kind == "tucker2":
            return tucker2_conv_op(x, self.u_in, self.core, self.u_out, None, self.shift, residual, self.stride,
                                   self.padding, self.dilation, self.relu, self.mode)
        if self.kind == "lowrank":
            return lowrank_chain_op(x, self.b, self.a, None, self.shift, residual, self.stride, self.padding, self.relu)
        y = self.conv(x)
        if residual is not None:
            y = y + residual
        return F.relu(y) if self.relu else y

    def extra_repr(self) -> str:
        return f"kind={self.kind}, relu={self.relu}, stride={self.stride}, padding={self.padding}"


@torch.no_grad()
def _dense_unit(conv: nn.Module, bn: nn.BatchNorm2d | None, relu: bool) -> FusedConv:
    """A conv, or a ``Sequential`` of convs (a factorised layer lowered for cuDNN), with ``bn`` folded into the last."""
    folded = copy.deepcopy(conv)
    last = folded[-1] if isinstance(folded, nn.Sequential) else folded
    if bn is not None:
        g, h = bn_affine(bn)
        bias = last.bias.float() if last.bias is not None else torch.zeros_like(g)
        last.weight.copy_((last.weight.float() * g.reshape(-1, 1, 1, 1)).to(last.weight.dtype))
        last.bias = nn.Parameter((bias * g + h).to(last.weight.dtype), requires_grad=False)
    return FusedConv("dense", relu, {}, {}, conv=folded)


def _is_conv_sequence(m: nn.Module) -> bool:
    return isinstance(m, nn.Sequential) and len(m) > 0 and all(type(c) is nn.Conv2d for c in m)


def fuse_unit(conv: nn.Module, bn: nn.BatchNorm2d | None, relu: bool, mode: str = "auto") -> FusedConv:
    """The :class:`FusedConv` for ``conv`` followed by ``bn`` (or None) and, if ``relu``, a ReLU."""
    g, h = bn_affine(bn) if bn is not None else (None, None)
    if _is_tucker2(conv) and kernel_unsupported_reason(conv) is None:
        p = pack_tucker2(conv.first.weight, conv.core.weight, conv.last.weight, conv.last.bias, bn_scale=g, bn_shift=h)
        shift = p.shift if p.shift is not None else torch.zeros(p.u_out.shape[1], device=p.u_out.device)
        geo = {"stride": conv.core.stride, "padding": conv_padding(conv.core), "dilation": conv.core.dilation}
        return FusedConv("tucker2", relu, geo, {"u_in": p.u_in, "core": p.core, "u_out": p.u_out, "shift": shift}, mode=mode)
    if _is_lowrank_conv(conv) and kernel_unsupported_reason(conv) is None:
        p = pack_lowrank(conv.first.weight, conv.last.weight, conv.last.bias, bn_scale=g, bn_shift=h)
        shift = p.shift if p.shift is not None else torch.zeros(p.a.shape[1], device=p.a.device)
        geo = {"stride": conv.first.stride, "padding": conv_padding(conv.first)}
        return FusedConv("lowrank", relu, geo, {"b": p.b, "a": p.a, "shift": shift}, mode=mode)
    if hasattr(conv, "to_conv") and (_is_tucker2(conv) or _is_lowrank_conv(conv)):
        conv = conv.to_conv()  # geometry the kernels do not support: run it as its dense equivalent
    if type(conv) is not nn.Conv2d and not _is_conv_sequence(conv):
        raise BatudeError(f"cannot fuse a {type(conv).__name__}: expected nn.Conv2d, a Sequential of them, TuckerConv2d "
                          "or LowRankConv1x1")
    return _dense_unit(conv, bn, relu)


class FusedBlock(nn.Module):
    """A residual block as fused units: ``units[-1](... units[0](x) ..., residual=shortcut(x))``."""

    def __init__(self, units: list[FusedConv], shortcut: nn.Module | None) -> None:
        super().__init__()
        self.units = nn.ModuleList(units)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = x
        for unit in self.units[:-1]:
            out = unit(out)
        return self.units[-1](out, identity)


def _shortcut(block: nn.Module, mode: str) -> nn.Module | None:
    sc = getattr(block, "downsample", None) if hasattr(block, "downsample") else getattr(block, "shortcut", None)
    if sc is None or (isinstance(sc, nn.Sequential) and len(sc) == 0):
        return None
    if isinstance(sc, nn.Sequential) and len(sc) == 2 and isinstance(sc[1], nn.BatchNorm2d):
        return fuse_unit(sc[0], sc[1], relu=False, mode=mode)
    return sc  # anything else runs as it is


def _fuse_block(block: nn.Module, mode: str) -> FusedBlock:
    depth = 3 if hasattr(block, "conv3") else 2
    units = [fuse_unit(getattr(block, f"conv{i}"), getattr(block, f"bn{i}"), relu=True, mode=mode) for i in range(1, depth + 1)]
    return FusedBlock(units, _shortcut(block, mode))


def fuse_resnet_(model: nn.Module, mode: str = "auto") -> nn.Module:
    """Rewrite, in place, every ResNet block of an eval-mode ``model`` into a :class:`FusedBlock`; return ``model``.

    Recognised blocks: torchvision ``BasicBlock``/``Bottleneck`` and batude's CIFAR ``BasicBlock``
    (their forward is known); a top-level ``conv1``/``bn1`` stem gets its BN folded. ``mode`` is the
    Tucker-2 kernel mode (``auto``, ``fused``, ``split``, ``halo``).

    Raises:
        BatudeError: the model is in training mode, or has no recognised block.
    """
    if model.training:
        raise BatudeError("fuse_resnet_ folds BatchNorm running statistics: call model.eval() first")
    blocks = [(name, m) for name, m in model.named_modules()
              if type(m).__name__ in _BLOCK_NAMES and type(m).__module__ in _BLOCK_MODULES]
    if not blocks:
        raise BatudeError(f"no torchvision/batude ResNet blocks found in {type(model).__name__}; fuse_resnet_ only knows those")
    for name, block in blocks:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, _fuse_block(block, mode))
    if isinstance(getattr(model, "bn1", None), nn.BatchNorm2d) and hasattr(model, "conv1"):
        model.conv1 = fuse_unit(model.conv1, model.bn1, relu=False, mode=mode)
        model.bn1 = nn.Identity()
    return model
