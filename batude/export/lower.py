"""Lowering for deployment: exact chain variants per Tucker layer, then BatchNorm folding.

Variants of a ``TuckerConv2d`` (all compute the same function; DEPLOYMENT.md):

=============  ==========================================  =========================================
``chain``      1x1 C->R2, kxk R2->R1, 1x1 R1->S            ``HW*C*R2 + H'W'*k*R2*R1 + H'W'*R1*S`` MACs
``merge_first`` kxk C->R1 (core x V), 1x1 R1->S             ``H'W'*k*C*R1 + H'W'*R1*S``
``merge_last``  1x1 C->R2, kxk R2->S (U x core)             ``HW*C*R2 + H'W'*k*R2*S``
``dense``      kxk C->S rebuilt from the factors            ``H'W'*k*C*S``
``triton``     the chain, run by batude's fused Triton       as ``chain`` (the kernel's ``fused`` mode
               kernel (``impl="triton"``, CUDA only)         recomputes the first 1x1 per tap)
=============  ==========================================  =========================================

``triton`` is a runtime choice (a latency table measured with ``--backend triton`` may pick it per
layer; a low-rank 1x1 pair may take it too): ONNX has no Triton kernels, so ``lower`` exports it as
the ``chain``.

``lower(model, policy)`` picks one per layer (``min-flops``: fewest MACs at the model's shapes;
``chain``: always the chain; a ``{layer: variant}`` dict overrides), replaces the layers, traces
the model with ``torch.fx`` and folds every BatchNorm that directly follows a conv into that conv.
The result is an eval-mode ``GraphModule`` of plain ``Conv2d`` layers, ready for ONNX export.
"""

from __future__ import annotations

import copy
import enum
from typing import Mapping, Sequence

import torch
from torch import fx, nn

from batude.errors import BatudeError
from batude.nn.profile import profile_model
from batude.nn.lowrank import LowRankConv1x1
from batude.nn.tucker_conv import TuckerConv2d, check_impl

__all__ = ["Variant", "variant_macs", "variant_module", "apply_variants", "plain_chain", "choose_variants", "fold_batchnorm", "lower"]


class Variant(str, enum.Enum):
    CHAIN = "chain"
    MERGE_FIRST = "merge_first"
    MERGE_LAST = "merge_last"
    DENSE = "dense"
    TRITON = "triton"


def variant_macs(variant: Variant, out_ch: int, in_ch: int, k: int, ranks: tuple[int, int],
                 in_positions: int, out_positions: int) -> int:
    """MACs per image of ``variant`` (``k`` = kh*kw; positions = H*W in, H'*W' out)."""
    r1, r2 = ranks
    if Variant(variant) is Variant.TRITON:
        variant = Variant.CHAIN
    return {
        Variant.CHAIN: in_positions * in_ch * r2 + out_positions * k * r2 * r1 + out_positions * r1 * out_ch,
        Variant.MERGE_FIRST: out_positions * k * in_ch * r1 + out_positions * r1 * out_ch,
        Variant.MERGE_LAST: in_positions * in_ch * r2 + out_positions * k * r2 * out_ch,
        Variant.DENSE: out_positions * k * in_ch * out_ch,
    }[Variant(variant)]


