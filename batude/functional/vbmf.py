"""Empirical variational Bayesian matrix factorisation (EVBMF) rank estimation.

Implements the analytic global solution of fully-observed VBMF with an estimated noise variance:

* S. Nakajima, M. Sugiyama, S. D. Babacan, R. Tomioka, "Global analytic solution of
  fully-observed variational Bayesian matrix factorization", JMLR 14, 2013 (EVB threshold).
* S. Nakajima, R. Tomioka, M. Sugiyama, S. D. Babacan, "Condition for perfect dimensionality
  recovery by variational Bayesian PCA", JMLR 16, 2015 (noise-variance objective and bounds).

Kim et al., "Compression of deep convolutional neural networks for fast and low power mobile
applications", ICLR 2016, apply it to each channel-mode unfolding of a conv kernel to choose the
Tucker-2 ranks.

Formulas. ``Y`` is ``L x M`` with ``L <= M`` (transposed otherwise), singular values
``g_1 >= ... >= g_L``, truncation ``H <= L`` and ``alpha = L / M``:

* ``tau_ = 2.5129 sqrt(alpha)``, ``x_ = (1 + tau_)(1 + alpha / tau_)``;
* EVB threshold: component ``h <= H`` is kept iff ``g_h > sqrt(M sigma2 x_)``;
* ``tau(x) = (x - 1 - alpha + sqrt((x - 1 - alpha)^2 - 4 alpha)) / 2`` and
  ``psi1(x) = log(tau(x) + 1) + alpha log(tau(x) / alpha + 1) - tau(x)``;
* ``sigma2`` minimises (``x_h = g_h^2 / (M sigma2)``, constants in ``sigma2`` dropped)
  ``Omega(sigma2) = sum_{h<=L} (x_h + log sigma2) + sum_{h<=H, x_h > x_} psi1(x_h)``,
  i.e. ``L`` times the 2015 paper's objective up to an additive constant;
* over ``[max(g_{Hb+1}^2 / (M x_), sum_{h>Hb} g_h^2 / (M (L - Hb))), ||Y||_F^2 / (L M)]`` with
  ``Hb = min(ceil(L / (1 + alpha)) - 1, H)``.

The 1-D minimisation is a deterministic log-spaced grid search followed by golden-section
refinement in ``log sigma2`` (``Omega`` need not be unimodal).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from batude.functional.tucker import spectrum

__all__ = ["EVBMFResult", "evbmf"]

logger = logging.getLogger(__name__)

_TAU_COEF = 2.5129  # tau_ ~= 2.5129 sqrt(alpha)
_GRID_POINTS = 128
_GOLDEN_ITERS = 80
_MIN_REL_SIGMA2 = 1e-14  # floor of the search interval, relative to the upper bound


@dataclass(frozen=True)
class EVBMFResult:
    """Result of :func:`evbmf`.

    Attributes:
        rank: estimated rank (number of retained components), ``0 <= rank <= H``.
        sigma2: noise variance used (estimated or given).
        threshold: singular-value threshold ``sqrt(max(L, M) * sigma2 * x_)``; components with a
            singular value strictly above it are retained.
        singular_values: the input's ``min(L, M)`` singular values, descending, float64, CPU.
    """

    rank: int
    sigma2: float
    threshold: float
    singular_values: torch.Tensor


def _validate(y: torch.Tensor) -> torch.Tensor:
    """Check ``y`` and return it as a float64 CPU tensor of shape ``(L, M)``."""
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"y must be a torch.Tensor, got {type(y).__name__}")
    if y.dim() != 2:
        raise ValueError(f"y must be 2-D, got shape {tuple(y.shape)}")
    if y.numel() == 0:
        raise ValueError(f"y must be non-empty, got shape {tuple(y.shape)}")
    if y.is_complex():
        raise ValueError("y must be real-valued")
    y64 = y.detach().to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(y64).all()):
        raise ValueError("y contains non-finite values (NaN or Inf)")
    return y64


def _psi1(x: np.ndarray, alpha: float) -> np.ndarray:
    """``psi1(x)`` for ``x > (1 + sqrt(alpha))^2`` (shape preserved)."""
    b = x - 1.0 - alpha
    tau = 0.5 * (b + np.sqrt(np.maximum(b * b - 4.0 * alpha, 0.0)))
    return np.log(tau + 1.0) + alpha * np.log(tau / alpha + 1.0) - tau


def _objective(sigma2: float, s2: np.ndarray, m: int, h: int, alpha: float, x_bar: float) -> float:
    """``Omega(sigma2)`` for squared singular values ``s2`` of shape ``(L,)``."""
    x = s2 / (m * sigma2)
    value = float(x.sum()) + s2.size * math.log(sigma2)
    kept = x[:h][x[:h] > x_bar]
    if kept.size:
        value += float(_psi1(kept, alpha).sum())
    return value


def _sigma2_bounds(
    s2: np.ndarray, m: int, h: int, alpha: float, x_bar: float
) -> tuple[float, float]:
    """Search interval ``(lower, upper)`` for the EVB noise variance."""
    n = s2.size
    upper = float(s2.sum()) / (n * m)
    h_bar = min(math.ceil(n / (1.0 + alpha)) - 1, h)
    lower = max(float(s2[h_bar]) / (m * x_bar), float(s2[h_bar:].mean()) / m)
    lower = max(lower, upper * _MIN_REL_SIGMA2)
    return min(lower, upper), upper


def _minimize_log(f: Callable[[float], float], lo: float, hi: float) -> float:
    """Minimise ``f`` over ``[lo, hi]`` (``0 < lo <= hi``): log-grid, then golden section."""
    if hi <= lo:
        return hi
    grid = np.geomspace(lo, hi, _GRID_POINTS)
    values = [f(float(v)) for v in grid]
    i = int(np.argmin(values))
    a = math.log(grid[max(i - 1, 0)])
    b = math.log(grid[min(i + 1, _GRID_POINTS - 1)])
    best_t, best_f = math.log(grid[i]), values[i]
    inv_phi = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = b - inv_phi * (b - a), a + inv_phi * (b - a)
    fc, fd = f(math.exp(c)), f(math.exp(d))
    for _ in range(_GOLDEN_ITERS):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - inv_phi * (b - a)
            fc = f(math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + inv_phi * (b - a)
            fd = f(math.exp(d))
    for t, ft in ((c, fc), (d, fd)):
        if ft < best_f:
            best_t, best_f = t, ft
    return min(max(math.exp(best_t), lo), hi)


def evbmf(y: torch.Tensor, sigma2: float | None = None, max_rank: int | None = None) -> EVBMFResult:
    """Estimate the rank of a 2-D matrix ``y`` (any float dtype/device; computed in float64).

    Args:
        y: matrix of shape ``(L, M)``; transposed internally when ``L > M``.
        sigma2: known noise variance (``> 0``); ``None`` estimates it by minimising ``Omega``.
        max_rank: truncation ``H`` (``>= 1``, capped at ``min(L, M)``); ``None`` means
            ``min(L, M)``.

    Returns:
        :class:`EVBMFResult` with ``rank = #{h <= H : g_h > threshold}``.

    Raises:
        ValueError: non-2-D, empty or non-finite ``y``; non-positive ``sigma2``; ``max_rank < 1``.
    """
    y64 = _validate(y)
    if y64.shape[0] > y64.shape[1]:
        y64 = y64.T
    n, m = y64.shape
    if max_rank is not None and int(max_rank) < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    h = n if max_rank is None else min(int(max_rank), n)
    if sigma2 is not None and not (math.isfinite(sigma2) and sigma2 > 0.0):
        raise ValueError(f"sigma2 must be a positive finite number, got {sigma2}")

    sv = spectrum(y64)
    s2 = sv.numpy() ** 2
    alpha = n / m
    tau_bar = _TAU_COEF * math.sqrt(alpha)
    x_bar = (1.0 + tau_bar) * (1.0 + alpha / tau_bar)

    if sigma2 is None:
        lo, hi = _sigma2_bounds(s2, m, h, alpha, x_bar)
        if hi <= 0.0:  # all-zero matrix: nothing to keep, no noise
            return EVBMFResult(0, 0.0, 0.0, sv)
        sigma2 = _minimize_log(lambda v: _objective(v, s2, m, h, alpha, x_bar), lo, hi)
        logger.debug("EVBMF sigma2 bounds [%.6g, %.6g] -> %.6g", lo, hi, sigma2)

    threshold = math.sqrt(m * float(sigma2) * x_bar)
    rank = int((sv[:h] > threshold).sum())
    logger.debug("EVBMF %dx%d (H=%d): threshold %.6g, rank %d", n, m, h, threshold, rank)
    return EVBMFResult(rank=rank, sigma2=float(sigma2), threshold=threshold, singular_values=sv)
