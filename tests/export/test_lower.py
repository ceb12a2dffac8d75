"""Chain variants are exact rewrites; BatchNorm folding is exact in eval mode; the policy picks min MACs."""

import itertools

import pytest
import torch
from torch import nn

from batude.errors import BatudeError
from batude.export.lower import Variant, choose_variants, lower, variant_macs, variant_module
from batude.models import resnet20
from batude.nn import TuckerConv2d, flop_counter_macs
from batude.rank import apply_plan_, select_ranks

CASES = [
    pytest.param(k, s, p, d, mode, id=f"k{k}-s{s}-p{p}-d{d}-{mode}")
    for k, s, p, d, mode in itertools.product([3, (1, 3), 5], [1, 2], [0, 1], [1, 2], ["zeros", "reflect"])
    if not (mode == "reflect" and p == 0)
]


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("kernel,stride,padding,dilation,mode", CASES)
@pytest.mark.parametrize("variant", list(Variant), ids=[v.value for v in Variant])
def test_every_variant_is_exact(kernel, stride, padding, dilation, mode, variant):
    torch.manual_seed(0)
    conv = nn.Conv2d(12, 10, kernel, stride=stride, padding=padding, dilation=dilation, padding_mode=mode)
    layer = TuckerConv2d.from_conv(conv, (5, 4))
    if variant is Variant.TRITON and mode != "zeros":  # the kernels pad with zeros only
        with pytest.raises(BatudeError, match="impl='triton' cannot run TuckerConv2d"):
            variant_module(layer, variant)
        return
    replacement = variant_module(layer, variant)
    x = torch.randn(2, 12, 15, 14)
    with torch.no_grad():  # triton: on the CPU the custom op runs its PyTorch reference
        assert _rel(replacement(x), layer(x)) <= 1e-5
    convs = [m for m in replacement.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == {"chain": 3, "merge_first": 2, "merge_last": 2, "dense": 1, "triton": 3}[variant.value]
    assert getattr(replacement, "impl", "eager") == ("triton" if variant is Variant.TRITON else "eager")


def test_variant_macs_match_flop_counter():
    torch.manual_seed(0)
    layer = TuckerConv2d.from_conv(nn.Conv2d(32, 48, 3, stride=2, padding=1), (20, 12))
    for variant in Variant:
        module = variant_module(layer, variant)
        # the kernel multiplies zero-padded ranks (R1 to a power of two, R2 to a multiple of 16), and says so
        ranks = (32, 16) if variant is Variant.TRITON else (20, 12)
        expected = variant_macs(variant, 48, 32, 9, ranks, 16 * 16, 8 * 8)
        assert flop_counter_macs(module, (1, 32, 16, 16)) == expected, variant


def _trained_bn_model(seed=0):
    torch.manual_seed(seed)
    model = resnet20(in_channels=1)
    model.train()
    with torch.no_grad():  # non-trivial running statistics
        for _ in range(3):
            model(torch.randn(32, 1, 28, 28) * 2 + 0.5)
    return model.eval()


@pytest.mark.parametrize("policy", ["chain", "min-flops"])
def test_lowering_is_exact_and_folds_every_batchnorm(policy):
    model = _trained_bn_model()
    apply_plan_(model, select_ranks(model, "2x", "uniform", input_shape=(1, 1, 28, 28)))
    gm, variants = lower(model, (1, 1, 28, 28), policy)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in gm.modules())
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert _rel(gm(x), model(x)) <= 1e-5
    assert len(variants) == sum(isinstance(m, TuckerConv2d) for m in model.modules())
    assert flop_counter_macs(gm, (1, 1, 28, 28)) <= flop_counter_macs(model, (1, 1, 28, 28))


def test_min_flops_picks_the_cheapest_variant():
    # ranks close to full: the dense rebuild is cheapest; small ranks: the chain
    model = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1))
    model[0] = TuckerConv2d.from_conv(model[0], (15, 15))
    model[1] = TuckerConv2d.from_conv(model[1], (2, 2))
    chosen = choose_variants(model, (1, 16, 8, 8))
    assert chosen == {"0": Variant.DENSE, "1": Variant.CHAIN}


def test_policy_mapping_and_errors():
    model = nn.Sequential(TuckerConv2d.from_conv(nn.Conv2d(8, 8, 3), (4, 4)))
    assert choose_variants(model, (1, 8, 6, 6), {"0": "merge_last"}) == {"0": Variant.MERGE_LAST}
    with pytest.raises(BatudeError, match="not Tucker layers"):
        choose_variants(model, (1, 8, 6, 6), {"nope": "dense"})
    with pytest.raises(BatudeError, match="unknown variant policy"):
        choose_variants(model, (1, 8, 6, 6), "fastest")


def test_batchnorm_not_following_a_conv_is_kept():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4)).eval()
    model[2].running_mean.fill_(0.3)
    gm, _ = lower(model, (1, 3, 8, 8), "chain")
    assert any(isinstance(m, nn.BatchNorm2d) for m in gm.modules())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert _rel(gm(x), model(x)) <= 1e-6
