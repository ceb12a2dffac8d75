import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from batude.functional.cost import (
    ConvGeometry,
    LayerKind,
    conv_output_size,
    dense_conv_macs,
    dense_conv_params,
    flops,
    layer_macs,
    layer_params,
    lowrank_macs,
    max_ranks,
    tucker2_macs,
    tucker2_params,
)


def _counted_macs(module: nn.Module, x: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(x)
    return counter.get_total_flops() // 2


def test_formulas_by_hand():
    # 64 -> 128 channels, 3x3, 56x56 in, stride 2 -> 28x28 out
    g = ConvGeometry(128, 64, (3, 3), 56 * 56, 28 * 28, bias=True)
    assert dense_conv_macs(g) == 28 * 28 * 128 * 64 * 9
    assert dense_conv_params(g) == 128 * 64 * 9 + 128
    assert tucker2_macs(g, 32, 16) == 56 * 56 * 64 * 16 + 28 * 28 * 9 * 16 * 32 + 28 * 28 * 32 * 128
    assert tucker2_params(g, 32, 16) == 64 * 16 + 9 * 16 * 32 + 32 * 128 + 128
    assert lowrank_macs(g, 8) == 28 * 28 * (64 * 8 + 8 * 128)
    assert flops(10) == 20


def test_layer_dispatch_and_full_ranks():
    g = ConvGeometry(32, 48, (3, 3), 100, 100)
    assert max_ranks(LayerKind.TUCKER2, g) == (32, 48)
    assert max_ranks(LayerKind.LOWRANK_CONV, g) == (32,)
    assert layer_macs(LayerKind.TUCKER2, g, None) == dense_conv_macs(g)
    assert layer_macs(LayerKind.TUCKER2, g, (4, 5)) == tucker2_macs(g, 4, 5)
    assert layer_params(LayerKind.LOWRANK_LINEAR, g, (3,)) == 48 * 3 + 3 * 32


def test_grouped_conv_macs_match_flopcounter():
    conv = nn.Conv2d(32, 64, 3, padding=1, groups=4)
    x = torch.zeros(1, 32, 10, 10)
    g = ConvGeometry(64, 32, (3, 3), 100, 100, groups=4, bias=True)
    assert dense_conv_macs(g) == _counted_macs(conv, x)
    assert dense_conv_params(g) == sum(p.numel() for p in conv.parameters())


@pytest.mark.parametrize("size,kernel,stride,padding,dilation", [(56, 3, 1, 1, 1), (56, 3, 2, 1, 1), (7, 7, 2, 3, 1), (28, 3, 1, 2, 2), (9, 1, 2, 0, 1)])
def test_conv_output_size_matches_torch(size, kernel, stride, padding, dilation):
    conv = nn.Conv2d(1, 1, kernel, stride=stride, padding=padding, dilation=dilation)
    assert conv(torch.zeros(1, 1, size, size)).shape[-1] == conv_output_size(size, kernel, stride, padding, dilation)


def test_geometry_round_trip():
    g = ConvGeometry(8, 4, (1, 3), 12, 6, groups=2, bias=True)
    assert ConvGeometry.from_dict(g.to_dict()) == g
