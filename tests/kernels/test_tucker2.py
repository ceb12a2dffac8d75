"""The fused Tucker-2 kernel against its PyTorch reference: interpreter (small shapes) and GPU (ResNet shapes)."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from batude.errors import BatudeError
from batude.kernels.pack import pack_tucker2
from batude.kernels.reference import tucker2_conv_reference
from kernel_cases import (GPU_TOL, RESNET18_3X3, RESNET20_3X3, RESNET50_3X3, TOL, bn_vectors, fixed_gpu_config, gpu,
                          interp, interp_too, nhwc, on_cuda, ranks_at, rel_err, tucker_factors)

INTERP_CFG_SPLIT3 = dict(BLOCK_M=16, BLOCK_K=16, BLOCK_C=16, BLOCK_S=16, SPLIT_K=3, num_warps=4, num_stages=1)


def _run(x, p, *, device=None, config=None, mode="fused", residual=None, relu=False, stride=1, padding=1, dilation=1,
         scale=None, shift="pack"):
    from batude.kernels import tucker2_conv

    shift = p.shift if isinstance(shift, str) else shift
    out = tucker2_conv(x, p.u_in, p.core, p.u_out, scale=scale, shift=shift, residual=residual, stride=stride,
                       padding=padding, dilation=dilation, relu=relu, mode=mode, config=config)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # a strict fp32 reference on the GPU too
        ref = tucker2_conv_reference(x, p.u_in, p.core, p.u_out, scale, shift, residual, (stride,) * 2, (padding,) * 2,
                                     (dilation,) * 2, relu)
    return out, ref


# ---- the reference itself (plain CPU, no triton) ---------------------------------------------------------------

@pytest.mark.parametrize("stride,padding,dilation", [(1, 1, 1), (2, 1, 1), (2, 0, 1), (1, 2, 2)], ids=str)
def test_reference_with_folded_bn_equals_the_eager_chain(stride, padding, dilation):
    first, core, last, bias = tucker_factors(12, 20, 7, 5, 3)
    g, h = bn_vectors(20)
    x = torch.randn(2, 12, 9, 9)
    res = torch.randn(2, 20, *F.conv2d(x, core.new_zeros(20, 12, 3, 3), stride=stride, padding=padding, dilation=dilation).shape[2:])
    eager = F.conv2d(F.conv2d(F.conv2d(x, first), core, stride=stride, padding=padding, dilation=dilation), last, bias)
    eager = torch.relu(eager * g[:, None, None] + h[:, None, None] + res)
    for fold in (True, False):
        p = pack_tucker2(first, core, last, bias, bn_scale=g, bn_shift=h, fold_scale=fold)
        assert (p.scale is None) == fold and p.core.shape == (3, 3, 16, 16) and p.u_in.shape == (12, 16)
        ref = tucker2_conv_reference(nhwc(x), p.u_in, p.core, p.u_out, p.scale, p.shift, nhwc(res),
                                     (stride,) * 2, (padding,) * 2, (dilation,) * 2, True)
        assert ref.is_contiguous(memory_format=torch.channels_last)
        assert rel_err(ref, eager) < 1e-5


@interp_too
def test_custom_ops_pass_opcheck():
    """Schema, fake (meta) implementations and dispatch are consistent (``torch.library.opcheck``)."""
    from batude.kernels import register_ops
    from batude.kernels.pack import pack_lowrank
    from kernel_cases import lowrank_factors

    register_ops()
    p = pack_tucker2(*tucker_factors(16, 24, 9, 12, 3))
    x = nhwc(torch.randn(1, 16, 6, 6))
    res = nhwc(torch.randn(1, 24, 3, 3))
    torch.library.opcheck(torch.ops.batude.tucker2_conv,
                          (x, p.u_in, p.core, p.u_out, None, p.shift, res, [2, 2], [1, 1], [1, 1], True, "auto"))
    q = pack_lowrank(*lowrank_factors(16, 24, 7))
    torch.library.opcheck(torch.ops.batude.lowrank_chain, (x, q.b, q.a, None, q.shift, res, [2, 2], [0, 0], True))


def test_pack_refuses_factors_that_do_not_chain():
    first, core, last, _ = tucker_factors(8, 8, 4, 4, 3)
    with pytest.raises(BatudeError, match="do not chain"):
        pack_tucker2(first, core[:, :3], last)


# ---- interpreter: small shapes, every mode and epilogue part ---------------------------------------------------

def _interp_cases():
    shapes = [  # n, c, h, w, s, r1, r2, k, stride, padding
        (1, 16, 8, 8, 16, 16, 16, 3, 1, 1),  # aligned
        (2, 24, 7, 6, 20, 11, 5, 3, 1, 1),  # unaligned, non-square
        (2, 32, 8, 8, 32, 13, 21, 3, 2, 1),  # stride 2, R2 spans two chunks
        (1, 16, 9, 9, 12, 5, 11, 3, 2, 0),  # stride 2, no padding
        (2, 20, 5, 5, 24, 9, 7, 1, 1, 0),  # 1x1 core
    ]
    for shape, dtype, mode in itertools.product(shapes, (torch.float32, torch.float16), ("fused", "split", "halo")):
        ids = "n{}-c{}-{}x{}-s{}-r{}x{}-k{}-st{}-p{}".format(*shape)
        yield pytest.param(shape, dtype, mode, id=f"{ids}-{str(dtype)[6:]}-{mode}")


@interp
@pytest.mark.parametrize("shape,dtype,mode", list(_interp_cases()))
def test_interpreter_matches_reference(shape, dtype, mode):
    n, c, h, w, s, r1, r2, k, stride, padding = shape
    p = pack_tucker2(*tucker_factors(c, s, r1, r2, k), dtype=dtype)
    x = nhwc(torch.randn(n, c, h, w, dtype=dtype))
    out, ref = _run(x, p, mode=mode, stride=stride, padding=padding)
    assert out.shape == ref.shape and out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(out, ref) <= TOL[dtype]


@interp
@pytest.mark.parametrize("part", ["none", "scale", "shift", "residual", "relu", "all"])
@pytest.mark.parametrize("mode", ["fused", "split", "halo"])
def test_interpreter_epilogue_parts(part, mode):
    p = pack_tucker2(*tucker_factors(16, 24, 9, 12, 3), bn_scale=bn_vectors(24)[0], fold_scale=False)
    x = nhwc(torch.randn(2, 16, 6, 6))
    kw = {"scale": p.scale if part in ("scale", "all") else None, "shift": p.shift if part in ("shift", "all") else None,
          "residual": nhwc(torch.randn(2, 24, 6, 6)) if part in ("residual", "all") else None, "relu": part in ("relu", "all")}
    out, ref = _run(x, p, mode=mode, **kw)
    assert rel_err(out, ref) <= TOL[torch.float32]
    if part == "none":  # the part-free result really differs from the ones with a part (the test can fail)
        out2, _ = _run(x, p, mode=mode, relu=True)
        assert rel_err(out2, out) > 1e-2


@interp
@pytest.mark.parametrize("split_k,split_n", [(3, 1), (20, 1), (1, 2), (1, 4), (3, 2), (20, 4)],
                         ids=["k3", "k20", "n2", "n4", "k3-n2", "k20-n4"])
@pytest.mark.parametrize("mode", ["fused", "split"])
def test_interpreter_split_reduction_and_workspace_reset(split_k, split_n, mode):
    """SPLIT_K programs share the reduction (20 > the 18 steps: two have none), SPLIT_N programs the core's
    R1p = 64 output channels, each multiplying its share by its rows of u_out; the partial products meet in
    the workspace, the last program applies the epilogue, and workspace and counters are left zeroed."""
    from batude.kernels import _configs

    p = pack_tucker2(*tucker_factors(24, 40, 50, 20, 3))
    assert p.core.shape[-1] == 64
    x = nhwc(torch.randn(1, 24, 5, 5))
    res = nhwc(torch.randn(1, 40, 5, 5))
    cfg = {**INTERP_CFG_SPLIT3, "SPLIT_K": split_k, "SPLIT_N": split_n}
    for _ in range(2):  # the second launch relies on the first having left the workspace zeroed
        out, ref = _run(x, p, mode=mode, config=cfg, residual=res, relu=True)
        assert rel_err(out, ref) <= TOL[torch.float32]
    for ws, cnt in _configs._WORKSPACES[("cpu", None)]:
        assert not ws.any() and not cnt.any()


@interp
@pytest.mark.parametrize("split_n", [3, 8])
def test_interpreter_a_split_n_that_does_not_fit_the_rank_is_refused(split_n):
    """R1p = 64: SPLIT_N = 3 does not divide it, 8 leaves 8 channels per program (tl.dot needs 16)."""
    p = pack_tucker2(*tucker_factors(24, 40, 50, 20, 3))
    x = nhwc(torch.randn(1, 24, 5, 5))
    with pytest.raises(BatudeError, match=f"SPLIT_N={split_n} must divide the padded rank R1p=64"):
        _run(x, p, mode="split", config={**INTERP_CFG_SPLIT3, "SPLIT_N": split_n})


@interp
def test_interpreter_one_config_carries_every_modes_part():
    """A fixed config holding each mode's part (the GPU sweep's ``fixed_gpu_config`` does) serves all three
    modes, each launch taking its own part: on an H200 the fused and split launches once put the halo part
    into their launch key and failed with "unhashable type: 'dict'"."""
    p = pack_tucker2(*tucker_factors(24, 40, 13, 20, 3))
    x = nhwc(torch.randn(1, 24, 5, 5))
    cfg = {**INTERP_CFG_SPLIT3, "pointwise": dict(BLOCK_M=16, BLOCK_N=16, BLOCK_C=16, num_warps=4, num_stages=1),
           "halo": dict(TILE_H=2, TILE_W=4, HALO_BLOCK=16, BLOCK_K=16, BLOCK_C=16, BLOCK_S=16, num_warps=4, num_stages=1)}
    for mode in ("fused", "split", "halo"):
        out, ref = _run(x, p, mode=mode, config=cfg, relu=True)
        assert rel_err(out, ref) <= TOL[torch.float32], mode


@interp
def test_interpreter_dilation():
    p = pack_tucker2(*tucker_factors(16, 16, 8, 8, 3))
    x = nhwc(torch.randn(1, 16, 9, 9))
    for mode in ("fused", "split", "halo"):
        out, ref = _run(x, p, mode=mode, padding=2, dilation=2)
        assert out.shape == (1, 16, 9, 9) and rel_err(out, ref) <= TOL[torch.float32]


@interp
@pytest.mark.parametrize("tile,stride,split_s", [((3, 5), 1, 1), ((2, 2), 2, 1), ((4, 4), 1, 1), ((3, 5), 1, 3), ((2, 2), 2, 2)],
                         ids=["3x5-s1", "2x2-s2", "4x4-s1", "3x5-s1-split3", "2x2-s2-split2"])
def test_interpreter_halo_tiles_slot_reuse_and_no_unwritten_reads(tile, stride, split_s):
    """Tiles that overhang the map, non-power-of-two tiles, 2 programs looping over every tile and reusing their
    slot, and output channels split over programs (40 channels in 16-wide blocks: shares of 16, 16, 8); the
    scratch starts as NaN, so a read of anything a tile did not write first shows up."""
    from batude.kernels import _configs

    p = pack_tucker2(*tucker_factors(24, 40, 13, 20, 3))
    x = nhwc(torch.randn(3, 24, 9, 7))
    res = nhwc(torch.randn(3, 40, *[(d - 1) // stride + 1 for d in (9, 7)]))
    cfg = {"halo": dict(TILE_H=tile[0], TILE_W=tile[1], HALO_BLOCK=16, BLOCK_K=16, BLOCK_C=16, BLOCK_S=16, SPLIT_S=split_s,
                        num_warps=4, num_stages=1, PROGRAMS=2)}
    _configs.scratch(torch.device("cpu"), torch.float32, 1 << 16).fill_(float("nan"))
    out, ref = _run(x, p, mode="halo", config=cfg, stride=stride, residual=res, relu=True)
    assert torch.isfinite(out).all() and rel_err(out, ref) <= TOL[torch.float32]


@interp
def test_interpreter_launcher_checks():
    from batude.kernels import tucker2_conv

    p = pack_tucker2(*tucker_factors(16, 16, 8, 8, 3))
    x = nhwc(torch.randn(1, 16, 6, 6))
    args = (p.u_in, p.core, p.u_out)
    with pytest.raises(BatudeError, match="channels_last"):
        tucker2_conv(x.contiguous(), *args)
    with pytest.raises(BatudeError, match="float16"):
        tucker2_conv(x.half(), *args)
    with pytest.raises(BatudeError, match="u_in"):
        tucker2_conv(nhwc(torch.randn(1, 8, 6, 6)), *args)
    with pytest.raises(BatudeError, match="residual"):
        tucker2_conv(x, *args, padding=1, residual=nhwc(torch.randn(1, 16, 5, 5)))
    with pytest.raises(BatudeError, match="mode"):
        tucker2_conv(x, *args, mode="fast")
    with pytest.raises(BatudeError, match="interpreter computes bf16"):
        pb = pack_tucker2(*tucker_factors(16, 16, 8, 8, 3), dtype=torch.bfloat16)
        tucker2_conv(x.bfloat16(), pb.u_in, pb.core, pb.u_out)


@interp
def test_interpreter_custom_op_dispatches_to_the_kernel_and_compiles(monkeypatch):
    from batude.kernels import _ops

    p = pack_tucker2(*tucker_factors(16, 24, 9, 12, 3))
    x = nhwc(torch.randn(1, 16, 6, 6))

    def call(t):
        return torch.ops.batude.tucker2_conv(t, p.u_in, p.core, p.u_out, None, p.shift, None, [1, 1], [1, 1], [1, 1], True, "auto")

    ref = tucker2_conv_reference(x, p.u_in, p.core, p.u_out, None, p.shift, None, (1, 1), (1, 1), (1, 1), True)
    monkeypatch.setattr(_ops, "tucker2_conv_reference", lambda *a: pytest.fail("the CPU op should run the interpreter"))
    assert rel_err(call(x), ref) <= TOL[torch.float32]
    assert rel_err(call(x.contiguous()), ref) <= TOL[torch.float32]  # NCHW input is made NHWC by the op
    compiled = torch.compile(lambda t: call(t) * 2, backend="aot_eager", fullgraph=True)
    assert rel_err(compiled(x), 2 * ref) <= TOL[torch.float32]


# ---- GPU: the real layer shapes -------------------------------------------------------------------------------

def _cuda_pack(c, s, r1, r2, dtype=torch.float16, **bn):
    return on_cuda(pack_tucker2(*tucker_factors(c, s, r1, r2, 3), dtype=dtype, **bn))


def _gpu_cases():
    nets = [("r18", RESNET18_3X3, (torch.float16, torch.bfloat16)), ("r50", RESNET50_3X3, (torch.float16,)),
            ("r20", RESNET20_3X3, (torch.float16, torch.bfloat16))]
    for net, shapes, dtypes in nets:
        for (c, s, h, stride), aligned, dtype, mode in itertools.product(shapes, (True, False), dtypes, ("fused", "split", "halo")):
            yield pytest.param(c, s, h, stride, aligned, dtype, mode,
                               id=f"{net}-{c}to{s}-{h}-s{stride}-{'al' if aligned else 'unal'}-{str(dtype)[6:]}-{mode}")


@gpu
@pytest.mark.parametrize("c,s,h,stride,aligned,dtype,mode", list(_gpu_cases()))
def test_gpu_resnet_layer_shapes(c, s, h, stride, aligned, dtype, mode):
    r1, r2 = ranks_at(c, s, 0.5, aligned)
    p = _cuda_pack(c, s, r1, r2, dtype=dtype)
    x = nhwc(torch.randn(2, c, h, h, device="cuda", dtype=dtype))
    res = nhwc(torch.randn(2, s, h // stride, h // stride, device="cuda", dtype=dtype))
    out, ref = _run(x, p, mode=mode, stride=stride, config=fixed_gpu_config(p.core.shape[3]), residual=res, relu=True)
    assert rel_err(out, ref) <= GPU_TOL[dtype]


@gpu
@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("mode", ["fused", "split", "halo", "auto"])
@pytest.mark.parametrize("c,s,h,stride", [RESNET18_3X3[2], RESNET18_3X3[-1]], ids=["128-28", "512-7"])
def test_gpu_autotuned(c, s, h, stride, mode, batch):
    p = _cuda_pack(c, s, c // 2, c // 2)
    x = nhwc(torch.randn(batch, c, h, h, device="cuda", dtype=torch.float16))
    out, ref = _run(x, p, mode=mode, stride=stride, relu=True)
    assert rel_err(out, ref) <= GPU_TOL[torch.float16]


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gpu_split_k_is_race_free(dtype):
    p = _cuda_pack(512, 512, 256, 256, dtype=dtype)
    x = nhwc(torch.randn(1, 512, 7, 7, device="cuda", dtype=dtype))
    res = nhwc(torch.randn(1, 512, 7, 7, device="cuda", dtype=dtype))
    for split in (2, 9, 36):
        for mode in ("fused", "split"):
            cfg = {**fixed_gpu_config(256, split), "BLOCK_M": 16}
            outs = [_run(x, p, mode=mode, config=cfg, residual=res, relu=True) for _ in range(10)]
            for out, ref in outs:
                assert rel_err(out, ref) <= GPU_TOL[dtype]


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gpu_split_n_is_race_free(dtype):
    """The core's channels split over programs (alone and with split-K), at the batch-1 and batch-64 7x7 shapes
    SPLIT_N is for: repeated runs agree with the reference."""
    p = _cuda_pack(512, 512, 256, 256, dtype=dtype)
    for batch, bm in ((1, 16), (64, 64)):
        x = nhwc(torch.randn(batch, 512, 7, 7, device="cuda", dtype=dtype))
        res = nhwc(torch.randn(batch, 512, 7, 7, device="cuda", dtype=dtype))
        for split_k, split_n in ((1, 2), (1, 8), (4, 4)):
            for mode in ("fused", "split"):
                cfg = {**fixed_gpu_config(256, split_k), "BLOCK_M": bm, "SPLIT_N": split_n, "num_warps": 4}
                for _ in range(5):
                    out, ref = _run(x, p, mode=mode, config=cfg, residual=res, relu=True)
                    assert rel_err(out, ref) <= GPU_TOL[dtype], (batch, split_k, split_n, mode)


@gpu
@pytest.mark.parametrize("c,s,h,stride,batch,split_s", [(*RESNET18_3X3[0], 32, 1), (*RESNET18_3X3[1], 32, 1), (*RESNET18_3X3[-1], 1, 4)],
                         ids=["64-56", "64to128-56-s2", "512-7-b1-split4"])
def test_gpu_halo_is_race_free(c, s, h, stride, batch, split_s):
    """Many programs, each looping over tiles and reusing its slot between two CTA barriers: repeated runs agree
    with the reference (a missing barrier would let a tile read a slot its neighbour threads are still writing)."""
    p = _cuda_pack(c, s, s // 2, c // 2)
    x = nhwc(torch.randn(batch, c, h, h, device="cuda", dtype=torch.float16))
    cfg = {"halo": {**fixed_gpu_config(p.core.shape[3])["halo"], "PROGRAMS": 64, "SPLIT_S": split_s}}
    for _ in range(10):
        out, ref = _run(x, p, mode="halo", config=cfg, stride=stride, relu=True)
        assert rel_err(out, ref) <= GPU_TOL[torch.float16]


@gpu
def test_gpu_custom_op_under_compile_and_cuda_graph():
    from batude.kernels import register_ops

    register_ops()
    p = _cuda_pack(128, 128, 64, 64, bn_scale=torch.rand(128) + 0.5)
    x = nhwc(torch.randn(4, 128, 28, 28, device="cuda", dtype=torch.float16))

    def fn(t):
        return torch.ops.batude.tucker2_conv(t, p.u_in, p.core, p.u_out, None, p.shift, t, [1, 1], [1, 1], [1, 1], True, "auto")

    ref = tucker2_conv_reference(x, p.u_in, p.core, p.u_out, None, p.shift, x, (1, 1), (1, 1), (1, 1), True)
    compiled = torch.compile(fn, fullgraph=True)
    assert rel_err(compiled(x), ref) <= GPU_TOL[torch.float16]
    static_in = x.clone()
    for _ in range(2):
        fn(static_in)  # warm up: autotuning and the auto-mode timing happen outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = fn(static_in)
    static_in.copy_(x * 0.5)
    graph.replay()
    torch.cuda.synchronize()
    ref_half = tucker2_conv_reference(static_in, p.u_in, p.core, p.u_out, None, p.shift, static_in, (1, 1), (1, 1), (1, 1), True)
    assert rel_err(static_out, ref_half) <= GPU_TOL[torch.float16]
