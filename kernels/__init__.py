"""Fused Triton kernels for Tucker chains, installed as ``batude.kernels``.

Public API (all imported lazily, on first attribute access):

* :func:`tucker2_conv` - fused Tucker-2 conv (first 1x1, kxk core, last 1x1 + epilogue) on NHWC;
  :func:`lowrank_chain` - two chained 1x1 convs + epilogue. Launchers with full checks.
* :func:`tucker2_conv_reference`, :func:`lowrank_chain_reference` - pure-PyTorch references.
* :func:`pack_tucker2`, :func:`pack_lowrank`, :func:`bn_affine` - prepacking factors (and folding BN).
* ``torch.ops.batude.tucker2_conv`` / ``torch.ops.batude.lowrank_chain`` - the custom ops, registered by
  :func:`register_ops` (and by the modules that call them: ``layers``, ``resnet_fuse``).
* :func:`fuse_resnet_` - rewrite an eval-mode (factorised) ResNet into fused blocks
  (BatchNorm folded, ReLU and residual add in the kernels' epilogues).

Importing this package imports neither triton nor anything that touches CUDA; the launchers import
triton on first use (``pip install batude[gpu]``). On CPU the kernels run only under Triton's
interpreter (``TRITON_INTERPRET=1`` before Python imports triton).
"""

from __future__ import annotations

import importlib

__all__ = [
    "tucker2_conv", "lowrank_chain", "tucker2_conv_reference", "lowrank_chain_reference", "pack_tucker2",
    "pack_lowrank", "bn_affine", "Tucker2Pack", "LowRankPack", "register_ops", "fuse_resnet_",
    "FusedConv", "tucker2_forward", "lowrank_forward",
]

_WHERE = {
    "tucker2_conv": "tucker2", "lowrank_chain": "lowrank",
    "tucker2_conv_reference": "reference", "lowrank_chain_reference": "reference",
    "pack_tucker2": "pack", "pack_lowrank": "pack", "bn_affine": "pack", "Tucker2Pack": "pack", "LowRankPack": "pack",
    "fuse_resnet_": "resnet_fuse", "FusedConv": "resnet_fuse",
    "tucker2_forward": "layers", "lowrank_forward": "layers",
}


def register_ops() -> None:
    """Register ``torch.ops.batude.*`` (idempotent). Registering their FLOP formulas imports
    ``torch.utils.flop_counter``, which imports triton where it is installed."""
    importlib.import_module("batude.kernels._ops")


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'batude.kernels' has no attribute '{name}'")
    return getattr(importlib.import_module(f"batude.kernels.{_WHERE[name]}"), name)
