"""Compiling the kernels for an NVIDIA GPU on a machine without one: an ahead-of-time check.

Triton lowers a kernel to PTX and assembles it to a cubin with the ``ptxas`` its wheel ships; only
loading and launching need a driver. :func:`compile_spec` does that for one specialisation, built
the way a launch on the GPU would build it:

* the integer arguments come from the launchers' own builders (:func:`batude.kernels.tucker2.core_args`,
  :func:`batude.kernels.lowrank.chain_args`), the tile configs from the autotuning candidates pruned
  for the shape exactly as :func:`batude.kernels._configs.autotuned` prunes them (plus the heuristic
  config of ``BATUDE_TRITON_AUTOTUNE=0``);
* every argument is specialised by Triton's own rule (``native_specialize_impl``: 16-divisible
  integers and pointers, integers equal to 1, ``do_not_specialize``), so the compiled kernel is the
  one the JIT would compile.

It reports what the GPU would refuse or pay for: the dynamic shared memory against the
architecture's per-block limit (a launch above it fails with "out of resources"), registers per
thread against the register file, and the bytes ``ptxas -v`` reports as spilled (slow, not fatal).
``benchmarks/kernels_aot.py`` sweeps every candidate of the kernel test shapes. It cannot find
wrong results or slow code: that still needs the GPU tests.
"""

from __future__ import annotations

import functools
import re
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from batude.errors import BatudeError
from batude.kernels import _configs as cfg
from batude.kernels._runtime import interpreting, jit_module
from batude.kernels.lowrank import chain_args
from batude.kernels.pack import pad_rank_in, pad_rank_out
from batude.kernels.tucker2 import core_args, tucker2_output_size

__all__ = ["SHARED_LIMIT", "SM_LIMITS", "Layer", "Spec", "layer_specs", "specialize", "spec_key", "compile_spec",
           "occupancy", "aot_unavailable_reason"]

# Largest dynamic shared memory one block may opt in to, bytes (CUDA C++ Programming Guide,
# "Technical Specifications per Compute Capability": 163 KB on 8.0, 99 KB on 8.6/8.9, 227 KB on 9.0/10.0).
SHARED_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024, 100: 227 * 1024}
REGISTERS_PER_SM = 65536  # 64K 32-bit registers per SM (and per block) on every architecture above
# Residency per SM (same guide and table): shared memory per SM (bytes), resident warps, resident blocks. Each block
# also reserves 1 KB of shared memory for the system, and registers are allocated per warp in units of 256.
SM_LIMITS = {80: (164 * 1024, 64, 32), 86: (100 * 1024, 48, 16), 89: (100 * 1024, 48, 24), 90: (228 * 1024, 64, 32)}
_RESERVED_SHARED, _REGISTER_UNIT, _PARTITIONS = 1024, 256, 4  # the register file is split over 4 SM partitions
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass(frozen=True)
class Layer:
    """One decomposed conv at its input size: ``C -> S`` channels, ``k x k`` (1: a low-rank 1x1 pair),
    ``hw x hw`` input, ranks ``(R1, R2)`` (``R2`` unused for 1x1), ``batch`` images."""

    c: int
    s: int
    hw: int
    k: int
    stride: int
    r1: int
    r2: int
    batch: int

    @property
    def padding(self) -> int:
        return self.k // 2

    def out_hw(self) -> tuple[int, int]:
        p, st = (self.padding,) * 2, (self.stride,) * 2
        return tucker2_output_size(self.hw, self.hw, (self.k, self.k), st, p, (1, 1))


@dataclass
class Spec:
    """One kernel launch to compile: which kernel, every argument by name (tensors stand for pointers:
    only their dtype and alignment matter), warps and stages, and where it came from."""

    kind: str
    args: dict
    num_warps: int
    num_stages: int
    origin: dict = field(default_factory=dict)


