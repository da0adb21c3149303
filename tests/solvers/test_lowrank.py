"""Diagonal-plus-low-rank factors and the Hessian-vector products built on them."""

import numpy as np
import pytest

import gufm
from gufm.solvers.lowrank import DiagLowRank, compress
from gufm.solvers.manifold import ReducedManifold
from gufm.solvers.reduced import ReducedParametrisation, initial_point
from gufm.solvers.riemannian import trust_region


@pytest.mark.parametrize("shape", [(60, 60), (60, 61), (61, 60)])
def test_compress_recovers_diagonal_plus_low_rank(shape, rng):
    m, n = shape
    k = min(m, n)
    M = rng.standard_normal((m, 3)) @ rng.standard_normal((3, n))
    M[np.arange(k), np.arange(k)] += rng.random(k) + 1
    A = compress(M, 1e-12, imputations=30)
    assert A is not None and A.rank <= 4
    np.testing.assert_allclose(A.dense(), M, atol=1e-11 * np.abs(M).max())


def test_compress_refuses_unstructured_matrices(rng):
    assert compress(rng.standard_normal((80, 80)), 1e-3) is None


def test_products_match_dense(rng):
    A = DiagLowRank(rng.random(4), rng.random((4, 3)), rng.random((5, 3)), (4, 5))
    D = A.dense()
    X4, X5 = rng.random((4, 2)), rng.random((5, 2))
    np.testing.assert_allclose(A.mm(X5), D @ X5)
    np.testing.assert_allclose(A.tmm(X4), D.T @ X4)
    np.testing.assert_allclose(A.rmm(X4.T), X4.T @ D)
    np.testing.assert_allclose(A.rtmm(X5.T), X5.T @ D.T)


def _distinct(K, **kw):
    return gufm.GUFM(counts=100 + np.random.default_rng(K).permutation(K), dim=K + 1,
                     lam_W=5e-3, **kw).normalised()[0]


def _dense_and_low_rank(kw, rng, mixed):
    """A point along the way (two trust-region iterations from the start, K = 60) and the
    caches of a dense manifold and of a low-rank one (tolerance 1e-2: whatever the
    factorisation gives; the products must follow it)."""
    prob = _distinct(60, **kw)
    p = min(prob.m, prob.K + 1)
    x0 = ReducedParametrisation(prob, p).pack(*initial_point(prob, p, "auto", rng))
    x1 = trust_region(prob, p, x0, maxiter=2, lowrank=None).x
    dense, low = ReducedManifold(prob, p), ReducedManifold(prob, p)
    low.lowrank_tol, low.mixed = 1e-2, mixed
    x = dense.from_flat(x1)
    return dense, low, x, dense.cost_grad(x)[2], low.cost_grad(x)[2]


@pytest.mark.parametrize("kw", [{}, {"loss": "mse"}, {"lam_b": 0.1},
                                {"features": "penalty", "lam_H": 1e-3}])
def test_low_rank_hessian_products_match_dense_ones(kw, rng):
    dense, low, x, cd, cl = _dense_and_low_rank(kw, rng, mixed=False)
    assert cl["lr"] is not None
    e = max(f.error for f in cl["lr"])
    assert e < 1e-3
    for _ in range(3):
        v = dense.proj(x, [rng.standard_normal(a.shape) for a in x])
        hd, hl = dense.hess(x, cd, v), low.hess(x, cl, v)
        err = np.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(hd, hl, strict=True)))
        assert err <= 100 * max(e, 1e-14) * np.sqrt(sum((a**2).sum() for a in hd))


def test_trust_region_with_low_rank_products_reaches_the_same_optimum():
    prob = _distinct(250)
    x0 = ReducedParametrisation(prob, 250).pack(*initial_point(prob, 250, "auto",
                                                               np.random.default_rng(0)))
    a = trust_region(prob, 250, x0, lowrank=None)
    b = trust_region(prob, 250, x0, lowrank=1e-6)
    assert a.message == b.message == "gradient tolerance reached"
    assert b.fun == pytest.approx(a.fun, rel=1e-13)
    assert b.nhess <= 1.5 * a.nhess  # the approximation costs (almost) no extra products


