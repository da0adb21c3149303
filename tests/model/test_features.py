"""Feature models as objects: each carries its parametrisation, feasibility, basis, SDP and dual parts."""

import math

import numpy as np
import pytest

import gufm
from gufm.model.features import (
    FEATURE_MODELS,
    Ball,
    FeatureModel,
    LayerNorm,
    Penalty,
    Sphere,
    feature_model,
    radial_map,
    radial_vjp,
)


def test_names_and_instances_are_interchangeable():
    for name, cls in FEATURE_MODELS.items():
        kw = {"lam_H": 0.1} if cls is Penalty else {}
        a = gufm.GUFM(counts=[2, 3], dim=4, features=name, **kw)
        b = gufm.GUFM(counts=[2, 3], dim=4, features=cls(), **kw)
        assert a.features == b.features == name
        assert a.feature_model == b.feature_model and isinstance(a.feature_model, cls)
        assert a.rho == b.rho or (math.isnan(a.rho) and math.isnan(b.rho))
        assert gufm.solve(a).value == pytest.approx(gufm.solve(b).value, rel=1e-12)


def test_unknown_feature_models_are_refused():
    with pytest.raises(ValueError, match="features must be one of"):
        gufm.GUFM(counts=[2, 3], dim=4, features="cube")
    with pytest.raises(TypeError, match="features must be a name or a"):
        gufm.GUFM(counts=[2, 3], dim=4, features=3)


def test_a_new_feature_model_is_one_class():
    """A subclass defined outside the package works through the whole solver (it names nothing)."""

    class HalfSphere(Sphere):
        name = "half-sphere"

    prob = gufm.GUFM(counts=[3, 3, 3], dim=4, features=HalfSphere(), radius=1.5, lam_W=0.05)
    ref = gufm.GUFM(counts=[3, 3, 3], dim=4, features="sphere", radius=1.5, lam_W=0.05)
    res = gufm.solve(prob, method="gradient")
    assert res.certified and prob.features == "half-sphere"
    assert res.value == pytest.approx(gufm.solve(ref).value, rel=1e-9)


def test_subspace_dimension_and_bases():
    for fm, m in ((LayerNorm(), 4), (Sphere(), 5), (Ball(), 5), (Penalty(), 5)):
        assert fm.subspace_dim(5) == m
        E = fm.basis(5, 3)
        np.testing.assert_allclose(E.T @ E, np.eye(3), atol=1e-15)
    np.testing.assert_allclose(LayerNorm().basis(5, 4).sum(0), 0, atol=1e-15)


def test_radial_vjp_matches_finite_differences(rng):
    V = rng.standard_normal((4, 3))
    gH = rng.standard_normal((4, 3))
    H, aux = radial_map(V, 2.5)
    gV = radial_vjp(gH, aux, 2.5)
    dV = rng.standard_normal(V.shape)
    t = 1e-6
    fd = (np.sum(gH * radial_map(V + t * dV, 2.5)[0]) - np.sum(gH * radial_map(V - t * dV, 2.5)[0])) / (2 * t)
    assert np.sum(gV * dV) == pytest.approx(fd, rel=1e-7)
    np.testing.assert_allclose(np.linalg.norm(H, axis=0), 2.5)


def test_ball_latent_round_trip_and_projection(rng):
    fm = Ball()
    H = rng.standard_normal((3, 5))
    P = fm.project(H, 0.5)
    assert np.all(np.linalg.norm(P, axis=0) <= 0.5 + 1e-15)
    inside = 0.1 * H / np.linalg.norm(H, axis=0)
    assert np.array_equal(fm.project(inside, 0.5), inside)  # already feasible: unchanged
    back, _ = fm.parametrise(fm.to_latent(inside, 0.5), 0.5)
    np.testing.assert_allclose(back, inside, atol=1e-15)


@pytest.mark.parametrize("backend_name", ["numpy", "torch"])
def test_violations(backend_name):
    torch = pytest.importorskip("torch")
    to = (lambda a: torch.as_tensor(a)) if backend_name == "torch" else np.asarray
    H = to(np.array([[3.0, 0.0], [0.0, 2.0]]))  # norms 3 and 2, column sums 3 and 2
    assert Sphere().violation(H, 2.0) == pytest.approx(0.5)
    assert Ball().violation(H, 2.0) == pytest.approx(0.5)
    assert Ball().violation(H, 4.0) == 0.0
    assert Penalty().violation(H, math.nan) == 0.0
    # LayerNorm adds |1ᵀh| / sqrt(d), relative to rho: max(1/2, 3/sqrt(2)/2)
    assert LayerNorm().violation(H, 2.0) == pytest.approx(3 / math.sqrt(2) / 2)


def test_penalty_regulariser_is_the_objective_term(rng):
    prob = gufm.GUFM(counts=[2, 3], dim=3, features="penalty", lam_H=0.3, lam_W=0.1)
    W, H = rng.standard_normal((2, 3)), rng.standard_normal((3, 2))
    base = gufm.GUFM(counts=[2, 3], dim=3, features="ball", radius=100.0, lam_W=0.1)
    n = prob.groups.counts
    want = gufm.group_objective(base, W, None, H) + 0.15 * float((n * (H**2).sum(0)).sum())
    assert gufm.group_objective(prob, W, None, H) == pytest.approx(want, rel=1e-13)


def test_dual_parts(rng):
    Z, Y = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    counts = np.array([1, 2, 3, 4])
    mu = Sphere().dual_diagonal(Z, Y, 2.0, counts, None)
    np.testing.assert_allclose(mu.diag, -(Z * Y).sum(0) / 8.0)
    assert mu.repair == "shift"
    ball = Ball().dual_diagonal(Z, Y, 2.0, counts, None)
    np.testing.assert_allclose(ball.diag, np.maximum(mu.diag, 0))
    pen = Penalty().dual_diagonal(Z, Y, math.nan, counts, 0.5)
    np.testing.assert_allclose(pen.diag, 0.25 * counts)
    assert pen.repair == "scale" and Penalty().dual_term(pen.diag, math.nan) == 0.0
    assert Sphere().dual_term(np.array([1.0, 2.0]), 3.0) == pytest.approx(27.0)


def test_only_features_py_names_a_feature_model():
    """No module of model/ or solvers/ other than features.py branches on a feature model's name."""
    import pathlib
    import re

    root = pathlib.Path(gufm.__file__).parent
    names = r"\"(layernorm|sphere|ball|penalty)\""
    pat = re.compile(rf"features *(==|!=) |(==|!=|\bin\b) *\(?{names}|{names} *(==|!=|\bin\b|:)")
    hits = [str(p.relative_to(root)) for folder in ("model", "solvers") for p in (root / folder).glob("*.py")
            if p.name != "features.py" and pat.search(p.read_text())]
    assert hits == []


def test_feature_model_base_is_abstract_enough():
    assert issubclass(Penalty, FeatureModel) and feature_model("penalty") == Penalty()
    assert hash(Sphere()) == hash(Sphere())
