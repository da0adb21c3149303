"""Cross-check of every gufm variant against the definitions of the two public neural-collapse codes.

The peer formulas below are written here, independently, from reading the peers' definitions:
rhubarbwu/neural-collapse (``neural_collapse/measure.py``, ``kernels.py``, ``accumulate.py``) and
tding1/Neural-Collapse (``validate_NC.py``).  Conventions of the peers that gufm names differently:

* rhubarbwu's accumulators centre at the mean of the class means by default
  (``MeanAccumulator.compute(weighted=False)``): gufm's ``center="classes"``; with
  ``weighted=True`` (and in tding1) the sample mean, gufm's default ``center="samples"``.
* rhubarbwu's NC4 is an agreement rate without bias; gufm's ``nc4`` is the disagreement rate.
* rhubarbwu's NC5 takes raw class means and the raw OOD mean; gufm centres both at the
  in-distribution global mean (pass ``M - m_G`` and ``m_ood - m_G`` to the peer formula).
* ``Tensor.var`` / ``Tensor.std`` (UNC3, equinorm) are the unbiased ``1/(K-1)`` estimators;
  ``kernel_stats`` averages over the ``K(K-1)/2`` pairs.

Run ``python tests/collapse/test_crosscheck.py`` for the table of largest relative differences.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from gufm import metrics as M
from gufm.model.geometry import simplex_etf


def case(seed: int, K: int, d: int, N: int, imbalance: float, etf: bool):
    """Float64 features (N, d) rows, labels, classifier, OOD rows: Gaussian clusters or near-ETFs."""
    g = np.random.default_rng(seed)
    p = np.linspace(1.0, imbalance, K)
    y = np.concatenate([np.arange(K), g.choice(K, N - K, p=p / p.sum())])
    if etf:
        Q, _ = np.linalg.qr(g.standard_normal((d, d)))
        C = 4.0 * (Q @ simplex_etf(K, d)).T  # (K, d) rows
        X = C[y] + 0.3 * g.standard_normal((N, d)) + 0.5
        W = C + 0.1 * g.standard_normal((K, d))
    else:
        C = 2.0 * g.standard_normal((K, d))
        X = C[y] + g.standard_normal((N, d)) + 1.0
        W = g.standard_normal((K, d))
    ood = g.standard_normal((60, d)) + g.standard_normal(d)
    return (torch.tensor(X), torch.tensor(y), torch.tensor(W), torch.tensor(ood))


CASES = [case(s, K, d, N, imb, etf) for s, (K, d, N, imb, etf) in enumerate(
    [(5, 16, 400, 1.0, False), (10, 64, 2000, 1.0, False), (5, 16, 600, 10.0, False),
     (10, 64, 3000, 10.0, False), (5, 16, 500, 1.0, True), (10, 64, 2000, 10.0, True)])]
IDS = ["gauss-K5", "gauss-K10", "gauss-K5-10:1", "gauss-K10-10:1", "etf-K5", "etf-K10-10:1"]


# ------------------------------------------------------------------------------ peer statistics
def peer_stats(X, y, K, weighted):
    """Class means (K, d), global mean, within-class covariance (d, d), per-class variance norms."""
    n = torch.stack([(y == k).sum() for k in range(K)]).double()
    M_ = torch.stack([X[y == k].sum(0) for k in range(K)]) / n[:, None]
    mG = (n @ M_) / n.sum() if weighted else M_.mean(0)
    D = X - M_[y]
    V_intra = D.T @ D / X.shape[0]
    V_norms = torch.stack([(D[y == k] ** 2).sum() for k in range(K)]) / n
    return M_, mG, V_intra, V_norms


def etf_error(struct, K):
    """rhubarbwu's structure_error tail: normalise, add 1/(K sqrt(K-1)), subtract 1/sqrt(K-1) on
    the diagonal, Frobenius norm."""
    s = struct / torch.linalg.matrix_norm(struct)
    s = s + 1 / K / math.sqrt(K - 1)
    s = s - torch.eye(K, dtype=s.dtype) / math.sqrt(K - 1)
    return float(torch.linalg.matrix_norm(s))


def pair_values(grid, K):
    return torch.stack([grid[i, j] for i, j in itertools.combinations(range(K), 2)])


def rhubarbwu(X, y, W, ood, weighted):
    """rhubarbwu/neural-collapse's measures, as its README example calls them."""
    K = W.shape[0]
    M_, mG, V_intra, V_norms = peer_stats(X, y, K, weighted)
    Mc = M_ - mG
    V_inter = Mc.T @ Mc / K
    out = {"nc1": float(torch.trace(torch.linalg.pinv(V_inter) @ V_intra)) / K}
    vals, vecs = torch.linalg.eigh(V_inter)  # svds(V_inter, k=K-1): the top K-1 pairs
    vals, vecs = vals[-(K - 1):], vecs[:, -(K - 1):]
    out["nc1_svd"] = float(torch.trace(V_intra @ (vecs / vals) @ vecs.T)) / K
    out["nc1_trace_ratio"] = float(torch.trace(V_intra) / torch.trace(V_inter))
    diff = M_[:, None, :] - M_[None, :, :]
    cdnv = ((V_norms[:, None] + V_norms[None, :]) / 2) / (diff * diff).sum(-1)
    out["nc1_cdnv"] = float(pair_values(cdnv, K).mean())
    out["nc2_means"] = etf_error(Mc @ Mc.T, K)
    out["nc2_equinorm"] = float(Mc.norm(dim=-1).std() / Mc.norm(dim=-1).mean())
    U = Mc / (Mc.norm(dim=-1, keepdim=True) + torch.finfo(Mc.dtype).eps)
    dist = (U[:, None, :] - U[None, :, :]).norm(dim=-1)
    pd_ = pair_values(dist, K)
    out["gnc2_dist"] = float(((pd_ - pd_.mean()) ** 2).mean())
    lg = pair_values((dist ** -1).log(), K)
    out["gnc2_log"] = float(((lg - lg.mean()) ** 2).mean())
    out["nc3_self_duality"] = etf_error(W @ Mc.T, K)
    out["unc3"] = float((W * Mc).sum(dim=1).var())
    dots = X @ M_.T
    dists = (X * X).sum(1)[:, None] + (M_ * M_).sum(1)[None, :] - 2 * dots
    agree = ((X @ W.T).argmax(-1) == dists.argmin(-1)).double().mean()
    out["nc4"] = 1 - float(agree)
    o = ood.mean(0) - mG  # centred as gufm does: orthogonality_deviation(M - mG, m_ood - mG)
    out["nc5"] = float(torch.nn.functional.cosine_similarity(Mc, o[None, :]).abs().mean())
    return out


