"""Shared shapes, tolerances and markers of the kernel tests (imported by the test modules, not collected).

Where the kernels run:
* ``interp`` tests need this process to run Triton's interpreter (``TRITON_INTERPRET=1`` set before
  triton was imported). ``test_interpreter_suite.py`` runs them (and only them, with the ``interp_too``
  tests that run in both processes: the others already ran in the main process) in such a subprocess on
  every CPU CI run; run them directly with ``TRITON_INTERPRET=1 pytest -m interp tests/kernels``.
* ``gpu`` tests need CUDA (and no interpreter).

Tolerances (``max |out - ref| / max |ref|``, the reference being :mod:`batude.kernels.reference`,
which rounds the intermediates where the kernels do): fp32 1e-5 under the interpreter (IEEE) and
1e-2 on the GPU (TF32 dots, as cuDNN uses); fp16 5e-3; bf16 3e-2.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
HAS_TRITON = importlib.util.find_spec("triton") is not None

_needs_interpreter = pytest.mark.skipif(
    not (INTERPRETED and HAS_TRITON),
    reason="needs TRITON_INTERPRET=1 before triton is imported: run by test_interpreter_suite.py in a subprocess",
)
_needs_gpu = pytest.mark.skipif(INTERPRETED or not HAS_TRITON or not torch.cuda.is_available(),
                                reason="needs a CUDA GPU and triton (and no TRITON_INTERPRET)")


def interp(fn):
    """Mark a test ``interp`` and skip it unless this process runs Triton's interpreter."""
    return pytest.mark.interp(_needs_interpreter(fn))


# Tests that run in both processes: on the PyTorch references here (the CPU ops' fallback), on the kernels
# themselves in the interpreter subprocess (which selects the ``interp`` marker).
interp_too = pytest.mark.interp


def gpu(fn):
    """Mark a test ``gpu`` and skip it without CUDA + triton (or under the interpreter)."""
    return pytest.mark.gpu(_needs_gpu(fn))

TOL = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}
GPU_TOL = {**TOL, torch.float32: 1e-2}

# (C_in, C_out, H=W, stride) of the 3x3 convs at their input resolution (224² ImageNet, 28² Fashion-MNIST)
RESNET18_3X3 = [(64, 64, 56, 1), (64, 128, 56, 2), (128, 128, 28, 1), (128, 256, 28, 2), (256, 256, 14, 1),
                (256, 512, 14, 2), (512, 512, 7, 1)]
RESNET50_3X3 = [(64, 64, 56, 1), (128, 128, 56, 2), (128, 128, 28, 1), (256, 256, 28, 2), (256, 256, 14, 1),
                (512, 512, 14, 2), (512, 512, 7, 1)]
RESNET20_3X3 = [(16, 16, 28, 1), (16, 32, 28, 2), (32, 32, 14, 1), (32, 64, 14, 2), (64, 64, 7, 1)]
# (C_in, C_out, H=W, stride) of the 1x1 convs (downsample projections, bottleneck 1x1s)
RESNET18_1X1 = [(64, 128, 56, 2), (128, 256, 28, 2), (256, 512, 14, 2)]
RESNET50_1X1 = [(64, 256, 56, 1), (256, 64, 56, 1), (256, 128, 56, 1), (256, 512, 56, 2), (128, 512, 28, 1),
                (512, 128, 28, 1), (512, 1024, 28, 2), (1024, 256, 14, 1), (256, 1024, 14, 1), (1024, 2048, 14, 2),
                (2048, 512, 7, 1), (512, 2048, 7, 1)]
RESNET20_1X1 = [(16, 32, 28, 2), (32, 64, 14, 2)]


def ranks_at(c_in: int, c_out: int, ratio: float, aligned: bool) -> tuple[int, int]:
    """``(R1, R2)`` at a rank ratio: exact halves (aligned) or a few below, odd (unaligned)."""
    def one(c: int) -> int:
        r = max(1, round(ratio * c))
        return r if aligned else max(1, r - 3) | 1
    return one(c_out), one(c_in)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.float(), ref.float()
    return float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


def nhwc(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


def tucker_factors(c: int, s: int, r1: int, r2: int, k: int, *, seed: int = 0, bias: bool = True):
    """Random Tucker-2 factors in ``nn.Conv2d`` weight layouts, scaled so activations stay O(1)."""
    g = torch.Generator().manual_seed(seed)
    first = torch.randn(r2, c, 1, 1, generator=g) / c ** 0.5
    core = torch.randn(r1, r2, k, k, generator=g) / (r2 * k * k) ** 0.5
    last = torch.randn(s, r1, 1, 1, generator=g) / r1 ** 0.5
    b = torch.randn(s, generator=g) * 0.1 if bias else None
    return first, core, last, b


def lowrank_factors(c: int, s: int, r: int, *, seed: int = 0, bias: bool = True):
    g = torch.Generator().manual_seed(seed)
    first = torch.randn(r, c, 1, 1, generator=g) / c ** 0.5
    last = torch.randn(s, r, 1, 1, generator=g) / r ** 0.5
    return first, last, (torch.randn(s, generator=g) * 0.1 if bias else None)


def bn_vectors(s: int, *, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(s, generator=g) + 0.5, torch.randn(s, generator=g) * 0.2


def on_cuda(packed):
    """A packed layer (:func:`batude.kernels.pack_tucker2` / ``pack_lowrank``) with its tensors moved to the GPU."""
    return type(packed)(*(t.cuda() if torch.is_tensor(t) else t for t in vars(packed).values()))


def fixed_gpu_config(rp: int, split_k: int = 1) -> dict:
    """One launch config per padded rank, so the GPU sweep compiles few kernel variants."""
    return dict(BLOCK_M=32 if rp <= 256 else 16, BLOCK_K=32, BLOCK_C=32, BLOCK_S=64, SPLIT_K=split_k,
                num_warps=4 if rp <= 128 else 8, num_stages=2,
                pointwise=dict(BLOCK_M=64, BLOCK_N=32, BLOCK_C=32, num_warps=4, num_stages=2),
                halo=dict(TILE_H=4, TILE_W=8, HALO_BLOCK=32, BLOCK_K=32, BLOCK_C=32, BLOCK_S=64,
                          num_warps=4 if rp <= 128 else 8, num_stages=2))
