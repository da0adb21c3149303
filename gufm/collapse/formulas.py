r"""Every neural-collapse variant as one formula on :class:`~gufm.collapse.stats.CollapseStats`.

Written once with operators numpy and torch share (and :mod:`gufm.backend` for the rest), so the
in-memory and the streamed reports, numpy and torch, run the very same lines.  The public
functions of :mod:`gufm.collapse.variants` document each formula and its paper; see also
docs/metrics.md.  Signature: ``f(st, W, *, center)`` (``W`` unused by the ``W``-free variants).
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from gufm.backend import Array, convert, get_backend, svd, to_numpy
from gufm.collapse._checks import fro
from gufm.collapse.stats import CollapseStats
from gufm.model.geometry import etf_gram


def _etf(K: int, like: Array) -> Array:
    return convert(etf_gram(K), like)


def _gram_distance(X: Array, target: Array, name: str) -> Array:
    r""":math:`\lVert XX^\top/\lVert XX^\top\rVert_F - T/\lVert T\rVert_F\rVert_F`."""
    G = X @ X.T
    return _matrix_distance(G, target, name)


def _matrix_distance(G: Array, target: Array, name: str) -> Array:
    r""":math:`\lVert G/\lVert G\rVert_F - T/\lVert T\rVert_F\rVert_F`."""
    nG = fro(G)
    if float(nG) == 0.0:
        raise ValueError(f"{name} is zero; its normalised Gram is undefined")
    T = convert(target, G)
    nT = fro(T)
    if float(nT) == 0.0:
        raise ValueError("target_gram is zero; its normalisation is undefined")
    return fro(G / nG - T / nT)


def _offdiag(K: int, like: Array) -> Array:
    """1 off the diagonal, 0 on it (``K x K``, ``like``'s dtype)."""
    return 1 - get_backend(like).eye(K, like)


def _std_over_mean(v: Array) -> Array:
    """Sample standard deviation (``1/(K-1)``) over the mean of the entries of ``v``."""
    m = v.mean()
    return (((v - m) ** 2).sum() / (v.shape[0] - 1)) ** 0.5 / m


def _unit_columns(X: Array) -> Array:
    """Columns divided by their norms; a zero column stays zero."""
    n = (X * X).sum(axis=0) ** 0.5
    return X / (n + (n == 0))


# ----------------------------------------------------------------------------------- NC1
def _nc1(st: CollapseStats, W: Any = None, *, center: str = "samples",
         rcond: float | None = None) -> Array:
    Mc = st.check_spread(center)
    U, s, _ = svd(Mc)
    # singular values below the rounding level of the centring (which scales with the
    # uncentred means, e.g. a large common offset) are noise: Mbar has rank <= K - 1 exactly
    scale = max(float(s[0]), float(((st.means * st.means).sum(axis=0) ** 0.5).max()))
    tol = (max(st.d, st.K) * get_backend(Mc).eps(Mc) if rcond is None else rcond) * scale
    r = int((to_numpy(s) > tol).sum())
    U, s = U[:, :r], s[:r]
    # Sigma_B = U diag(s^2/K) U^T  =>  tr(Sigma_W Sigma_B^+)/K = sum_j u_j^T Sigma_W u_j / s_j^2
    return (st.quad(U) / (s * s)).sum()


def _nc1_trace_ratio(st: CollapseStats, W: Any = None, *, center: str = "samples") -> Array:
    Mc = st.check_spread(center)
    return (st.within_ss.sum() / st.N) / ((Mc * Mc).sum() / st.K)


def _nc1_cdnv(st: CollapseStats, W: Any = None, *, center: str = "samples") -> Array:
    st.check_spread()
    Mc = st.centred_means()  # differences of means: the centring only limits rounding
    K = st.K
    var = st.within_ss / st.counts
    G = Mc.T @ Mc
    g = G.diagonal()
    D = g[:, None] + g[None, :] - 2 * G  # ||mu_k - mu_j||^2
    D = D * (D > 0)  # rounding can make a coinciding pair slightly negative
    off = _offdiag(K, D)
    V = var[:, None] + var[None, :]
    # only the pairs: the diagonal gets a finite denominator and weight exactly 0
    with _quiet(D):
        ratios = V / (2 * D + (1 - off)) * off
    return ratios.sum() / (K * (K - 1))


def _quiet(like: Array) -> Any:
    """numpy: no divide-by-zero warnings inside (``x/0 = inf`` is the documented value)."""
    if get_backend(like).name == "torch":
        return contextlib.nullcontext()
    return np.errstate(divide="ignore", invalid="ignore")


# ----------------------------------------------------------------------------------- NC2
def _nc2_classifier(st: Any, W: Array, *, center: str = "samples") -> Array:
    return _gram_distance(W, _etf(W.shape[0], W), "W")


def _nc2_means(st: CollapseStats, W: Any = None, *, center: str = "samples") -> Array:
    Mc = st.check_spread(center)
    return _gram_distance(Mc.T, _etf(st.K, Mc), "the centred class means")


def _nc2_equinorm(st: CollapseStats, W: Any = None, *, center: str = "samples") -> Array:
    Mc = st.check_spread(center)
    return _std_over_mean((Mc * Mc).sum(axis=0) ** 0.5)


def _pair_distances(st: CollapseStats, center: str) -> tuple[Array, Array]:
    """Distances between the normalised centred means ``(K, K)`` and the off-diagonal mask."""
    U = _unit_columns(st.check_spread(center))
    G = U.T @ U
    g = G.diagonal()
    D2 = g[:, None] + g[None, :] - 2 * G
    return (D2 * (D2 > 0)) ** 0.5, _offdiag(st.K, G)


def _pair_variance(x: Array, off: Array) -> Array:
    """Population variance of the off-diagonal entries of a symmetric ``x`` (= over ``k < j``)."""
    K = x.shape[0]
    x = x * off
    m = x.sum() / (K * (K - 1))
    return (((x - m) * off) ** 2).sum() / (K * (K - 1))


def _gnc2_dist(st: CollapseStats, W: Any = None, *, center: str = "samples") -> Array:
    D, off = _pair_distances(st, center)
    return _pair_variance(D, off)


def _gnc2_log(st: CollapseStats, W: Any = None, *, center: str = "samples") -> Array:
    D, off = _pair_distances(st, center)
    if float(((D == 0) * off).sum()) > 0:  # two normalised means coincide: log(1/0)
        return (D * 0).sum() + float("inf")
    nx = get_backend(D)
    return _pair_variance(-nx.xp.log(D + (1 - off)), off)


# ----------------------------------------------------------------------------------- NC3
def _nc3(st: CollapseStats, W: Any = None, *, center: str = "samples") -> Array:
    if st.cos_sum is None:
        raise ValueError("nc3 needs the cosine sum: form the statistics with W")
    return 1 - st.cos_sum / st.N


def _nonzero_W(W: Array, metric: str) -> Array:
    nW = fro(W)
    if float(nW) == 0.0:
        raise ValueError(f"W is zero; {metric} is undefined")
    return nW


def _nc3_duality(st: CollapseStats, W: Array, *, center: str = "samples") -> Array:
    Mc = st.check_spread(center)
    return fro(W / _nonzero_W(W, "nc3_duality") - Mc.T / fro(Mc))


def _nc3_self_duality(st: CollapseStats, W: Array, *, center: str = "samples") -> Array:
    Mc = st.check_spread(center)
    _nonzero_W(W, "nc3_self_duality")
    return _matrix_distance(W @ Mc, _etf(st.K, Mc), "W Mbar (W orthogonal to the centred means)")


def _unc3(st: CollapseStats, W: Array, *, center: str = "samples") -> Array:
    Mc = st.check_spread(center)
    v = (W * Mc.T).sum(axis=1)  # w_k . (mu_k - mu_G)
    m = v.mean()
    return ((v - m) ** 2).sum() / (st.K - 1)


# ----------------------------------------------------------------------------------- NC4, NC5
def _nc4(st: CollapseStats, W: Any = None, *, center: str = "samples") -> Array:
    if st.disagree is None:
        raise ValueError("nc4 needs the decision counts: form the statistics with W in two "
                         "passes")
    return st.disagree / st.N


def _nc5(st: CollapseStats, W: Any = None, *, center: str = "samples") -> Array:
    Mc = st.check_spread(center)
    o = st.ood_mean - st.global_mean(center)
    no = fro(o)
    scale = float(((st.means * st.means).sum(axis=0) ** 0.5).max())
    if float(no) <= 100.0 * st.K * get_backend(o).eps(o) * scale:  # zero up to rounding
        raise ValueError("ood: the OOD mean coincides with the global mean of the in-"
                         "distribution features; nc5 is undefined")
    cos = (_unit_columns(Mc) * (o / no)[:, None]).sum(axis=0)
    return get_backend(cos).xp.abs(cos).mean()