def tding1(X, y, W):
    """tding1/Neural-Collapse's validate_NC.py (sample global mean throughout)."""
    K = W.shape[0]
    mu_G = X.mean(0)
    mu = [X[y == k].mean(0) for k in range(K)]
    Sigma_W = sum(torch.outer(X[i] - mu[int(y[i])], X[i] - mu[int(y[i])])
                  for i in range(X.shape[0])) / X.shape[0]
    Sigma_B = sum(torch.outer(m - mu_G, m - mu_G) for m in mu) / K
    Ek = (torch.eye(K, dtype=torch.float64) - 1 / K) / math.sqrt(K - 1)  # (the peer: float32)
    WWT = W @ W.T
    H = torch.stack([m - mu_G for m in mu], dim=1)  # (d, K)
    WH = W @ H
    return {"nc1": float(np.trace(Sigma_W.numpy() @ np.linalg.pinv(Sigma_B.numpy()))) / K,
            "nc2_classifier": float(torch.norm(WWT / torch.norm(WWT) - Ek)),
            "nc3_self_duality": float(torch.norm(WH / torch.norm(WH) - Ek))}


def gufm_report(X, y, W, ood, center):
    rep = M.collapse_report(X.T, y, W, ood=ood.T, center=center)
    rep = {k: float(v) for k, v in rep.items()}
    rep["nc1_svd"] = rep["nc1"]  # the top K-1 pairs are gufm's rank cut-off
    return rep


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-300)


RHUB_TOL = {"nc1": 1e-9, "nc1_svd": 1e-9, "nc4": 0.0}


@pytest.mark.parametrize("weighted", [False, True], ids=["classes", "samples"])
@pytest.mark.parametrize("c", CASES, ids=IDS)
def test_rhubarbwu(c, weighted):
    X, y, W, ood = c
    peer = rhubarbwu(X, y, W, ood, weighted)
    got = gufm_report(X, y, W, ood, "samples" if weighted else "classes")
    for k, v in peer.items():
        assert rel(got[k], v) <= RHUB_TOL.get(k, 1e-10) or abs(got[k] - v) < 1e-13, (k, got[k], v)


@pytest.mark.parametrize("c", CASES[:4], ids=IDS[:4])
def test_tding1(c):
    X, y, W, ood = c
    peer = tding1(X[:600], y[:600], W)  # (the first K labels are 0..K-1: every class present)
    got = gufm_report(X[:600], y[:600], W, ood, "samples")
    for k, v in peer.items():
        assert rel(got[k], v) <= 1e-9, (k, got[k], v)


def test_nc4_peer_rate_is_one_minus_ours_with_a_bias():
    X, y, W, ood = CASES[2]
    b = torch.linspace(-2, 2, W.shape[0], dtype=torch.float64)
    M_ = torch.stack([X[y == k].mean(0) for k in range(W.shape[0])])
    ncc = ((X[:, None, :] - M_[None]) ** 2).sum(-1).argmin(-1)
    want = float(((X @ W.T + b).argmax(-1) != ncc).double().mean())
    assert float(M.nc4(X.T, y, W, b)) == want
    assert float(M.nc4(X.T, y, W, b)) != float(M.nc4(X.T, y, W))  # the bias matters here


def agreement_table() -> dict[str, float]:
    """Largest relative difference of each variant from the peer formulas over :data:`CASES`."""
    worst: dict[str, float] = {}
    for X, y, W, ood in CASES:
        for weighted in (False, True):
            got = gufm_report(X, y, W, ood, "samples" if weighted else "classes")
            for k, v in rhubarbwu(X, y, W, ood, weighted).items():
                worst[f"rhubarbwu {k}"] = max(worst.get(f"rhubarbwu {k}", 0.0), rel(got[k], v))
    for X, y, W, ood in CASES[:4]:
        got = gufm_report(X[:600], y[:600], W, ood, "samples")
        for k, v in tding1(X[:600], y[:600], W).items():
            worst[f"tding1 {k}"] = max(worst.get(f"tding1 {k}", 0.0), rel(got[k], v))
    return worst


if __name__ == "__main__":
    for name, v in agreement_table().items():
        print(f"{name:28s} {v:.1e}")
