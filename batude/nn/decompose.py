"""Which factorisation a layer gets, and building the factorised module (from weights or empty)."""

from __future__ import annotations

import enum
import logging

from torch import nn

from batude.errors import BatudeError
from batude.functional.cost import LayerKind
from batude.nn.lowrank import LowRankConv1x1, LowRankLinear
from batude.nn.tucker_conv import IMPLS, TuckerConv2d, check_impl

__all__ = ["Init", "DECOMPOSED_TYPES", "kind_of", "decomposed_kind", "decompose_module", "densify", "dense_equivalent",
           "set_impl"]

log = logging.getLogger(__name__)

DECOMPOSED_TYPES = (TuckerConv2d, LowRankConv1x1, LowRankLinear)


class Init(str, enum.Enum):
    """How :func:`decompose_module` fills the new weights."""

    DECOMPOSE = "decompose"  # factorise the dense weights (Tucker-2 HOSVD/HOOI or truncated SVD)
    EMPTY = "empty"  # structure only (default init); for loading a checkpoint's state_dict


def kind_of(module: nn.Module) -> LayerKind | None:
    """The factorisation a *dense* layer admits, or None (grouped/other convs, other modules)."""
    if type(module) is nn.Conv2d:
        if module.groups != 1:
            return None
        return LayerKind.LOWRANK_CONV if tuple(module.kernel_size) == (1, 1) else LayerKind.TUCKER2
    if type(module) is nn.Linear:
        return LayerKind.LOWRANK_LINEAR
    return None


def decomposed_kind(module: nn.Module) -> LayerKind | None:
    """The kind of an already factorised batude layer, or None."""
    if isinstance(module, TuckerConv2d):
        return LayerKind.TUCKER2
    if isinstance(module, LowRankConv1x1):
        return LayerKind.LOWRANK_CONV
    if isinstance(module, LowRankLinear):
        return LayerKind.LOWRANK_LINEAR
    return None


def decompose_module(
    module: nn.Module,
    kind: LayerKind,
    ranks: tuple[int, ...],
    *,
    name: str | None = None,
    init: Init = Init.DECOMPOSE,
    hooi_iters: int = 0,
) -> nn.Module:
    """The factorised replacement of a dense ``module`` at ``ranks``.

    Raises:
        BatudeError: the module does not admit ``kind`` (names ``name``), or ranks out of range.
    """
    actual = kind_of(module)
    if actual is not kind:
        what = actual.value if actual else f"not factorisable ({type(module).__name__})"
        raise BatudeError(
            f"layer '{name}' is {what}, but the plan says {kind.value}; "
            "was the plan made for another architecture?"
        )
    if len(ranks) != kind.n_ranks:
        raise BatudeError(f"layer '{name}': {kind.value} takes {kind.n_ranks} rank(s), got {list(ranks)}")
    decompose = Init(init) is Init.DECOMPOSE
    if kind is LayerKind.TUCKER2:
        if decompose:
            return TuckerConv2d.from_conv(module, ranks, hooi_iters=hooi_iters, name=name)
        return TuckerConv2d.like(module, ranks, name=name)
    if kind is LayerKind.LOWRANK_CONV:
        if decompose:
            return LowRankConv1x1.from_conv(module, ranks[0], name=name)
        return LowRankConv1x1.like(module, ranks[0], name=name)
    if decompose:
        return LowRankLinear.from_linear(module, ranks[0], name=name)
    return LowRankLinear.like(module, ranks[0], name=name)


def densify(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every factorised layer rebuilt as its dense equivalent.

    Same function, dense cost: the dense baseline of a compressed checkpoint for latency runs.
    """
    import copy

    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, DECOMPOSED_TYPES):
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, dense_equivalent(module))
    return model


def dense_equivalent(module: nn.Module) -> nn.Module:
    """The dense ``nn.Conv2d`` / ``nn.Linear`` a factorised layer computes."""
    return module.to_linear() if isinstance(module, LowRankLinear) else module.to_conv()


def set_impl(model: nn.Module, impl: str) -> list[str]:
    """Set ``impl`` (``eager`` or ``triton``) on every ``TuckerConv2d`` / ``LowRankConv1x1``; returns their names.

    Layers the kernels cannot run (non-zero padding modes, asymmetric 'same' padding, ranks > 512)
    keep ``eager`` and are logged; ``LowRankLinear`` has no kernel and is left alone.
    """
    if impl not in IMPLS:
        raise BatudeError(f"unknown impl '{impl}'; use one of {', '.join(IMPLS)}")
    changed = []
    for name, module in model.named_modules():
        if isinstance(module, (TuckerConv2d, LowRankConv1x1)):
            try:
                module.impl = check_impl(impl, module)
            except BatudeError as err:
                log.warning("layer '%s' stays eager: %s", name, err)
                continue
            changed.append(name)
    return changed
