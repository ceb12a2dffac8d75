"""Per-layer latency profile: each Tucker layer, dense vs every exact chain variant, at the model's shapes.

For a factorised model, :func:`profile_layers` records each ``TuckerConv2d``'s input shape with one
forward pass, then times the dense conv rebuilt from it and each variant of
:func:`batude.export.lower.variant_module` on a random input of that shape, so a user sees which
layers pay for their FLOPs and which do not (and which variant the latency policy should pick).
Given the device's :class:`~batude.bench.roofline.Ceilings`, each row also carries its form's roofline
(``roofline``: floor ms, bound, achieved rates, ``floor_share``): how far the time is from what the
hardware allows.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from batude._device import resolve_device
from batude.bench.roofline import Ceilings, layer_work, roofline
from batude.bench.timing import noise_summarised, time_callable
from batude.export.lower import Variant, variant_macs, variant_module
from batude.nn.profile import profile_model
from batude.nn.tucker_conv import TuckerConv2d

__all__ = ["layer_input_shapes", "profile_layers"]


def layer_input_shapes(model: nn.Module, input_shape: Sequence[int], names: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Per-image input shape of each named module, from one forward pass on ``input_shape``."""
    shapes: dict[str, tuple[int, ...]] = {}

    def recorder(name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:  # returns None: output unchanged
            shapes.setdefault(name, tuple(args[0].shape[1:]))
        return hook

    handles = [model.get_submodule(n).register_forward_hook(recorder(n)) for n in names]
    try:
        profile_model(model, input_shape)  # one forward (and a clear error on a wrong shape)
    finally:
        for h in handles:
            h.remove()
    return shapes


def profile_layers(model: nn.Module, input_shape: Sequence[int], batch: int = 1, dtype: torch.dtype = torch.float32,
                   device: str = "cpu", iters: int = 30, warmup: int = 5, ceilings: Ceilings | None = None) -> list[dict]:
    """Rows ``{layer, variant, macs, median_ms, speedup_vs_dense, ...}`` for every Tucker layer (eager), each with
    its ``roofline`` where ``ceilings`` are given."""
    dev = resolve_device(device)
    geometry = {l.name: l.geometry for l in profile_model(model, input_shape).layers}
    tucker = [name for name, m in model.named_modules() if isinstance(m, TuckerConv2d)]
    with noise_summarised("per-layer profile"):
        rows = _profile(model, layer_input_shapes(model, input_shape, tucker), geometry, batch, dtype, dev, iters, warmup)
    if ceilings is not None:
        size = dtype.itemsize
        for r in rows:
            work = layer_work(r["variant"], geometry[r["layer"]], r["ranks"], batch, size)
            r["roofline"] = roofline(work, ceilings, r["median_ms"])
    return rows


def _profile(model, shapes, geometry, batch, dtype, dev, iters, warmup) -> list[dict]:
    rows = []
    for name, shape in shapes.items():
        layer = model.get_submodule(name)
        g = geometry[name]
        x = torch.randn((batch, *shape), device=dev, dtype=dtype)
        dense_ms = None
        for variant in (Variant.DENSE, Variant.CHAIN, Variant.MERGE_FIRST, Variant.MERGE_LAST):
            module = variant_module(layer, variant).eval().to(dev, dtype)
            stats = time_callable(lambda: module(x), iters=iters, warmup=warmup, device=dev, batch=batch, label=f"{name} {variant.value}")
            dense_ms = stats.median_ms if variant is Variant.DENSE else dense_ms
            rows.append({
                "layer": name, "variant": variant.value, "ranks": list(layer.ranks), "input_shape": list(shape), "batch": batch,
                "macs": variant_macs(variant, g.out_channels, g.in_channels, g.kernel_area, layer.ranks, g.in_positions, g.out_positions),
                "median_ms": stats.median_ms, "cv": stats.cv, "speedup_vs_dense": dense_ms / stats.median_ms,
            })
    return rows
