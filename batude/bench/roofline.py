"""How far a measured time is from what the hardware allows: the roofline floor of a layer or a model.

A form of a layer (the dense conv, the 3-conv Tucker chain, a merged variant, a fused kernel) is a
sequence of stages; each reads its weights once and writes its output once, and every output but
the last is read back by the next stage. So a form must move at least ``input + weights + 2 x
intermediates + output`` bytes through device memory and execute its FLOPs; over the device's two
ceilings (:class:`Ceilings`: a matrix rate in TFLOP/s and a memory bandwidth in GB/s, bytes read
plus written) the larger of the two times is the form's **floor**: no implementation of that form
runs faster. ``floor_share = floor / measured`` says how much of the hardware a measured time
used (1.0: at the floor); the larger term says whether the form is bound by bytes or arithmetic.
:func:`model_work` sums the layers of a whole model, every BatchNorm, activation, residual add and
pooling assumed fused into them (as compiled models and batude's fused blocks do; the residual's
read is not counted either), so a model's floor is a lower bound for any implementation that runs
each conv or factorised layer as its own unit. Fusing whole blocks, keeping a block's inner
activation on chip, could go below it.

Counted FLOPs are those the form's structure requires: the ``fused`` kernel evaluates the first 1x1
at every tap of the core (``kh*kw`` times per output pixel), so it executes more than the chain;
the ``halo`` kernel recomputes only its tiles' borders, which depend on the tile (counted as the
chain's). Kernels that split a layer over programs (``SPLIT_N``, ``SPLIT_S``) redo some more. So
every floor is a lower bound. Ceilings are measured on the device (:func:`measure_ceilings`:
a large copy and a large matrix product in the run's dtype) or given; datasheet rates
(:data:`DATASHEET`) are upper leads: measured ones come out 10-20% lower on H100s and H200s
(BENCHMARKS.md, "The kernels against their roofline floor").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from batude.bench.timing import time_callable
from batude.errors import BatudeError
from batude.functional.cost import ConvGeometry, LayerKind
from batude.nn.profile import LayerProfile, ModelProfile

__all__ = ["Ceilings", "DATASHEET", "datasheet_ceilings", "measure_ceilings", "parse_ceilings", "Work", "FORMS",
           "layer_work", "model_work", "roofline"]


@dataclass(frozen=True)
class Ceilings:
    """A device's matrix rate (``tflops``, TFLOP/s in the run's dtype) and memory bandwidth (``gbps``, GB/s, bytes
    read plus written), and where they come from (``source``)."""

    tflops: float
    gbps: float
    source: str = "given"

    def __post_init__(self) -> None:
        if not (self.tflops > 0 and self.gbps > 0):
            raise BatudeError(f"ceilings must be positive, got {self.tflops} TFLOP/s and {self.gbps} GB/s; "
                              "give them as TFLOPS,GBPS, e.g. 989,4800")

    @property
    def ridge(self) -> float:
        """FLOP per byte above which a form is bound by arithmetic rather than memory."""
        return self.tflops * 1e3 / self.gbps

    def to_dict(self) -> dict:
        return {"tflops": self.tflops, "gbps": self.gbps, "source": self.source, "ridge_flop_per_byte": self.ridge}

    @classmethod
    def from_dict(cls, d: dict) -> "Ceilings":
        return cls(float(d["tflops"]), float(d["gbps"]), str(d.get("source", "given")))


# Dense fp16/bf16 tensor-core rate and memory bandwidth by NVIDIA's datasheets (the sparse rate halved),
# matched on torch.cuda.get_device_name(); most specific names first.
DATASHEET: tuple[tuple[str, Ceilings], ...] = (
    ("H100 PCIe", Ceilings(756.0, 2000.0, "NVIDIA H100 PCIe datasheet")),
    ("H100 NVL", Ceilings(835.0, 3900.0, "NVIDIA H100 NVL datasheet")),
    ("H200", Ceilings(989.4, 4800.0, "NVIDIA H200 SXM datasheet")),
    ("H100", Ceilings(989.4, 3350.0, "NVIDIA H100 SXM5 datasheet")),
    ("A100-SXM4-80GB", Ceilings(312.0, 2039.0, "NVIDIA A100 80GB SXM datasheet")),
)


def datasheet_ceilings(gpu_name: str | None) -> Ceilings | None:
    """The datasheet ceilings of a GPU by its name (``NVIDIA H200``, ``NVIDIA H100 80GB HBM3``), None if unknown."""
    for key, ceilings in DATASHEET:
        if gpu_name and key.lower() in gpu_name.lower():
            return ceilings
    return None


def parse_ceilings(text: str) -> Ceilings:
    """``"TFLOPS,GBPS"`` (e.g. ``"788,4300"``) as given ceilings."""
    try:
        tflops, gbps = (float(v) for v in text.split(","))
    except ValueError:
        raise BatudeError(f"ceilings '{text}' must be two numbers TFLOPS,GBPS, e.g. 788,4300") from None
    return Ceilings(tflops, gbps, "given")


def measure_ceilings(device: torch.device | str, dtype: torch.dtype = torch.float16, *, copy_mib: int | None = None,
                     matmul: int | None = None, iters: int = 10) -> Ceilings:
    """The device's two ceilings, measured: a ``copy_mib`` MiB device-to-device copy (bytes read plus written over
    its median time) and an ``matmul``-cubed matrix product in ``dtype`` (``2 n^3`` FLOPs over its median time).
    Defaults: 1024 MiB (at most an eighth of the free GPU memory) and 8192 on CUDA, 128 MiB and 1024 on the CPU
    (seconds either way). An fp32 matmul on CUDA uses TF32 where cuDNN's convs do (``torch.backends.cudnn.allow_tf32``),
    so the rate is the one the convs it bounds can reach."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    if copy_mib is None:  # two buffers of it: at most a quarter of what the GPU has free
        copy_mib = min(1024, torch.cuda.mem_get_info(device)[0] // 2 ** 23) if cuda else 128
    n = matmul or (8192 if cuda else 1024)
    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    return Ceilings(_matmul_tflops(device, dtype, n, iters), _copy_gbps(device, copy_mib, iters),
                    f"measured on {name}: {copy_mib} MiB copy, {n}^3 {str(dtype).replace('torch.', '')} matmul")


def _copy_gbps(device: torch.device, mib: int, iters: int) -> float:
    src = torch.ones(mib * 2 ** 20 // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    stats = time_callable(lambda: dst.copy_(src), iters=iters, warmup=3, device=device, label="copy ceiling")
    return 2 * mib * 2 ** 20 / (stats.median_ms * 1e6)  # bytes read plus written


def _matmul_tflops(device: torch.device, dtype: torch.dtype, n: int, iters: int) -> float:
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    matmul = torch.backends.cuda.matmul
    old = matmul.allow_tf32
    matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 if device.type == "cuda" else old
    try:
        stats = time_callable(lambda: a @ b, iters=iters, warmup=3, device=device, label="matmul ceiling")
    finally:
        matmul.allow_tf32 = old
    return 2 * n ** 3 / (stats.median_ms * 1e9)


@dataclass(frozen=True)
class Work:
    """What one call of a form must do: ``flops`` executed and ``bytes`` moved through device memory (at least)."""

    flops: float
    bytes: float

    @property
    def intensity(self) -> float:
        """FLOP per byte."""
        return self.flops / self.bytes

    def floor_ms(self, c: Ceilings) -> float:
        return max(self.flops / (c.tflops * 1e9), self.bytes / (c.gbps * 1e6))

    def bound(self, c: Ceilings) -> str:
        return "compute" if self.intensity >= c.ridge else "memory"


TUCKER_FORMS = ("chain", "merge_first", "merge_last", "split", "fused", "halo")
LOWRANK_FORMS = ("lowrank", "lowrank_kernel")  # a 1x1 pair (or Linear pair) as two layers / as one kernel
FORMS = ("dense", *TUCKER_FORMS, *LOWRANK_FORMS)


def _stages(form: str, g: ConvGeometry, ranks: Sequence[int]) -> list[tuple[int, int, int]]:
    """``(MACs per image, weight elements, output elements per image)`` of each stage of ``form``, in order."""
    c, s, k, p_in, p_out = g.in_channels, g.out_channels, g.kernel_area, g.in_positions, g.out_positions
    if form == "dense":
        return [(p_out * s * c * k // g.groups, s * c * k // g.groups, p_out * s)]
    if form in LOWRANK_FORMS:  # both factors at the output resolution (a strided 1x1 keeps its stride on the first)
        (r,) = ranks
        first, second = (p_out * c * r, c * r, p_out * r), (p_out * r * s, r * s, p_out * s)
        return [first, second] if form == "lowrank" else [(first[0] + second[0], first[1] + second[1], p_out * s)]
    r1, r2 = ranks
    first = (p_in * c * r2, c * r2, p_in * r2)  # 1x1 C->R2 at the input resolution
    core, last = (p_out * k * r2 * r1, k * r2 * r1, p_out * r1), (p_out * r1 * s, r1 * s, p_out * s)
    core_last = (core[0] + last[0], core[1] + last[1], p_out * s)  # the last 1x1 in the core's epilogue
    if form == "chain":
        return [first, core, last]
    if form == "merge_first":
        return [(p_out * k * c * r1, k * c * r1, p_out * r1), last]
    if form == "merge_last":
        return [first, (p_out * k * r2 * s, k * r2 * s, p_out * s)]
    if form == "split":
        return [first, core_last]
    if form == "fused":  # the first 1x1 recomputed at each of the k taps of every output pixel
        return [(p_out * k * c * r2 + core_last[0], first[1] + core_last[1], p_out * s)]
    return [(first[0] + core_last[0], first[1] + core_last[1], p_out * s)]  # halo


def layer_work(form: str, g: ConvGeometry, ranks: Sequence[int] | None, batch: int, element_size: int = 2) -> Work:
    """The work of one call of ``form`` on a batch: FLOPs ``2 * batch * MACs`` and bytes ``element_size * (input +
    weights + 2 * intermediates + output)``. ``ranks``: ``(R1, R2)`` (the core's output and input ranks) for the
    Tucker forms, ``(R,)`` for a low-rank pair, None for ``dense``. The input is read once where a kxk kernel or the
    first 1x1 of a Tucker chain runs over it, and at the sampled pixels only where a strided 1x1 does. Biases,
    BatchNorm and activations are not counted (a few channels' worth)."""
    if form not in FORMS:
        raise BatudeError(f"no roofline model for the form '{form}'; one of {', '.join(FORMS)}")
    wanted = 2 if form in TUCKER_FORMS else 1 if form in LOWRANK_FORMS else 0
    if wanted and (ranks is None or len(ranks) != wanted or min(ranks) < 1):
        raise BatudeError(f"the form '{form}' needs {'its ranks (R1, R2)' if wanted == 2 else 'its rank (R,)'}, got {ranks}")
    stages = _stages(form, g, ranks if wanted else ())
    macs = sum(m for m, _, _ in stages)
    weights = sum(w for _, w, _ in stages)
    inter = sum(o for _, _, o in stages[:-1])
    read = (g.out_positions if g.kernel_area == 1 else g.in_positions) * g.in_channels
    elements = batch * (read + 2 * inter + stages[-1][2]) + weights
    return Work(2.0 * batch * macs, float(element_size * elements))


def model_work(profile: ModelProfile, batch: int, element_size: int = 2, kernels: bool = False) -> Work:
    """The work of a whole model from its profile (:func:`batude.nn.profile.profile_model`): each conv/Linear
    layer in its form (``dense``; a Tucker layer as its 3-conv ``chain``, a low-rank pair as two layers; with
    ``kernels``, every factorised conv on a kernel that keeps its intermediates on chip: ``halo``,
    ``lowrank_kernel``), as if every BatchNorm, activation, residual add and pooling were fused into them (they
    add no bytes). So its floor bounds from below any implementation that runs each layer as its own unit."""
    flops = nbytes = 0.0
    for layer in profile.layers:
        work = layer_work(_model_form(layer, kernels), layer.geometry, layer.ranks, batch, element_size)
        flops, nbytes = flops + work.flops, nbytes + work.bytes
    return Work(flops, nbytes)


def _model_form(layer: LayerProfile, kernels: bool) -> str:
    if layer.ranks is None:
        return "dense"
    if layer.kind is LayerKind.TUCKER2:
        return "halo" if kernels else "chain"
    return "lowrank_kernel" if kernels and layer.kind is LayerKind.LOWRANK_CONV else "lowrank"


def roofline(work: Work, ceilings: Ceilings, measured_ms: float) -> dict:
    """The roofline fields of one measured row: FLOPs, bytes, intensity, floor (ms), its bound, the achieved
    TFLOP/s and GB/s, and ``floor_share`` (floor / measured: 1.0 at the floor)."""
    if not measured_ms > 0:
        raise BatudeError(f"a roofline needs a positive measured time, got {measured_ms} ms")
    floor = work.floor_ms(ceilings)
    return {"flops": work.flops, "bytes": work.bytes, "intensity": work.intensity, "floor_ms": floor,
            "bound": work.bound(ceilings), "achieved_tflops": work.flops / (measured_ms * 1e9),
            "achieved_gbps": work.bytes / (measured_ms * 1e6), "floor_share": floor / measured_ms}
