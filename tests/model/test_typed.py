"""Type-structured matrices and the typed certificate against their dense counterparts."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gufm
from gufm.model.certificate import certify
from gufm.model.geometry import helmert_apply, helmert_basis
from gufm.model.objective import group_objective
from gufm.model.typed import (
    TypedMatrix,
    certify_typed,
    class_types,
    typed_logits,
    typed_value,
)
from gufm.solvers.finish import embed
from gufm.solvers.symmetric import _etf_start, _SymParam, shared_dim


def _types(counts):
    return class_types(gufm.GUFM(counts=counts, dim=len(counts) + 1))


def _random_typed(types, rng, sym=False):
    A = rng.standard_normal((types.T, types.T))
    if sym:
        A = A + A.T
    return TypedMatrix(types, A, rng.standard_normal(types.T))


COUNTS = [[3, 3, 1, 3, 1], [2, 2, 2, 2], [5, 1, 5, 2, 2, 1, 5], [4, 7]]


@pytest.mark.parametrize("counts", COUNTS)
def test_products_columns_and_row_sums_match_dense(counts, rng):
    types = _types(counts)
    X, Y = _random_typed(types, rng), _random_typed(types, rng)
    Xd, Yd = X.dense(), Y.dense()
    np.testing.assert_allclose(X.tmatmul(Y).dense(), Xd.T @ Yd, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(X.row_sums()[types.of_class], Xd.sum(1), rtol=1e-12, atol=1e-12)
    idx = np.array([len(counts) - 1, 0])
    np.testing.assert_array_equal(X.columns(idx), Xd[:, idx])


@pytest.mark.parametrize("counts", COUNTS)
def test_psd_shift_matches_the_spectrum(counts, rng):
    types = _types(counts)
    for _ in range(5):
        X = _random_typed(types, rng, sym=True)
        Xd = X.dense()
        w = np.linalg.eigvalsh(Xd)
        t, lam, vec = X.psd_shift()
        if w[0] < -1e-9:
            assert lam == pytest.approx(w[0], abs=1e-10)
        else:  # PSD: one factorisation proves it; lambda_min reports -shift, as certify does
            assert lam <= w[0] + 1e-10 and t < 1e-12
        assert np.linalg.eigvalsh(Xd + t * np.eye(len(counts)))[0] >= -1e-12
        assert t <= max(0.0, -w[0]) + 1e-9  # no more than needed (rounding margin only)
        if w[0] < 0:
            np.testing.assert_allclose(Xd @ vec, w[0] * vec, atol=1e-9)
            assert np.linalg.norm(vec) == pytest.approx(1.0)


def test_psd_shift_of_a_psd_matrix_is_only_the_rounding_margin():
    types = _types([2, 2, 3, 3, 3])
    X = TypedMatrix(types, np.array([[2.0, 0.5], [0.5, 1.0]]), np.array([1.0, 0.5]))
    t, lam, vec = X.psd_shift()
    assert 0 <= t < 1e-13 and vec is None


def _symmetric_point(prob, seed=0):
    types = class_types(prob)
    par = _SymParam(prob, types, shared_dim(prob, types))
    x = _etf_start(prob, types, par, np.random.default_rng(seed))
    x = x + 0.3 * np.random.default_rng(seed + 1).standard_normal(x.size)  # not optimal
    return types, par, x


PROBLEMS = [
    dict(counts=[4, 4, 4, 2, 2], dim=6, lam_W=0.05),
    dict(counts=[4, 4, 4, 2, 2], dim=6, lam_W=0.05, loss="mse"),
    dict(counts=[3, 3, 3, 1, 5, 5], dim=8, lam_W=0.02, features="sphere"),
    dict(counts=[3, 3, 3, 1, 5, 5], dim=8, lam_W=0.02, features="ball", loss="mse"),
    dict(counts=[2, 2, 2, 6], dim=5, lam_W=0.1, lam_b=0.3),
    dict(counts=[2, 2, 2, 6], dim=5, lam_W=0.1, lam_b=0.0),
]


@pytest.mark.parametrize("kw", PROBLEMS)
def test_typed_certificate_equals_dense_at_symmetric_points(kw):
    prob = gufm.GUFM(**kw)
    types, par, x = _symmetric_point(prob)
    Wp, b, Hp = par.lift(x)
    W, H = embed(prob, Wp, Hp)
    Zt = typed_logits(types, W, H)
    np.testing.assert_allclose(Zt.dense(), W @ H, rtol=1e-12, atol=1e-12)
    Zp, bp = par.typed_logits(x)  # from the parameters, no lift
    np.testing.assert_allclose(Zp.dense(), W @ H, rtol=1e-12, atol=1e-12)
    if b is not None:
        np.testing.assert_allclose(bp, b)
    c1, c2 = certify_typed(prob, types, Zt, b), certify(prob, W @ H, b)
    assert c1.lower_bound == pytest.approx(c2.lower_bound, rel=1e-11, abs=1e-12)
    np.testing.assert_allclose(c1.Y, c2.Y, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(c1.mu, c2.mu, rtol=1e-10, atol=1e-12)
    assert c1.lambda_min == pytest.approx(c2.lambda_min, abs=1e-9)
    value = typed_value(prob, types, W, b, H)
    assert value == pytest.approx(group_objective(prob, W, b, H, check_feasible=False), rel=1e-13)
    assert c1.lower_bound <= value  # weak duality at a non-optimal point


def test_typed_certificate_refuses_what_it_cannot_prove():
    prob = gufm.GUFM(counts=[4, 4, 4, 2, 2], dim=6, lam_W=0.05, lam_b=0.1)
    types, par, x = _symmetric_point(prob)
    W, b, H = par.lift(x)
    Zt = typed_logits(types, W, H)
    b_bad = b + np.arange(5) * 1e-3  # the bias differs inside a type
    assert certify_typed(prob, types, Zt, b_bad) is None
    W_bad = W.copy()
    W_bad[0] += 1e-3  # breaks the symmetry of class 0's row
    assert typed_logits(types, W_bad, H) is None
    assert typed_value(prob, types, W_bad, b, H) is None
    pen = gufm.GUFM(counts=[4, 4, 4, 2, 2], dim=6, lam_W=0.05, features="penalty", lam_H=0.1)
    types, par, x = _symmetric_point(pen)
    W, b, H = par.lift(x)
    assert certify_typed(pen, types, typed_logits(types, W, H)) is None  # scale repair: dense


@pytest.mark.parametrize("K", [30, 301])
def test_tied_solve_is_certified_by_the_typed_path_and_agrees_with_dense(K):
    prob = gufm.GUFM(counts=50 + 10 * (np.arange(K) % 3), dim=K + 1, lam_W=5e-3)
    res = gufm.solve(prob)
    assert res.certified and res.info["symmetry_reduced"]
    dense = certify(prob, res.W @ res.class_features)
    assert res.lower_bound == pytest.approx(dense.lower_bound, rel=1e-10)
    assert res.value == pytest.approx(group_objective(prob, res.W, None, res.class_features),
                                      rel=1e-12)


@settings(max_examples=40, deadline=None)
@given(p=st.integers(0, 7), extra=st.integers(1, 4), n=st.integers(1, 5), seed=st.integers(0, 99))
def test_helmert_apply_equals_the_basis_product(p, extra, n, seed):
    d = p + extra
    X = np.random.default_rng(seed).standard_normal((p, n))
    E = helmert_basis(d, p)
    np.testing.assert_allclose(helmert_apply(X, d), E @ X, atol=1e-13)
    np.testing.assert_allclose(helmert_apply(X.T, d, axis=1), X.T @ E.T, atol=1e-13)
    np.testing.assert_allclose(helmert_apply(np.ascontiguousarray(X.T), d, axis=1), X.T @ E.T,
                               atol=1e-13)
