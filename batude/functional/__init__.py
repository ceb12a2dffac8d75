"""Pure functions: Tucker-2 / low-rank factorisation of weights, cost formulas, EVBMF."""

from batude.functional.cost import (
    ConvGeometry,
    LayerKind,
    dense_conv_macs,
    flops,
    layer_macs,
    layer_params,
    lowrank_macs,
    max_ranks,
    tucker2_macs,
)
from batude.functional.tucker import fold, lowrank_factors, singular_values, tucker2_decompose, tucker2_reconstruct, unfold
from batude.functional.vbmf import EVBMFResult, evbmf

__all__ = [
    "ConvGeometry", "LayerKind", "dense_conv_macs", "flops", "layer_macs", "layer_params", "lowrank_macs",
    "max_ranks", "tucker2_macs", "lowrank_factors", "singular_values", "tucker2_decompose",
    "tucker2_reconstruct", "unfold", "fold", "EVBMFResult", "evbmf",
]
