"""The ``triton`` variant: kernel layers in latency tables, plans, lowering, bench and block fusion (CPU side).

The CPU cannot time the kernels; what runs here is everything around them: null grid points,
choosing the kernel per layer, plans that record it, ``apply_variants`` (the kernel layer's custom op
runs its PyTorch reference on the CPU), ONNX lowering of kernel layers as chains, and fused ResNet
blocks with cuDNN-lowered layers. A table really measured with the kernels is built under Triton's
interpreter in ``tests/kernels/test_kernel_table.py``.
"""

import copy

import pytest
import torch
from torch import nn

from batude.bench.lut import LatencyTable, LayerTable
from batude.errors import BatudeError
from batude.export.lower import Variant, apply_variants, lower, variant_module
from batude.models import CifarResNet
from batude.nn import LowRankConv1x1, TuckerConv2d
from batude.rank import RankPlan, apply_plan_, select_ranks


def _compressed(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = CifarResNet(depth=8, in_channels=3, width=16).eval()
    return apply_plan_(model, select_ranks(model, "2x", "uniform", input_shape=(1, 3, 8, 8)))


def _names(model, cls):
    return [n for n, m in model.named_modules() if isinstance(m, cls)]


def test_a_null_grid_point_is_never_predicted_or_chosen():
    t = LayerTable("l", "tucker2", 6.0, [[16, 32], [16, 32]],
                   {"chain": [[4.0, 5.0], [5.0, 5.5]], "triton": [[1.0, 2.0], [3.0, None]]})
    assert t.predict((16, 16), "triton") == 1.0
    assert t.predict((24, 16), "triton") == pytest.approx(2.0)
    assert t.predict((24, 24), "triton") == float("inf")  # one corner (32, 32) could not run on the kernel
    assert t.best((16, 32)) == ("triton", 2.0) and t.best((32, 32)) == ("chain", 5.5)
    lut = LatencyTable({"backend": "triton"}, [3, 8, 8], 10.0, 4.0, {"l": t})
    assert lut.factorised_ms("l", (24, 24)) == ("chain", pytest.approx(4.875))


def test_a_kernel_table_needs_cuda_or_the_interpreter():
    with pytest.raises(BatudeError, match="needs --device cuda .*TRITON_INTERPRET=1"):
        LatencyTable.build(_compressed(), (3, 8, 8), backend="triton", device="cpu")


def test_apply_variants_puts_kernel_layers_on_the_kernel_and_plain_chains_on_cudnn():
    model = _compressed()
    tucker, pairs = _names(model, TuckerConv2d), _names(model, LowRankConv1x1)
    variants = {tucker[0]: "triton", tucker[1]: "chain", tucker[2]: "merge_first", pairs[0]: "triton", pairs[1]: "chain"}
    out = apply_variants(model, variants, plain=True)
    mods = dict(out.named_modules())
    assert mods[tucker[0]].impl == "triton" and mods[pairs[0]].impl == "triton"
    assert isinstance(mods[tucker[1]], nn.Sequential) and [type(m) for m in mods[tucker[1]]] == [nn.Conv2d] * 3
    assert isinstance(mods[pairs[1]], nn.Sequential) and len(mods[pairs[1]]) == 2
    assert isinstance(mods[tucker[3]], TuckerConv2d) and mods[tucker[3]].impl == "eager"  # not listed: untouched
    assert dict(model.named_modules())[tucker[0]].impl == "eager"  # the input model is not modified
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():  # on the CPU the kernel layers' custom ops run the PyTorch reference: same function
        torch.testing.assert_close(out(x), model(x), rtol=1e-4, atol=1e-5)
    kept = apply_variants(model, {tucker[1]: "chain"})
    assert isinstance(dict(kept.named_modules())[tucker[1]], TuckerConv2d)  # plain=False keeps the factorised layer


def test_unknown_and_impossible_variants_are_refused():
    model = _compressed()
    pair = _names(model, LowRankConv1x1)[0]
    with pytest.raises(BatudeError, match="unknown variant 'merge_first'.*'chain', 'triton'"):
        apply_variants(model, {pair: "merge_first"})
    with pytest.raises(BatudeError, match="chain and triton forms only"):
        variant_module(dict(model.named_modules())[pair], Variant.DENSE)
    with pytest.raises(BatudeError, match="not a Tucker or low-rank 1x1 layer"):
        apply_variants(model, {"fc": "triton"})


def test_onnx_lowering_exports_kernel_layers_as_their_chain():
    model = _compressed()
    tucker, pairs = _names(model, TuckerConv2d), _names(model, LowRankConv1x1)
    gm, variants = lower(model, (1, 3, 8, 8), {tucker[0]: "triton", tucker[1]: "merge_last", pairs[0]: "triton"})
    assert variants[tucker[0]] is Variant.CHAIN and variants[tucker[1]] is Variant.MERGE_LAST
    assert not any(isinstance(m, (TuckerConv2d, LowRankConv1x1)) for m in gm.modules())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), rtol=1e-4, atol=1e-5)


def test_plans_record_kernel_layers():
    model = _compressed()
    plan = select_ranks(CifarResNet(depth=8, in_channels=3, width=16), "2x", "uniform", input_shape=(1, 3, 8, 8))
    tucker = [l.name for l in plan.layers if l.ranks is not None and l.kind.value == "tucker2"]
    pairs = [l.name for l in plan.layers if l.ranks is not None and l.kind.value == "lowrank_conv1x1"]
    d = plan.to_dict()
    d["latency"] = {"predicted_ms": 1.0, "variants": {tucker[0]: "triton", pairs[0]: "triton", pairs[1]: "chain"},
                    "table": {"backend": "triton"}}
    loaded = RankPlan.from_dict(d)
    assert loaded.variants == {tucker[0]: "triton", pairs[0]: "triton"}  # a pair's chain is its only other form
    assert isinstance(dict(apply_variants(model, loaded.variants).named_modules())[pairs[0]], LowRankConv1x1)
    d["latency"]["variants"][tucker[1]] = "cutlass"
    with pytest.raises(BatudeError, match="unknown variants"):
        RankPlan.from_dict(d)


def test_fused_blocks_keep_cudnn_lowered_layers_with_batchnorm_folded():
    from batude.kernels import fuse_resnet_
    from batude.kernels.resnet_fuse import FusedConv

    model = _compressed()
    for m in model.modules():  # non-trivial BatchNorm statistics, so that folding is visible
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    tucker = _names(model, TuckerConv2d)
    mixed = apply_variants(model, {tucker[0]: "chain", tucker[1]: "merge_first", tucker[2]: "triton"}, plain=True)
    fused = fuse_resnet_(copy.deepcopy(mixed))
    kinds = [m.kind for m in fused.modules() if isinstance(m, FusedConv)]
    assert kinds.count("dense") == 3 and kinds.count("tucker2") == 4  # stem + the two cuDNN layers; 6 - 2 on the kernel
    x = torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-4, atol=1e-4)
