"""Factorised layers and whole-model profiling."""

from batude.nn.decompose import DECOMPOSED_TYPES, Init, decompose_module, decomposed_kind, densify, kind_of, set_impl
from batude.nn.lowrank import LowRankConv1x1, LowRankLinear
from batude.nn.profile import LayerProfile, ModelProfile, flop_counter_macs, profile_model
from batude.nn.tucker_conv import TuckerConv2d

__all__ = [
    "DECOMPOSED_TYPES", "Init", "decompose_module", "decomposed_kind", "densify", "kind_of", "LowRankConv1x1",
    "LowRankLinear", "LayerProfile", "ModelProfile", "flop_counter_macs", "profile_model", "TuckerConv2d", "set_impl",
]