@pytest.mark.parametrize("shape", [(5, 5), (5, 7), (7, 5)])
def test_hadamard_square_is_the_entrywise_square(shape, rng):
    m, n = shape
    A = DiagLowRank(rng.standard_normal(min(m, n)), rng.standard_normal((m, 3)),
                    rng.standard_normal((n, 3)), shape)
    B = A.hadamard_square()
    assert B.rank == 9
    np.testing.assert_allclose(B.dense(), A.dense() ** 2, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kw", [{}, {"loss": "mse"}, {"lam_b": 0.1},
                                {"features": "penalty", "lam_H": 1e-3}])
def test_float32_low_rank_products_and_diagonal_match_dense_ones(kw, rng):
    # with mixed precision the low-rank Hessian products and the preconditioner's diagonal run
    # in float32 from float32 factors: they follow the float64 dense ones to the
    # factorisation's error plus float32 rounding
    dense, low, x, cd, cl = _dense_and_low_rank(kw, rng, mixed=True)
    assert cl["lr"] is not None and cl["lr"][0].d.dtype == np.float32
    e = max(max(f.error for f in cl["lr"]), 1e-6)
    for _ in range(3):
        v = dense.proj(x, [rng.standard_normal(a.shape) for a in x])
        hd, hl = dense.hess(x, cd, v), low.hess(x, cl, v)
        assert all(a.dtype == np.float64 and a.shape == b.shape for a, b in zip(hl, hd, strict=True))
        err = np.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(hd, hl, strict=True)))
        assert err <= 100 * e * np.sqrt(sum((a**2).sum() for a in hd))
    Dd = dense.hess_diag(x, cd, floor=-np.inf)
    Dl = low.hess_diag(x, cl, floor=-np.inf)
    for a, b in zip(Dl, Dd, strict=True):
        assert np.abs(a - b).max() <= 100 * e * np.abs(b).max()


