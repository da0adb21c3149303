"""Riemannian trust-region solver of the reduced problem (gufm.solvers.riemannian)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gufm
from gufm.model.certificate import certify
from gufm.solvers.closed_form import ce_etf_value
from gufm.solvers.riemannian import ReducedManifold, frame_start, supports, trust_region

CASES = [  # loss, features, lam_b, lam_H
    ("ce", "layernorm", None, None),
    ("ce", "sphere", 0.1, None),
    ("mse", "sphere", None, None),
    ("ce", "penalty", 0.0, 1e-3),
    ("mse", "penalty", 0.05, 1e-2),
]


def _problem(loss, features, lam_b, lam_H, counts=(5, 3, 8, 2), dim=6):
    return gufm.GUFM(counts=list(counts), dim=dim, loss=loss, features=features, lam_W=1e-2,
                     lam_b=lam_b, lam_H=lam_H)


def _tangent(man, x, rng):
    return man.proj(x, [rng.standard_normal(a.shape) for a in x])


@pytest.mark.parametrize("case", CASES)
def test_gradient_and_hessian_match_finite_differences(case):
    """Along the retraction (second order on the sphere): f(R(tv)) = f + t<g,v> + t²/2 <v,Hv>."""
    prob = _problem(*case)
    man = ReducedManifold(prob, 5)
    rng = np.random.default_rng(0)
    x = man.random_point(rng)
    f, g, cache = man.cost_grad(x)
    v = _tangent(man, x, rng)
    t = 1e-4
    fp = man.cost_grad(man.retract(x, [t * a for a in v]))[0]
    fm = man.cost_grad(man.retract(x, [-t * a for a in v]))[0]
    assert (fp - fm) / (2 * t) == pytest.approx(man.inner(g, v), rel=1e-6, abs=1e-9)
    assert (fp + fm - 2 * f) / t**2 == pytest.approx(man.inner(v, man.hess(x, cache, v)),
                                                    rel=1e-4, abs=1e-7)
    u = _tangent(man, x, rng)  # the Hessian is symmetric on the tangent space
    assert man.inner(u, man.hess(x, cache, v)) == pytest.approx(
        man.inner(man.hess(x, cache, u), v), rel=1e-10, abs=1e-14)


@pytest.mark.parametrize("case", CASES[:3])
def test_gradient_is_orthogonal_to_the_rotation_gauge(case):
    prob = _problem(*case)
    man = ReducedManifold(prob, 5)
    rng = np.random.default_rng(1)
    x = man.random_point(rng)
    f, g, _ = man.cost_grad(x)
    A = rng.standard_normal((5, 5))
    Om = A - A.T
    R = np.linalg.qr(rng.standard_normal((5, 5)))[0]
    xr = [x[0] @ R] + x[1:-1] + [R.T @ x[-1]]
    assert man.cost_grad(xr)[0] == pytest.approx(f, rel=1e-13)
    gauge = [x[0] @ Om] + [0 * a for a in x[1:-1]] + [-Om @ x[-1]]
    assert abs(man.inner(g, gauge)) <= 1e-12 * np.sqrt(man.inner(g, g) * man.inner(gauge, gauge))


def test_trust_region_reaches_the_balanced_closed_form_from_random_starts():
    prob = gufm.GUFM(counts=[6] * 5, dim=7, lam_W=5e-3)
    man = ReducedManifold(prob, 5)
    for seed in range(3):
        x0 = man.to_flat(man.random_point(np.random.default_rng(seed)))
        f0 = man.cost_grad(man.from_flat(x0))[0]
        res = trust_region(prob, 5, x0)
        assert res.fun <= f0
        assert res.message == "gradient tolerance reached"
        assert res.fun == pytest.approx(ce_etf_value(5, prob.rho, 5e-3), rel=1e-10)


def test_trust_region_solution_is_certified_for_distinct_counts():
    """Distinct counts (no symmetry): the end point passes the dual certificate."""
    K = 12
    prob = gufm.GUFM(counts=10 + np.arange(K), dim=K + 1, lam_W=5e-3)
    man = ReducedManifold(prob, K)
    x0 = man.to_flat(man.random_point(np.random.default_rng(2)))
    res = trust_region(prob, K, x0)
    x = man.from_flat(res.x)
    cert = certify(prob, x[0] @ (prob.rho * x[1]))
    assert res.fun - cert.lower_bound <= 1e-9 + 1e-7 * res.fun
    assert res.fun >= cert.lower_bound - 1e-12


def test_solve_uses_the_trust_region_and_certifies():
    prob = gufm.GUFM(counts=10 + np.arange(20), dim=21, lam_W=5e-3)
    res = gufm.solve(prob, method="gradient")
    assert res.certified, res.stop_reason
    assert res.info["rounds"][0]["message"] == "gradient tolerance reached"


def test_torch_and_numpy_agree():
    prob = _problem("ce", "layernorm", 0.1, None)
    x0 = ReducedManifold(prob, 5).to_flat(ReducedManifold(prob, 5).random_point(
        np.random.default_rng(4)))
    man_np, man_t = ReducedManifold(prob, 5), ReducedManifold(prob, 5, device="cpu")
    xn, xt = man_np.from_flat(x0), man_t.from_flat(x0)
    assert all(isinstance(a, torch.Tensor) for a in xt)
    fn, gn, cn = man_np.cost_grad(xn)
    ft, gt, ct = man_t.cost_grad(xt)
    assert ft == pytest.approx(fn, rel=1e-13)
    v = _tangent(man_np, xn, np.random.default_rng(5))
    hn = man_np.hess(xn, cn, v)
    ht = man_t.hess(xt, ct, [torch.as_tensor(a) for a in v])
    for a, b in zip(hn, ht, strict=True):
        np.testing.assert_allclose(b.numpy(), a, rtol=1e-11, atol=1e-14)
    r_np = trust_region(prob, 5, x0)
    r_t = trust_region(prob, 5, x0, device="cpu")
    assert r_t.fun == pytest.approx(r_np.fun, rel=1e-10)


def test_frame_start_is_stationary_and_certified_for_imbalanced_mse():
    """The MSE closed form's orthogonal frame stays optimal for any counts when p >= K."""
    prob = gufm.GUFM(counts=[3, 11, 6, 2], dim=6, loss="mse", lam_W=2e-2)
    W, b, H = frame_start(prob, 5)
    man = ReducedManifold(prob, 5)
    x = man.from_flat(np.concatenate([W.ravel(), H.ravel()]))
    f, g, _ = man.cost_grad(x)
    assert max(float(np.abs(a).max()) for a in g) <= 1e-15
    cert = certify(prob, W @ H)
    assert f - cert.lower_bound <= 1e-12
    # w_k = rho p_k / (rho^2 p_k + lam_W) e_k, computed here independently
    pk = np.array([3, 11, 6, 2]) / 22
    rho = np.sqrt(6)
    np.testing.assert_allclose(np.diag(W), rho * pk / (rho**2 * pk + 2e-2), rtol=1e-14)


