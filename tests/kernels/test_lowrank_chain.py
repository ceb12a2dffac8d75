"""The fused two-layer 1x1 low-rank chain against its PyTorch reference (interpreter and GPU).

(Named ``test_lowrank_chain`` because ``tests/nn/test_lowrank.py`` exists and test files share one namespace.)
"""

import itertools

import pytest
import torch
import torch.nn.functional as F

from batude.errors import BatudeError
from batude.kernels.pack import pack_lowrank
from batude.kernels.reference import lowrank_chain_reference
from kernel_cases import (GPU_TOL, RESNET18_1X1, RESNET20_1X1, RESNET50_1X1, TOL, bn_vectors, gpu, interp, lowrank_factors,
                          nhwc, on_cuda, ranks_at, rel_err)


def _run(x, p, *, stride=1, padding=0, residual=None, relu=False, config=None, scale=None, shift="pack"):
    from batude.kernels import lowrank_chain

    shift = p.shift if isinstance(shift, str) else shift
    out = lowrank_chain(x, p.b, p.a, scale=scale, shift=shift, residual=residual, stride=stride, padding=padding,
                        relu=relu, config=config)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        ref = lowrank_chain_reference(x, p.b, p.a, scale, shift, residual, (stride,) * 2, (padding,) * 2, relu)
    return out, ref


@pytest.mark.parametrize("stride,padding", [(1, 0), (2, 0), (2, 1)], ids=str)
def test_reference_with_folded_bn_equals_the_eager_pair(stride, padding):
    first, last, bias = lowrank_factors(12, 20, 5)
    g, h = bn_vectors(20)
    x = torch.randn(2, 12, 7, 7)
    eager = F.conv2d(F.conv2d(x, first, stride=stride, padding=padding), last, bias) * g[:, None, None] + h[:, None, None]
    p = pack_lowrank(first, last, bias, bn_scale=g, bn_shift=h)
    assert p.b.shape == (12, 16) and p.a.shape == (16, 20) and p.scale is None
    ref = lowrank_chain_reference(nhwc(x), p.b, p.a, None, p.shift, None, (stride,) * 2, (padding,) * 2, False)
    assert rel_err(ref, eager) < 1e-5


def _interp_cases():
    shapes = [(1, 16, 8, 8, 32, 16, 1, 0), (2, 24, 7, 5, 20, 5, 1, 0), (2, 32, 8, 8, 48, 11, 2, 0), (1, 20, 6, 6, 12, 9, 2, 1)]
    for shape, dtype in itertools.product(shapes, (torch.float32, torch.float16)):
        yield pytest.param(shape, dtype, id="n{}-c{}-{}x{}-s{}-r{}-st{}-p{}".format(*shape) + f"-{str(dtype)[6:]}")


@interp
@pytest.mark.parametrize("shape,dtype", list(_interp_cases()))
def test_interpreter_matches_reference(shape, dtype):
    n, c, h, w, s, r, stride, padding = shape
    p = pack_lowrank(*lowrank_factors(c, s, r), dtype=dtype)
    x = nhwc(torch.randn(n, c, h, w, dtype=dtype))
    out, ref = _run(x, p, stride=stride, padding=padding)
    assert out.shape == ref.shape and out.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(out, ref) <= TOL[dtype]


@interp
@pytest.mark.parametrize("part", ["scale", "shift", "residual", "relu", "all"])
def test_interpreter_epilogue_parts(part):
    p = pack_lowrank(*lowrank_factors(16, 24, 7), bn_scale=bn_vectors(24)[0], fold_scale=False)
    x = nhwc(torch.randn(2, 16, 6, 6))
    kw = {"scale": p.scale if part in ("scale", "all") else None, "shift": p.shift if part in ("shift", "all") else None,
          "residual": nhwc(torch.randn(2, 24, 3, 3)) if part in ("residual", "all") else None, "relu": part in ("relu", "all")}
    out, ref = _run(x, p, stride=2, **kw)
    assert rel_err(out, ref) <= TOL[torch.float32]


@interp
@pytest.mark.parametrize("split_s", [2, 3, 4])
def test_interpreter_split_output_channels(split_s):
    """SPLIT_S programs share each row block's S = 40 output channels (3 tiles of 16): 2 split them 1 + 2, 3 one
    each, 4 (more than the tiles, which pruning never keeps) leave one program none; between them the shares
    must write every channel, epilogue included."""
    p = pack_lowrank(*lowrank_factors(24, 40, 11))
    x = nhwc(torch.randn(2, 24, 5, 5))
    res = nhwc(torch.randn(2, 40, 4, 4))
    cfg = dict(BLOCK_M=16, BLOCK_C=16, BLOCK_S=16, SPLIT_S=split_s, num_warps=4, num_stages=1)
    out, ref = _run(x, p, stride=2, padding=1, residual=res, relu=True, config=cfg)
    assert rel_err(out, ref) <= TOL[torch.float32]


