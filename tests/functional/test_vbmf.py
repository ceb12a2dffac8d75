"""Tests for batude.functional.vbmf (EVBMF rank estimation)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from batude.functional import vbmf as vbmf_mod
from batude.functional.vbmf import EVBMFResult, evbmf


def _x_bar(l: int, m: int) -> float:
    """EVB threshold constant (1 + tau)(1 + alpha / tau), tau = 2.5129 sqrt(alpha), alpha <= 1."""
    alpha = min(l, m) / max(l, m)
    tau = 2.5129 * math.sqrt(alpha)
    return (1.0 + tau) * (1.0 + alpha / tau)


def _synthetic(l: int, m: int, r: int, sigma: float, seed: int) -> torch.Tensor:
    """U diag(s) V^T + sigma * N(0, 1), with s from 10x down to 3x the noise edge."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(l, r, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(m, r, generator=g, dtype=torch.float64))
    edge = sigma * (math.sqrt(l) + math.sqrt(m))  # largest noise singular value (Marchenko-Pastur)
    s = torch.linspace(10.0, 3.0, r, dtype=torch.float64) * edge
    noise = sigma * torch.randn(l, m, generator=g, dtype=torch.float64)
    return u @ torch.diag(s) @ v.T + noise


CASES = [  # (L, M, r, sigma, seed)
    (64, 128, 7, 0.1, 0),
    (128, 64, 5, 0.05, 1),  # L > M
    (100, 100, 10, 1.0, 2),
    (40, 300, 3, 0.01, 3),
    (256, 96, 12, 0.2, 4),  # L > M
]


@pytest.mark.parametrize(("l", "m", "r", "sigma", "seed"), CASES)
def test_recovers_rank_and_noise_variance(l: int, m: int, r: int, sigma: float, seed: int) -> None:
    res = evbmf(_synthetic(l, m, r, sigma, seed))
    assert isinstance(res, EVBMFResult)
    assert res.rank == r
    assert 1 / 1.25 < res.sigma2 / sigma**2 < 1.25
    sv = res.singular_values
    assert sv.dtype == torch.float64 and sv.device.type == "cpu"
    assert sv.shape == (min(l, m),)
    assert bool((sv[:-1] >= sv[1:]).all())


@pytest.mark.parametrize(("l", "m"), [(64, 128), (100, 100), (200, 50), (30, 200)])
def test_pure_noise_gives_rank_zero(l: int, m: int) -> None:
    # Theory: for Y = sigma * E (iid N(0, 1), L <= M after transposing) the largest singular value
    # sits at the Marchenko-Pastur edge sigma sqrt(M) (1 + sqrt(alpha)), with Tracy-Widom
    # fluctuations of relative order M^(-2/3) (~1-2 % here). The EVB threshold is
    # sigma sqrt(M x_) with x_ = 1 + alpha + tau + alpha / tau > (1 + sqrt(alpha))^2 because
    # tau = 2.5129 sqrt(alpha) != sqrt(alpha); for these shapes the threshold is 8.8-10.8 % above
    # the edge, i.e. many fluctuation widths. So rank is exactly 0, and then Omega reduces to its
    # null branch sum(x_h + log sigma2), whose minimiser is the upper bound ||Y||_F^2 / (L M).
    for seed in range(5):
        g = torch.Generator().manual_seed(100 + seed)
        y = 0.3 * torch.randn(l, m, generator=g, dtype=torch.float64)
        res = evbmf(y)
        assert res.rank == 0
        assert res.sigma2 == pytest.approx(float((y**2).mean()), rel=1e-6)
        assert res.singular_values[0] < res.threshold


@pytest.mark.parametrize(("l", "m", "r", "sigma", "seed"), CASES)
def test_known_sigma2_matches_estimate(l: int, m: int, r: int, sigma: float, seed: int) -> None:
    y = _synthetic(l, m, r, sigma, seed)
    known = evbmf(y, sigma2=sigma**2)
    assert known.sigma2 == sigma**2
    assert known.rank == evbmf(y).rank == r


def test_rank_non_increasing_in_known_sigma2() -> None:
    y = _synthetic(64, 128, 7, 0.1, 0)
    sigma2s = np.geomspace(1e-8, 1e3, 60)
    results = [evbmf(y, sigma2=float(s)) for s in sigma2s]
    ranks = [res.rank for res in results]
    thresholds = [res.threshold for res in results]
    assert all(a >= b for a, b in zip(ranks, ranks[1:]))
    assert all(a < b for a, b in zip(thresholds, thresholds[1:]))
    assert ranks[0] == 64 and ranks[-1] == 0  # the sweep really spans full rank to none
    assert 7 in ranks