def test_unsupported_and_bad_inputs_raise():
    ball = gufm.GUFM(counts=[2, 3], dim=3, features="ball")
    assert not supports(ball)
    with pytest.raises(ValueError, match="features='ball'"):
        ReducedManifold(ball, 2)
    prob = gufm.GUFM(counts=[2, 3], dim=3)
    for p in (0, 4, 1.5, True):
        with pytest.raises(ValueError, match="p must be"):
            ReducedManifold(prob, p)
    with pytest.raises(ValueError, match="entries"):
        ReducedManifold(prob, 2).from_flat(np.zeros(3))
    with pytest.raises(ValueError, match="p >= K"):
        frame_start(gufm.GUFM(counts=[2, 3, 4], dim=3, loss="mse"), 2)


def test_float32_hessian_products_reach_the_same_certified_point():
    """mixed=True (float32 products in the inexact Newton step) changes the path, not the end."""
    K = 15
    prob = gufm.GUFM(counts=100 + np.arange(K), dim=K + 1, lam_W=5e-3)
    man = ReducedManifold(prob, K)
    x0 = man.to_flat(man.random_point(np.random.default_rng(6)))
    exact = trust_region(prob, K, x0, mixed=False)
    mixed = trust_region(prob, K, x0, mixed=True)
    assert mixed.message == exact.message == "gradient tolerance reached"
    assert mixed.fun == pytest.approx(exact.fun, rel=1e-11)
    assert mixed.grad_norm <= 1e-11 * max(1.0, mixed.fun)


