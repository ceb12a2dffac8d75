"""``TuckerConv2d``: a conv factorised over its channel modes (METHOD.md section 1).

Run time is three convolutions::

    first: 1x1 C -> R2   (weight V^T, no bias)
    core:  kh x kw R2 -> R1 (weight G; the original stride, padding, dilation, padding_mode)
    last:  1x1 R1 -> S   (weight U; the original bias)

Padding after the first (bias-free, per-pixel linear) 1x1 commutes with it for every padding mode,
so at full ranks (R1 = S, R2 = C) the chain reproduces the original conv up to float error.

``impl="triton"`` runs inference through the fused Triton kernel (``batude.kernels``, imported
lazily in ``forward``); training, tracing for lowering/export and unsupported geometry still run
the three convs. ``impl`` is a runtime choice: not stored in the state_dict.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
from torch import nn

from batude.functional.tucker import tucker2_decompose, tucker2_reconstruct
from batude.nn._conv_attrs import check_decomposable_conv, construct, conv_kwargs
from batude.errors import BatudeError

__all__ = ["TuckerConv2d", "IMPLS", "check_impl", "ensure_kernels_importable"]

IMPLS = ("eager", "triton")


def ensure_kernels_importable() -> None:
    """Make ``batude.kernels`` importable from a source checkout that is only on ``PYTHONPATH``.

    An installed batude maps the top-level ``kernels/`` folder to ``batude.kernels`` (setup.py
    ``package_dir``); a bare checkout does not, so the folder is registered under that name here.
    """
    if "batude.kernels" in sys.modules or importlib.util.find_spec("batude.kernels") is not None:
        return
    root = Path(__file__).resolve().parents[2] / "kernels"
    if not (root / "__init__.py").is_file():
        raise BatudeError("batude.kernels is missing from this installation; reinstall batude (pip install 'batude[gpu]')")
    spec = importlib.util.spec_from_file_location("batude.kernels", root / "__init__.py", submodule_search_locations=[str(root)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["batude.kernels"] = module
    spec.loader.exec_module(module)
    setattr(sys.modules["batude"], "kernels", module)


def check_impl(impl: str, layer: nn.Module) -> str:
    """Validate ``impl`` for ``layer`` (the kernels support zero padding and ranks up to 512)."""
    if impl not in IMPLS:
        raise BatudeError(f"unknown impl '{impl}'; use one of {', '.join(IMPLS)}")
    if impl == "triton":
        ensure_kernels_importable()
        from batude.kernels.layers import kernel_unsupported_reason

        reason = kernel_unsupported_reason(layer)
        if reason:
            raise BatudeError(f"impl='triton' cannot run {type(layer).__name__} with {reason}; keep impl='eager'")
        from batude.kernels import register_ops

        register_ops()  # now, not at the first forward: a FlopCounterMode opened before that would miss the ops
    return impl


class TuckerConv2d(nn.Module):
    """Tucker-2 conv: ``first`` (1x1 C->R2) -> ``core`` (kxk R2->R1) -> ``last`` (1x1 R1->S).

    Input ``(N, C, H, W)``, output ``(N, S, H', W')``, exactly like the conv it replaces.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        ranks: tuple[int, int],
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
        r1, r2 = int(ranks[0]), int(ranks[1])
        if not (1 <= r1 <= out_channels and 1 <= r2 <= in_channels):
            raise BatudeError(
                f"Tucker ranks (R1={r1}, R2={r2}) must satisfy 1 <= R1 <= {out_channels} (out "
                f"channels) and 1 <= R2 <= {in_channels} (in channels)"
            )
        factory = {"device": device, "dtype": dtype}
        self.first = nn.Conv2d(in_channels, r2, 1, bias=False, **factory)
        self.core = nn.Conv2d(
            r2, r1, kernel_size, stride=stride, padding=padding, dilation=dilation,
            bias=False, padding_mode=padding_mode, **factory,
        )
        self.last = nn.Conv2d(r1, out_channels, 1, bias=bias, **factory)
        self.impl = check_impl(impl, self)

    @property
    def ranks(self) -> tuple[int, int]:
        """``(R1, R2)``: output-side and input-side ranks."""
        return self.core.out_channels, self.core.in_channels

    @property
    def in_channels(self) -> int:
        return self.first.in_channels

    @property
    def out_channels(self) -> int:
        return self.last.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if getattr(self, "impl", "eager") == "triton":
            from batude.kernels.layers import tucker2_forward

            out = tucker2_forward(self, x)
            if out is not None:
                return out
        return self.last(self.core(self.first(x)))

    @classmethod
    def from_conv(
        cls,
        conv: nn.Conv2d,
        ranks: tuple[int, int],
        hooi_iters: int = 0,
        name: str | None = None,
        impl: str = "eager",
    ) -> "TuckerConv2d":
        """Decompose ``conv``: truncated HOSVD, then ``hooi_iters`` HOOI steps (:func:`batude.functional.tucker2_decompose`).

        Copies stride, padding (ints, tuples, 'same'/'valid'), dilation, padding_mode, bias,
        device and dtype; refuses grouped convs, naming ``name`` in the error.
        """
        layer = cls.like(conv, ranks, name=name, impl=impl)
        core, u, v = tucker2_decompose(conv.weight, layer.ranks, hooi_iters=hooi_iters)
        with torch.no_grad():
            layer.first.weight.copy_(v.t()[:, :, None, None])
            layer.core.weight.copy_(core)
            layer.last.weight.copy_(u[:, :, None, None])
            if conv.bias is not None:
                layer.last.bias.copy_(conv.bias)
        return layer

    @classmethod
    def like(cls, conv: nn.Conv2d, ranks: tuple[int, int], name: str | None = None, impl: str = "eager") -> "TuckerConv2d":
        """An untrained layer with ``conv``'s geometry at ``ranks`` (weights to be loaded later)."""
        check_decomposable_conv(conv, name, pointwise=False)
        return construct(
            cls, name, conv, conv.in_channels, conv.out_channels, tuple(conv.kernel_size), ranks,
            bias=conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype, impl=impl, **conv_kwargs(conv),
        )

    def dense_weight(self) -> torch.Tensor:
        """The equivalent dense kernel ``(S, C, kh, kw)``."""
        v = self.first.weight[:, :, 0, 0].t()
        u = self.last.weight[:, :, 0, 0]
        return tucker2_reconstruct(self.core.weight, u, v)

    def to_conv(self) -> nn.Conv2d:
        """The equivalent dense ``nn.Conv2d`` (same geometry, rebuilt weight, same bias)."""
        core = self.core
        conv = nn.Conv2d(
            self.in_channels, self.out_channels, core.kernel_size, stride=core.stride,
            padding=core.padding, dilation=core.dilation, bias=self.last.bias is not None,
            padding_mode=core.padding_mode, device=core.weight.device, dtype=core.weight.dtype,
        )
        with torch.no_grad():
            conv.weight.copy_(self.dense_weight())
            if self.last.bias is not None:
                conv.bias.copy_(self.last.bias)
        return conv

    def extra_repr(self) -> str:
        r1, r2 = self.ranks
        impl = "" if getattr(self, "impl", "eager") == "eager" else f", impl={self.impl}"
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.core.kernel_size}, ranks=(R1={r1}, R2={r2}){impl}"
