"""Solvers agree with each other; certificates are valid and tight; honest gaps where loose."""

import math

import numpy as np
import pytest

import gufm
from gufm.model.certificate import certify

AGREE = [
    dict(loss="ce", features="layernorm"),
    dict(loss="ce", features="layernorm", lam_b=0.05),
    dict(loss="ce", features="sphere", lam_b=0.0),
    dict(loss="mse", features="layernorm"),
    dict(loss="mse", features="sphere", lam_b=0.05),
    dict(loss="mse", features="ball", radius=0.5),
    dict(loss="ce", features="penalty", lam_H=2e-3),
    dict(loss="mse", features="penalty", lam_H=2e-3, lam_b=0.01),
]


@pytest.mark.parametrize("kw", AGREE)
def test_gradient_agrees_with_sdp_on_imbalanced(kw):
    prob = gufm.GUFM(counts=[12, 7, 3, 1], dim=6, lam_W=1e-2, **kw)
    gr = gufm.solve(prob, method="gradient")
    sdp = gufm.solve(prob, method="sdp")
    assert sdp.info["status"] == "optimal"
    assert gr.certified, gr.stop_reason
    # the SDP's own certified bound (before polishing) agrees with the gradient optimum
    assert sdp.info["sdp_lower_bound"] == pytest.approx(gr.value, rel=1e-5, abs=1e-7)
    assert sdp.info["sdp_lower_bound"] <= gr.value + 1e-12
    assert sdp.info["solver_value"] == pytest.approx(gr.value, rel=1e-5, abs=1e-7)
    assert sdp.value == pytest.approx(gr.value, rel=1e-9)
    assert sdp.info["tight"]


def test_soft_labels_gradient_vs_sdp(rng):
    Q = rng.dirichlet(np.ones(3) * 0.5, size=5)
    Q = np.vstack([Q, Q[:3], np.eye(3)])
    prob = gufm.GUFM(soft_labels=Q, dim=5, loss="ce", lam_W=1e-2, lam_b=0.1)
    gr = gufm.solve(prob, method="gradient")
    sdp = gufm.solve(prob, method="sdp")
    assert gr.certified
    assert sdp.info["sdp_lower_bound"] == pytest.approx(gr.value, rel=1e-5)
    assert gr.features().shape == (5, prob.N)


@pytest.mark.parametrize("kw", AGREE[:5])
def test_certificate_is_a_lower_bound_everywhere(kw, rng):
    """Weak duality: the certificate at ANY point lies below the certified optimum."""
    prob = gufm.GUFM(counts=[5, 3, 2], dim=5, lam_W=1e-2, **kw)
    opt = gufm.solve(prob, method="gradient")
    for _ in range(5):
        Z = rng.standard_normal((3, 3)) * 3
        b = rng.standard_normal(3) if prob.has_bias else None
        assert certify(prob, Z, b).lower_bound <= opt.value + 1e-12


def test_full_method_reaches_reduced_value():
    prob = gufm.GUFM(counts=[9, 5, 3], dim=6, loss="ce", lam_W=5e-3, lam_b=0.02)
    red = gufm.solve(prob, method="gradient")
    full = gufm.solve(prob, method="full")
    assert full.value == pytest.approx(red.value, rel=1e-8)
    assert full.value >= red.lower_bound - 1e-12
    adam = gufm.solve(prob, method="full", optimizer="adam", lr=1e-2, maxiter=200)
    assert adam.value >= red.lower_bound  # any feasible point lies above the certified bound


def test_class_permutation_invariance():
    counts = [11, 6, 4, 2]
    perm = [2, 0, 3, 1]
    a = gufm.solve(gufm.GUFM(counts=counts, dim=6, loss="ce", lam_W=1e-2))
    b = gufm.solve(gufm.GUFM(counts=[counts[i] for i in perm], dim=6, loss="ce", lam_W=1e-2))
    assert a.value == pytest.approx(b.value, rel=1e-10)
    # same Gram matrix up to the relabelling
    Ga = a.class_features.T @ a.class_features
    Gb = b.class_features.T @ b.class_features
    np.testing.assert_allclose(Gb, Ga[np.ix_(perm, perm)], atol=1e-5)


def test_labels_order_does_not_matter(rng):
    y = np.repeat(np.arange(3), [6, 3, 2])
    a = gufm.solve(gufm.GUFM(labels=y, dim=5, lam_W=1e-2))
    yp = rng.permutation(y)
    pb = gufm.GUFM(labels=yp, dim=5, lam_W=1e-2)
    b = gufm.solve(pb)
    assert a.value == pytest.approx(b.value, rel=1e-10)
    H = b.features()
    assert gufm.objective(pb, b.W, None, H) == pytest.approx(b.value, rel=1e-12)
    np.testing.assert_array_equal(H, b.features(yp))


