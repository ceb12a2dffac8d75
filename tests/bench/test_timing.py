"""The timing primitive: statistics are exact on known samples; a sleep workload lands in range."""

import logging
import math
import statistics
import time

import numpy as np
import pytest
import torch

from batude.bench import environment, summarize, time_callable
from batude.bench.timing import noise_summarised
from batude.errors import BatudeError


def test_statistics_on_known_samples():
    samples = [1.0, 2.0, 3.0, 4.0, 10.0]
    s = summarize(samples, batch=8)
    assert s.n == 5 and s.median_ms == 3.0 and s.min_ms == 1.0 and s.max_ms == 10.0
    assert s.mean_ms == pytest.approx(4.0)
    assert s.std_ms == pytest.approx(statistics.stdev(samples))
    assert s.cv == pytest.approx(statistics.stdev(samples) / 4.0)
    assert s.p90_ms == pytest.approx(np.percentile(samples, 90)) and s.p99_ms == pytest.approx(np.percentile(samples, 99))
    assert s.throughput == pytest.approx(8 * 1000 / 4.0)
    assert s.to_dict()["noisy"] is True


def test_high_cv_is_logged_and_low_cv_is_not(caplog):
    with caplog.at_level(logging.WARNING, logger="batude.bench.timing"):
        summarize([1.0, 1.01, 0.99, 1.0], label="steady")
        assert not caplog.records
        summarize([1.0, 5.0, 1.0, 9.0], label="noisy")
    assert len(caplog.records) == 1 and "noisy" in caplog.records[0].getMessage()


def test_many_noisy_timings_give_one_summary_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="batude.bench.timing"):
        with noise_summarised("per-layer profile"):
            for i in range(5):
                summarize([1.0, 5.0, 1.0, 9.0] if i % 2 else [1.0, 1.0, 1.0], label=f"cell {i}")
        summarize([1.0, 5.0, 1.0, 9.0], label="after")  # outside the block: warned on its own again
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and messages[0].startswith("per-layer profile: 2 timing(s)") and "after" in messages[1]


def test_sleep_workload_lands_in_range():
    stats = time_callable(lambda: time.sleep(0.005), iters=20, warmup=2, batch=4)
    assert 5.0 <= stats.median_ms <= 15.0  # sleep never returns early; a loaded machine may add a few ms
    assert stats.n == 20 and stats.throughput == pytest.approx(4000.0 / stats.mean_ms)


def test_warmup_by_count_and_time_runs_before_timing():
    calls = []
    time_callable(lambda: calls.append(1), iters=5, warmup=3, warmup_seconds=0.02)
    assert len(calls) > 3 + 5  # the timed warm-up ran more calls


def test_a_sample_of_several_calls_is_timed_once_and_divided(monkeypatch):
    """``calls``: back-to-back calls between one pair of timestamps, per-call time out (a fake clock: each
    call takes exactly 2 ms, so a per-sample timestamp pair would give 2 ms x calls)."""
    from types import SimpleNamespace

    from batude.bench import timing

    clock, stamps, runs = [0.0], [], []
    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=lambda: stamps.append(clock[0]) or clock[0]))

    def call():
        runs.append(1)
        clock[0] += 0.002

    stats = time_callable(call, iters=4, warmup=2, calls=5)
    assert len(runs) == 2 + 4 * 5 and stats.n == 4
    assert stats.median_ms == pytest.approx(2.0) and stats.std_ms == pytest.approx(0.0, abs=1e-9)
    assert len(stamps) == 2 + 4 * 2  # the warm-up deadline and its check, then one pair per sample, not per call


def test_bad_arguments():
    with pytest.raises(BatudeError):
        summarize([])
    with pytest.raises(BatudeError):
        summarize([1.0, math.nan])
    with pytest.raises(BatudeError):
        time_callable(lambda: None, iters=0)
    with pytest.raises(BatudeError, match="calls must be >= 1"):
        time_callable(lambda: None, calls=0)


def test_environment_record_without_touching_cuda():
    env = environment()
    assert env["torch"] == str(torch.__version__) and env["cpu_threads"] >= 1
    assert {"cuda", "cudnn", "onnxruntime", "tensorrt", "triton", "cpu"} <= set(env)
    try:
        import triton
    except ImportError:
        assert env["triton"] is None
    else:
        assert env["triton"] == triton.__version__
    if not torch.cuda.is_available():
        assert "gpu" not in env and not torch.cuda.is_initialized()
