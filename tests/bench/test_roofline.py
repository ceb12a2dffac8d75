"""Roofline floors: the work model of each form against real modules, the floor and its bound, the ceilings."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from batude.bench.roofline import Ceilings, FORMS, datasheet_ceilings, layer_work, measure_ceilings, parse_ceilings, roofline
from batude.errors import BatudeError
from batude.export.lower import Variant, variant_macs, variant_module
from batude.functional.cost import ConvGeometry, dense_conv_macs, tucker2_macs
from batude.nn import TuckerConv2d

C, S, HW, RANKS = 12, 20, 10, (6, 4)  # R1 (core outputs) != R2 (core inputs), so a swapped rank shows


def _geometry(stride: int) -> ConvGeometry:
    out = (HW + 2 - 3) // stride + 1
    return ConvGeometry(S, C, (3, 3), HW * HW, out * out)


def _read(conv: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Input elements a layer must read: all of them, or only the sampled pixels where a 1x1 conv is strided."""
    if isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1):
        return x.shape[0] * x.shape[1] * y.shape[2] * y.shape[3]
    return x.numel()


def _traffic(module: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """(weight elements, input + 2 x intermediates + output elements) of a real module's convs in one forward."""
    seen: list[tuple[int, int]] = []
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    handles = [m.register_forward_hook(lambda m, a, y: seen.append((_read(m, a[0], y), y.numel()))) for m in convs]
    with torch.no_grad():
        module(x)
    for h in handles:
        h.remove()
    weights = sum(m.weight.numel() for m in convs)
    return weights, seen[0][0] + 2 * sum(out for _, out in seen[:-1]) + seen[-1][1]


@pytest.mark.parametrize("stride", [1, 2], ids=["s1", "s2"])
@pytest.mark.parametrize("variant", [Variant.DENSE, Variant.CHAIN, Variant.MERGE_FIRST, Variant.MERGE_LAST], ids=lambda v: v.value)
def test_work_counts_what_the_real_variant_module_reads_writes_and_computes(variant, stride):
    layer = TuckerConv2d(C, S, 3, RANKS, stride=stride, padding=1, bias=False).eval()
    x = torch.randn(3, C, HW, HW)
    weights, activations = _traffic(variant_module(layer, variant).eval(), x)
    g = _geometry(stride)
    work = layer_work(variant.value, g, RANKS, batch=3, element_size=4)
    assert work.bytes == 4 * (weights + activations)
    macs = variant_macs(variant, S, C, 9, RANKS, g.in_positions, g.out_positions)
    assert work.flops == 2 * 3 * macs


@pytest.mark.parametrize("stride", [1, 2], ids=["s1", "s2"])
def test_a_low_rank_pair_as_two_layers_and_as_one_kernel(stride):
    from batude.nn.lowrank import LowRankConv1x1

    layer = LowRankConv1x1(C, S, 5, stride=stride, bias=False).eval()
    x = torch.randn(2, C, HW, HW)
    weights, activations = _traffic(layer, x)
    out = (HW - 1) // stride + 1
    g = ConvGeometry(S, C, (1, 1), HW * HW, out * out)
    pair, kernel = layer_work("lowrank", g, (5,), 2, 4), layer_work("lowrank_kernel", g, (5,), 2, 4)
    assert pair.bytes == 4 * (weights + activations)
    assert pair.flops == kernel.flops == 2 * 2 * out * out * (C * 5 + 5 * S)
    assert pair.bytes - kernel.bytes == 4 * 2 * 2 * out * out * 5  # the rank-5 intermediate, written and read back
    with pytest.raises(BatudeError, match=r"rank \(R,\)"):
        layer_work("lowrank", g, (5, 5), 2)


def test_a_whole_model_is_the_sum_of_its_layers_with_everything_else_fused(compressed_resnet20):
    """ResNet-20 at 2.52x: every conv and the Linear of the real model read their inputs and weights and write their
    outputs once; that is ``model_work`` (BatchNorm, ReLU, adds and pooling move nothing more)."""
    from batude.bench.roofline import model_work
    from batude.nn import profile_model

    model, _ = compressed_resnet20
    x = torch.randn(3, 1, 28, 28)
    seen: list[int] = []
    leaves = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    hook = lambda m, a, y: seen.append(_read(m, a[0], y) + m.weight.numel() + y.numel())  # noqa: E731
    handles = [m.register_forward_hook(hook) for m in leaves]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    profile = profile_model(model, (1, 1, 28, 28))
    work = model_work(profile, batch=3, element_size=2)
    assert work.bytes == 2 * sum(seen)
    assert work.flops == 2 * 3 * profile.macs
    kernels = model_work(profile, batch=3, element_size=2, kernels=True)
    assert kernels.flops == work.flops and kernels.bytes < work.bytes  # the same arithmetic, intermediates on chip


def test_kernel_forms_keep_intermediates_on_chip_and_fused_recomputes_the_first_1x1():
    g, batch = _geometry(1), 2
    chain, split, fused, halo = (layer_work(f, g, RANKS, batch) for f in ("chain", "split", "fused", "halo"))
    r1, r2 = RANKS
    assert chain.bytes - split.bytes == 2 * 2 * batch * g.out_positions * r1  # the core's output, written and read back
    assert split.bytes - halo.bytes == 2 * 2 * batch * g.in_positions * r2  # the first 1x1's output
    assert fused.bytes == halo.bytes
    assert chain.flops == split.flops == halo.flops == 2 * batch * tucker2_macs(g, r1, r2)
    recompute = 2 * batch * (g.out_positions * 9 * C * r2 - g.in_positions * C * r2)
    assert fused.flops - halo.flops == recompute > 0
    assert layer_work("dense", g, None, batch).flops == 2 * batch * dense_conv_macs(g)


def test_floor_is_the_larger_time_and_names_its_bound():
    c = Ceilings(100.0, 500.0)  # ridge at 200 FLOP per byte: 256->256 at 14x14 is at 167 for batch 1, 1056 for 64
    assert c.ridge == pytest.approx(200.0)
    g = ConvGeometry(256, 256, (3, 3), 14 * 14, 14 * 14)
    big, small = layer_work("dense", g, None, 64), layer_work("dense", g, None, 1)
    assert big.bound(c) == "compute" and big.floor_ms(c) == pytest.approx(big.flops / 100e9)
    assert small.bound(c) == "memory" and small.floor_ms(c) == pytest.approx(small.bytes / 500e6)
    row = roofline(big, c, measured_ms=4 * big.floor_ms(c))
    assert row["floor_share"] == pytest.approx(0.25) and row["bound"] == "compute"
    assert row["achieved_tflops"] == pytest.approx(25.0)
    assert row["achieved_gbps"] == pytest.approx(big.bytes / (4 * big.floor_ms(c) * 1e6))


def test_bad_inputs_say_what_to_give():
    g = _geometry(1)
    with pytest.raises(BatudeError, match="form 'winograd'"):
        layer_work("winograd", g, RANKS, 1)
    with pytest.raises(BatudeError, match="needs its ranks"):
        layer_work("chain", g, None, 1)
    with pytest.raises(BatudeError, match="positive measured time"):
        roofline(layer_work("dense", g, None, 1), Ceilings(1.0, 1.0), 0.0)
    with pytest.raises(BatudeError, match="TFLOPS,GBPS"):
        parse_ceilings("fast")
    with pytest.raises(BatudeError, match="positive"):
        Ceilings(0.0, 10.0)
    assert set(FORMS) >= {"dense", "chain", "split", "fused", "halo"}


def test_ceilings_from_the_datasheet_text_and_json():
    assert datasheet_ceilings("NVIDIA H100 PCIe").gbps == 2000.0
    assert datasheet_ceilings("NVIDIA H100 80GB HBM3").gbps == 3350.0
    assert datasheet_ceilings("NVIDIA H200").gbps == 4800.0
    assert datasheet_ceilings("NVIDIA GeForce RTX 2080") is None and datasheet_ceilings(None) is None
    given = parse_ceilings("788,4300")
    assert (given.tflops, given.gbps, given.source) == (788.0, 4300.0, "given")
    assert Ceilings.from_dict(given.to_dict()) == given


def test_measured_ceilings_on_this_machine_are_positive_and_say_how():
    c = measure_ceilings("cpu", torch.float32, copy_mib=8, matmul=128, iters=2)
    assert c.tflops > 0 and c.gbps > 0
    assert c.source.startswith("measured on CPU") and "128^3 float32" in c.source
