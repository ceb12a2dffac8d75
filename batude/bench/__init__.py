"""Measurement: the shared timing primitive and the environment record (latency backends, per-layer
profiles and lookup tables build on these)."""

from batude.bench.env import environment
from batude.bench.timing import HIGH_CV, Stats, summarize, time_callable

__all__ = ["environment", "HIGH_CV", "Stats", "summarize", "time_callable"]
