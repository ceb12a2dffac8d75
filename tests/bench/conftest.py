"""Fixtures shared by the bench tests."""

import pytest
import torch

from batude.models import resnet20
from batude.rank import apply_plan_, select_ranks


@pytest.fixture(scope="module")
def compressed():
    """A CIFAR ResNet-20 for 1x28x28 inputs (Fashion-MNIST) factorised by a uniform 2.52x plan, and the plan."""
    torch.manual_seed(0)
    model = resnet20(in_channels=1).eval()
    plan = select_ranks(model, "2.52x", "uniform", input_shape=(1, 1, 28, 28))
    return apply_plan_(model, plan), plan
