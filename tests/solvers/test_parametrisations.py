"""The solvers' flat-vector parametrisations: chain rule (Taylor remainder) and round trips."""

import numpy as np
import pytest

import gufm
from gufm.solvers.full_n import FullParametrisation
from gufm.solvers.reduced import ReducedParametrisation

# every feature model, with each loss and each kind of bias somewhere
CASES = [
    {"features": f, "loss": loss, **bias, **({"lam_H": 0.05} if f == "penalty" else {})}
    for f, loss, bias in (
        ("layernorm", "ce", {}), ("sphere", "mse", {"lam_b": 0.3}), ("ball", "ce", {"lam_b": 0.0}),
        ("penalty", "mse", {}), ("penalty", "ce", {"lam_b": 0.1}),
    )
]


def _taylor_slope(fun, x, v):
    f0, g = fun(x)
    ts = np.logspace(-2, -5, 7)
    rem = [abs(fun(x + t * v)[0] - f0 - t * g @ v) for t in ts]
    return np.polyfit(np.log(ts), np.log(rem), 1)[0]


@pytest.mark.parametrize("kw", CASES)
@pytest.mark.parametrize("which", ["reduced", "full"])
def test_parametrisation_taylor(kw, which, rng):
    """|f(x + t v) - f(x) - t g.v| shrinks like t^2: the gradient through each feature model's
    parametrisation (sphere chain rule, ball slack, LayerNorm centring) is right."""
    prob = gufm.GUFM(counts=[3, 2, 2], dim=5 if which == "reduced" else 4, lam_W=0.2, **kw)
    par = ReducedParametrisation(prob, 3) if which == "reduced" else FullParametrisation(prob)
    n = par.size if which == "reduced" else par.n
    x = rng.standard_normal(n)
    slope = _taylor_slope(par.fun, x, rng.standard_normal(n))
    assert 1.9 < slope < 2.1, (kw, slope)


@pytest.mark.parametrize("kw", CASES)
def test_reduced_pack_point_round_trip(kw, rng):
    """pack() then point() returns the same feasible point, and fun() equals the objective."""
    prob = gufm.GUFM(counts=[3, 2, 2], dim=5, lam_W=0.2, **kw)
    fm = prob.feature_model
    par = ReducedParametrisation(prob, 3)
    W = rng.standard_normal((prob.K, 3))
    b = rng.standard_normal(prob.K) if prob.has_bias else None
    H = rng.standard_normal((3, prob.G))
    H = fm.project(H, prob.rho) if fm.radial else H
    if fm.radial and not fm.equality:
        H *= 0.7  # strictly inside the ball
    W2, b2, H2 = par.point(par.pack(W, b, H))
    np.testing.assert_allclose(W2, W)
    np.testing.assert_allclose(H2, H, atol=1e-14)
    E = fm.basis(prob.dim, 3)
    want = gufm.group_objective(prob, W @ E.T, b, E @ H, check_feasible=False)
    assert par.fun(par.pack(W, b, H))[0] == pytest.approx(want, rel=1e-13)


def test_torch_device_matches_numpy(rng):
    prob = gufm.GUFM(counts=[3, 2, 2], dim=5, lam_W=0.2, features="ball", lam_b=0.1)
    x = rng.standard_normal(ReducedParametrisation(prob, 3).size)
    f1, g1 = ReducedParametrisation(prob, 3).fun(x)
    f2, g2 = ReducedParametrisation(prob, 3, device="cpu").fun(x)
    assert f1 == pytest.approx(f2, rel=1e-14)
    np.testing.assert_allclose(g1, g2, rtol=1e-12, atol=1e-14)
