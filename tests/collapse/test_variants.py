"""The newer variants (equinorm, GNC2, self-duality NC3, UNC3, NC4, NC5), center=, the exact CDNV:
hand computations, exact collapse, invariances, streaming, degenerate input."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from gufm import metrics as M
from gufm.collapse.streaming import CollapseAccumulator, stream_report
from gufm.model.geometry import simplex_etf

NEW = ["nc2_equinorm", "gnc2_dist", "gnc2_log", "nc3_self_duality", "unc3", "nc4", "nc5"]
CENTRED = ["nc1", "nc1_trace_ratio", "nc2_means", "nc2_equinorm", "gnc2_dist", "gnc2_log",
           "nc3_duality", "nc3_self_duality", "unc3", "nc5"]


def orthogonal(d, rng):
    Q, R = np.linalg.qr(rng.standard_normal((d, d)))
    return Q * np.sign(np.diag(R))


def data(seed, K=4, d=6, N=40, imbalance=False):
    rng = np.random.default_rng(seed)
    p = np.arange(1, K + 1) ** 2 if imbalance else np.ones(K)
    y = np.concatenate([np.arange(K), rng.choice(K, N - K, p=p / p.sum())])
    rng.shuffle(y)
    H = rng.standard_normal((d, N)) + 2.5 * rng.standard_normal((d, K))[:, y] + 1.0
    W = rng.standard_normal((K, d))
    b = rng.standard_normal(K)
    ood = rng.standard_normal((d, 15)) + rng.standard_normal((d, 1))
    return H, y, W, b, ood


# ------------------------------------------------------------------------------ hand computation
def hand(H, y, W, b, ood, center="samples"):
    """Each variant with explicit loops over classes, pairs and samples (float64)."""
    d, N = H.shape
    K = W.shape[0]
    n = [int(np.sum(y == k)) for k in range(K)]
    mu = [sum(H[:, i] for i in range(N) if y[i] == k) / n[k] for k in range(K)]
    muG = sum(H[:, i] for i in range(N)) / N if center == "samples" else sum(mu) / K
    c = [mu[k] - muG for k in range(K)]
    norms = [math.sqrt(float(v @ v)) for v in c]
    mean = sum(norms) / K
    out = {"nc2_equinorm": math.sqrt(sum((x - mean) ** 2 for x in norms) / (K - 1)) / mean}
    u = [v / math.sqrt(float(v @ v)) for v in c]
    dist = [math.sqrt(float((u[k] - u[j]) @ (u[k] - u[j])))
            for k, j in itertools.combinations(range(K), 2)]
    out["gnc2_dist"] = float(np.var(dist))
    out["gnc2_log"] = float(np.var([math.log(1 / x) for x in dist]))
    X = np.array([[W[k] @ c[j] for j in range(K)] for k in range(K)])
    E = np.array([[((k == j) - 1 / K) / math.sqrt(K - 1) for j in range(K)] for k in range(K)])
    out["nc3_self_duality"] = float(np.linalg.norm(X / np.linalg.norm(X) - E))
    v = [W[k] @ c[k] for k in range(K)]
    vm = sum(v) / K
    out["unc3"] = sum((x - vm) ** 2 for x in v) / (K - 1)
    wrong = 0
    for i in range(N):
        lin = max(range(K), key=lambda k: W[k] @ H[:, i] + (0 if b is None else b[k]))
        ncc = min(range(K), key=lambda k: float((H[:, i] - mu[k]) @ (H[:, i] - mu[k])))
        wrong += lin != ncc
    out["nc4"] = wrong / N
    o = ood.mean(axis=1) - muG
    out["nc5"] = sum(abs(c[k] @ o) / (norms[k] * math.sqrt(o @ o)) for k in range(K)) / K
    # the older centring variants, for center="classes"
    SW = sum(np.outer(H[:, i] - mu[y[i]], H[:, i] - mu[y[i]]) for i in range(N)) / N
    SB = sum(np.outer(v_, v_) for v_ in c) / K
    out["nc1"] = float(np.trace(SW @ np.linalg.pinv(SB)) / K)
    out["nc1_trace_ratio"] = float(np.trace(SW) / np.trace(SB))
    Mc = np.stack(c, axis=1)
    G = Mc.T @ Mc
    out["nc2_means"] = float(np.linalg.norm(G / np.linalg.norm(G) - E))
    out["nc3_duality"] = float(np.linalg.norm(W / np.linalg.norm(W) - Mc.T / np.linalg.norm(Mc)))
    return out


@pytest.mark.parametrize("center", ["samples", "classes"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hand_loops(seed, center):
    H, y, W, b, ood = data(seed, K=3 + seed, d=5, N=30, imbalance=True)
    want = hand(H, y, W, b, ood, center)
    got = M.collapse_report(H, y, W, b, ood=ood, center=center)
    for k in set(want):
        assert got[k] == pytest.approx(want[k], rel=1e-10, abs=1e-13), k
    for k in NEW:
        assert M.METRICS[k].func is getattr(M, k)
    assert M.nc2_equinorm(H, y, center=center) == pytest.approx(want["nc2_equinorm"], rel=1e-10)
    assert M.gnc2_log(H, y, center=center) == pytest.approx(want["gnc2_log"], rel=1e-10)
    assert M.nc3_self_duality(H, y, W, center=center) == pytest.approx(
        want["nc3_self_duality"], rel=1e-10)
    assert M.unc3(H, y, W, center=center) == pytest.approx(want["unc3"], rel=1e-10)
    assert M.nc4(H, y, W, b) == pytest.approx(want["nc4"], abs=1e-15)
    assert M.nc5(H, y, ood, center=center) == pytest.approx(want["nc5"], rel=1e-10)
    if center == "samples":  # without b the classifier decides on W h alone
        assert M.nc4(H, y, W) == pytest.approx(hand(H, y, W, None, ood)["nc4"], abs=1e-15)


def test_nc4_hand_example():
    # class 0 at (0, 0), (2, 0); class 1 at (0, 4), (0, 6): means (1, 0), (0, 5)
    H = np.array([[0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 4.0, 6.0]])
    y = np.array([0, 0, 1, 1])
    assert M.nc4(H, y, np.eye(2)) == 0.0  # (0, 0): W ties -> class 0 = the nearest centre
    assert M.nc4(H, y, np.eye(2), np.array([0.0, 1.0])) == 0.25  # the bias flips (0, 0)
    assert M.nc4(H, y, -np.eye(2)) == 0.75  # a reversed classifier only "agrees" at the tie
    assert M.nc4(H, y, np.array([[0.0, 1.0], [1.0, 0.0]])) == 0.75


def test_center_classes_equals_samples_when_balanced():
    H, y, W, b, ood = data(3)
    y = np.repeat(np.arange(4), 10)
    a = M.collapse_report(H, y, W, b, ood=ood)
    c = M.collapse_report(H, y, W, b, ood=ood, center="classes")
    for k in a:
        assert c[k] == pytest.approx(a[k], rel=1e-12, abs=1e-14), k
    Hi, yi, Wi, bi, oi = data(4, imbalance=True)
    a = M.collapse_report(Hi, yi, Wi, ood=oi)
    c = M.collapse_report(Hi, yi, Wi, ood=oi, center="classes")
    assert all(a[k] != pytest.approx(c[k], rel=1e-6) for k in ["nc2_means", "nc3_duality"])
    for k in ["nc1_cdnv", "nc2_classifier", "nc3", "nc4"]:  # no global mean in these
        assert c[k] == a[k], k
    with pytest.raises(ValueError, match="center must be"):
        M.collapse_report(H, y, W, center="median")
    with pytest.raises(ValueError, match="center must be"):
        M.nc1(H, y, center="sample")


# ------------------------------------------------------------------------------ exact collapse
@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize(("K", "d"), [(3, 2), (4, 9), (7, 7)])
def test_simplex_etf_collapse_is_zero(backend, K, d):
    rng = np.random.default_rng(K * d)
    E = orthogonal(d, rng) @ simplex_etf(K, d)  # (d, K), rotated, centred
    y = np.repeat(np.arange(K), 3)
    offset = rng.standard_normal((d, 1))
    H, W = 3.7 * E[:, y] + offset, 0.4 * E.T
    # an OOD mean orthogonal to the span of the centred means (if d > K - 1), else on mu_G
    P = np.eye(d) - E @ np.linalg.pinv(E)
    v = P @ rng.standard_normal(d)
    ood = offset + v[:, None] + 0 * rng.standard_normal((d, 5)) if np.linalg.norm(v) > 1e-8 \
        else None
    if backend == "torch":
        H, y, W = torch.tensor(H), torch.tensor(y), torch.tensor(W)
        ood = None if ood is None else torch.tensor(ood)
    rep = M.collapse_report(H, y, W, ood=ood)
    for k in NEW:
        if k == "nc5" and ood is None:
            assert "nc5" not in rep
            continue
        assert abs(float(rep[k])) < 1e-10, (k, rep[k])


# ------------------------------------------------------------------------------ invariances
@pytest.mark.parametrize("seed", [5, 6])
def test_invariances(seed):
    H, y, W, b, ood = data(seed, imbalance=True)
    base = M.collapse_report(H, y, W, b, ood=ood)
    rng = np.random.default_rng(seed)
    Q = orthogonal(H.shape[0], rng)
    rot = M.collapse_report(Q @ H, y, W @ Q.T, b, ood=Q @ ood)
    perm = rng.permutation(4)
    inv = np.argsort(perm)
    rel = M.collapse_report(H, perm[y], W[inv], b[inv], ood=ood)
    a, c = 3.0, rng.standard_normal((H.shape[0], 1))
    moved = M.collapse_report(a * H + c, y, W, a * b - W @ c[:, 0], ood=a * ood + c)
    scaled_w = M.collapse_report(H, y, 5 * W, 5 * b, ood=ood)
    for k in NEW:
        assert rot[k] == pytest.approx(base[k], rel=1e-9, abs=1e-12), k
        assert rel[k] == pytest.approx(base[k], rel=1e-9, abs=1e-12), k
    # translating and scaling H (with the bias moved along: the same decisions)
    for k in ["nc2_equinorm", "gnc2_dist", "gnc2_log", "nc3_self_duality", "nc4", "nc5"]:
        assert moved[k] == pytest.approx(base[k], rel=1e-8, abs=1e-12), k
    assert moved["unc3"] == pytest.approx(a**2 * base["unc3"], rel=1e-8)
    assert scaled_w["nc3_self_duality"] == pytest.approx(base["nc3_self_duality"], rel=1e-12)
    assert scaled_w["nc4"] == base["nc4"]
    assert scaled_w["unc3"] == pytest.approx(25 * base["unc3"], rel=1e-12)


# ------------------------------------------------------------------------------ the exact CDNV
def cdnv_pairs(H, y, K):
    H = np.asarray(H, dtype=np.float64)
    mu = [H[:, y == k].mean(axis=1) for k in range(K)]
    var = [((H[:, y == k] - mu[k][:, None]) ** 2).sum(axis=0).mean() for k in range(K)]
    return np.mean([(var[a] + var[b]) / (2 * np.sum((mu[a] - mu[b]) ** 2))
                    for a, b in itertools.combinations(range(K), 2)])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("scale", [1.0, 1e4, 1e6, 1e8])
def test_cdnv_relative_error_independent_of_scale(scale, dtype):
    rng = np.random.default_rng(0)
    K, d, N = 5, 16, 2000
    y = np.concatenate([np.arange(K), rng.integers(0, K, N - K)])
    H = ((rng.standard_normal((d, N)) + 3 * rng.standard_normal((d, K))[:, y]) * scale)
    H = H.astype(dtype)
    want = cdnv_pairs(H, y, K)  # float64 pairs on the same (rounded) data
    tol = 1e-12 if dtype == np.float64 else 1e-6
    for x in (H, torch.tensor(H)):
        assert abs(float(M.nc1_cdnv(x, y)) - want) <= tol * want


# ------------------------------------------------------------------------------ streaming
def batches(H, y, size):
    return [(np.ascontiguousarray(H[:, i:i + size].T), y[i:i + size])
            for i in range(0, H.shape[1], size)]


@pytest.mark.parametrize("block", [None, 7])
def test_stream_two_pass_carries_nc4_nc5(block):
    H, y, W, b, ood = data(7, imbalance=True)
    want = M.collapse_report(H, y, W, b, ood=ood, center="classes")
    oodb = [ood.T[:8], ood.T[8:]]
    got = stream_report(batches(H, y, 9), 4, W, b, block_size=block, ood=oodb, center="classes")
    assert set(got) == set(want)
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-10, abs=1e-13), k
    one = stream_report(batches(H, y, 9), 4, W, b, passes=1, ood=oodb)
    assert "nc4" not in one and one["nc5"] == pytest.approx(M.nc5(H, y, ood), rel=1e-10)
    # a bias given only to report(): the decisions of the pass had none, so nc4 is left out
    acc = CollapseAccumulator(4, H.shape[0], W=W, passes=2)
    for p in range(2):
        for h, yy in batches(H, y, 16):
            acc.update(h, yy)
        if p == 0:
            acc.next_pass()
    assert acc.report()["nc4"] == pytest.approx(M.nc4(H, y, W))
    assert "nc4" not in acc.report(W, b) and "nc3" not in acc.report(W, b)
    acc_b = CollapseAccumulator(4, H.shape[0], passes=2)
    for p in range(2):
        for h, yy in batches(H, y, 16):
            acc_b.update(h, yy)
        if p == 0:
            acc_b.next_pass(W=W, b=b)
    assert acc_b.report()["nc4"] == pytest.approx(want["nc4"])
    with pytest.raises(ValueError, match="b differs"):
        acc_b.report(W, b + 1)


def test_torch_float32_stays_float32():
    H, y, W, b, ood = data(8)
    a = M.collapse_report(H, y, W, b, ood=ood)
    t = M.collapse_report(torch.tensor(H, dtype=torch.float32), torch.tensor(y),
                          torch.tensor(W), torch.tensor(b), ood=torch.tensor(ood))
    for k in a:
        assert t[k].dtype == torch.float32 and t[k].ndim == 0, k
        assert float(t[k]) == pytest.approx(a[k], rel=1e-4, abs=1e-6), k


# ------------------------------------------------------------------------------ degenerate input
def test_degenerate_inputs():
    H, y, W, b, ood = data(9)
    with pytest.raises(ValueError, match="OOD mean coincides"):
        M.nc5(H, y, np.tile(H.mean(axis=1, keepdims=True), (1, 3)))
    with pytest.raises(ValueError, match=r"ood must have shape \(d, N_ood\)"):
        M.nc5(H, y, ood[:-1])
    with pytest.raises(ValueError, match="ood contains NaN"):
        M.nc5(H, y, ood * np.nan)
    with pytest.raises(ValueError, match="b must have shape"):
        M.nc4(H, y, W, b[:-1])
    with pytest.raises(ValueError, match="W is zero"):
        M.nc3_self_duality(H, y, 0 * W)
    with pytest.raises(ValueError, match="zero between-class spread"):
        M.nc2_equinorm(np.ones((3, 4)), [0, 1, 0, 1])
    # two classes whose centred means point the same way: log(1 / 0) in gnc2_log
    H2 = np.array([[1.0, 2.0, -3.0], [0.0, 0.0, 0.0]])
    assert M.gnc2_log(H2, [0, 1, 2]) == math.inf
    assert math.isfinite(M.gnc2_dist(H2, [0, 1, 2]))
    # nc3 does not need every class to have a sample
    assert M.nc3(H, y, np.vstack([W, W[:1]])) == pytest.approx(M.nc3(H, y, W))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_stay_on_the_device():
    H, y, W, b, ood = data(10)
    want = M.collapse_report(H, y, W, b, ood=ood)
    dev = torch.device("cuda")
    got = M.collapse_report(torch.tensor(H, device=dev), torch.tensor(y, device=dev),
                            torch.tensor(W, device=dev), torch.tensor(b, device=dev),
                            ood=torch.tensor(ood, device=dev))
    for k in want:
        assert got[k].device.type == "cuda", k
        assert float(got[k]) == pytest.approx(want[k], rel=1e-10, abs=1e-13), k
