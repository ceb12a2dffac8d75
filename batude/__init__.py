"""batude: budget-aware Tucker decomposition (BATUDE) of CNNs, carried to fast deployment.

Layers (one-way dependencies): ``functional`` (pure Tucker ops, cost formulas) -> ``nn`` / ``models``
/ ``data`` -> ``rank`` (budgets, plans, selectors, BC-ADL) -> ``checkpoint`` / ``train`` ->
``export`` -> ``cli``.
``import batude`` needs only torch, numpy and (lazily) tensorly; it never touches CUDA.
"""

from batude._version import __version__
from batude.checkpoint import Checkpoint, load, load_checkpoint, load_model, save
from batude.errors import BatudeError
from batude.functional.cost import ConvGeometry, LayerKind
from batude.models.registry import ArchRef
from batude.nn import LowRankConv1x1, LowRankLinear, TuckerConv2d, profile_model
from batude.rank import Budget, LayerFilter, Method, RankPlan, SelectorConfig, apply_plan_, select_ranks
from batude.rank.bcadl import BCADL, BCADLConfig
from batude.train import CompressConfig, CompressMethod, TrainConfig, compress, train_model

__all__ = [
    "__version__",
    "ArchRef",
    "BCADL",
    "BCADLConfig",
    "CompressConfig",
    "CompressMethod",
    "TrainConfig",
    "compress",
    "train_model",
    "BatudeError",
    "Budget",
    "Checkpoint",
    "ConvGeometry",
    "LayerFilter",
    "LayerKind",
    "LowRankConv1x1",
    "LowRankLinear",
    "Method",
    "RankPlan",
    "SelectorConfig",
    "TuckerConv2d",
    "apply_plan_",
    "load",
    "load_checkpoint",
    "load_model",
    "profile_model",
    "save",
    "select_ranks",
]


def __getattr__(name: str):
    """``batude.runtime`` / ``batude.export`` / ``batude.bench`` on first use, without importing them
    (and their onnx/onnxruntime dependencies) at ``import batude``."""
    if name in ("runtime", "export", "bench"):
        import importlib

        return importlib.import_module(f"batude.{name}")
    raise AttributeError(f"module 'batude' has no attribute {name!r}")