def _tensor(dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(16, dtype=dtype)  # CPU allocations are 64-byte aligned, as CUDA ones are 256-byte aligned


def _configs_for(kind: str, named: dict, heuristic: dict) -> list[tuple[dict, int, int]]:
    """The pruned autotuning candidates for these arguments, then the heuristic config, as (meta, warps, stages)."""
    configs, _, prune = cfg.candidates(kind)
    out = [(dict(c.kwargs), c.num_warps, c.num_stages) for c in prune(configs, named)]
    h = dict(heuristic)
    out.append((h, h.pop("num_warps"), h.pop("num_stages")))
    return out


def layer_specs(layer: Layer, dtype: str, mode: str) -> list[Spec]:
    """Every kernel launch :func:`~batude.kernels.tucker2_conv` (``mode`` fused, split or halo) or, for a 1x1
    layer, :func:`~batude.kernels.lowrank_chain` (``mode`` chain) may compile for this layer on the GPU."""
    dt = _DTYPES[dtype]
    act, f32, i32 = _tensor(dt), _tensor(torch.float32), _tensor(torch.int32)
    n, c, h, s = layer.batch, layer.c, layer.hw, layer.s
    oh, ow = layer.out_hw()
    m = n * oh * ow
    prec = "ieee" if dt == torch.float32 else "tf32"  # fp32: TF32 is also possible on the GPU; IEEE is the heavier
    origin = dict(layer=asdict(layer), dtype=dtype, mode=mode)
    flags = (False, True, True, True)  # the flags are runtime integers: one compiled kernel serves every epilogue
    specs = []
    if mode == "chain":
        if layer.k != 1:
            raise BatudeError(f"mode 'chain' is the 1x1 low-rank pair; this layer is {layer.k}x{layer.k}")
        rp = pad_rank_out(layer.r1)
        args = chain_args((n, c, h, h), (oh, ow), s, (h * h * c, h * c, c), (layer.stride,) * 2, (0, 0), flags)
        args.update(x_ptr=act, b_ptr=act, a_ptr=act, scale_ptr=f32, shift_ptr=f32, res_ptr=act, out_ptr=act, RP=rp, PRECISION=prec)
        for meta, w, st in _configs_for("lowrank", args, cfg.heuristic_lowrank(m, c, rp, s, False)):
            specs.append(Spec("lowrank", {**args, **meta}, w, st, origin))
        return specs
    if mode not in ("fused", "split", "halo"):
        raise BatudeError(f"unknown mode '{mode}'; use fused, split, halo or chain")
    rk, rp = pad_rank_in(layer.r2), pad_rank_out(layer.r1)
    geo = (n, c, h, h, oh, ow, layer.k, layer.k, rk, rp, s, (layer.stride,) * 2, (layer.padding,) * 2, (1, 1))
    if mode == "halo":
        args = core_args(geo, (h * h * c, h * c, c), flags)
        args.update(x_ptr=act, uin_ptr=act, core_ptr=act, uout_ptr=act, scale_ptr=f32, shift_ptr=f32, res_ptr=act,
                    out_ptr=act, scratch_ptr=act, RP=rp, PRECISION=prec)
        args["SLOT"] = cfg.halo_slot(args)
        for meta, w, st in _configs_for("halo", args, cfg.heuristic_halo(args, False)):
            specs.append(Spec("halo", {**args, **meta}, w, st, origin))
        return specs
    fuse = mode == "fused"
    args = core_args(geo, (h * h * c, h * c, c) if fuse else None, flags)
    args.update(src_ptr=act, uin_ptr=act, core_ptr=act, uout_ptr=act, scale_ptr=f32, shift_ptr=f32, res_ptr=act,
                out_ptr=act, ws_ptr=f32, cnt_ptr=i32, RP=rp, FUSE_FIRST=fuse, PRECISION=prec)
    heur = cfg.heuristic_tucker2(m, c, rk, rp, layer.k ** 2, False)
    for meta, w, st in _configs_for("tucker2", args, heur):
        specs.append(Spec("tucker2", {**args, **meta}, w, st, origin))
    if not fuse:
        pw = dict(x_ptr=act, w_ptr=act, t_ptr=act, M=n * h * h, C=c, N_OUT=rk, PRECISION=prec)
        for meta, w, st in _configs_for("pointwise", pw, cfg.heuristic_pointwise(n * h * h, rk, False)):
            specs.append(Spec("pointwise", {**pw, **meta}, w, st, origin))
    return specs


def aot_unavailable_reason(arch: int = 90) -> str | None:
    """None if kernels can be compiled for ``sm_<arch>`` here (triton with its NVIDIA backend and ptxas), else why not."""
    import importlib.util
    import os

    if importlib.util.find_spec("triton") is None or importlib.util.find_spec("triton.backends.nvidia") is None:
        return "triton with its NVIDIA backend is not installed"
    if interpreting():
        return "TRITON_INTERPRET=1 is set: the kernels are interpreted, not compiled"
    from triton.backends.nvidia.compiler import get_ptxas

    return None if os.path.exists(get_ptxas(arch).path) else "triton's ptxas is missing"


@functools.lru_cache(maxsize=None)
def _backend(arch: int):
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend

    target = GPUTarget("cuda", arch, 32)
    return target, make_backend(target)


def specialize(spec: Spec, arch: int = 90) -> tuple:
    """``(signature, constexprs, attrs)`` as Triton's JIT would build them for this launch."""
    return _specialize(spec, arch)[2:]


def _specialize(spec: Spec, arch: int) -> tuple:
    """``(kernel, target, signature, constexprs, attrs)`` of this launch."""
    from triton._C.libtriton import native_specialize_impl

    if interpreting():
        raise BatudeError("TRITON_INTERPRET=1 is set: the kernels are interpreted, not compiled; unset it for the AOT check")
    fn = getattr(jit_module(), cfg.KERNELS[spec.kind])
    missing = [p.name for p in fn.params if p.name not in spec.args]
    extra = sorted(set(spec.args) - {p.name for p in fn.params})
    if missing or extra:
        raise BatudeError(f"{spec.kind} kernel arguments do not match its signature: missing {missing}, unknown {extra}")
    target, backend = _backend(arch)
    signature, constexprs, attrs = {}, {}, {}
    for i, p in enumerate(fn.params):
        v = spec.args[p.name]
        if p.is_constexpr:
            signature[p.name], constexprs[(i,)] = "constexpr", v
            continue
        ty, attr = native_specialize_impl(type(backend), v, p.is_const, not p.do_not_specialize,
                                          not p.do_not_specialize_on_alignment)
        signature[p.name] = ty
        if ty == "constexpr":
            constexprs[(i,)] = v
        elif isinstance(attr, str):
            attrs[(i,)] = backend.parse_attr(attr)
    return fn, target, signature, constexprs, attrs


def spec_key(spec: Spec, arch: int = 90) -> str:
    """What Triton's kernel cache would key this compilation on (specs with equal keys compile once)."""
    signature, constexprs, attrs = specialize(spec, arch)
    return repr((spec.kind, sorted(signature.items()), sorted(constexprs.items()), sorted(attrs.items()),
                 spec.num_warps, spec.num_stages, arch))


_PTXAS_REGS = re.compile(r"Used (\d+) registers")
_PTXAS_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
# a global load or store of one element per thread (any qualifiers such as .nc or .L1::evict_last, but
# no .v2/.v4): where Triton could not prove that consecutive channels are contiguous and aligned, e.g.
# a pointer offset by an unspecialised integer
_SCALAR_GLOBAL = re.compile(r"\b(?:ld|st)\.global(?:\.(?!v\d)[\w:]+)*\.[bsuf](?:8|16|32|64)\b")
_TENSOR_CORE = re.compile(r"\b(?:wgmma\.mma_async|mma\.sync)\.")


def _ptxas_report(ptx: str, arch: int) -> dict:
    from triton.backends.nvidia.compiler import get_ptxas

    suffix = "a" if arch >= 90 else ""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        proc = subprocess.run([get_ptxas(arch).path, f"-arch=sm_{arch}{suffix}", "-v", str(src), "-o", str(Path(tmp) / "k.cubin")],
                              capture_output=True, text=True)
    text = proc.stdout + proc.stderr
    regs, spill = _PTXAS_REGS.search(text), _PTXAS_SPILL.search(text)
    return {"registers": int(regs.group(1)) if regs else None,
            "spill_bytes": int(spill.group(1)) + int(spill.group(2)) if spill else None}


def occupancy(registers: int | None, shared_bytes: int | None, num_warps: int, arch: int = 90) -> dict | None:
    """How many blocks of a compiled kernel can be resident on one SM at once, and what limits them.

    ``{"blocks_per_sm", "warps_per_sm", "limiter"}``, the limiter ``registers``, ``shared memory``, ``warps`` or
    ``blocks`` (joined with ``+`` where several bind at once); None where the architecture or the register count is unknown. Few resident
    warps leave little to switch to while a load is in flight: a kernel that cannot hide memory latency
    this way must do it with its software pipeline (``num_stages``) alone.
    """
    if arch not in SM_LIMITS or registers is None or shared_bytes is None:
        return None
    shared_per_sm, max_warps, max_blocks = SM_LIMITS[arch]
    per_warp = -(-registers * 32 // _REGISTER_UNIT) * _REGISTER_UNIT
    warps_by_registers = (REGISTERS_PER_SM // _PARTITIONS // per_warp) * _PARTITIONS  # each quarter of the SM its own file
    by = {"registers": warps_by_registers // num_warps, "shared memory": shared_per_sm // (shared_bytes + _RESERVED_SHARED),
          "warps": max_warps // num_warps, "blocks": max_blocks}
    blocks = min(by.values())
    limiter = "+".join(k for k, v in by.items() if v == blocks)  # ties name every limit that binds
    return {"blocks_per_sm": blocks, "warps_per_sm": blocks * num_warps, "limiter": limiter}


def compile_spec(spec: Spec, arch: int = 90) -> dict:
    """Compile one launch for ``sm_<arch>`` here (no GPU needed) and check what the GPU would refuse.

    Returns a JSON-ready record: ``ok`` (compiled, and within the shared-memory and register limits),
    ``error`` (the last line of the compiler's message, or which limit was exceeded), ``shared_bytes``,
    ``registers`` (per thread), ``spill_bytes``, ``scalar_global`` (global loads and stores in the PTX
    that move one element per thread instead of a 64/128-bit vector), ``tensor_core`` (``mma.sync`` and
    ``wgmma`` instructions: zero means every ``tl.dot`` became FMAs), ``occupancy`` (:func:`occupancy`),
    ``seconds``, the config and the spec's origin.
    """
    import triton
    from triton.compiler import ASTSource

    fn, target, signature, constexprs, attrs = _specialize(spec, arch)
    meta = {k: v for k, v in spec.args.items() if k.isupper() and k.startswith(("BLOCK_", "SPLIT_", "TILE_", "HALO_"))}
    rec = {"kind": spec.kind, "arch": arch, "config": meta, "num_warps": spec.num_warps, "num_stages": spec.num_stages,
           "rp": spec.args.get("RP"), "fuse_first": spec.args.get("FUSE_FIRST"), "origin": spec.origin}
    t0 = time.perf_counter()
    try:
        kernel = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target,
                                options={"num_warps": spec.num_warps, "num_stages": spec.num_stages})
    except Exception as e:  # a compiler error is the finding, reported per spec
        lines = [ln for ln in str(e).splitlines() if ln.strip()]
        return {**rec, "ok": False, "error": f"{type(e).__name__}: {lines[-1] if lines else ''}"[:400],
                "seconds": round(time.perf_counter() - t0, 2)}
    ptx = kernel.asm["ptx"]
    rec.update(shared_bytes=int(kernel.metadata.shared), seconds=round(time.perf_counter() - t0, 2),
               scalar_global=len(_SCALAR_GLOBAL.findall(ptx)), tensor_core=len(_TENSOR_CORE.findall(ptx)),
               **_ptxas_report(ptx, arch))
    errors = []
    limit = SHARED_LIMIT.get(arch)
    if limit is not None and rec["shared_bytes"] > limit:
        errors.append(f"needs {rec['shared_bytes']} bytes of shared memory, sm_{arch} allows {limit} per block")
    threads = 32 * spec.num_warps
    if rec["registers"] is not None and rec["registers"] * threads > REGISTERS_PER_SM:
        errors.append(f"{rec['registers']} registers x {threads} threads exceed the {REGISTERS_PER_SM}-register file")
    rec.update(ok=not errors, error="; ".join(errors) or None,
               occupancy=occupancy(rec["registers"], rec["shared_bytes"], spec.num_warps, arch))
    return rec
