import contextlib

import pytest
import torch

from batude.functional.tucker import (
    lowrank_factors,
    singular_values,
    svt,
    tucker2_decompose,
    tucker2_reconstruct,
    fold,
    unfold,
)


def _weight(s=12, c=10, kh=3, kw=3, seed=0, dtype=torch.float32):
    return torch.randn(s, c, kh, kw, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_unfold_shapes_and_content():
    w = _weight()
    assert unfold(w, 0).shape == (12, 90)
    assert unfold(w, 1).shape == (10, 108)
    assert torch.equal(unfold(w, 1)[3], w[:, 3].reshape(-1))
    with pytest.raises(ValueError):
        unfold(w, 2)


def test_full_rank_is_exact_and_factors_orthonormal():
    w = _weight()
    core, u, v = tucker2_decompose(w, (12, 10))
    assert core.shape == (12, 10, 3, 3) and u.shape == (12, 12) and v.shape == (10, 10)
    assert _rel(tucker2_reconstruct(core, u, v), w) < 1e-6
    assert torch.allclose(u.t() @ u, torch.eye(12), atol=1e-5)
    assert torch.allclose(v.t() @ v, torch.eye(10), atol=1e-5)


def test_truncated_error_non_increasing_in_each_rank():
    w = _weight(16, 12)
    grid = [(r1, r2) for r1 in (2, 4, 8, 16) for r2 in (2, 6, 12)]
    err = {r: _rel(tucker2_reconstruct(*tucker2_decompose(w, r)), w) for r in grid}
    for (r1, r2), e in err.items():
        for (q1, q2), f in err.items():
            if q1 >= r1 and q2 >= r2:
                assert f <= e + 1e-6, ((r1, r2), (q1, q2))
    assert err[(2, 2)] > 0.5 > err[(16, 12)]


def test_hooi_does_not_worsen_hosvd():
    w = _weight(16, 12, seed=3)
    hosvd = _rel(tucker2_reconstruct(*tucker2_decompose(w, (5, 4))), w)
    hooi = _rel(tucker2_reconstruct(*tucker2_decompose(w, (5, 4), hooi_iters=20)), w)
    assert hooi <= hosvd + 1e-6


def test_low_rank_signal_recovered_exactly():
    # A kernel that *is* Tucker rank (3, 2) is reproduced at those ranks.
    g = torch.Generator().manual_seed(1)
    core = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64)
    u, v = torch.randn(12, 3, generator=g, dtype=torch.float64), torch.randn(10, 2, generator=g, dtype=torch.float64)
    w = tucker2_reconstruct(core, u, v)
    assert _rel(tucker2_reconstruct(*tucker2_decompose(w, (3, 2))), w) < 1e-10


def test_decompose_keeps_dtype_and_rejects_bad_ranks():
    w = _weight(dtype=torch.float64)
    assert all(t.dtype == torch.float64 for t in tucker2_decompose(w, (3, 3)))
    with pytest.raises(ValueError):
        tucker2_decompose(w, (13, 3))
    with pytest.raises(ValueError):
        tucker2_decompose(w, (0, 3))


def test_lowrank_factors_truncated_svd():
    m = torch.randn(20, 30, generator=torch.Generator().manual_seed(2))
    a, b = lowrank_factors(m, 20)
    assert _rel(a @ b, m) < 1e-6
    a5, b5 = lowrank_factors(m, 5)
    sv = torch.linalg.svdvals(m.double())
    # Eckart-Young: the rank-5 truncation error is the tail of the spectrum.
    assert abs(float((a5 @ b5 - m).norm()) - float(sv[5:].norm())) < 1e-4
    with pytest.raises(ValueError):
        lowrank_factors(m, 21)


def test_singular_values_descending_float64():
    sv = singular_values(_weight(), 1)
    assert sv.dtype == torch.float64 and sv.shape == (10,)
    assert torch.all(sv[:-1] >= sv[1:])


def test_svt_on_known_matrix():
    # M = Q1 diag(5, 3, 1) Q2^T with orthonormal Q1, Q2: thresholding at t=2, rank 3 keeps (3, 1, 0)
    g = torch.Generator().manual_seed(5)
    q1, _ = torch.linalg.qr(torch.randn(6, 3, generator=g, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(4, 3, generator=g, dtype=torch.float64))
    m = q1 @ torch.diag(torch.tensor([5.0, 3.0, 1.0], dtype=torch.float64)) @ q2.T
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    expected = q1 @ torch.diag(torch.tensor([3.0, 1.0, 0.0], dtype=torch.float64)) @ q2.T
    assert torch.allclose(svt(u, s, vh, 3, 2.0), expected, atol=1e-12)
    # rank 1 keeps only the top triplet, shrunk: (5 - 2) q1[:,0] q2[:,0]^T
    assert torch.allclose(svt(u, s, vh, 1, 2.0), 3.0 * torch.outer(q1[:, 0], q2[:, 0]), atol=1e-12)
    # t = 0 and full rank reproduce M
    assert torch.allclose(svt(u, s, vh, 3, 0.0), m, atol=1e-12)


def test_fold_inverts_unfold():
    w = torch.randn(12, 10, 3, 3)
    for mode in (0, 1):
        assert torch.equal(fold(unfold(w, mode), mode, w.shape), w)
    m = torch.randn(6, 4)
    assert torch.equal(fold(unfold(m, 1), 1, m.shape), m)
    with pytest.raises(ValueError, match="mode must be 0"):
        fold(unfold(w, 0), 2, w.shape)


def test_hosvd_matches_tensorly_and_handles_unfoldings_taller_than_wide():
    """The Gram-eigenvector HOSVD equals tensorly's SVD-based truncated HOSVD (up to signs of the factors)."""
    import tensorly as tl
    from tensorly.decomposition import partial_tucker

    torch.manual_seed(3)
    for shape, ranks in (((24, 20, 3, 3), (9, 7)), ((16, 1, 3, 3), (12, 1)), ((8, 6, 1, 3), (8, 6))):
        w = torch.randn(*shape, dtype=torch.float64)
        ours = tucker2_reconstruct(*tucker2_decompose(w, ranks))
        above = ranks[0] > shape[1] * shape[2] * shape[3]  # R1 above the unfolding's rank: tensorly warns, completes
        with tl.backend_context("pytorch"), pytest.warns(UserWarning) if above else contextlib.nullcontext():
            (core, (u, v)), _ = partial_tucker(w, rank=list(ranks), modes=[0, 1], n_iter_max=0, init="svd", tol=0)
        assert _rel(ours, tucker2_reconstruct(core, u, v)) < 1e-9, shape
        _, u2, v2 = tucker2_decompose(w, ranks)
        torch.testing.assert_close(u2.T @ u2, torch.eye(ranks[0], dtype=torch.float64))
        torch.testing.assert_close(v2.T @ v2, torch.eye(ranks[1], dtype=torch.float64))
