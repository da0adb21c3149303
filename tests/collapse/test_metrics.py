"""Tests of gufm.metrics: exact collapse gives 0, hand-computed values, invariances, backends,
degenerate input."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import gufm
from gufm import metrics as M
from gufm.model.geometry import etf_gram, simplex_etf

ALL = ["nc1", "nc1_trace_ratio", "nc1_cdnv", "nc2_classifier", "nc2_means", "nc3", "nc3_duality"]
NEW = ["nc2_equinorm", "gnc2_dist", "gnc2_log", "nc3_self_duality", "unc3", "nc4"]
#: every key of a report without OOD features or a GUFM reference, in registry order
REPORT = ["nc1", "nc1_trace_ratio", "nc1_cdnv", "nc2_classifier", "nc2_means", "nc2_equinorm",
          "gnc2_dist", "gnc2_log", "nc3", "nc3_duality", "nc3_self_duality", "unc3", "nc4"]


def orthogonal(d: int, rng: np.random.Generator) -> np.ndarray:
    Q, R = np.linalg.qr(rng.standard_normal((d, d)))
    return Q * np.sign(np.diag(R))


def random_problem(rng, K=3, d=4, N=11, offset=0.0):
    y = np.concatenate([np.arange(K), rng.integers(0, K, N - K)])
    rng.shuffle(y)
    H = rng.standard_normal((d, N)) + 2.0 * rng.standard_normal((d, K))[:, y] + offset
    W = rng.standard_normal((K, d))
    return H, y, W


# ------------------------------------------------------------------------------ hand computation
def hand_stats(H, y, K):
    d, N = H.shape
    n = [sum(1 for i in range(N) if y[i] == k) for k in range(K)]
    mu = np.zeros((d, K))
    for i in range(N):
        mu[:, y[i]] += H[:, i] / n[y[i]]
    muG = np.zeros(d)
    for i in range(N):
        muG += H[:, i] / N
    SW = np.zeros((d, d))
    for i in range(N):
        r = H[:, i] - mu[:, y[i]]
        SW += np.outer(r, r) / N
    SB = np.zeros((d, d))
    for k in range(K):
        c = mu[:, k] - muG
        SB += np.outer(c, c) / K
    return n, mu, muG, SW, SB


def hand_report(H, y, W):
    K = W.shape[0]
    d, N = H.shape
    n, mu, muG, SW, SB = hand_stats(H, y, K)
    out = {"nc1": np.trace(SW @ np.linalg.pinv(SB)) / K,
           "nc1_trace_ratio": np.trace(SW) / np.trace(SB)}
    var = [sum(np.sum((H[:, i] - mu[:, k]) ** 2) for i in range(N) if y[i] == k) / n[k]
           for k in range(K)]
    pairs = [(var[k] + var[j]) / (2 * np.sum((mu[:, k] - mu[:, j]) ** 2))
             for k, j in itertools.combinations(range(K), 2)]
    out["nc1_cdnv"] = sum(pairs) / len(pairs)
    E = np.zeros((K, K))
    for k in range(K):
        for j in range(K):
            E[k, j] = ((k == j) - 1 / K) / math.sqrt(K - 1)
    G = W @ W.T
    out["nc2_classifier"] = np.linalg.norm(G / np.linalg.norm(G) - E)
    Mc = np.stack([mu[:, k] - muG for k in range(K)], axis=1)
    G = Mc.T @ Mc
    out["nc2_means"] = np.linalg.norm(G / np.linalg.norm(G) - E)
    cos = []
    for i in range(N):
        den = np.linalg.norm(H[:, i]) * np.linalg.norm(W[y[i]])
        cos.append(0.0 if den == 0 else H[:, i] @ W[y[i]] / den)  # cos(0, w) = 0
    out["nc3"] = 1 - sum(cos) / N
    out["nc3_duality"] = np.linalg.norm(W / np.linalg.norm(W) - Mc.T / np.linalg.norm(Mc))
    return out


def test_hand_two_class_example():
    # class 0: (0,0), (2,0); class 1: (0,4), (0,6).  mu0 = (1,0), mu1 = (0,5), var = 1 each,
    # Sigma_W = I/2, Sigma_B = v v^T with v = (1/2, -5/2), |v|^2 = 13/2.
    H = np.array([[0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 4.0, 6.0]])
    y = np.array([0, 0, 1, 1])
    assert M.nc1(H, y) == pytest.approx(1 / 26, rel=1e-13)  # (1/2)(2/13)/2
    assert M.nc1_trace_ratio(H, y) == pytest.approx(2 / 13, rel=1e-13)  # 1/(13/2)
    assert M.nc1_cdnv(H, y) == pytest.approx(1 / 26, rel=1e-13)  # (1+1)/(2*26)
    # two classes: centred means are +-v, so nc2_means is |[[1,-1],[-1,1]]/2 - E_2|_F = 0
    assert M.nc2_means(H, y) == pytest.approx(0.0, abs=1e-15)
    W = np.array([[1.0, 0.0], [0.0, 1.0]])
    # cos: (0,0) -> 0, (2,0) -> 1, (0,4) -> 1, (0,6) -> 1
    assert M.nc3(H, y, W) == pytest.approx(1 - 3 / 4, rel=1e-14)
    # W W^T = I, |I|_F = sqrt 2 and E_2 = [[1,-1],[-1,1]]/2: difference has entries
    # 1/sqrt2 - 1/2 and 1/2 -> norm^2 = 2(1/sqrt2 - 1/2)^2 + 2/4
    assert M.nc2_classifier(W) == pytest.approx(
        math.sqrt(2 * (1 / math.sqrt(2) - 0.5) ** 2 + 0.5), rel=1e-14)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hand_loops_random(seed):
    rng = np.random.default_rng(seed)
    H, y, W = random_problem(rng, K=3 + seed, d=5, N=14)
    got = M.collapse_report(H, y, W)
    want = hand_report(H, y, W)
    for k in ALL:
        assert got[k] == pytest.approx(want[k], rel=1e-10, abs=1e-13), k
        assert M.METRICS[k].func is getattr(M, k)
    assert got["nc1"] == pytest.approx(M.nc1(H, y), rel=1e-12)
    assert got["nc3_duality"] == pytest.approx(M.nc3_duality(H, y, W), rel=1e-12)


def test_single_sample_class_has_zero_variance():
    H = np.array([[0.0, 2.0, 5.0], [0.0, 0.0, 1.0]])
    y = np.array([0, 0, 1])
    # var0 = 1, var1 = 0, |mu0 - mu1|^2 = 16 + 1
    assert M.nc1_cdnv(H, y) == pytest.approx(1 / 34, rel=1e-13)
    want = hand_report(H, y, np.eye(2))
    assert M.nc1(H, y) == pytest.approx(want["nc1"], rel=1e-12)


# ------------------------------------------------------------------------------ exact collapse
@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize(("K", "d"), [(2, 1), (3, 2), (4, 9), (7, 7)])
def test_simplex_etf_collapse_is_zero(backend, K, d):
    rng = np.random.default_rng(K * d)
    E = orthogonal(d, rng) @ simplex_etf(K, d)  # (d, K), rotated
    y = np.concatenate([np.arange(K), rng.integers(0, K, 3 * K)])
    n = np.bincount(y, minlength=K)
    y = np.repeat(np.arange(K), n.max())  # balanced: centred means = the ETF
    H, W = 3.7 * E[:, y], 0.4 * E.T
    if backend == "torch":
        H, y, W = torch.tensor(H), torch.tensor(y), torch.tensor(W)
    rep = M.collapse_report(H, y, W)
    for k in ALL:
        assert abs(float(rep[k])) < 1e-12, (k, rep[k])


def test_mse_orthogonal_frame_zero_against_own_gram():
    rng = np.random.default_rng(3)
    K, d = 4, 6
    F = orthogonal(d, rng)[:, :K]  # orthonormal columns: an orthogonal frame, not an ETF
    y = np.repeat(np.arange(K), 3)
    H, W = 2.0 * F[:, y], 0.3 * F.T
    assert M.nc2_gram(W, None, np.eye(K)) < 1e-12
    assert M.nc2_gram(None, F, 5 * np.eye(K)) < 1e-12
    assert M.nc1(H, y) < 1e-12 and M.nc3(H, y, W) < 1e-12
    assert M.nc2_classifier(W) > 0.1  # not an ETF: the classifier NC2 is not the MSE target


@pytest.fixture(scope="module")
def ce_optimum():
    prob = gufm.GUFM(counts=[4, 4, 4, 4], dim=6, loss="ce", lam_W=5e-3)
    return prob, gufm.solve(prob, method="auto")


def test_gufm_ce_optimum_is_collapsed(ce_optimum):
    prob, res = ce_optimum
    y = prob.groups.sample_group
    H = res.features(y)
    rep = M.collapse_report(H, y, res.W, gufm_reference=res)
    for k in [*ALL, "gufm_distance"]:
        assert abs(rep[k]) < 1e-12, (k, rep[k])
    # solving from lam gives the same optimum; class means + counts give the same distance
    assert M.gufm_distance(H, y, res.W, lam=5e-3) < 1e-12
    assert M.gufm_distance(res.class_features, None, res.W, lam=5e-3) < 1e-12
    assert M.gufm_distance(H, y, res.W, problem=prob) < 1e-12
    # a precomputed Gram works too, and a wrong scale between W and H is detected
    G = M.reference_gram(res)
    assert M.gufm_distance(H, y, res.W, reference=G) < 1e-12
    assert M.gufm_distance(H, y, 3 * res.W, reference=G) > 1e-3


@pytest.mark.parametrize("counts", [[3, 3, 3], [5, 3, 2]])
def test_gufm_mse_and_imbalanced_optima(counts):
    for loss in ["mse", "ce"]:
        prob = gufm.GUFM(counts=counts, dim=5, loss=loss, lam_W=1e-2)
        res = gufm.solve(prob, method="auto")
        y = prob.groups.sample_group
        H = res.features(y)
        assert M.gufm_distance(H, y, res.W, reference=res) < 1e-12
        assert M.gufm_distance(H, y, res.W, loss=loss, lam=1e-2) < 1e-12
        assert M.nc1(H, y) < 1e-12
        if loss == "mse" and counts[0] == counts[-1]:
            assert M.nc3(H, y, res.W) < 1e-12
            assert M.nc2_gram(res.W, None, np.eye(3)) < 1e-8


# ------------------------------------------------------------------------------ invariances
@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), K=st.integers(2, 4), d=st.integers(2, 5))
def test_rotation_relabel_scale_invariance(seed, K, d):
    rng = np.random.default_rng(seed)
    H, y, W = random_problem(rng, K=K, d=d, N=3 * K + 2)
    base = M.collapse_report(H, y, W, gufm_reference=rng.standard_normal((2 * K, 2 * K)))
    Gref = rng.standard_normal((2 * K, 2 * K))
    Gref = Gref @ Gref.T
    dist = M.gufm_distance(H, y, W, reference=Gref)
    Q = orthogonal(d, rng)
    rot = M.collapse_report(Q @ H, y, W @ Q.T)
    perm = rng.permutation(K)  # class k becomes perm[k]
    inv = np.argsort(perm)
    rel = M.collapse_report(H, perm[y], W[inv])
    P = np.zeros((2 * K, 2 * K), dtype=int)
    P[np.arange(2 * K), np.concatenate([inv, K + inv])] = 1
    a, c = 2.5, rng.standard_normal((d, 1))
    for k in ALL:
        assert rot[k] == pytest.approx(base[k], rel=1e-8, abs=1e-10), k
        assert rel[k] == pytest.approx(base[k], rel=1e-8, abs=1e-10), k
    assert M.gufm_distance(Q @ H, y, W @ Q.T, reference=Gref) == pytest.approx(dist, rel=1e-9)
    assert M.gufm_distance(H, perm[y], W[inv], reference=P @ Gref @ P.T) == pytest.approx(
        dist, rel=1e-9)
    assert M.gufm_distance(a * H, y, a * W, reference=Gref) == pytest.approx(dist, rel=1e-9)
    # documented scale / translation invariances
    for k in ["nc1", "nc1_trace_ratio", "nc1_cdnv", "nc2_means"]:
        f = getattr(M, k)
        assert f(a * H + c, y) == pytest.approx(base[k], rel=1e-7, abs=1e-10), k
    assert M.nc2_classifier(a * W) == pytest.approx(base["nc2_classifier"], rel=1e-10)
    assert M.nc3_duality(a * H + c, y, 7 * W) == pytest.approx(base["nc3_duality"], rel=1e-7)
    s = rng.uniform(0.5, 2.0, H.shape[1])
    assert M.nc3(H * s, y, W * 3) == pytest.approx(base["nc3"], rel=1e-10, abs=1e-12)


# ------------------------------------------------------------------------------ backends
def test_numpy_torch_agree():
    rng = np.random.default_rng(7)
    H, y, W = random_problem(rng, K=4, d=6, N=40, offset=1.0)
    G = rng.standard_normal((8, 8))
    a = M.collapse_report(H, y, W, gufm_reference=G)
    t = M.collapse_report(torch.tensor(H), torch.tensor(y), torch.tensor(W), gufm_reference=G)
    mixed = M.collapse_report(torch.tensor(H), y, W, gufm_reference=G)
    assert set(a) == set(t) == {*REPORT, "gufm_distance"}
    for k in a:
        assert isinstance(a[k], float)
        assert isinstance(t[k], torch.Tensor) and t[k].ndim == 0 and t[k].dtype == torch.float64
        assert abs(float(t[k]) - a[k]) <= 1e-10 * max(1.0, abs(a[k])), k
        assert abs(float(mixed[k]) - a[k]) <= 1e-10 * max(1.0, abs(a[k])), k
    for k in ["nc1", "nc1_trace_ratio", "nc1_cdnv", "nc2_means"]:
        out = getattr(M, k)(torch.tensor(H, dtype=torch.float32), torch.tensor(y))
        assert out.dtype == torch.float32 and out.ndim == 0
        assert float(out) == pytest.approx(a[k], rel=1e-4)
    assert isinstance(M.nc2_classifier(torch.tensor(W)), torch.Tensor)


def test_report_frame_and_registry():
    rng = np.random.default_rng(8)
    H, y, W = random_problem(rng)
    rep = M.collapse_report(H, y, W)
    assert list(rep) == REPORT  # no nc5 without ood, no gufm_distance without lam / reference
    df = M.collapse_report(H, y, W, as_frame=True)
    assert df.shape == (1, len(REPORT)) and list(df.columns) == REPORT
    assert df["nc1"].iloc[0] == pytest.approx(rep["nc1"])
    assert list(M.METRICS) == [*REPORT, "nc5", "gufm_distance"]
    for name, m in M.METRICS.items():
        assert m.name == name and "\n" not in m.description and m.description
        assert m.func.__doc__
    assert M.METRICS["nc1"](H, y) == rep["nc1"]
    assert gufm.collapse_report is M.collapse_report


# ------------------------------------------------------------------------------ degenerate input
def test_degenerate_inputs_raise():
    rng = np.random.default_rng(9)
    H, y, W = random_problem(rng)
    bad = H.copy()
    bad[0, 3] = np.nan
    with pytest.raises(ValueError, match="H contains NaN"):
        M.nc1(bad, y)
    with pytest.raises(ValueError, match="W contains NaN"):
        M.nc3(H, y, np.full_like(W, np.inf))
    with pytest.raises(ValueError, match="K >= 2"):
        M.nc1(H, np.zeros(H.shape[1], dtype=int))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, K-1\]"):
        M.collapse_report(H, np.where(y == 0, 3, y), W)
    with pytest.raises(ValueError, match="labels must be >= 0"):
        M.nc1(H, y - 1)
    with pytest.raises(ValueError, match="labels must have length"):
        M.nc1(H, y[:-1])
    with pytest.raises(ValueError, match="labels must be integers"):
        M.nc1(H, y + 0.5)
    with pytest.raises(ValueError, match="H must be 2-dimensional"):
        M.nc1(H[0], y)
    with pytest.raises(ValueError, match=r"W must have shape \(K, d\)"):
        M.nc3(H, y, W[:, :-1])
    with pytest.raises(ValueError, match="K >= 2 rows"):
        M.nc2_classifier(W[:1])
    with pytest.raises(ValueError, match="b must have shape"):
        M.collapse_report(H, y, W, np.zeros(5))
    with pytest.raises(ValueError, match="class 3 has no samples"):
        M.nc1(H, y, num_classes=4)
    with pytest.raises(ValueError, match="zero between-class spread"):
        M.nc1(np.ones((3, 6)), np.array([0, 1, 2, 0, 1, 2]))
    same = np.tile(rng.standard_normal((3, 1)), (1, 6)) + 0 * rng.standard_normal((3, 6))
    for f in [M.nc1, M.nc1_trace_ratio, M.nc1_cdnv, M.nc2_means]:
        with pytest.raises(ValueError, match="zero between-class spread"):
            f(same, np.array([0, 1, 0, 1, 0, 1]))
    with pytest.raises(ValueError, match="W is zero"):
        M.nc2_classifier(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="needs lam="):
        M.gufm_distance(H, y, W)
    with pytest.raises(ValueError, match=r"shape \(2K, 2K\)"):
        M.gufm_distance(H, y, W, reference=np.eye(4))
    with pytest.raises(ValueError, match="give W or M"):
        M.nc2_gram(None, None, np.eye(3))


def test_cdnv_coinciding_pair_is_inf():
    H = np.array([[0.0, 2.0, 1.0, 1.0, 5.0, 6.0], [1.0, -1.0, 0.5, -0.5, 0.0, 0.0]])
    y = np.array([0, 0, 1, 1, 2, 2])  # mu0 = mu1 = (1, 0)
    assert M.nc1_cdnv(H, y) == math.inf
    assert math.isfinite(M.nc1(H, y))


def test_zero_features_cosine_is_zero():
    H = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    y = np.array([0, 0, 1])
    W = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert M.nc3(H, y, W) == pytest.approx(1 - 2 / 3)
    assert etf_gram(3).shape == (3, 3)
