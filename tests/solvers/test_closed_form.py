"""Every closed form of spec section 3 against the numerical solver, to 1e-9 relative."""

import math

import numpy as np
import pytest

import gufm
from gufm.solvers.closed_form import (
    ce_etf_scale,
    ce_etf_value,
    closed_form_value,
    mse_value,
    penalty_ce_value,
    tight_frame,
)


def test_spec_examples():
    assert ce_etf_value(4, math.sqrt(8), 0.01) == pytest.approx(0.0543647, abs=5e-8)
    assert ce_etf_scale(4, math.sqrt(8), 0.01) == pytest.approx(1.40305, abs=5e-6)
    assert mse_value(4, 7, math.sqrt(8), 0.01) == pytest.approx(0.00248756, abs=5e-9)


def test_ce_scale_is_stationary():
    for K, rho, lam in [(3, 1.0, 0.1), (10, 4.0, 1e-3), (50, 7.0, 5e-3)]:
        s = ce_etf_scale(K, rho, lam)
        a = rho * K / (K - 1)
        e = (K - 1) * math.exp(-a * s)
        assert abs(-a * e / (1 + e) + lam * K * s) < 1e-12


@pytest.mark.parametrize("K, r", [(5, 5), (7, 3), (8, 4), (9, 6), (12, 1)])
def test_tight_frame(K, r):
    U = tight_frame(K, r)
    np.testing.assert_allclose(np.linalg.norm(U, axis=0), 1.0, atol=1e-13)
    np.testing.assert_allclose(U @ U.T, K / r * np.eye(r), atol=1e-12)


CE_CASES = [  # K, d, lam, radius, features, lam_b
    (3, 4, 1e-2, None, "layernorm", None),
    (4, 8, 1e-2, None, "layernorm", None),
    (5, 5, 5e-3, 2.0, "layernorm", 0.1),
    (6, 5, 1e-1, 1.5, "sphere", None),
    (7, 12, 1e-3, None, "ball", 0.0),
    (10, 11, 5e-3, 3.0, "sphere", 0.2),
]


@pytest.mark.parametrize("K, d, lam, radius, features, lam_b", CE_CASES)
def test_ce_etf_closed_form(K, d, lam, radius, features, lam_b):
    prob = gufm.GUFM(counts=[7] * K, dim=d, loss="ce", features=features, radius=radius,
                     lam_W=lam, lam_b=lam_b)
    formula = closed_form_value(prob)
    cf = gufm.solve(prob, method="closed_form")
    assert cf.value == pytest.approx(formula, rel=1e-12)  # the built point attains the formula
    assert cf.certified
    num = gufm.solve(prob, method="gradient", init="random", seed=3)
    assert num.certified, num.stop_reason
    assert num.value == pytest.approx(formula, rel=1e-9)
    # the optimum is a simplex ETF: class-feature cosines are -1/(K-1)
    Hb = num.class_features
    C = (Hb.T @ Hb) / np.outer(np.linalg.norm(Hb, axis=0), np.linalg.norm(Hb, axis=0))
    off = C[~np.eye(K, dtype=bool)]
    np.testing.assert_allclose(off, -1 / (K - 1), atol=1e-5)


MSE_CASES = [  # K, d, lam, radius, features
    (4, 8, 1e-2, None, "layernorm"),   # spec example: orthogonal frame
    (3, 3, 1e-1, 2.0, "sphere"),
    (5, 4, 1e-2, None, "layernorm"),  # K > d - 1: tight frame in d-1 = 3 dims
    (6, 3, 5e-2, 1.0, "ball"),
]


@pytest.mark.parametrize("K, d, lam, radius, features", MSE_CASES)
def test_mse_frame_closed_form(K, d, lam, radius, features):
    prob = gufm.GUFM(counts=[5] * K, dim=d, loss="mse", features=features, radius=radius,
                     lam_W=lam)
    formula = closed_form_value(prob)
    cf = gufm.solve(prob, method="closed_form")
    assert cf.value == pytest.approx(formula, rel=1e-12)
    num = gufm.solve(prob, method="gradient", init="random", seed=1)
    assert num.value == pytest.approx(formula, rel=1e-9)
    if K <= prob.m:
        assert num.certified and cf.certified
        # orthogonal frame, not a simplex ETF
        Hb = num.class_features
        np.testing.assert_allclose(Hb.T @ Hb, prob.rho**2 * np.eye(K), atol=1e-5)
    else:
        # the rank constraint binds: the relaxation is loose, the bound is honest
        assert not cf.certified and cf.lower_bound < formula


@pytest.mark.parametrize("K, n, lam_W, lam_H, lam_b", [
    (3, 4, 1e-2, 1e-3, 0.1), (4, 10, 5e-3, 5e-4, 0.0), (6, 2, 1e-2, 1e-2, None),
])
def test_penalty_ce_closed_form(K, n, lam_W, lam_H, lam_b):
    prob = gufm.GUFM(counts=[n] * K, dim=K + 2, loss="ce", features="penalty", lam_W=lam_W,
                     lam_H=lam_H, lam_b=lam_b)
    formula = penalty_ce_value(K, n, lam_W, lam_H)
    cf = gufm.solve(prob, method="closed_form")
    assert cf.value == pytest.approx(formula, rel=1e-12) and cf.certified
    num = gufm.solve(prob, method="gradient", init="random", seed=0)
    assert num.certified
    assert num.value == pytest.approx(formula, rel=1e-9)


def test_penalty_collapse_to_zero():
    # K sqrt(lam_W lam_H n) >= 1: features and classifier vanish, value log K
    prob = gufm.GUFM(counts=[10] * 3, dim=4, loss="ce", features="penalty", lam_W=0.5, lam_H=0.5)
    assert penalty_ce_value(3, 10, 0.5, 0.5) == pytest.approx(math.log(3), rel=1e-15)
    num = gufm.solve(prob, method="gradient", init="random")
    assert num.value == pytest.approx(math.log(3), rel=1e-9) and num.certified


def test_closed_form_refuses_when_not_applicable():
    with pytest.raises(ValueError, match="not balanced"):
        gufm.solve(gufm.GUFM(counts=[3, 2], dim=4, lam_W=0.1), method="closed_form")
    with pytest.raises(ValueError, match="no simplex ETF fits"):
        gufm.solve(gufm.GUFM(counts=[3] * 6, dim=4, lam_W=0.1), method="closed_form")