def _conv_like(core: nn.Conv2d, in_ch: int, out_ch: int, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Conv2d:
    conv = nn.Conv2d(in_ch, out_ch, core.kernel_size, stride=core.stride, padding=core.padding, dilation=core.dilation,
                     bias=bias is not None, padding_mode=core.padding_mode, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
    return conv


def _pointwise(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Conv2d:
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], 1, bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
    return conv


@torch.no_grad()
def variant_module(layer: TuckerConv2d | LowRankConv1x1, variant: Variant | str) -> nn.Module:
    """An exact replacement of ``layer`` built as ``variant`` (new modules; ``layer`` is untouched).

    A low-rank 1x1 pair has ``chain`` and ``triton`` only. ``triton`` raises BatudeError where the
    kernels cannot run the layer (e.g. padded ranks above 512).
    """
    variant = Variant(variant)
    if variant in (Variant.CHAIN, Variant.TRITON):
        copied = copy.deepcopy(layer)
        if variant is Variant.TRITON:
            copied.impl = check_impl("triton", copied)
        return copied
    if not isinstance(layer, TuckerConv2d):
        raise BatudeError(f"a {type(layer).__name__} has the chain and triton forms only, not '{variant.value}'")
    core, bias = layer.core, layer.last.bias
    v = layer.first.weight[:, :, 0, 0]  # (R2, C) = V^T
    u = layer.last.weight[:, :, 0, 0]  # (S, R1)
    if variant is Variant.DENSE:
        return layer.to_conv()
    if variant is Variant.MERGE_FIRST:  # core x2 V: (R1, C, kh, kw)
        merged = _conv_like(core, layer.in_channels, core.out_channels, torch.einsum("abhw,bc->achw", core.weight, v), None)
        return nn.Sequential(merged, _pointwise(layer.last.weight, bias))
    merged_last = torch.einsum("sa,abhw->sbhw", u, core.weight)  # U x1 core: (S, R2, kh, kw)
    return nn.Sequential(_pointwise(layer.first.weight, None), _conv_like(core, core.in_channels, layer.out_channels, merged_last, bias))


def choose_variants(model: nn.Module, input_shape: Sequence[int], policy: str | Mapping[str, str] = "min-flops") -> dict[str, Variant]:
    """Variant per Tucker layer: ``min-flops`` (fewest MACs, ties -> fewer convs), ``chain``, or a mapping."""
    tucker = {name: m for name, m in model.named_modules() if isinstance(m, TuckerConv2d)}
    if isinstance(policy, Mapping):
        unknown = set(policy) - set(tucker)
        if unknown:
            raise BatudeError(f"variant given for {sorted(unknown)[:3]}, which are not Tucker layers of this model")
        return {name: Variant(policy.get(name, Variant.CHAIN)) for name in tucker}
    if policy == "chain":
        return {name: Variant.CHAIN for name in tucker}
    if policy != "min-flops":
        raise BatudeError(f"unknown variant policy '{policy}'; use chain, min-flops, or a per-layer mapping")
    layers = {l.name: l for l in profile_model(model, input_shape).layers}
    order = [Variant.DENSE, Variant.MERGE_FIRST, Variant.MERGE_LAST, Variant.CHAIN]  # fewer convs first on ties
    chosen = {}
    for name, layer in tucker.items():
        g = layers[name].geometry
        cost = {v: variant_macs(v, g.out_channels, g.in_channels, g.kernel_area, layer.ranks, g.in_positions, g.out_positions) for v in order}
        chosen[name] = min(order, key=lambda v: cost[v])
    return chosen


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1.0 / torch.sqrt(bn.running_var + bn.eps)
    shift = (bn.bias if bn.affine else 0.0) - bn.running_mean * scale
    with torch.no_grad():
        conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        new_bias = bias * scale + shift
        if conv.bias is None:
            conv.bias = nn.Parameter(new_bias.to(conv.weight.dtype))
        else:
            conv.bias.copy_(new_bias)


def fold_batchnorm(gm: fx.GraphModule) -> int:
    """Fold each eval-mode BatchNorm2d whose only input is a Conv2d used nowhere else; returns the count."""
    modules = dict(gm.named_modules())
    folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0]
        if not (isinstance(src, fx.Node) and src.op == "call_module" and isinstance(modules.get(src.target), nn.Conv2d)
                and len(src.users) == 1 and modules[node.target].track_running_stats):
            continue
        _fold(modules[src.target], modules[node.target])
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        folded += 1
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return folded


def plain_chain(layer: TuckerConv2d | LowRankConv1x1) -> nn.Sequential:
    """The factorised layer as plain ``nn.Conv2d`` modules (copies): what cuDNN runs for its ``chain``."""
    convs = (layer.first, layer.core, layer.last) if isinstance(layer, TuckerConv2d) else (layer.first, layer.last)
    return nn.Sequential(*(copy.deepcopy(c) for c in convs))


def apply_variants(model: nn.Module, variants: Mapping[str, Variant | str], plain: bool = False) -> nn.Module:
    """A copy of ``model`` with each named layer rebuilt as its variant (exact; BatchNorm untouched).

    Tucker-2 layers take any :class:`Variant`; a low-rank 1x1 pair ``chain`` or ``triton``. ``plain``:
    ``chain`` layers become plain conv modules (:func:`plain_chain`) instead of staying factorised
    layers, so that a backend that runs every factorised layer on the kernels (``bench --backend
    triton``) leaves them on cuDNN, as the latency table that chose them measured them.
    """
    model = copy.deepcopy(model)
    modules = dict(model.named_modules())
    for name, variant in variants.items():
        layer = modules.get(name)
        if not isinstance(layer, (TuckerConv2d, LowRankConv1x1)):
            raise BatudeError(f"variant given for '{name}', which is not a Tucker or low-rank 1x1 layer of this model; "
                              "regenerate the plan")
        allowed = [v.value for v in Variant] if isinstance(layer, TuckerConv2d) else [Variant.CHAIN.value, Variant.TRITON.value]
        if variant not in allowed:
            raise BatudeError(f"unknown variant '{variant}' for '{name}'; use one of {allowed}")
        parent_name, _, child = name.rpartition(".")
        parent, variant = model.get_submodule(parent_name), Variant(variant)
        if variant is Variant.CHAIN:
            if plain:
                setattr(parent, child, plain_chain(layer))
        else:
            setattr(parent, child, variant_module(layer, variant))
    return model


def lower(model: nn.Module, input_shape: Sequence[int], policy: str | Mapping[str, str] = "min-flops") -> tuple[fx.GraphModule, dict[str, Variant]]:
    """An eval-mode copy of ``model`` with chosen variants and folded BatchNorm (see module docs)."""
    if isinstance(policy, Mapping):  # ONNX has no Triton kernels: a kernel layer exports as its chain
        lowrank = {n for n, m in model.named_modules() if isinstance(m, LowRankConv1x1)}  # one exported form
        policy = {n: Variant.CHAIN.value if v == Variant.TRITON else v for n, v in policy.items() if n not in lowrank}
    variants = choose_variants(model, input_shape, policy)
    model = apply_variants(model, variants).eval()
    try:
        gm = fx.symbolic_trace(model)
    except Exception as err:  # noqa: BLE001 - fx raises many types on untraceable models
        raise BatudeError(f"cannot trace the model with torch.fx for lowering ({type(err).__name__}: {err})") from None
    fold_batchnorm(gm)
    return gm.eval(), variants
