"""The one finish step, uniform results across methods, tolerances (F3), budgets and scale (F4)."""

import math
import time

import numpy as np
import pytest

import gufm
from gufm.model.features import feature_model
from gufm.solvers.finish import Budget, finish
from gufm.solvers.result import ATOL, ROUNDING_ABS, ROUNDING_REL, SolveResult, is_certified, loss_scale
from gufm.solvers.symmetric import solve_symmetric

torch = pytest.importorskip("torch")

METHODS = [("closed_form", {}), ("gradient", {}), ("sdp", {}), ("full", {"maxiter": 3000}),
           ("auto", {})]


@pytest.mark.parametrize("method,opts", METHODS)
def test_uniform_result_fields(method, opts):
    prob = gufm.GUFM(counts=[4, 4, 4], dim=4, lam_W=0.05)
    res = gufm.solve(prob, method, **opts)
    assert isinstance(res.iterations, int) and res.iterations >= 0
    assert isinstance(res.stop_reason, str) and res.stop_reason
    assert res.to_dict()["iterations"] == res.iterations
    # the value is the objective at the returned point, whatever the method
    assert res.value == pytest.approx(
        gufm.group_objective(prob, res.W, res.b, res.class_features, check_feasible=False)
        if method != "full" else res.value, rel=1e-12)
    assert res.lower_bound <= res.value + 1e-12


def test_x0_as_torch_returns_torch():
    prob = gufm.GUFM(counts=[3, 2, 2], dim=4, lam_W=0.05, lam_b=0.1)
    ref = gufm.solve(prob, "gradient")
    x0 = tuple(torch.as_tensor(a, dtype=torch.float64) for a in (ref.W, ref.b, ref.class_features))
    res = gufm.solve(prob, "gradient", x0=x0)
    assert all(isinstance(a, torch.Tensor) for a in (res.W, res.b, res.class_features))
    assert res.W.dtype == torch.float64 and res.certified
    assert res.value == pytest.approx(ref.value, rel=1e-9)
    assert res.rank >= 1  # the result's methods accept torch arrays


def test_finish_embeds_and_evaluates_exactly(rng):
    prob = gufm.GUFM(counts=[2, 3, 1], dim=5, lam_W=0.1)
    fm = prob.feature_model
    Wp, Hp = rng.standard_normal((3, 2)), fm.project(rng.standard_normal((2, 3)), prob.rho)
    res = finish(prob, Wp, None, Hp, method="test", t0=time.perf_counter(), stop_reason="given",
                 rtol=1e-7, atol=0.0)
    E = fm.basis(5, 2)
    assert res.value == pytest.approx(gufm.group_objective(prob, Wp @ E.T, None, E @ Hp), rel=1e-14)
    assert res.lower_bound == gufm.certify(prob, Wp @ Hp).lower_bound
    # an extra valid bound is kept when better
    res2 = finish(prob, Wp, None, Hp, method="test", t0=time.perf_counter(), stop_reason="given",
                  rtol=1e-7, atol=0.0, bounds=(res.value - 1e-3,))
    assert res2.lower_bound == max(res.lower_bound, res.value - 1e-3)


# ------------------------------------------------------------------------------ F3 tolerances
@pytest.mark.parametrize("bad,err", [
    (dict(rtol=1e9), ValueError), (dict(rtol=-1.0), ValueError), (dict(rtol=1.0), ValueError),
    (dict(atol=-1e-9), ValueError), (dict(rtol=math.nan), ValueError),
    (dict(atol=math.inf), ValueError), (dict(rtol=True), TypeError), (dict(atol="0"), TypeError),
])
@pytest.mark.parametrize("method", ["auto", "closed_form", "gradient"])
def test_tolerances_are_validated(bad, err, method):
    prob = gufm.GUFM(counts=[3, 3], dim=3, lam_W=0.1)
    name = next(iter(bad))
    with pytest.raises(err, match=name):
        gufm.solve(prob, method, **bad)


