"""Fixtures shared by the bench tests."""

import pytest


@pytest.fixture(scope="module")
def compressed(compressed_resnet20):
    """The shared uniform 2.52x ResNet-20 for 1x28x28 inputs (tests/conftest.py) and its plan."""
    return compressed_resnet20
