"""Validation of GUFM instances: every bad input names its argument."""

import math

import numpy as np
import pytest

import gufm


def make(**kw):
    base = dict(counts=[5, 3, 2], dim=4, loss="ce", lam_W=1e-2)
    base.update(kw)
    return gufm.GUFM(**base)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(counts=[5]), "K >= 2"),
        (dict(counts=[5, 0, 2]), "class 1 is empty"),
        (dict(counts=[5, -1]), "class 1 is empty"),
        (dict(counts=[[1, 2]]), "one-dimensional"),
        (dict(counts=[1.5, 2]), "integers"),
        (dict(dim=1), "dim must be an integer >= 2"),
        (dict(lam_W=-1.0), r"lam_W must be positive \(lam_W > 0\)"),
        (dict(lam_W=0.0), r"lam_W must be positive \(lam_W > 0\)"),
        (dict(lam_W=float("nan")), "lam_W must be finite"),
        (dict(lam_b=-0.1), "lam_b must be non-negative"),
        (dict(lam_b=float("nan")), "lam_b must be finite"),
        (dict(features="penalty"), "lam_H is required"),
        (dict(features="penalty", lam_H=-1.0), "lam_H must be positive"),
        (dict(features="penalty", lam_H=float("nan")), "lam_H must be finite"),
        (dict(lam_H=0.1), "lam_H applies only to features='penalty'"),
        (dict(loss="hinge"), "loss must be one of"),
        (dict(features="cube"), "features must be one of"),
        (dict(radius=-1.0), "radius must be positive"),
        (dict(radius=0.0), "radius must be positive"),
        (dict(features="penalty", lam_H=1.0, radius=2.0), "radius is not used"),
    ],
)
def test_bad_input_raises_naming_argument(kw, match):
    with pytest.raises(ValueError, match=match):
        make(**kw)


def test_exactly_one_data_argument():
    with pytest.raises(ValueError, match="exactly one of counts"):
        gufm.GUFM(dim=4, lam_W=1e-2)
    with pytest.raises(ValueError, match="exactly one of counts"):
        gufm.GUFM(counts=[1, 2], labels=[0, 1, 1], dim=4, lam_W=1e-2)


def test_labels_and_soft_labels_validation():
    with pytest.raises(ValueError, match="class 1 is empty"):
        gufm.GUFM(labels=[0, 2, 2], dim=4, lam_W=1e-2)
    with pytest.raises(ValueError, match="K >= 2"):
        gufm.GUFM(labels=[0, 0], dim=4, lam_W=1e-2)
    with pytest.raises(ValueError, match="num_classes"):
        gufm.GUFM(labels=[0, 1, 3], num_classes=3, dim=4, lam_W=1e-2)
    with pytest.raises(ValueError, match="probability distribution"):
        gufm.GUFM(soft_labels=[[0.5, 0.6], [1, 0]], dim=4, lam_W=1e-2)
    with pytest.raises(ValueError, match="probability distribution"):
        gufm.GUFM(soft_labels=[[1.5, -0.5], [1, 0]], dim=4, lam_W=1e-2)
    with pytest.raises(ValueError, match="NaN"):
        gufm.GUFM(soft_labels=[[np.nan, 1], [1, 0]], dim=4, lam_W=1e-2)
    with pytest.raises(ValueError, match=r"shape \(N, K\)"):
        gufm.GUFM(soft_labels=[1, 0], dim=4, lam_W=1e-2)


def test_reduction_groups():
    p = gufm.GUFM(labels=[2, 0, 2, 1, 2], dim=4, lam_W=1e-2)
    assert p.K == 3 and p.N == 5 and p.G == 3
    np.testing.assert_array_equal(p.groups.counts, [1, 1, 3])
    np.testing.assert_allclose(p.groups.weights, [0.2, 0.2, 0.6])
    np.testing.assert_array_equal(p.groups.sample_group, [2, 0, 2, 1, 2])
    Q = np.array([[0.5, 0.5], [1, 0], [0.5, 0.5], [0.5, 0.5]])
    s = gufm.GUFM(soft_labels=Q, dim=4, lam_W=1e-2)
    assert s.G == 2 and s.N == 4
    np.testing.assert_allclose(sorted(s.groups.weights), [0.25, 0.75])
    # each sample's group target is its own label distribution
    np.testing.assert_allclose(s.groups.targets[:, s.groups.sample_group].T, Q)


def test_defaults():
    p = make()
    assert p.rho == pytest.approx(2.0) and p.m == 3 and not p.has_bias
    assert make(features="sphere").m == 4
    assert math.isnan(make(features="penalty", lam_H=1.0).rho)
    assert make(lam_b=0.0).has_bias
    assert not make().is_balanced and make(counts=[3, 3]).is_balanced
