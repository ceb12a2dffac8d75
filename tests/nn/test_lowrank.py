import pytest
import torch
from torch import nn

from batude.errors import BatudeError
from batude.nn.lowrank import LowRankConv1x1, LowRankLinear


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("stride,padding", [(1, 0), (2, 0), ((1, 2), (1, 0))], ids=["s1", "s2", "s1x2-p1x0"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_conv1x1_full_rank_exact(stride, padding, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(12, 20, 1, stride=stride, padding=padding, bias=bias)
    layer = LowRankConv1x1.from_conv(conv, 12)
    assert layer.first.stride == conv.stride and layer.first.padding == conv.padding
    x = torch.randn(2, 12, 9, 10)
    with torch.no_grad():
        assert _rel(layer(x), conv(x)) <= 1e-5
    assert layer.rank == 12 and layer.ranks == (12,)


def test_conv1x1_truncation_is_eckart_young():
    torch.manual_seed(1)
    conv = nn.Conv2d(16, 16, 1, bias=False)
    layer = LowRankConv1x1.from_conv(conv, 4)
    sv = torch.linalg.svdvals(conv.weight[:, :, 0, 0].detach().double())
    err = float((layer.dense_weight() - conv.weight).detach().norm())
    assert abs(err - float(sv[4:].norm())) < 1e-4
    rebuilt = layer.to_conv()
    x = torch.randn(1, 16, 5, 5)
    with torch.no_grad():
        assert _rel(rebuilt(x), layer(x)) < 1e-5


def test_conv1x1_refuses_kxk_and_grouped():
    with pytest.raises(BatudeError, match="kernel"):
        LowRankConv1x1.from_conv(nn.Conv2d(8, 8, 3), 2, name="c3")
    with pytest.raises(BatudeError, match=r"layer 'g'.*groups=2"):
        LowRankConv1x1.from_conv(nn.Conv2d(8, 8, 1, groups=2), 2, name="g")


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_linear_full_rank_exact_and_batched_dims(bias):
    torch.manual_seed(2)
    linear = nn.Linear(24, 10, bias=bias)
    layer = LowRankLinear.from_linear(linear, 10)
    x = torch.randn(3, 5, 24)
    with torch.no_grad():
        assert _rel(layer(x), linear(x)) <= 1e-5
        assert _rel(layer.to_linear()(x), linear(x)) <= 1e-5


def test_linear_rank_bounds():
    with pytest.raises(BatudeError, match="rank 11"):
        LowRankLinear.from_linear(nn.Linear(24, 10), 11, name="fc")
    with pytest.raises(BatudeError, match="not an nn.Linear"):
        LowRankLinear.from_linear(nn.Conv2d(3, 3, 1), 1)