def test_K_larger_than_d_minus_1_honest_gap():
    """Spec example: K=10 balanced, sphere, d=3, rho=2, lam_W=0.01: bound 0.300 vs 0.490."""
    prob = gufm.GUFM(counts=[5] * 10, dim=3, features="sphere", radius=2.0, loss="ce",
                     lam_W=0.01)
    res = gufm.solve(prob)  # auto: gradient, then the SDP bound
    assert not res.certified
    assert res.value == pytest.approx(0.490, abs=1e-3)
    assert res.lower_bound == pytest.approx(0.300, abs=1e-3)
    assert res.gap > 0.18
    grad = gufm.solve(prob, method="gradient")
    assert grad.certificate.lambda_min < -1e-3  # the dual certificate sees the binding rank


def test_saddle_escape_from_too_small_rank():
    prob = gufm.GUFM(counts=[8, 6, 5, 3, 2], dim=8, loss="ce", lam_W=1e-2)
    res = gufm.solve(prob, method="gradient", p=1, init="random")
    assert res.certified
    assert res.info["escapes"] >= 1
    assert res.value == pytest.approx(gufm.solve(prob).value, rel=1e-9)


def test_torch_device_path_matches_numpy():
    prob = gufm.GUFM(counts=[7, 4, 2], dim=5, loss="mse", lam_W=1e-2, lam_b=0.1)
    a = gufm.solve(prob, method="gradient")
    b = gufm.solve(prob, method="gradient", device="cpu")
    assert b.info["device"] == "cpu" and b.certified
    assert a.value == pytest.approx(b.value, rel=1e-10)


def test_sdp_failure_is_reported_not_silent(monkeypatch):
    import cvxpy as cp

    prob = gufm.GUFM(counts=[5, 3, 2], dim=5, loss="ce", lam_W=1e-2)

    def boom(self, *a, **k):
        raise cp.error.SolverError("simulated SCS breakdown")

    monkeypatch.setattr(cp.Problem, "solve", boom)
    res = gufm.solve(prob, method="sdp")
    assert not res.certified
    assert "failed" in res.stop_reason and "simulated SCS breakdown" in res.stop_reason
    assert math.isnan(res.value) and res.lower_bound == -math.inf


def test_sdp_inaccurate_status_keeps_a_valid_bound():
    prob = gufm.GUFM(counts=[5, 3, 2], dim=5, loss="ce", lam_W=1e-2)
    opt = gufm.solve(prob, method="gradient")
    res = gufm.solve(prob, method="sdp", max_iters=3, polish=False)
    assert res.info["status"] != "optimal"
    assert res.lower_bound <= opt.value + 1e-12  # still a proven bound
    assert res.value >= opt.value - 1e-12  # the rounded point is feasible


def test_auto_and_result_api():
    prob = gufm.GUFM(counts=[50, 30, 20], dim=16, loss="ce", features="layernorm",
                     radius=None, lam_W=5e-3, lam_b=None, lam_H=None)
    res = gufm.solve(prob, method="auto")
    assert res.certified and res.gap >= -1e-12
    assert res.W.shape == (3, 16) and res.class_features.shape == (16, 3) and res.b is None
    H = res.features(np.array([0, 0, 2, 1]))
    assert H.shape == (16, 4)
    np.testing.assert_allclose(H.sum(0), 0, atol=1e-10)  # layernorm features: mean zero
    np.testing.assert_allclose(np.linalg.norm(H, axis=0), 4.0, rtol=1e-12)
    assert gufm.objective(prob, res.W, None, res.features()) == pytest.approx(res.value, rel=1e-12)
    assert res.method in gufm.METHODS and res.seconds > 0 and res.stop_reason
    bal = gufm.solve(gufm.GUFM(counts=[5] * 4, dim=8, lam_W=1e-2))
    assert bal.method == "closed_form" and bal.certified
    with pytest.raises(ValueError, match="method must be one of"):
        gufm.solve(prob, method="newton")
    with pytest.raises(ValueError, match="labels must lie"):
        res.features(np.array([0, 5]))


def test_full_method_time_budget_is_reported():
    prob = gufm.GUFM(counts=[40, 30, 20], dim=8, loss="ce", lam_W=5e-3)
    res = gufm.solve(prob, method="full", max_seconds=0.0)
    assert "time limit" in res.stop_reason
    assert res.value >= gufm.solve(prob).lower_bound  # still a feasible, honestly valued point
