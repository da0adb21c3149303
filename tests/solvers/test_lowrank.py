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