def test_certified_needs_the_bound_below_the_value():
    prob = gufm.GUFM(counts=[3, 3], dim=3, lam_W=0.1)
    s = loss_scale(prob)
    assert s == pytest.approx(math.log(2))
    assert is_certified(prob, 0.5, 0.5, 1e-7, ATOL)
    assert is_certified(prob, 0.5, 0.5 + 0.5 * ROUNDING_ABS * s, 1e-7, ATOL)  # rounding only
    assert not is_certified(prob, 0.5, 0.5 + 1e-9, 1e-7, ATOL)  # a bound above the value
    assert not is_certified(prob, 0.5, 0.5 - 1e-6, 1e-7, ATOL)
    assert not is_certified(prob, math.nan, 0.0, 1e-7, ATOL)
    # rtol=0.5 no longer certifies a bound 0.129 above (the rtol=1e9 case is refused)
    assert not is_certified(prob, 0.5, 0.629, 0.5, ATOL)


def test_atol_is_scaled_to_the_loss_at_zero():
    ce = gufm.GUFM(counts=[1] * 8, dim=3)
    mse = gufm.GUFM(counts=[1] * 8, dim=3, loss="mse")
    soft = gufm.GUFM(soft_labels=[[0.5, 0.5], [1.0, 0.0]], dim=3, loss="mse")
    assert loss_scale(ce) == pytest.approx(math.log(8))
    assert loss_scale(mse) == 0.5
    assert loss_scale(soft) == pytest.approx(0.5 * (0.5 * 0.5 + 0.5 * 1.0))


def _independent_values(prob):
    """Values of points found by other methods and starts (upper bounds on the optimum)."""
    vals = [gufm.solve(prob, "gradient", init="random", seed=s, symmetry=False).value
            for s in range(3)]
    return vals


@pytest.mark.parametrize("K", [5, 10])
def test_tiny_optimum_is_held_to_rtol(K):
    """F3: lam_W = 1e-10 (optimum ~1e-8): a certificate means within 1e-7 relative, and no
    other point lies below the certified bound."""
    prob = gufm.GUFM(counts=range(1, 3 * K + 1, 3), dim=K + 1, lam_W=1e-10)
    res = gufm.solve(prob, "gradient")
    assert res.lower_bound <= res.value * (1 + 1e-12)
    if res.certified:
        assert res.gap <= 1e-7 * res.value + ATOL * loss_scale(prob)
    for v in _independent_values(prob):
        assert v >= res.lower_bound * (1 - 1e-12)


@pytest.mark.parametrize("method", ["auto", "sdp"])
def test_tiny_optimum_two_classes(method):
    """F3: counts [5, 3], dim 4, lam_W 1e-9: certified only within rtol of every other point."""
    prob = gufm.GUFM(counts=[5, 3], dim=4, lam_W=1e-9)
    res = gufm.solve(prob, method)
    others = _independent_values(prob)
    # values and bounds of ~3e-8 are sums of terms of size F(0) = log 2: they agree to the
    # rounding allowance of is_certified (ROUNDING_ABS * F(0) + ROUNDING_REL * |F|), no more
    slack = ROUNDING_ABS * loss_scale(prob) + ROUNDING_REL * res.lower_bound
    assert min(others) >= res.lower_bound - slack
    if res.certified:
        assert res.value <= min(others) * (1 + 2e-7)


# ------------------------------------------------------------------------ F4 budgets and scale
def test_budget_object():
    with pytest.raises(ValueError, match="max_seconds"):
        Budget(-1.0)
    with pytest.raises(TypeError, match="max_seconds"):
        Budget(True)
    assert Budget(None).remaining() == math.inf


@pytest.mark.parametrize("method", ["gradient", "sdp", "full", "auto"])
def test_max_seconds_zero_is_honest(method):
    """A spent budget ends every method at once; the result says so and certifies nothing
    it has not proved."""
    rng = np.random.default_rng(0)
    prob = gufm.GUFM(counts=rng.integers(5, 15, size=12), dim=8, features="sphere",
                     lam_W=0.35, lam_b=0.4, radius=0.57)
    res = gufm.solve(prob, method, max_seconds=0.0)
    assert "time limit" in res.stop_reason or res.certified
    assert not (res.lower_bound > res.value + 1e-12)


