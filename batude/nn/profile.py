"""Per-layer shapes and analytic costs of a whole model, from one forward pass.

:func:`profile_model` runs the model once (batch 1, no grad) with forward hooks on every
``nn.Conv2d`` / ``nn.Linear`` and every batude factorised layer (which is reported as one unit,
not as its inner convs), records input/output sizes, and evaluates the analytic cost model of
:mod:`batude.functional.cost`. Counted: conv and linear multiply-accumulates, which is exactly what
``torch.utils.flop_counter.FlopCounterMode`` counts for such models (it reports FLOPs = 2 * MACs);
BatchNorm, activations, pooling and residual adds are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from batude.errors import BatudeError
from batude.functional.cost import ConvGeometry, LayerKind, layer_macs, layer_params, prod
from batude.nn.decompose import DECOMPOSED_TYPES, decomposed_kind, kind_of

__all__ = ["LayerProfile", "ModelProfile", "profile_model", "flop_counter_macs"]


@dataclass(frozen=True)
class LayerProfile:
    """One conv/linear unit. ``kind`` is None for layers that admit no factorisation (grouped)."""

    name: str
    module_type: str
    kind: LayerKind | None
    geometry: ConvGeometry
    ranks: tuple[int, ...] | None  # None: dense
    macs: int  # per image
    params: int

    @property
    def dense_macs(self) -> int:
        return layer_macs(self.kind, self.geometry, None)

    @property
    def dense_params(self) -> int:
        return layer_params(self.kind, self.geometry, None)


@dataclass(frozen=True)
class ModelProfile:
    """All conv/linear units of a model, in forward order, for one input shape."""

    input_shape: tuple[int, ...]
    layers: list[LayerProfile] = field(default_factory=list)

    @property
    def macs(self) -> int:
        """Counted MACs per image."""
        return sum(layer.macs for layer in self.layers)

    @property
    def flops(self) -> int:
        return 2 * self.macs

    @property
    def params(self) -> int:
        """Parameters of the counted units (conv/linear weights and biases)."""
        return sum(layer.params for layer in self.layers)

    def by_name(self) -> dict[str, LayerProfile]:
        return {layer.name: layer for layer in self.layers}


def _unit_geometry(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> ConvGeometry:
    if isinstance(module, (nn.Linear,)) or decomposed_kind(module) is LayerKind.LOWRANK_LINEAR:
        in_f, out_f = x.shape[-1], y.shape[-1]
        positions = x[0].numel() // in_f
        bias = (module.last if hasattr(module, "last") else module).bias is not None
        return ConvGeometry(out_f, in_f, (1, 1), positions, positions, 1, bias)
    if isinstance(module, nn.Conv2d):
        groups = module.groups
        kernel, bias = tuple(module.kernel_size), module.bias is not None
    else:  # TuckerConv2d / LowRankConv1x1: kernel from the core (or first) conv, bias from last
        groups = 1
        kernel = tuple(getattr(module, "core", module.first).kernel_size)
        bias = module.last.bias is not None
    return ConvGeometry(
        out_channels=y.shape[1], in_channels=x.shape[1], kernel=kernel,
        in_positions=prod(x.shape[2:]), out_positions=prod(y.shape[2:]), groups=groups, bias=bias,
    )


def _zeros_input(model: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    """Zeros of ``shape`` on the model's device, in its floating dtype."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    return torch.zeros(shape, device=device, dtype=dtype)


def _units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Conv/linear units in module order; a factorised layer hides its inner convs."""
    units, skip = [], []
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in skip):
            continue
        if isinstance(module, DECOMPOSED_TYPES):
            units.append((name, module))
            skip.append(name)
        elif isinstance(module, (nn.Conv2d, nn.Linear)):
            units.append((name, module))
    return units


def profile_model(model: nn.Module, input_shape: Sequence[int]) -> ModelProfile:
    """Run ``model`` once on zeros of ``input_shape`` (batch first) and cost every unit.

    Costs are per image: a batch of N costs N times as much. The model's train/eval mode is
    restored afterwards. A unit that runs more than once (weight sharing) is counted per call.
    """
    shape = tuple(int(d) for d in input_shape)
    if len(shape) < 2 or any(d <= 0 for d in shape):
        raise BatudeError(f"input shape {list(shape)} is invalid: give N,C,H,W with positive sizes, e.g. 1,3,224,224")
    records: list[LayerProfile] = []
    handles = []

    def hook(name: str):
        def record(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            geometry = _unit_geometry(module, args[0], output)
            dkind = decomposed_kind(module)
            kind = dkind if dkind is not None else kind_of(module)
            ranks = tuple(module.ranks) if dkind is not None else None
            records.append(LayerProfile(
                name=name, module_type=type(module).__name__, kind=kind, geometry=geometry,
                ranks=ranks, macs=layer_macs(kind, geometry, ranks),
                params=layer_params(kind, geometry, ranks),
            ))
        return record

    for name, module in _units(model):
        handles.append(module.register_forward_hook(hook(name)))
    try:
        _forward(model, shape)
    finally:
        for h in handles:
            h.remove()
    return ModelProfile(input_shape=shape, layers=records)


def _forward(model: nn.Module, shape: tuple[int, ...]) -> None:
    """One no-grad eval-mode forward on zeros; a shape error becomes a one-line BatudeError."""
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(_zeros_input(model, shape))
    except (RuntimeError, ValueError) as err:  # BatchNorm raises ValueError on a wrong-rank input
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BatudeError(f"the model does not run on input shape {list(shape)} ({first}); pass the right input shape") from None
    finally:
        model.train(was_training)


def flop_counter_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Independent cross-check: ``FlopCounterMode`` total FLOPs / 2 for one forward on zeros.

    Per image when ``input_shape[0] == 1``. Equals :func:`profile_model`'s ``macs`` on models whose
    counted ops are convs and linears (the cost model's contract, enforced by the tests).
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        _forward(model, tuple(int(d) for d in input_shape))
    return counter.get_total_flops() // 2
