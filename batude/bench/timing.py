"""The timing primitive shared by the CLI, tests and benchmarks.

:func:`time_callable` warms up (by count and, optionally, by time), then times ``iters`` calls:
CUDA events on a CUDA device (no host synchronisation inside the timed region beyond the event
pair), ``time.perf_counter`` on CPU; everything under ``torch.inference_mode``. :func:`summarize`
turns samples (ms) into median, p90, p99, mean, std, coefficient of variation and throughput, and
logs a warning when the CV is high (a noisy machine: rerun, or use more iterations).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch

from batude.errors import BatudeError

__all__ = ["Stats", "summarize", "time_callable", "noise_summarised", "HIGH_CV"]

log = logging.getLogger(__name__)

HIGH_CV = 0.10  # coefficient of variation above which a result is flagged as noisy


@dataclass(frozen=True)
class Stats:
    """Latency statistics in milliseconds; ``throughput`` in items per second (batch / mean)."""

    n: int
    median_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    cv: float
    min_ms: float
    max_ms: float
    batch: int
    throughput: float

    @property
    def noisy(self) -> bool:
        return self.cv > HIGH_CV

    def to_dict(self) -> dict:
        return {**asdict(self), "noisy": self.noisy}


def _percentile(sorted_samples: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default method) of sorted samples, q in [0, 100]."""
    pos = (len(sorted_samples) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_samples[lo] + (sorted_samples[hi] - sorted_samples[lo]) * (pos - lo)


def summarize(samples_ms: Sequence[float], batch: int = 1, label: str = "") -> Stats:
    """Statistics of per-call latencies (ms); std is the sample standard deviation (n - 1)."""
    xs = sorted(float(x) for x in samples_ms)
    if not xs or any(not math.isfinite(x) or x < 0 for x in xs):
        raise BatudeError("timing needs at least one finite, non-negative sample")
    n = len(xs)
    mean = sum(xs) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
    stats = Stats(n, _percentile(xs, 50), _percentile(xs, 90), _percentile(xs, 99), mean, std,
                  std / mean if mean > 0 else 0.0, xs[0], xs[-1], int(batch), 1000.0 * batch / mean if mean > 0 else math.inf)
    if stats.noisy:
        log.warning("%s: coefficient of variation %.1f%% > %.0f%%; the machine may be busy, rerun or time more iterations",
                    label or "timing", 100 * stats.cv, 100 * HIGH_CV)
    return stats


def time_callable(fn: Callable[[], object], *, iters: int = 100, warmup: int = 10, warmup_seconds: float = 0.0,
                  device: torch.device | str = "cpu", batch: int = 1, label: str = "", calls: int = 1) -> Stats:
    """Time ``fn()`` (inputs already on ``device``): warm up by count and for ``warmup_seconds``, then ``iters`` samples.

    A sample is ``calls`` back-to-back calls between one pair of timestamps, divided by ``calls``.
    With 1 (the default) each call is timed alone from an idle device: the latency one request sees,
    launch included. With more, a replayed CUDA graph of one layer is timed as it runs inside a
    graphed model, right after the layer before it: on an H200 at batch 1, ResNet-18's 3x3 convs
    timed alone summed to more than the whole graphed model (BENCHMARKS.md, "H200 runs").
    """
    if iters < 1 or warmup < 0 or warmup_seconds < 0 or calls < 1:
        raise BatudeError(f"timing: iters and calls must be >= 1 and warm-up >= 0 "
                          f"(got iters={iters}, calls={calls}, warmup={warmup})")
    device = torch.device(device)
    cuda = device.type == "cuda"
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        deadline = time.perf_counter() + warmup_seconds
        while time.perf_counter() < deadline:
            fn()
        if cuda:
            torch.cuda.synchronize(device)
        samples = [(_cuda_sample if cuda else _cpu_sample)(fn, calls) for _ in range(iters)]
    return summarize(samples, batch, label)


def _cpu_sample(fn: Callable[[], object], calls: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return 1000.0 * (time.perf_counter() - start) / calls


def _cuda_sample(fn: Callable[[], object], calls: int = 1) -> float:
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(calls):
        fn()
    end.record()
    end.synchronize()
    return float(begin.elapsed_time(end)) / calls


class _Count(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.noisy = 0

    def filter(self, record: logging.LogRecord) -> bool:
        self.noisy += 1
        return False


@contextlib.contextmanager
def noise_summarised(what: str):
    """Within the block, hold back the per-call high-CV warnings of :func:`time_callable` (hundreds of
    tiny timings in a table or a per-layer profile) and warn once at the end with how many were noisy."""
    count = _Count()
    log.addFilter(count)
    try:
        yield
    finally:
        log.removeFilter(count)
        if count.noisy:
            log.warning("%s: %d timing(s) had a coefficient of variation above %.0f%%; the machine may be busy, "
                        "rerun or time more iterations", what, count.noisy, 100 * HIGH_CV)
