"""Rank-R factorisations of 1x1 convs and Linear layers: two layers, one rank.

A 1x1 conv (groups=1) or a Linear is a matrix product ``W (S, C)``; a truncated SVD gives
``W ~= A (S, R) @ B (R, C)``. The first layer applies ``B`` (and keeps the original stride and
padding for a conv), the second applies ``A`` and the original bias.
"""

from __future__ import annotations

import torch
from torch import nn

from batude.errors import BatudeError
from batude.functional.tucker import lowrank_factors
from batude.nn._conv_attrs import check_decomposable_conv, construct, conv_kwargs, label
from batude.nn.tucker_conv import check_impl

__all__ = ["LowRankConv1x1", "LowRankLinear"]


def _check_rank(rank: int, in_features: int, out_features: int) -> int:
    rank = int(rank)
    if not 1 <= rank <= min(in_features, out_features):
        raise BatudeError(
            f"rank {rank} must satisfy 1 <= rank <= min(in={in_features}, out={out_features})"
        )
    return rank


class _LowRankPair(nn.Module):
    """Shared behaviour: ``first`` (in -> R, no bias) then ``last`` (R -> out, bias)."""

    first: nn.Module
    last: nn.Module

    @property
    def rank(self) -> int:
        return self.last.weight.shape[1]

    @property
    def ranks(self) -> tuple[int]:
        return (self.rank,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.first(x))

    def dense_matrix(self) -> torch.Tensor:
        """``A @ B`` of shape ``(out, in)``."""
        a = self.last.weight.reshape(self.last.weight.shape[0], -1)
        b = self.first.weight.reshape(self.first.weight.shape[0], -1)
        return a @ b

    def _load_factors(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        a, b = lowrank_factors(weight.reshape(weight.shape[0], -1), self.rank)
        with torch.no_grad():
            self.first.weight.copy_(b.reshape(self.first.weight.shape))
            self.last.weight.copy_(a.reshape(self.last.weight.shape))
            if bias is not None:
                self.last.bias.copy_(bias)


class LowRankConv1x1(_LowRankPair):
    """1x1 conv ``C -> S`` as ``1x1 C -> R`` (original stride/padding) then ``1x1 R -> S`` (bias)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        rank: int,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        impl: str = "eager",
    ) -> None:
        super().__init__()
        rank = _check_rank(rank, in_channels, out_channels)
        factory = {"device": device, "dtype": dtype}
        self.first = nn.Conv2d(
            in_channels, rank, 1, stride=stride, padding=padding, dilation=dilation,
            bias=False, padding_mode=padding_mode, **factory,
        )
        self.last = nn.Conv2d(rank, out_channels, 1, bias=bias, **factory)
        self.impl = check_impl(impl, self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if getattr(self, "impl", "eager") == "triton":
            from batude.kernels.layers import lowrank_forward

            out = lowrank_forward(self, x)
            if out is not None:
                return out
        return self.last(self.first(x))

    @classmethod
    def like(cls, conv: nn.Conv2d, rank: int, name: str | None = None, impl: str = "eager") -> "LowRankConv1x1":
        """An untrained layer with ``conv``'s geometry at ``rank``."""
        check_decomposable_conv(conv, name, pointwise=True)
        return construct(
            cls, name, conv, conv.in_channels, conv.out_channels, rank, bias=conv.bias is not None,
            device=conv.weight.device, dtype=conv.weight.dtype, impl=impl, **conv_kwargs(conv),
        )

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, rank: int, name: str | None = None, impl: str = "eager") -> "LowRankConv1x1":
        """Truncated-SVD factorisation of a 1x1 ``conv`` (groups=1) at ``rank``."""
        layer = cls.like(conv, rank, name=name, impl=impl)
        layer._load_factors(conv.weight, conv.bias)
        return layer

    def dense_weight(self) -> torch.Tensor:
        """The equivalent 1x1 kernel ``(S, C, 1, 1)``."""
        return self.dense_matrix()[:, :, None, None]

    def to_conv(self) -> nn.Conv2d:
        """The equivalent dense 1x1 ``nn.Conv2d``."""
        f = self.first
        conv = nn.Conv2d(
            f.in_channels, self.last.out_channels, 1, stride=f.stride, padding=f.padding,
            dilation=f.dilation, bias=self.last.bias is not None, padding_mode=f.padding_mode,
            device=f.weight.device, dtype=f.weight.dtype,
        )
        with torch.no_grad():
            conv.weight.copy_(self.dense_weight())
            if self.last.bias is not None:
                conv.bias.copy_(self.last.bias)
        return conv


class LowRankLinear(_LowRankPair):
    """Linear ``C -> S`` as ``Linear C -> R`` (no bias) then ``Linear R -> S`` (bias)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        rank = _check_rank(rank, in_features, out_features)
        self.first = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.last = nn.Linear(rank, out_features, bias=bias, device=device, dtype=dtype)

    @classmethod
    def like(cls, linear: nn.Linear, rank: int, name: str | None = None) -> "LowRankLinear":
        """An untrained layer with ``linear``'s shape at ``rank``."""
        if not isinstance(linear, nn.Linear):
            raise BatudeError(f"{label(name, linear)} is a {type(linear).__name__}, not an nn.Linear")
        return construct(
            cls, name, linear, linear.in_features, linear.out_features, rank, bias=linear.bias is not None,
            device=linear.weight.device, dtype=linear.weight.dtype,
        )

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int, name: str | None = None) -> "LowRankLinear":
        """Truncated-SVD factorisation of ``linear`` at ``rank``."""
        layer = cls.like(linear, rank, name=name)
        layer._load_factors(linear.weight, linear.bias)
        return layer

    def dense_weight(self) -> torch.Tensor:
        """The equivalent weight ``(out_features, in_features)``."""
        return self.dense_matrix()

    def to_linear(self) -> nn.Linear:
        """The equivalent dense ``nn.Linear``."""
        linear = nn.Linear(
            self.first.in_features, self.last.out_features, bias=self.last.bias is not None,
            device=self.first.weight.device, dtype=self.first.weight.dtype,
        )
        with torch.no_grad():
            linear.weight.copy_(self.dense_weight())
            if self.last.bias is not None:
                linear.bias.copy_(self.last.bias)
        return linear