@pytest.mark.parametrize("add", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_products_into_buffers_match_dense(add, dtype, rng):
    """out= writes (add=True accumulates) the same product; with work= nothing else changes
    the result, and the work buffer's content is scratch."""
    A = DiagLowRank(rng.random(4), rng.random((4, 3)), rng.random((5, 3)), (4, 5)).astype(dtype)
    D = A.dense().astype(float)
    X4, X5 = rng.random((4, 2)).astype(dtype), rng.random((5, 2)).astype(dtype)
    cases = [(A.mm, X5, D @ X5), (A.tmm, X4, D.T @ X4), (A.rmm, X4.T, X4.T @ D),
             (A.rtmm, X5.T, X5.T @ D.T)]
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for fn, X, ref in cases:
        start = rng.random(ref.shape).astype(dtype)
        out = start.copy()
        got = fn(X, out=out, add=add, work=np.full(ref.shape, np.nan, dtype))
        assert got is out and out.dtype == dtype
        np.testing.assert_allclose(out, ref + (start if add else 0), rtol=tol, atol=tol)
        out2 = start.copy()
        fn(X, out=out2, add=add)  # without work: the same
        np.testing.assert_allclose(out2, out, rtol=tol, atol=tol)
    with pytest.raises(ValueError, match="add=True needs out"):
        A.mm(X5, add=True)


@pytest.mark.parametrize("shape,block", [((7, 5), 2), ((5, 7), 3), ((300, 257), 256),
                                         ((1, 9), 4)])
def test_transpose_into(shape, block, rng):
    from gufm.solvers.lowrank import transpose_into

    a = rng.standard_normal(shape)
    out = np.full(shape[::-1], np.nan)
    assert transpose_into(a, out, block=block) is out
    np.testing.assert_array_equal(out, a.T)
    with pytest.raises(ValueError, match="out must have shape"):
        transpose_into(a, np.empty(shape))


@pytest.mark.parametrize("shape", [(9, 9), (9, 12), (12, 9)])
@pytest.mark.parametrize("rows", [1, 4, 256])
def test_offdiagonal_error_is_summed_exactly(shape, rows, rng):
    """The blocked sum equals the brute-force off-diagonal residual, also when the diagonal
    dominates (the expansion ||O||² - 2<O,UVᵀ> + ||UVᵀ||² cancels there)."""
    from gufm.solvers.lowrank import _offdiag_error2

    m, n = shape
    k = min(m, n)
    U, V = rng.standard_normal((m, 2)), rng.standard_normal((n, 2))
    for scale in (1.0, 1e8):
        M = U @ V.T + 1e-7 * rng.standard_normal(shape)
        M[np.arange(k), np.arange(k)] += scale
        E = M - U @ V.T
        E[np.arange(k), np.arange(k)] = 0
        assert _offdiag_error2(M, U, V, rows=rows) == pytest.approx((E**2).sum(), rel=1e-12)


def test_compress_of_a_diagonal_dominated_point_is_exact(rng):
    """The solver's start (a centred simplex ETF: a dominant diagonal plus rank 2) factorises
    far below the tolerance, and the reported error is the true one."""
    prob = _distinct(300)
    W, _, H = initial_point(prob, 301, "auto", rng)
    for M in (W, H):
        A = compress(M, 1e-6)
        assert A is not None and A.rank == 2
        true = np.linalg.norm(M - A.dense()) / np.linalg.norm(M)
        assert true < 1e-9
        assert A.error == pytest.approx(true, rel=1e-6, abs=1e-15)


def test_hessian_product_into_buffers(rng):
    """hess(..., out=...) writes the product into out, for the float32 low-rank path and the
    dense one, and repeated products (reused internal buffers) do not interfere."""
    dense, low, x, cd, cl = _dense_and_low_rank({}, rng, mixed=True)
    for man, cache in ((dense, cd), (low, cl)):
        vs = [dense.proj(x, [rng.standard_normal(a.shape) for a in x]) for _ in range(2)]
        refs = [man.hess(x, cache, v) for v in vs]
        for v, ref in zip(vs, refs, strict=True):
            out = [np.full(a.shape, np.nan) for a in x]
            assert man.hess(x, cache, v, out=out) is out
            for a, b in zip(out, ref, strict=True):
                np.testing.assert_array_equal(a, b)


def _dlr(shape, A, B, d):
    M = A @ B.T
    k = min(shape)
    M[np.arange(k), np.arange(k)] += d
    return M


@pytest.mark.parametrize("shape", [(80, 80), (80, 81)])
def test_compress_warm_start(shape, rng):
    """From the factors of a nearby matrix the warm start meets the tolerance; from useless
    factors (random, too low a rank) the cold search still does: a start never costs accuracy."""
    m, n = shape
    A, B, d = rng.standard_normal((m, 3)), rng.standard_normal((n, 3)), 5 + rng.random(min(shape))
    M0 = _dlr(shape, A, B, d)
    # the next iterate: close, of the same structure
    M1 = _dlr(shape, A + 1e-5 * rng.standard_normal(A.shape), B, d + 1e-5)
    prev = compress(M0, 1e-6, imputations=12)  # (the imputation converges linearly)
    assert prev is not None and prev.rank == 4
    warm = compress(M1, 1e-6, start=prev, ranks=())  # the warm start alone (no cold search)
    cold = compress(M1, 1e-6, imputations=12)
    assert warm is not None and cold is not None and warm.rank == cold.rank
    for A in (warm, cold):
        true = np.linalg.norm(M1 - A.dense()) / np.linalg.norm(M1)
        assert true <= 1e-6 and A.error == pytest.approx(true, rel=1e-6, abs=1e-15)
    bad = DiagLowRank(np.zeros(min(shape)), rng.standard_normal((shape[0], 2)),
                      rng.standard_normal((shape[1], 2)), shape)
    fallback = compress(M1, 1e-6, start=bad, warm_imputations=1, imputations=12)
    assert fallback is not None and fallback.rank == cold.rank
    assert np.linalg.norm(M1 - fallback.dense()) <= 1e-6 * np.linalg.norm(M1)
    assert compress(rng.standard_normal(shape), 1e-3, start=prev) is None
    with pytest.raises(ValueError, match="start must have the shape"):
        compress(M1, 1e-6, start=DiagLowRank(np.ones(79), np.ones((80, 1)), np.ones((79, 1)),
                                             (80, 79)))
