"""Analytic cost formulas (pure functions of layer dimensions).

Units: every ``*_macs`` function returns multiply-accumulates **per image** (per sample); FLOPs are
``2 * MACs`` (:func:`flops`), the convention of ``torch.utils.flop_counter.FlopCounterMode``. Bias
additions, BatchNorm, activations, pooling and residual adds are not counted (FlopCounterMode does
not count them either). Parameter counts include biases.

Notation (METHOD.md section 2): a conv maps ``C`` input to ``S`` output channels with a ``kh x kw``
kernel; its input is ``H x W`` and its output ``H' x W'``. ``positions`` is the number of
spatial positions (``H' * W'`` for a conv, the product of the non-feature dims for a Linear).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Sequence

__all__ = [
    "LayerKind",
    "ConvGeometry",
    "layer_macs",
    "layer_params",
    "max_ranks",
    "conv_output_size",
    "dense_conv_macs",
    "dense_conv_params",
    "tucker2_macs",
    "tucker2_params",
    "lowrank_macs",
    "lowrank_params",
    "flops",
]


@dataclass(frozen=True)
class ConvGeometry:
    """Shape facts of one conv (or Linear, with ``kernel=(1, 1)`` and ``positions`` set).

    ``in_positions`` = H*W (where the first 1x1 of a Tucker chain runs), ``out_positions`` = H'*W'.
    """

    out_channels: int
    in_channels: int
    kernel: tuple[int, int]
    in_positions: int
    out_positions: int
    groups: int = 1
    bias: bool = False

    @property
    def kernel_area(self) -> int:
        return self.kernel[0] * self.kernel[1]

    def to_dict(self) -> dict:
        return {
            "out_channels": self.out_channels,
            "in_channels": self.in_channels,
            "kernel": list(self.kernel),
            "in_positions": self.in_positions,
            "out_positions": self.out_positions,
            "groups": self.groups,
            "bias": self.bias,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ConvGeometry":
        return cls(
            out_channels=int(d["out_channels"]),
            in_channels=int(d["in_channels"]),
            kernel=(int(d["kernel"][0]), int(d["kernel"][1])),
            in_positions=int(d["in_positions"]),
            out_positions=int(d["out_positions"]),
            groups=int(d.get("groups", 1)),
            bias=bool(d.get("bias", False)),
        )


def conv_output_size(
    size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1
) -> int:
    """Output length of one spatial dim of a conv with symmetric integer ``padding``."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def dense_conv_macs(g: ConvGeometry) -> int:
    """MACs of the dense conv: ``H'W' * S * (C / groups) * kh * kw``."""
    return g.out_positions * g.out_channels * (g.in_channels // g.groups) * g.kernel_area


def dense_conv_params(g: ConvGeometry) -> int:
    """Weights (``S * C/groups * kh * kw``) plus ``S`` bias terms when present."""
    return g.out_channels * (g.in_channels // g.groups) * g.kernel_area + (
        g.out_channels if g.bias else 0
    )


def tucker2_macs(g: ConvGeometry, r1: int, r2: int) -> int:
    """MACs of the Tucker-2 chain ``1x1 C->R2, kxk R2->R1, 1x1 R1->S``.

    ``H*W*C*R2 + H'W'*kh*kw*R2*R1 + H'W'*R1*S``: the first 1x1 runs at the input resolution.
    """
    return (
        g.in_positions * g.in_channels * r2
        + g.out_positions * g.kernel_area * r2 * r1
        + g.out_positions * r1 * g.out_channels
    )


def tucker2_params(g: ConvGeometry, r1: int, r2: int) -> int:
    """``C*R2 + kh*kw*R2*R1 + R1*S`` (+ ``S`` bias)."""
    return (
        g.in_channels * r2
        + g.kernel_area * r2 * r1
        + r1 * g.out_channels
        + (g.out_channels if g.bias else 0)
    )


def lowrank_macs(g: ConvGeometry, rank: int) -> int:
    """MACs of a rank-``R`` 1x1 conv / Linear pair: ``H'W' * (C*R + R*S)``.

    A strided 1x1 conv keeps its stride on the first factor, so both factors run at ``H'W'``.
    """
    return g.out_positions * (g.in_channels * rank + rank * g.out_channels)


def lowrank_params(g: ConvGeometry, rank: int) -> int:
    """``C*R + R*S`` (+ ``S`` bias)."""
    return g.in_channels * rank + rank * g.out_channels + (g.out_channels if g.bias else 0)


def flops(macs: int) -> int:
    """FLOPs = 2 * MACs (the FlopCounterMode convention)."""
    return 2 * macs


def prod(values: Sequence[int]) -> int:
    """Integer product (``math.prod`` with an explicit int start)."""
    return math.prod(values, start=1)


class LayerKind(str, enum.Enum):
    """How a layer is (or can be) factorised; the string values appear in plans and reports."""

    TUCKER2 = "tucker2"  # kxk conv -> 1x1, kxk, 1x1 chain; ranks (R1, R2)
    LOWRANK_CONV = "lowrank_conv1x1"  # 1x1 conv -> two 1x1 convs; ranks (R,)
    LOWRANK_LINEAR = "lowrank_linear"  # Linear -> two Linears; ranks (R,)

    @property
    def n_ranks(self) -> int:
        return 2 if self is LayerKind.TUCKER2 else 1


def max_ranks(kind: LayerKind, g: ConvGeometry) -> tuple[int, ...]:
    """Full ranks: the ranks of the unfoldings' shapes.

    Tucker-2: ``(min(S, C*kh*kw), min(C, S*kh*kw))`` (usually ``(S, C)``; the cap matters for thin
    kernels such as 1x3 with few input channels, where the decomposition is already exact there).
    Low-rank pair: ``(min(C, S),)``.
    """
    if kind is LayerKind.TUCKER2:
        k = g.kernel_area
        return (min(g.out_channels, g.in_channels * k), min(g.in_channels, g.out_channels * k))
    return (min(g.in_channels, g.out_channels),)


def layer_macs(kind: LayerKind, g: ConvGeometry, ranks: Sequence[int] | None) -> int:
    """MACs per image of a layer of ``kind`` at ``ranks`` (``None``: the dense layer)."""
    if ranks is None:
        return dense_conv_macs(g)
    if kind is LayerKind.TUCKER2:
        return tucker2_macs(g, ranks[0], ranks[1])
    return lowrank_macs(g, ranks[0])


def layer_params(kind: LayerKind, g: ConvGeometry, ranks: Sequence[int] | None) -> int:
    """Parameters of a layer of ``kind`` at ``ranks`` (``None``: the dense layer), biases included."""
    if ranks is None:
        return dense_conv_params(g)
    if kind is LayerKind.TUCKER2:
        return tucker2_params(g, ranks[0], ranks[1])
    return lowrank_params(g, ranks[0])