def test_manifold_vector_ops_match_their_formulas():
    # the BLAS/one-allocation forms of inner, lin and proj equal the textbook expressions,
    # never write into their inputs, and never down-cast (float64 a + s * float32 b)
    from gufm.solvers.manifold import _axpy, _dot

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((5, 7)), rng.standard_normal((5, 7))
    a0, b0 = a.copy(), b.copy()
    assert _dot(a, b) == pytest.approx((a * b).sum(), rel=1e-14)
    assert np.array_equal(_axpy(a, 0.3, b), a + 0.3 * b)
    b32 = b.astype(np.float32)
    out = _axpy(a, 0.3, b32)
    assert out.dtype == np.float64 and np.array_equal(out, a + 0.3 * b32)
    assert np.array_equal(a, a0) and np.array_equal(b, b0)
    prob = gufm.GUFM(counts=[3, 2, 2], dim=4, lam_W=0.1)
    man = ReducedManifold(prob, 4)
    x = man.random_point(rng)
    v = [rng.standard_normal(s.shape) for s in x]
    U = x[-1]
    want = v[-1] - U * (U * v[-1]).sum(0)
    got = man.proj(x, v)
    assert np.allclose(got[-1], want, rtol=0, atol=1e-15) and got[0] is v[0]
    assert man.inner(v, v) == pytest.approx(sum(float((t * t).sum()) for t in v), rel=1e-14)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_in_place_vector_ops_match_their_formulas(backend):
    # the truncated CG's in-place updates: u += v * w for a scalar or an array w, with and
    # without a work buffer (which then holds v * w), out = v * w, proj_ in place
    import torch

    from gufm.solvers.manifold import imul_add, mul_into

    rng = np.random.default_rng(1)
    a, b, c = (rng.standard_normal((6, 5)) for _ in range(3))
    conv = (lambda t: torch.tensor(t)) if backend == "torch" else (lambda t: t.copy())
    for w, want in ((-0.7, a - 0.7 * b), (c, a + b * c)):
        for use_work in (False, True):
            u, work = conv(a), conv(np.zeros_like(a))
            wv = w if isinstance(w, float) else conv(w)
            assert imul_add(u, conv(b), wv, work if use_work else None) is u
            np.testing.assert_allclose(np.asarray(u), want, rtol=1e-15, atol=1e-15)
            if use_work:
                np.testing.assert_allclose(np.asarray(work), want - a, rtol=1e-14, atol=1e-15)
    out = conv(np.zeros_like(a))
    assert mul_into(conv(b), conv(c), out) is out
    np.testing.assert_allclose(np.asarray(out), b * c, rtol=1e-15, atol=0)
    # non-contiguous numpy operands stay correct
    u = a.copy().T
    imul_add(u, b.T.copy(), 2.0)
    np.testing.assert_allclose(u, (a + 2.0 * b).T, rtol=1e-15, atol=1e-15)
    prob = gufm.GUFM(counts=[3, 2, 2], dim=4, lam_W=0.1)
    man = ReducedManifold(prob, 4, device=None if backend == "numpy" else "cpu")
    x = man.random_point(rng)
    v = [man._arr(rng.standard_normal(tuple(s.shape))) for s in x]
    want = man.proj(x, v)
    got = man.proj_(x, [t.clone() if backend == "torch" else t.copy() for t in v])
    for p, q in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(p), np.asarray(q), rtol=0, atol=1e-15)
