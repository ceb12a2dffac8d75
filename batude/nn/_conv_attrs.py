"""Copying a ``nn.Conv2d``'s attributes onto the convs of a factorised chain."""

from __future__ import annotations

from typing import Any

from torch import nn

from batude.errors import BatudeError


def conv_kwargs(conv: nn.Conv2d) -> dict[str, Any]:
    """Every geometric attribute of ``conv``, per dimension, as constructor keyword arguments."""
    return {
        "stride": tuple(conv.stride),
        "padding": conv.padding if isinstance(conv.padding, str) else tuple(conv.padding),
        "dilation": tuple(conv.dilation),
        "padding_mode": conv.padding_mode,
    }


def check_decomposable_conv(conv: nn.Module, name: str | None, *, pointwise: bool) -> None:
    """Refuse what a channel-mode factorisation cannot represent, naming the layer.

    ``pointwise=True`` additionally requires a 1x1 kernel (for :class:`LowRankConv1x1`).
    """
    label = f"layer '{name}'" if name else f"layer {conv!r}"
    if type(conv) is not nn.Conv2d:
        raise BatudeError(f"{label} is a {type(conv).__name__}, not an nn.Conv2d; exclude it with the layer filter")
    if conv.groups != 1:
        raise BatudeError(
            f"{label} is a grouped convolution (groups={conv.groups}) and cannot be factorised over "
            "its channel modes; exclude it with the layer filter (grouped convs are left dense)"
        )
    if pointwise and tuple(conv.kernel_size) != (1, 1):
        raise BatudeError(f"{label} has kernel {tuple(conv.kernel_size)}; LowRankConv1x1 needs 1x1, use TuckerConv2d")


def construct(cls: type, name: str | None, source: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """``cls(*args, **kwargs)``, with the layer named in any :class:`BatudeError` it raises."""
    try:
        return cls(*args, **kwargs)
    except BatudeError as err:
        raise BatudeError(f"{label(name, source)}: {err}") from None


def label(name: str | None, module: nn.Module) -> str:
    """How error messages name a layer."""
    return f"layer '{name}'" if name else f"layer {module!r}"
