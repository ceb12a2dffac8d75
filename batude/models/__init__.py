"""Model architectures batude ships and the architecture-reference registry."""

from batude.models.cifar_resnet import CifarResNet, resnet20, resnet32, resnet56
from batude.models.registry import ArchRef, BUILTIN_MODELS

__all__ = ["CifarResNet", "resnet20", "resnet32", "resnet56", "ArchRef", "BUILTIN_MODELS"]
