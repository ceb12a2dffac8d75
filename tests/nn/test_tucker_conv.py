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
    return float(((a - b).norm() / b.norm()).detach())


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


# ---- impl="triton": the kernel path (on the CPU the custom op runs its PyTorch reference) ----------------------

def _count_op_calls(monkeypatch, name="tucker2_conv_reference"):
    from batude.kernels import _ops

    calls = []
    real = getattr(_ops, name)
    monkeypatch.setattr(_ops, name, lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(_ops, "cpu_kernels_requested", lambda: False)  # the reference, even under TRITON_INTERPRET
    return calls


@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 1), (1, "same"), (2, 0)], ids=str)
def test_impl_triton_runs_the_custom_op_and_matches_eager(monkeypatch, stride, padding):
    calls = _count_op_calls(monkeypatch)
    torch.manual_seed(5)
    conv = nn.Conv2d(12, 20, 3, stride=stride, padding=padding)
    eager = TuckerConv2d.from_conv(conv, (7, 5)).eval()
    fast = TuckerConv2d.from_conv(conv, (7, 5), impl="triton").eval()
    assert fast.impl == "triton" and "impl=triton" in repr(fast)
    x = torch.randn(2, 12, 9, 9)
    with torch.no_grad():
        out = fast(x)
        assert _rel(out, eager(x)) < 1e-5 and calls == [1]
        fast(x)
        assert calls == [1, 1] and fast._kernel_pack is not None  # packed once, cached


def test_impl_triton_falls_back_to_the_chain_when_grad_is_needed(monkeypatch):
    calls = _count_op_calls(monkeypatch)
    layer = TuckerConv2d(8, 8, 3, (4, 4), padding=1, impl="triton")  # training mode
    x = torch.randn(1, 8, 5, 5, requires_grad=True)
    layer(x).sum().backward()
    assert calls == [] and x.grad is not None and layer.core.weight.grad is not None
    layer.eval()
    layer(x).sum().backward()  # x requires grad: still the chain
    assert calls == []


def test_impl_triton_survives_state_dict_round_trip_and_repacks_changed_weights(monkeypatch):
    calls = _count_op_calls(monkeypatch)
    torch.manual_seed(6)
    src = TuckerConv2d.from_conv(nn.Conv2d(8, 12, 3, padding=1), (6, 4))
    dst = TuckerConv2d(8, 12, 3, (6, 4), padding=1, impl="triton").eval()
    x = torch.randn(1, 8, 6, 6)
    with torch.no_grad():
        before = dst(x)
        dst.load_state_dict(src.state_dict())
        assert set(dst.state_dict()) == set(src.state_dict())  # impl is not state
        assert _rel(dst(x), src(x)) < 1e-5 and _rel(dst(x), before) > 0.1
        dst.core.weight.mul_(2)  # an in-place update bumps the version counter: repacked
        src.core.weight.mul_(2)
        assert _rel(dst(x), src(x)) < 1e-5
    assert len(calls) == 4


def test_impl_triton_is_ignored_by_lowering_and_tracing(monkeypatch):
    from torch import fx

    from batude.export.lower import lower

    calls = _count_op_calls(monkeypatch)
    torch.manual_seed(7)
    model = nn.Sequential(TuckerConv2d.from_conv(nn.Conv2d(8, 8, 3, padding=1), (4, 4), impl="triton"), nn.BatchNorm2d(8)).eval()
    traced = fx.symbolic_trace(model)
    assert not any("batude" in str(n.target) for n in traced.graph.nodes)
    gm, variants = lower(model, (1, 8, 6, 6), policy="chain")
    assert not any("batude" in str(n.target) for n in gm.graph.nodes)
    x = torch.randn(1, 8, 6, 6)
    with torch.no_grad():
        assert _rel(gm(x), model(x)) < 1e-5
    assert calls == [1]  # only the eager comparison call ran the op


def test_impl_triton_refused_where_the_kernel_cannot_run():
    with pytest.raises(BatudeError, match="padding_mode='reflect'"):
        TuckerConv2d(4, 4, 3, (2, 2), padding=1, padding_mode="reflect", impl="triton")
    with pytest.raises(BatudeError, match="unknown impl"):
        TuckerConv2d(4, 4, 3, (2, 2), impl="cuda")


def test_set_impl_on_a_compressed_model(monkeypatch):
    from batude.models import resnet20
    from batude.nn.decompose import set_impl
    from batude.nn.lowrank import LowRankConv1x1
    from batude.rank import apply_plan_, select_ranks

    calls = _count_op_calls(monkeypatch)
    lowrank_calls = _count_op_calls(monkeypatch, "lowrank_chain_reference")
    torch.manual_seed(8)
    model = resnet20(in_channels=1).eval()
    apply_plan_(model, select_ranks(model, "2.52x", "uniform", input_shape=(1, 1, 28, 28)))
    x = torch.randn(1, 1, 28, 28)
    with torch.no_grad():
        ref = model(x)
        names = set_impl(model, "triton")
        assert _rel(model(x), ref) < 1e-4
    n_tucker = sum(isinstance(m, TuckerConv2d) for m in model.modules())
    n_lowrank = sum(isinstance(m, LowRankConv1x1) for m in model.modules())
    assert len(names) == n_tucker + n_lowrank and len(calls) == n_tucker and len(lowrank_calls) == n_lowrank == 2
    assert set_impl(model, "eager") == names
    with pytest.raises(BatudeError, match="unknown impl"):
        set_impl(model, "fast")


def test_flop_counter_counts_the_custom_op(monkeypatch):
    from torch.utils.flop_counter import FlopCounterMode

    _count_op_calls(monkeypatch)
    layer = TuckerConv2d(16, 32, 3, (16, 16), padding=1, bias=False).eval()  # ranks already at the kernel's padding
    x = torch.randn(1, 16, 8, 8)
    counts = []
    for impl in ("eager", "triton"):
        layer.impl = impl
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            layer(x)
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] > 0


def test_impl_triton_compiles_in_one_graph(monkeypatch):
    _count_op_calls(monkeypatch)
    layer = TuckerConv2d(16, 24, 3, (11, 5), stride=2, padding=1, impl="triton").eval()
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
        assert _rel(compiled(x), layer.last(layer.core(layer.first(x)))) < 1e-5
