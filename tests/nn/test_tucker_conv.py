import itertools

import pytest
import torch
from torch import nn

from batude.errors import BatudeError
from batude.nn.tucker_conv import TuckerConv2d

KERNELS = [1, 3, 5, (1, 3)]
STRIDES = [1, 2]
PADDINGS = [0, 1, 2, "same"]
DILATIONS = [1, 2]


def _cases():
    for k, s, p, d, bias in itertools.product(KERNELS, STRIDES, PADDINGS, DILATIONS, (True, False)):
        if p == "same" and s != 1:
            continue  # torch refuses padding='same' with stride > 1
        yield pytest.param(k, s, p, d, bias, id=f"k{k}-s{s}-p{p}-d{d}-{'bias' if bias else 'nobias'}")


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("kernel,stride,padding,dilation,bias", list(_cases()))
def test_full_rank_reproduces_conv(kernel, stride, padding, dilation, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 8, kernel, stride=stride, padding=padding, dilation=dilation, bias=bias)
    layer = TuckerConv2d.from_conv(conv, (8, 6))
    x = torch.randn(2, 6, 13, 12)
    with torch.no_grad():
        assert _rel(layer(x), conv(x)) <= 1e-5
    assert _rel(layer.dense_weight(), conv.weight) <= 1e-5


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
def test_padding_modes_and_per_dim_attributes(padding_mode):
    torch.manual_seed(1)
    conv = nn.Conv2d(5, 7, (3, 5), stride=(1, 2), padding=(1, 2), dilation=(2, 1), padding_mode=padding_mode)
    layer = TuckerConv2d.from_conv(conv, (7, 5))
    core = layer.core
    assert (core.stride, core.padding, core.dilation, core.padding_mode) == ((1, 2), (1, 2), (2, 1), padding_mode)
    assert layer.first.kernel_size == (1, 1) and layer.last.kernel_size == (1, 1)
    x = torch.randn(1, 5, 11, 14)
    with torch.no_grad():
        assert _rel(layer(x), conv(x)) <= 1e-5


def test_padding_valid_string_is_copied():
    conv = nn.Conv2d(4, 4, 3, padding="valid")
    assert TuckerConv2d.from_conv(conv, (2, 2)).core.padding == "valid"


def test_structure_ranks_and_bias_placement():
    conv = nn.Conv2d(16, 32, 3, padding=1)
    layer = TuckerConv2d.from_conv(conv, (10, 6))
    assert layer.ranks == (10, 6)
    assert layer.first.weight.shape == (6, 16, 1, 1) and layer.first.bias is None
    assert layer.core.weight.shape == (10, 6, 3, 3) and layer.core.bias is None
    assert layer.last.weight.shape == (32, 10, 1, 1)
    assert torch.equal(layer.last.bias, conv.bias)


def test_reconstruction_error_non_increasing_in_rank():
    torch.manual_seed(2)
    conv = nn.Conv2d(16, 16, 3, padding=1)
    errors = [_rel(TuckerConv2d.from_conv(conv, (r, r)).dense_weight(), conv.weight) for r in (2, 4, 8, 12, 16)]
    assert all(b <= a + 1e-6 for a, b in zip(errors, errors[1:]))
    assert errors[0] > 0.3 and errors[-1] < 1e-5


def test_hooi_iterations_supported():
    torch.manual_seed(3)
    conv = nn.Conv2d(16, 16, 3)
    hosvd = _rel(TuckerConv2d.from_conv(conv, (4, 4)).dense_weight(), conv.weight)
    hooi = _rel(TuckerConv2d.from_conv(conv, (4, 4), hooi_iters=10).dense_weight(), conv.weight)
    assert hooi <= hosvd + 1e-6


def test_to_conv_round_trip():
    torch.manual_seed(4)
    conv = nn.Conv2d(6, 8, 3, stride=2, padding=1)
    rebuilt = TuckerConv2d.from_conv(conv, (3, 2)).to_conv()
    assert isinstance(rebuilt, nn.Conv2d) and rebuilt.stride == (2, 2)
    layer = TuckerConv2d.from_conv(conv, (3, 2))
    x = torch.randn(1, 6, 9, 9)
    with torch.no_grad():
        assert _rel(rebuilt(x), layer(x)) < 1e-5


def test_dtype_preserved():
    conv = nn.Conv2d(4, 6, 3, dtype=torch.float64)
    layer = TuckerConv2d.from_conv(conv, (6, 4))
    assert all(p.dtype == torch.float64 for p in layer.parameters())
    x = torch.randn(1, 4, 7, 7, dtype=torch.float64)
    with torch.no_grad():
        assert _rel(layer(x), conv(x)) < 1e-12


def test_grouped_conv_refused_with_layer_name():
    with pytest.raises(BatudeError, match=r"layer 'block.dw'.*groups=4"):
        TuckerConv2d.from_conv(nn.Conv2d(8, 8, 3, groups=4), (4, 4), name="block.dw")


@pytest.mark.parametrize("ranks", [(0, 2), (9, 2), (2, 7)], ids=["zero", "r1-too-big", "r2-too-big"])
def test_impossible_ranks_refused(ranks):
    with pytest.raises(BatudeError, match="ranks"):
        TuckerConv2d.from_conv(nn.Conv2d(6, 8, 3), ranks, name="c")


def test_not_a_conv_refused():
    with pytest.raises(BatudeError, match="not an nn.Conv2d"):
        TuckerConv2d.from_conv(nn.ConvTranspose2d(4, 4, 3), (2, 2), name="up")
