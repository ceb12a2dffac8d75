"""Where a model's time goes: the kernels (GPU) or operators (CPU) of one runner, grouped and ranked.

:func:`profile_runner` runs a prepared runner (:mod:`batude.bench.backends`) ``calls`` times under
``torch.profiler`` and turns the events into a :class:`Profile`:

* on a CUDA device, every GPU kernel, memcpy and memset in the window (also those a replayed CUDA
  graph or a TensorRT engine launches: CUPTI records them all), with its device time. Summed per
  call this is the GPU's busy time; set beside the measured median it gives the share of a call the
  GPU sat idle (launch gaps, host work);
* on the CPU, the top-level operators (``aten::conv2d``, ``batude::tucker2_conv``, ...: operators
  that no other recorded operator called; user annotations such as Inductor's "Call CompiledFxGraph"
  range do not count as callers), with their wall time including what they call. Backends that run
  outside PyTorch (onnxruntime) record none.

Names are grouped by :data:`CATEGORIES` (first pattern that matches, case-insensitive): cuDNN's and
CUTLASS's convolution kernels, GEMMs, batude's Triton kernels, Inductor's fused kernels, elementwise
kernels, layout copies. A kernel no pattern knows counts as ``other``; its name is in the top list.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import asdict, dataclass
from typing import Callable

import torch

__all__ = ["CATEGORIES", "Profile", "profile_entry", "profile_runner", "categorize", "summarize_events"]

log = logging.getLogger(__name__)

# (category, pattern): first match wins, so specific names come before the broad "conv" and "gemm"
CATEGORIES: tuple[tuple[str, str], ...] = (
    ("batude kernels", r"_tucker2_kernel|_tucker2_halo_kernel|_pointwise_kernel|_lowrank_kernel|^batude::"),
    ("inductor fused", r"^triton_|^triton::|^inductor"),
    ("layout and copy", r"nchwtonhwc|nhwctonchw|transpose|memcpy|memset|aten::(copy_|contiguous|clone|to|_to_copy)$"),
    ("pooling", r"pool"),
    ("elementwise and norm", r"bn_fw|bn_inf|batch_?norm|layer_?norm|group_?norm|instance_?norm"),  # cuDNN's too
    ("convolution", r"conv|fprop|implicit_gemm|implicit_convolve|winograd|cudnn"),
    ("gemm", r"gemm|cublas|aten::(linear|addmm|mm|matmul|bmm)$"),
    ("elementwise and norm", r"elementwise|vectorized|unrolled|aten::(relu_?|add_?|mul_?|hardtanh_?|clamp_?|batch_norm|"
                             r"sigmoid|silu_?|gelu)$"),
    ("reduction", r"reduce|aten::(mean|sum|flatten)$"),
)
_COMPILED = tuple((name, re.compile(pattern, re.IGNORECASE)) for name, pattern in CATEGORIES)
TOP = 8  # names kept in a profile's top list


def categorize(name: str) -> str:
    """The :data:`CATEGORIES` group of a kernel or operator name (``other`` if none matches)."""
    return next((group for group, pattern in _COMPILED if pattern.search(name)), "other")


@dataclass
class Profile:
    """One runner's profile, per call (``ms`` are per call: totals divided by ``calls``).

    ``level``: ``kernels`` (GPU device time) or ``operators`` (CPU wall time of top-level operators).
    ``categories``: ``[{category, ms, share, launches}]`` by ms, share of ``busy_ms``; ``launches``
    per call. ``top``: the ``TOP`` most expensive names ``[{name, category, ms, share, launches}]``.
    ``busy_ms``: the sum. ``idle_share``: ``1 - busy_ms / measured_ms`` when a measured median is
    given (GPU only; near 0 means the GPU never waited, negative values are timing noise).
    """

    level: str
    calls: int
    busy_ms: float
    categories: list[dict]
    top: list[dict]
    events: int
    measured_ms: float | None = None
    idle_share: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def summarize_events(events: list[tuple[str, float]], calls: int, level: str, measured_ms: float | None = None) -> Profile:
    """A :class:`Profile` from ``(name, microseconds)`` events recorded over ``calls`` calls."""
    by_name: dict[str, list[float]] = {}
    for name, us in events:
        by_name.setdefault(name, []).append(us)
    busy_ms = sum(us for _, us in events) / 1000.0 / calls

    def row(label: str, times: list[float], **extra) -> dict:
        ms = sum(times) / 1000.0 / calls
        return {label: extra.pop("key"), **extra, "ms": ms, "share": ms / busy_ms if busy_ms else 0.0,
                "launches": len(times) / calls}

    group_of = {name: categorize(name) for name in by_name}
    groups: dict[str, list[float]] = {}
    for name, times in by_name.items():
        groups.setdefault(group_of[name], []).extend(times)
    categories = sorted((row("category", t, key=g) for g, t in groups.items()), key=lambda r: -r["ms"])
    top = sorted((row("name", t, key=n, category=group_of[n]) for n, t in by_name.items()), key=lambda r: -r["ms"])[:TOP]
    idle = None
    if measured_ms and level == "kernels" and events:  # no kernel recorded is no evidence of an idle GPU
        idle = 1.0 - busy_ms / measured_ms
    return Profile(level, calls, busy_ms, categories, top, len(events), measured_ms, idle)


def _device_events(prof) -> list[tuple[str, float]]:
    from torch.autograd import DeviceType

    return [(e.name, e.time_range.elapsed_us()) for e in prof.events() if e.device_type == DeviceType.CUDA]


def _caller(e):
    """The nearest operator that called ``e``, skipping user annotations (record_function ranges)."""
    parent = e.cpu_parent
    while parent is not None and parent.is_user_annotation:
        parent = parent.cpu_parent
    return parent


def _operator_events(prof) -> list[tuple[str, float]]:
    from torch.autograd import DeviceType

    return [(e.name, e.time_range.elapsed_us()) for e in prof.events()
            if e.device_type == DeviceType.CPU and not e.is_user_annotation and _caller(e) is None]


def profile_runner(run: Callable[[], object], device: torch.device, calls: int = 20,
                   measured_ms: float | None = None) -> Profile:
    """Profile ``calls`` calls of ``run`` (already warmed up: no compilation or autotuning inside).

    ``measured_ms``: the runner's measured median per call, for the idle share (GPU).
    """
    from torch.profiler import ProfilerActivity, profile

    # kineto logs every profiler start and stop (its USDT level, 5) and, on a machine without a GPU, an
    # ERROR that it found none; 6 silences it (read when the profiler first starts; set it to see them)
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    if cuda:
        torch.cuda.synchronize(device)
    with torch.inference_mode(), profile(activities=activities) as prof:
        for _ in range(calls):
            run()
        if cuda:
            torch.cuda.synchronize(device)
    events = _device_events(prof) if cuda else _operator_events(prof)
    if cuda and not events:
        log.warning("the profiler recorded no GPU kernels (CUPTI unavailable, or another profiler attached?): "
                    "no kernel breakdown for this row")
    return summarize_events(events, calls, "kernels" if cuda else "operators", measured_ms)


def profile_entry(run: Callable[[], object], device: torch.device, calls: int, measured_ms: float | None = None,
                  label: str = "") -> dict:
    """``{"profile": ...}`` of :func:`profile_runner`, or ``{"profile_error": ...}`` where the profiler would not
    run (one already active, CUPTI refused): a diagnostic, so a failure costs the breakdown, never the timing."""
    try:
        return {"profile": profile_runner(run, device, calls, measured_ms).to_dict()}
    except Exception as err:
        log.warning("%s: profiling failed (%s); the timing stands", label, err)
        return {"profile_error": f"{type(err).__name__}: {err}"}