@interp
@pytest.mark.parametrize("split_s", [0, 1.5])
def test_interpreter_a_split_s_that_is_not_a_count_is_refused(split_s):
    p = pack_lowrank(*lowrank_factors(24, 40, 11))
    with pytest.raises(BatudeError, match="SPLIT_S"):
        _run(nhwc(torch.randn(1, 24, 4, 4)), p, config=dict(BLOCK_M=16, BLOCK_C=16, BLOCK_S=16, SPLIT_S=split_s))


@interp
def test_interpreter_checks_and_custom_op(monkeypatch):
    from batude.kernels import _ops, lowrank_chain

    p = pack_lowrank(*lowrank_factors(16, 24, 7))
    x = nhwc(torch.randn(1, 16, 4, 4))
    with pytest.raises(BatudeError, match="packed"):
        lowrank_chain(x, p.a, p.b)
    with pytest.raises(BatudeError, match="channels_last"):
        lowrank_chain(x.contiguous(), p.b, p.a)
    ref = lowrank_chain_reference(x, p.b, p.a, None, p.shift, None, (1, 1), (0, 0), True)
    monkeypatch.setattr(_ops, "lowrank_chain_reference", lambda *a: pytest.fail("the CPU op should run the interpreter"))
    out = torch.ops.batude.lowrank_chain(x, p.b, p.a, None, p.shift, None, [1, 1], [0, 0], True)
    assert rel_err(out, ref) <= TOL[torch.float32]


def _gpu_cases():
    for net, shapes in (("r18", RESNET18_1X1), ("r50", RESNET50_1X1), ("r20", RESNET20_1X1)):
        for (c, s, h, stride), aligned, dtype in itertools.product(shapes, (True, False), (torch.float16, torch.bfloat16)):
            yield pytest.param(c, s, h, stride, aligned, dtype,
                               id=f"{net}-{c}to{s}-{h}-s{stride}-{'al' if aligned else 'unal'}-{str(dtype)[6:]}")


@gpu
@pytest.mark.parametrize("c,s,h,stride,aligned,dtype", list(_gpu_cases()))
def test_gpu_resnet_1x1_shapes(c, s, h, stride, aligned, dtype):
    r = min(ranks_at(c, s, 0.5, aligned))
    p = on_cuda(pack_lowrank(*lowrank_factors(c, s, r), dtype=dtype))
    x = nhwc(torch.randn(2, c, h, h, device="cuda", dtype=dtype))
    res = nhwc(torch.randn(2, s, h // stride, h // stride, device="cuda", dtype=dtype))
    rp = p.a.shape[0]
    cfg = dict(BLOCK_M=32 if rp <= 256 else 16, BLOCK_C=32, BLOCK_S=64, num_warps=4 if rp <= 128 else 8, num_stages=2)
    out, ref = _run(x, p, stride=stride, residual=res, relu=True, config=cfg)
    assert rel_err(out, ref) <= GPU_TOL[dtype]


@gpu
@pytest.mark.parametrize("split_s", [4, 8])
@pytest.mark.parametrize("c,s,h,stride", [(1024, 2048, 14, 2), (2048, 512, 7, 1), (512, 2048, 7, 1), (256, 1024, 14, 1)],
                         ids=["1024to2048-14-s2", "2048to512-7", "512to2048-7", "256to1024-14"])
def test_gpu_split_output_channels_on_resnet50_batch1_shapes(c, s, h, stride, split_s):
    """The late-stage 1x1s at batch 1, where SPLIT_S spreads 4-13 row blocks over more programs."""
    r = min(ranks_at(c, s, 0.5, True))
    p = on_cuda(pack_lowrank(*lowrank_factors(c, s, r), dtype=torch.float16))
    x = nhwc(torch.randn(1, c, h, h, device="cuda", dtype=torch.float16))
    res = nhwc(torch.randn(1, s, h // stride, h // stride, device="cuda", dtype=torch.float16))
    warps = 8 if 16 * p.a.shape[0] >= 8192 else 4
    cfg = dict(BLOCK_M=16, BLOCK_C=64, BLOCK_S=64, SPLIT_S=split_s, num_warps=warps, num_stages=2)
    out, ref = _run(x, p, stride=stride, residual=res, relu=True, config=cfg)
    assert rel_err(out, ref) <= GPU_TOL[torch.float16]


@gpu
@pytest.mark.parametrize("batch", [1, 16])
def test_gpu_autotuned(batch):
    p = on_cuda(pack_lowrank(*lowrank_factors(256, 512, 128), dtype=torch.float16))
    x = nhwc(torch.randn(batch, 256, 14, 14, device="cuda", dtype=torch.float16))
    out, ref = _run(x, p, stride=2)
    assert rel_err(out, ref) <= GPU_TOL[torch.float16]