def test_rho_1e6_answers_by_itself():
    """F4: counts [5, 3, 2], dim 5, radius 1e6 ran past 60 s; now the solve ends on its own
    (not by the budget) and its bound is valid."""
    prob = gufm.GUFM(counts=[5, 3, 2], dim=5, radius=1e6)
    res = gufm.solve(prob, "gradient", max_seconds=60)
    assert "time limit" not in res.stop_reason
    assert res.lower_bound <= res.value + 1e-15
    assert res.lower_bound > 0


def test_balanced_ce_sphere_rho_1e4_certifies():
    prob = gufm.GUFM(counts=[5] * 10, dim=11, features="sphere", radius=1e4)
    for method in ("closed_form", "gradient"):
        res = gufm.solve(prob, method)
        assert res.certified, (method, res)


def test_mse_rho_1e6_bound_is_not_negative():
    prob = gufm.GUFM(counts=[5, 3, 2], dim=5, loss="mse", features="sphere", radius=1e6)
    sdp = gufm.solve(prob, "sdp", polish=False)
    assert sdp.info["sdp_lower_bound"] > -1e-12  # was -0.04 from an inaccurate SDP
    res = gufm.solve(prob)  # auto: the gradient's point, the best of both bounds
    assert -1e-12 < res.lower_bound <= res.value + 1e-15


@pytest.mark.parametrize("features", ["layernorm", "sphere", "ball"])
def test_rescaling_is_exact(features, rng):
    """(W, H) -> (cW, H/c) with lam_W/c^2 is the same problem: same objective, same optimum."""
    prob = gufm.GUFM(counts=[3, 2, 2], dim=4, features=features, radius=3.0, lam_W=0.2)
    norm, c = prob.rescaled(0.5)
    assert c == 6.0 and norm.rho == 0.5 and norm.lam_W == pytest.approx(0.2 / 36)
    W = rng.standard_normal((3, 4))
    H = feature_model(features).project(rng.standard_normal((4, 3)), 3.0)
    if features == "layernorm":
        H = prob.feature_model.basis(4, 3) @ feature_model("sphere").project(
            rng.standard_normal((3, 3)), 3.0)
    assert gufm.group_objective(norm, c * W, None, H / c) == pytest.approx(
        gufm.group_objective(prob, W, None, H), rel=1e-13)
    assert gufm.solve(norm).value == pytest.approx(gufm.solve(prob).value, rel=1e-9)


@pytest.mark.parametrize("features,bias", [("layernorm", False), ("sphere", True),
                                           ("sphere", False)])
@pytest.mark.parametrize("saddle", [False, True])
def test_certificate_rescales_like_the_problem(features, bias, saddle, rng):
    """A certificate of the rescaled problem, mapped back by Certificate.rescaled, is the
    certificate computed on the original problem at the same logits (any point: optimal or not,
    PSD-proved or shifted)."""
    prob = gufm.GUFM(counts=[5, 3, 2, 1], dim=5, features=features, radius=3.0, lam_W=0.02,
                     lam_b=0.05 if bias else None)
    norm, c = prob.rescaled(1.0)
    if saddle:
        Z, b = rng.standard_normal((4, 4)), (rng.standard_normal(4) if bias else None)
    else:
        res = gufm.solve(prob)
        Z, b = res.W @ res.class_features, res.b
    direct, mapped = gufm.certify(prob, Z, b), gufm.certify(norm, Z, b).rescaled(c)
    assert mapped.lower_bound == pytest.approx(direct.lower_bound, rel=1e-12, abs=1e-13)
    np.testing.assert_allclose(mapped.mu, direct.mu, rtol=1e-12, atol=1e-14)
    assert mapped.lambda_min == pytest.approx(direct.lambda_min, rel=1e-9, abs=1e-13)
    assert mapped.shift == pytest.approx(direct.shift, rel=1e-9, abs=1e-13)
    np.testing.assert_array_equal(mapped.Y, direct.Y)
    assert gufm.certify(prob, Z, b).rescaled(1.0) is not None


def test_certificate_rescale_rejects_bad_factors():
    prob = gufm.GUFM(counts=[2, 1], dim=3, lam_W=0.1)
    cert = gufm.certify(prob, np.zeros((2, 2)))
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="c must be"):
            cert.rescaled(bad)
    pen = gufm.GUFM(counts=[2, 1], dim=3, features="penalty", lam_H=0.1)
    with pytest.raises(ValueError, match="mu"):
        gufm.certify(pen, np.ones((2, 2))).rescaled(2.0)