@pytest.mark.parametrize("sigma2", [None, 0.02])
@pytest.mark.parametrize(("l", "m"), [(64, 128), (128, 64)])
def test_threshold_formula_and_rank_count(l: int, m: int, sigma2: float | None) -> None:
    res = evbmf(_synthetic(l, m, 7, 0.1, 5), sigma2=sigma2)
    expected = math.sqrt(max(l, m) * res.sigma2 * _x_bar(l, m))
    assert res.threshold == pytest.approx(expected, rel=1e-12)
    assert res.rank == int((res.singular_values > res.threshold).sum())


def test_transpose_invariance() -> None:
    y = _synthetic(48, 90, 6, 0.2, 6)
    a, b = evbmf(y), evbmf(y.T.contiguous())
    assert a.rank == b.rank == 6
    assert a.sigma2 == pytest.approx(b.sigma2, rel=1e-9)
    assert a.threshold == pytest.approx(b.threshold, rel=1e-9)
    torch.testing.assert_close(a.singular_values, b.singular_values)


def test_max_rank_caps_rank() -> None:
    y = _synthetic(64, 128, 7, 0.1, 0)
    for h in (1, 3, 6, 7, 8, 64, 1000):
        assert evbmf(y, sigma2=0.01, max_rank=h).rank == min(h, 7)
        assert evbmf(y, max_rank=h).rank == min(h, 7)
        assert evbmf(y, max_rank=h).singular_values.shape == (64,)


@pytest.mark.parametrize(("l", "m", "r", "sigma", "seed"), CASES[:3] + [(30, 40, 12, 0.5, 7)])
def test_sigma2_is_global_minimiser_within_bounds(
    l: int, m: int, r: int, sigma: float, seed: int
) -> None:
    y = _synthetic(l, m, r, sigma, seed)
    n, mm = min(l, m), max(l, m)
    s2 = torch.linalg.svdvals(y).numpy() ** 2
    alpha, x_bar = n / mm, _x_bar(l, m)
    lo, hi = vbmf_mod._sigma2_bounds(s2, mm, n, alpha, x_bar)
    res = evbmf(y)
    assert lo <= res.sigma2 <= hi
    def omega(v: float) -> float:
        return vbmf_mod._objective(v, s2, mm, n, alpha, x_bar)

    best = min(omega(float(v)) for v in np.geomspace(lo, hi, 3000))
    assert omega(res.sigma2) <= best + 1e-9 * abs(best)


@pytest.mark.parametrize(
    "y",
    [
        torch.ones(5),
        torch.ones(2, 3, 4),
        torch.tensor(1.0),
        torch.ones(0, 5),
        torch.ones(5, 0),
        torch.tensor([[1.0, float("nan")], [0.0, 1.0]]),
        torch.tensor([[1.0, float("inf")], [0.0, 1.0]]),
    ],
    ids=["1d", "3d", "0d", "empty-rows", "empty-cols", "nan", "inf"],
)
def test_bad_inputs_raise(y: torch.Tensor) -> None:
    with pytest.raises(ValueError):
        evbmf(y)


@pytest.mark.parametrize(
    "kwargs", [{"sigma2": 0.0}, {"sigma2": -1.0}, {"sigma2": float("nan")}, {"max_rank": 0}]
)
def test_bad_arguments_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        evbmf(torch.eye(4), **kwargs)


def test_float32_matches_float64() -> None:
    y = _synthetic(64, 128, 7, 0.1, 8)
    r64, r32 = evbmf(y), evbmf(y.to(torch.float32))
    assert r32.rank == r64.rank == 7
    assert r32.sigma2 == pytest.approx(r64.sigma2, rel=1e-4)
    assert r32.singular_values.dtype == torch.float64


def test_noiseless_low_rank_and_zero_matrix() -> None:
    g = torch.Generator().manual_seed(9)
    a = torch.randn(50, 5, generator=g, dtype=torch.float64)
    a = a @ torch.randn(5, 80, generator=g, dtype=torch.float64)
    assert evbmf(a).rank == 5
    zero = evbmf(torch.zeros(6, 9))
    assert (zero.rank, zero.sigma2, zero.threshold) == (0, 0.0, 0.0)


def test_deterministic_and_accepts_grad_input() -> None:
    y = _synthetic(64, 128, 7, 0.1, 10).requires_grad_(True)
    a, b = evbmf(y), evbmf(y)
    assert (a.rank, a.sigma2, a.threshold) == (b.rank, b.sigma2, b.threshold) and a.rank == 7


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_cuda_input_matches_cpu() -> None:
    y = _synthetic(64, 128, 7, 0.1, 11)
    gpu, cpu = evbmf(y.cuda()), evbmf(y)
    assert gpu.rank == cpu.rank == 7
    assert gpu.singular_values.device.type == "cpu"
    assert gpu.sigma2 == pytest.approx(cpu.sigma2, rel=1e-9)
