"""Pure Tucker-2 / low-rank operations on weight tensors (no modules, no state).

Layout conventions (METHOD.md section 1): a conv weight ``W`` has shape ``(S, C, kh, kw)``.
Tucker-2 over the two channel modes gives ``W ~= G x1 U x2 V`` with core ``G (R1, R2, kh, kw)``,
output factor ``U (S, R1)`` and input factor ``V (C, R2)``. The truncated HOSVD is computed from
the eigenvectors of each unfolding's Gram matrix, HOOI refinement with tensorly's
``partial_tucker`` on its PyTorch backend; both in float64 on the weight's device, returned in the
weight's dtype.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import torch

__all__ = [
    "unfold",
    "fold",
    "tucker2_decompose",
    "tensorly_tucker2",
    "tucker2_reconstruct",
    "lowrank_factors",
    "singular_values",
    "spectrum",
    "svt",
]


def unfold(weight: torch.Tensor, mode: int) -> torch.Tensor:
    """Mode-``mode`` unfolding of a 4-D (or 2-D) weight.

    ``mode=0`` gives ``W(1)`` of shape ``(S, C*kh*kw)``; ``mode=1`` gives ``W(2)`` of shape
    ``(C, S*kh*kw)``.
    """
    if mode not in (0, 1):
        raise ValueError(f"mode must be 0 (output channels) or 1 (input channels), got {mode}")
    return torch.movedim(weight, mode, 0).reshape(weight.shape[mode], -1)


def fold(matrix: torch.Tensor, mode: int, shape: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`unfold`: the weight of ``shape`` whose mode-``mode`` unfolding is ``matrix``."""
    if mode not in (0, 1):
        raise ValueError(f"mode must be 0 (output channels) or 1 (input channels), got {mode}")
    moved = (shape[mode], *(d for i, d in enumerate(shape) if i != mode))
    return torch.movedim(matrix.reshape(moved), 0, mode)


def spectrum(matrix: torch.Tensor) -> torch.Tensor:
    """Descending singular values of a 2-D ``matrix`` (float64, same device), via its Gram matrix.

    ``eigvalsh`` of the smaller Gram matrix ``A A^T`` (or ``A^T A``) is one to two orders of
    magnitude faster than an SVD for the wide unfoldings of conv kernels; it gives every
    ``sigma_i^2`` to absolute precision ~1e-16 * sigma_1^2, ample for energies and rank estimates.
    """
    a = matrix.detach().to(torch.float64)
    gram = a @ a.T if a.shape[0] <= a.shape[1] else a.T @ a
    return torch.linalg.eigvalsh(gram).flip(0).clamp_min(0.0).sqrt()


def singular_values(weight: torch.Tensor, mode: int) -> torch.Tensor:
    """Descending singular values (float64, same device) of the mode-``mode`` unfolding."""
    return spectrum(unfold(weight, mode))


def tucker2_decompose(
    weight: torch.Tensor, ranks: tuple[int, int], hooi_iters: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tucker-2 decomposition of a conv weight over its channel modes.

    Args:
        weight: ``(S, C, kh, kw)``.
        ranks: ``(R1, R2)`` with ``1 <= R1 <= S`` and ``1 <= R2 <= C``.
        hooi_iters: HOOI refinement iterations (tensorly, SVD initialisation); 0 keeps the
            truncated HOSVD, whose error is non-increasing in both ranks.

    Returns:
        ``(core (R1, R2, kh, kw), U (S, R1), V (C, R2))`` in ``weight``'s dtype and device;
        ``U`` and ``V`` have orthonormal columns.
    """
    s, c = weight.shape[:2]
    r1, r2 = int(ranks[0]), int(ranks[1])
    if not (1 <= r1 <= s and 1 <= r2 <= c):
        raise ValueError(f"ranks {ranks} out of range for a weight with S={s}, C={c}")
    w64 = weight.detach().to(torch.float64)
    if hooi_iters == 0:
        u, v = _leading_vectors(unfold(w64, 0), r1), _leading_vectors(unfold(w64, 1), r2)
        core = torch.einsum("schw,sa,cb->abhw", w64, u, v)
    else:
        core, u, v = tensorly_tucker2(w64, (r1, r2), hooi_iters)
    return tuple(t.to(dtype=weight.dtype).contiguous() for t in (core, u, v))  # type: ignore[return-value]


def tensorly_tucker2(w64: torch.Tensor, ranks: tuple[int, int], n_iter_max: int) -> tuple[torch.Tensor, ...]:
    """tensorly's ``partial_tucker`` over the channel modes (SVD initialisation, ``n_iter_max`` HOOI steps):
    ``(core, U, V)`` in ``w64``'s dtype. batude uses it for HOOI; with 0 steps it is the HOSVD that
    :func:`tucker2_decompose` computes faster (``benchmarks/decompose_speed.py`` times both)."""
    import tensorly as tl
    from tensorly.decomposition import partial_tucker

    with tl.backend_context("pytorch"), warnings.catch_warnings():
        # A rank above the unfolding's own rank is legal (factors are completed); tensorly warns.
        warnings.filterwarnings("ignore", message="Trying to compute SVD", category=UserWarning)
        (core, (u, v)), _ = partial_tucker(w64, rank=list(ranks), modes=[0, 1], n_iter_max=n_iter_max, init="svd", tol=0)
    return core, u, v


def _leading_vectors(matrix: torch.Tensor, rank: int) -> torch.Tensor:
    """The ``rank`` leading left singular vectors of a float64 ``matrix`` (an unfolding: usually wide).

    ``eigh`` of the ``rows x rows`` Gram matrix instead of an SVD of the unfolding: 7x faster than
    tensorly's HOSVD over the 3x3 convs of ResNet-18/50 (``benchmarks/decompose_speed.py``). Vectors of
    singular values below ~1e-8 sigma_1 are not accurate individually, but any orthonormal completion
    gives the same truncation error to that precision; beyond the matrix's rank they complete the
    basis (a rank above it is legal).
    """
    gram = matrix @ matrix.T
    _, vectors = torch.linalg.eigh(gram)
    return vectors.flip(1)[:, :rank].contiguous()


def tucker2_reconstruct(core: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Dense weight ``(S, C, kh, kw)`` from ``core (R1, R2, kh, kw)``, ``U (S, R1)``, ``V (C, R2)``."""
    return torch.einsum("abhw,sa,cb->schw", core, u, v)


def lowrank_factors(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncated SVD ``matrix (S, C) ~= A (S, R) @ B (R, C)``, singular values split evenly.

    Computed in float64 on ``matrix``'s device, returned in its dtype.
    """
    s, c = matrix.shape
    if not 1 <= rank <= min(s, c):
        raise ValueError(f"rank {rank} out of range for a {s}x{c} matrix")
    u, sv, vh = torch.linalg.svd(matrix.detach().to(torch.float64), full_matrices=False)
    root = sv[:rank].sqrt()
    a = u[:, :rank] * root
    b = root[:, None] * vh[:rank]
    return a.to(matrix.dtype).contiguous(), b.to(matrix.dtype).contiguous()


def svt(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, rank: int, threshold: float) -> torch.Tensor:
    """Rank-limited singular value soft-thresholding from an SVD ``M = u diag(s) vh``.

    Returns ``u[:, :R] diag(max(s[:R] - t, 0)) vh[:R]`` (R = ``rank``): the proximal step of
    ``t * ||Z||_*`` restricted to rank ``R`` (BC-ADL's Z-step).
    """
    kept = (s[:rank] - threshold).clamp_min(0.0)
    return (u[:, :rank] * kept) @ vh[:rank]
