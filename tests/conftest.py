"""Fixtures shared across test folders."""

import pytest
import torch

from batude.models import resnet20
from batude.rank import apply_plan_, select_ranks


@pytest.fixture(scope="module")
def compressed_resnet20():
    """A Fashion-MNIST-shaped ResNet-20 factorised by a uniform 2.52x plan: ``(model, plan)``."""
    torch.manual_seed(0)
    model = resnet20(in_channels=1).eval()
    plan = select_ranks(model, "2.52x", "uniform", input_shape=(1, 1, 28, 28))
    return apply_plan_(model, plan), plan