def test_finish_with_a_given_value_and_certificate(rng):
    """finish(value=..., certificate=...) reports them as given; the value must match the
    exact evaluation (the gradient solver passes its own evaluation on the normalised problem)."""
    prob = gufm.GUFM(counts=[2, 3, 1], dim=5, lam_W=0.1)
    fm = prob.feature_model
    Wp, Hp = rng.standard_normal((3, 2)), fm.project(rng.standard_normal((2, 3)), prob.rho)
    ref = finish(prob, Wp, None, Hp, method="test", t0=time.perf_counter(), stop_reason="given",
                 rtol=1e-7, atol=0.0)
    got = finish(prob, Wp, None, Hp, method="test", t0=time.perf_counter(), stop_reason="given",
                 rtol=1e-7, atol=0.0, value=ref.value, certificate=ref.certificate)
    assert got.value == ref.value and got.lower_bound == ref.lower_bound
    assert got.certificate is ref.certificate
    np.testing.assert_array_equal(got.W, ref.W)
    only_value = finish(prob, Wp, None, Hp, method="test", t0=time.perf_counter(),
                        stop_reason="given", rtol=1e-7, atol=0.0, value=ref.value)
    assert only_value.lower_bound == ref.lower_bound  # certified afresh
    with pytest.raises(ValueError, match="value= cannot"):
        finish(prob, Wp, None, Hp, method="test", t0=time.perf_counter(), stop_reason="given",
               rtol=1e-7, atol=0.0, value=1.0, check_tol=1e-9)


@pytest.mark.parametrize("features", ["layernorm", "sphere"])
def test_gradient_result_certificate_is_the_original_problems(features):
    """The gradient solver works on the normalised problem; its result's value and certificate
    are those of the original problem at the returned point."""
    prob = gufm.GUFM(counts=[6, 5, 3, 2, 1], dim=6, features=features, radius=2.5, lam_W=0.01)
    res = gufm.solve(prob, method="gradient", symmetry=False)
    assert res.certified
    assert res.value == pytest.approx(
        gufm.group_objective(prob, res.W, res.b, res.class_features), rel=1e-13)
    direct = gufm.certify(prob, res.W @ res.class_features, res.b)
    assert res.certificate.lower_bound == pytest.approx(direct.lower_bound, rel=1e-12)
    np.testing.assert_allclose(res.certificate.mu, direct.mu, rtol=1e-10)


def test_penalty_is_not_rescaled():
    prob = gufm.GUFM(counts=[3, 2], dim=3, features="penalty", lam_H=0.1)
    assert prob.normalised() == (prob, 1.0)


# ------------------------------------------------------------------------------ symmetric
def test_symmetric_reduction_directly():
    """The symmetric family's optimum, lifted, has the family's value and certifies."""
    prob = gufm.GUFM(counts=[6, 6, 6, 2, 2, 2], dim=7, lam_W=0.05)
    W, b, H, info = solve_symmetric(prob, rtol=1e-8)
    assert info["types"] == 2
    E = prob.feature_model.basis(prob.dim, W.shape[1])
    val = gufm.group_objective(prob, W @ E.T, b, E @ H)
    assert val == pytest.approx(info["sym_value"], rel=1e-10)
    lb = gufm.certify(prob, W @ H, b).lower_bound
    assert is_certified(prob, val, lb, 1e-7, ATOL)
    # classes of one type are exchangeable: their features form a simplex ETF
    G = H[:, :3].T @ H[:, :3]
    assert G[0, 1] == pytest.approx(G[1, 2], rel=1e-8)


def test_symmetric_declines_without_ties():
    assert solve_symmetric(gufm.GUFM(counts=[1, 2, 3, 4], dim=5)) is None
    assert solve_symmetric(gufm.GUFM(soft_labels=[[0.5, 0.5], [1, 0]], dim=3)) is None


def test_solveresult_validates_tolerances():
    prob = gufm.GUFM(counts=[1, 1], dim=2)
    with pytest.raises(ValueError, match="rtol"):
        SolveResult(prob, 0.0, 0.0, np.zeros((2, 2)), None, np.zeros((2, 2)), "m", 0.0, "",
                    rtol=2.0)
