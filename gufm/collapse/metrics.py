r"""Neural-collapse metrics, each published variant under its own name (spec section 5).

Published code disagrees on what NC1, NC2 and NC3 mean (NC2 on the classifier or on the means,
NC1 with or without the :math:`1/K`, centred or not).  This module gives every variant its own
function and registers it in :data:`METRICS`; :func:`collapse_report` evaluates all of them from
one set of sufficient statistics (:class:`CollapseStats`), which is also what the one-pass
:class:`gufm.streaming.CollapseAccumulator` produces, so in-memory and streamed reports run the
very same formulas.

Conventions
-----------
* ``H`` has shape ``(d, N)``: **columns are samples** (the package convention).  Streaming
  (:mod:`gufm.streaming`) takes row-major ``(batch, d)`` batches instead, as forward hooks and
  data loaders produce them.
* ``labels`` has shape ``(N,)``, integers in ``0..K-1``; ``W`` has shape ``(K, d)`` (row ``k``
  is the classifier of class ``k``); the bias ``b`` ``(K,)`` is accepted for a uniform call
  signature and validated, but **no metric here depends on it** (all are defined on ``W``).
* :math:`n_k` class counts, :math:`N = \sum_k n_k`,
  :math:`\mu_k = \frac1{n_k}\sum_{y_i = k} h_i` class means,
  :math:`\mu_G = \frac1N \sum_i h_i = \sum_k \frac{n_k}{N}\mu_k` the **sample** global mean (for
  balanced classes it equals the mean of the class means),
  :math:`\bar M = [\mu_1 - \mu_G, \dots, \mu_K - \mu_G]` ``(d, K)`` the centred class means,

  .. math::

      \Sigma_W = \frac1N \sum_i (h_i - \mu_{y_i})(h_i - \mu_{y_i})^\top, \qquad
      \Sigma_B = \frac1K \sum_k (\mu_k - \mu_G)(\mu_k - \mu_G)^\top = \frac1K \bar M \bar M^\top

  (:math:`\Sigma_B` weights classes equally, :math:`1/K`, as in the spec, while :math:`\mu_G` is
  the sample mean), and :math:`E_K = (I - \mathbf 1\mathbf 1^\top/K)/\sqrt{K-1}` the normalised
  simplex-ETF Gram (:func:`gufm.geometry.etf_gram`).
* Inputs may be numpy arrays or torch tensors (CPU or GPU).  Computation happens in the input's
  framework and floating dtype (integers become float64, half precision float32); a numpy input
  gives a python ``float``, a torch input a 0-d tensor.  numpy and torch agree to ~1e-13 in
  float64 (every formula is written once, with operators both frameworks share).
* A single-sample class has within-class variance exactly 0.  A class with no sample, ``K < 2``,
  NaN/inf, labels out of range and wrong shapes raise ``ValueError`` naming the argument.
  **Zero between-class spread** (all class means equal, up to rounding of the mean computation)
  raises ``ValueError`` in every metric that divides by it (NC1 variants, ``nc2_means``,
  ``nc3_duality``); in :func:`nc1_cdnv` a single pair of coinciding means makes the value
  ``inf`` (``nan`` if both classes also have zero variance).

Invariances (tested): all metrics are invariant to a rotation :math:`h \mapsto Qh,\ w \mapsto
Qw` and to relabelling the classes (permuting labels and the rows of ``W`` together).
NC1 variants and ``nc2_means`` are invariant to translating and scaling ``H``; ``nc2_classifier``
to scaling ``W``; ``nc3`` to positive scaling of each sample and each ``w_k`` separately;
``nc3_duality`` to scaling ``W`` and ``H`` separately (and to translating ``H``);
``gufm_distance`` only to scaling ``W`` and ``H`` *jointly* (it compares their relative size
with the optimum's).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gufm.backend import (
    Array,
    as_index,
    eps,
    finite,
    is_torch,
    segment_sum,
    svd,
    to_numpy,
    zeros,
)
from gufm.model.geometry import etf_gram
from gufm.model.problem import GUFM
from gufm.solvers import solve

__all__ = [
    "METRICS", "Metric", "CollapseStats", "collapse_stats", "collapse_report", "report_from_stats",
    "nc1", "nc1_trace_ratio", "nc1_cdnv", "nc2_classifier", "nc2_means", "nc2_gram", "nc3",
    "nc3_duality", "gufm_distance", "reference_gram",
]


# ----------------------------------------------------------------------------------- validation
def _float_dtype(x: Array) -> Any:
    """The working floating dtype for ``x``: its own if float32/float64, else float64/float32."""
    if is_torch(x):
        import torch

        if x.dtype in (torch.float32, torch.float64):
            return x.dtype
        if x.dtype in (torch.float16, torch.bfloat16):
            return torch.float32
        return torch.float64
    dt = np.asarray(x).dtype
    if dt in (np.float32, np.float64):
        return dt
    if dt == np.float16:
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def _as_array(x: Array, name: str, ndim: int, like: Array | None = None) -> Array:
    """``x`` as a floating array (of ``like``'s framework/device/dtype when given), checked."""
    if not is_torch(x):
        try:
            x = np.asarray(x)
        except Exception as exc:  # noqa: BLE001 - any conversion failure is the caller's input
            raise ValueError(f"{name} must be an array, got {type(x).__name__}") from exc
        if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
            raise ValueError(f"{name} must be a numeric array, got dtype {x.dtype}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {tuple(x.shape)}")
    if like is None:
        dt = _float_dtype(x)
        x = x.to(dt) if is_torch(x) else x.astype(dt, copy=False)
    else:
        x = _like(x, like)
    if not finite(x):
        raise ValueError(f"{name} contains NaN or inf")
    return x


def _like(x: Array, like: Array) -> Array:
    """``x`` converted to the framework, dtype and device of ``like``."""
    if is_torch(like):
        import torch

        if is_torch(x):
            return x.to(dtype=like.dtype, device=like.device)
        return torch.as_tensor(np.asarray(x), dtype=like.dtype, device=like.device)
    return np.asarray(to_numpy(x), dtype=like.dtype)


def _common(H: Array, W: Array | None) -> tuple[Array, Array | None]:
    """Bring ``H`` and ``W`` to one framework (``H``'s) and the wider floating dtype."""
    if W is None:
        return H, None
    if is_torch(H):
        import torch

        Wt = W if is_torch(W) else torch.as_tensor(np.asarray(W))
        H = H.to(torch.promote_types(H.dtype, _float_dtype(Wt)))
    else:
        H = H.astype(np.promote_types(H.dtype, _float_dtype(to_numpy(W))), copy=False)
    return H, _like(W, H)


def _check_labels(labels: Array, N: int, K: int | None, like: Array) -> tuple[Array, int]:
    """Validate labels (length ``N``, integers in ``0..K-1``) and return them as indices."""
    y = to_numpy(labels) if is_torch(labels) else np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-dimensional, got shape {y.shape}")
    if y.shape[0] != N:
        raise ValueError(f"labels must have length N = {N} (the columns of H), got {y.shape[0]}")
    if N == 0:
        raise ValueError("labels: need at least one sample")
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)
            or y.dtype == bool):
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    if np.issubdtype(y.dtype, np.floating) and (
        not np.all(np.isfinite(y)) or np.any(y != np.round(y))
    ):
        raise ValueError("labels must be integers (got non-integral or non-finite values)")
    y = y.astype(np.int64)
    if y.min() < 0:
        raise ValueError(f"labels must be >= 0, got {int(y.min())}")
    if K is None:
        K = int(y.max()) + 1
    elif y.max() >= K:
        raise ValueError(f"labels must lie in [0, K-1] = [0, {K - 1}], got {int(y.max())}")
    if K < 2:
        raise ValueError(f"labels: need K >= 2 classes, got K = {K}")
    return as_index(y, like), K


def _check_W(W: Array, d: int | None, name: str = "W") -> Array:
    W = _as_array(W, name, 2)
    if W.shape[0] < 2:
        raise ValueError(f"{name} must have K >= 2 rows (one per class), got shape "
                         f"{tuple(W.shape)}")
    if d is not None and W.shape[1] != d:
        raise ValueError(f"{name} must have shape (K, d) with d = {d} (the rows of H), got "
                         f"{tuple(W.shape)}")
    return W


def _check_b(b: Array | None, K: int) -> None:
    if b is None:
        return
    b = _as_array(b, "b", 1)
    if b.shape[0] != K:
        raise ValueError(f"b must have shape (K,) = ({K},), got {tuple(b.shape)}")


def _out(x: Array, like: Array) -> Any:
    """A python float for numpy input, a 0-d tensor for torch input."""
    if is_torch(like):
        return x if is_torch(x) else _like(np.asarray(x), like)
    return float(x)


def _fro(x: Array) -> Array:
    """Frobenius norm :math:`\\lVert x\\rVert_F` (a numpy scalar or a 0-d tensor)."""
    return (x * x).sum() ** 0.5


# -------------------------------------------------------------------------- sufficient statistics
@dataclass(frozen=True)
class CollapseStats:
    r"""Sufficient statistics of labelled features for every metric of :data:`METRICS`.

    Attributes
    ----------
    counts : array (K,)
        :math:`n_k` (floating, all positive).
    means : array (d, K)
        Class means :math:`\mu_k` as columns (uncentred).
    within_ss : array (K,)
        :math:`\sum_{y_i = k} \lVert h_i - \mu_k\rVert^2` (0 for a single-sample class).
    quad : callable
        ``quad(U)`` for ``U`` of shape ``(d, r)`` returns the ``r`` values
        :math:`u_j^\top \Sigma_W u_j`.  (The two-pass streaming statistics only support ``U``
        inside the span of the centred class means, which is all :func:`nc1` asks for.)
    cos_sum : scalar or None
        :math:`\sum_i \cos(h_i, w_{y_i})` for the ``W`` given when the statistics were formed.
    """

    counts: Array
    means: Array
    within_ss: Array
    quad: Callable[[Array], Array] = field(repr=False)
    cos_sum: Array | None = None

    @property
    def K(self) -> int:
        return int(self.means.shape[1])

    @property
    def d(self) -> int:
        return int(self.means.shape[0])

    @property
    def N(self) -> Array:
        return self.counts.sum()

    @property
    def global_mean(self) -> Array:
        r""":math:`\mu_G = \sum_k n_k \mu_k / N` (the sample mean), shape ``(d,)``."""
        return (self.means @ self.counts) / self.N

    @property
    def centred_means(self) -> Array:
        r""":math:`\bar M = [\mu_k - \mu_G]_k`, shape ``(d, K)``."""
        return self.means - self.global_mean[:, None]

    def check_spread(self) -> Array:
        """Return the centred means; raise ``ValueError`` if all class means coincide."""
        Mc = self.centred_means
        scale = float(((self.means * self.means).sum(axis=0) ** 0.5).max())
        tol = 100.0 * math.sqrt(self.K) * eps(Mc) * scale
        spread = float(_fro(Mc))
        if spread == 0.0 or spread <= tol:
            raise ValueError(
                "H: zero between-class spread (all class means coincide); the between-class "
                "metrics (nc1*, nc2_means, nc3_duality) are undefined"
            )
        return Mc


def _cosines(H: Array, y: Array, W: Array) -> Array:
    r""":math:`\cos(h_i, w_{y_i})` for every column, 0 where either vector is zero."""
    num = (H * W.T[:, y]).sum(axis=0)
    den = ((H * H).sum(axis=0) * (W * W).sum(axis=1)[y]) ** 0.5
    return num / (den + (den == 0))


def collapse_stats(H: Array, labels: Array, W: Array | None = None, *,
                   num_classes: int | None = None) -> CollapseStats:
    """Sufficient statistics (:class:`CollapseStats`) of features ``H`` (d, N) with ``labels``.

    ``K`` is ``W.shape[0]`` when ``W`` is given, else ``num_classes``, else ``labels.max() + 1``.
    With ``W`` the cosine sum of :func:`nc3` is included.  Every class must have a sample.
    The within-class quantities are computed from the explicitly centred residuals
    :math:`h_i - \\mu_{y_i}` (no cancellation).
    """
    H = _as_array(H, "H", 2)
    if W is not None:
        W = _check_W(W, H.shape[0])
        if num_classes is not None and int(num_classes) != W.shape[0]:
            raise ValueError(f"num_classes = {num_classes} disagrees with W's {W.shape[0]} rows")
        num_classes = W.shape[0]
        H, W = _common(H, W)
    y, K = _check_labels(labels, H.shape[1], num_classes, H)
    counts = segment_sum(zeros((H.shape[1],), H) + 1, y, K)
    empty = to_numpy(counts == 0)
    if empty.any():
        raise ValueError(f"labels: class {int(np.argmax(empty))} has no samples")
    means = segment_sum(H, y, K, axis=1) / counts
    R = H - means[:, y]
    within_ss = segment_sum((R * R).sum(axis=0), y, K)
    N = H.shape[1]

    def quad(U: Array) -> Array:
        P = U.T @ R
        return (P * P).sum(axis=1) / N

    cos_sum = _cosines(H, y, W).sum() if W is not None else None
    return CollapseStats(counts=counts, means=means, within_ss=within_ss, quad=quad,
                         cos_sum=cos_sum)


# ------------------------------------------------------------------------ formulas on statistics
def _nc1_stats(st: CollapseStats, rcond: float | None = None) -> Array:
    Mc = st.check_spread()
    U, s, _ = svd(Mc)
    # singular values below the rounding level of the centring (which scales with the
    # uncentred means, e.g. a large common offset) are noise: Mbar has rank <= K - 1 exactly
    scale = max(float(s[0]), float(((st.means * st.means).sum(axis=0) ** 0.5).max()))
    tol = (max(st.d, st.K) * eps(Mc) if rcond is None else rcond) * scale
    r = int((to_numpy(s) > tol).sum())
    U, s = U[:, :r], s[:r]
    # Sigma_B = U diag(s^2/K) U^T  =>  tr(Sigma_W Sigma_B^+)/K = sum_j u_j^T Sigma_W u_j / s_j^2
    return (st.quad(U) / (s * s)).sum()


def _nc1_trace_ratio_stats(st: CollapseStats) -> Array:
    Mc = st.check_spread()
    return (st.within_ss.sum() / st.N) / ((Mc * Mc).sum() / st.K)


def _nc1_cdnv_stats(st: CollapseStats) -> Array:
    Mc = st.check_spread()
    K = st.K
    var = st.within_ss / st.counts
    G = Mc.T @ Mc
    g = G.diagonal()
    D = g[:, None] + g[None, :] - 2 * G  # ||mu_k - mu_j||^2 (centred: no large cancellation)
    D = D * (D > 0)  # rounding can make a coinciding pair slightly negative
    V = var[:, None] + var[None, :]
    # the identity keeps the diagonal finite (it contributes 2 var_k, removed again below)
    denom = 2 * D + _eye_like(K, D)
    if is_torch(D):
        ratios = V / denom
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = V / denom
    return (ratios.sum() - 2 * var.sum()) / (K * (K - 1))


def _eye_like(K: int, like: Array) -> Array:
    if is_torch(like):
        import torch

        return torch.eye(K, dtype=like.dtype, device=like.device)
    return np.eye(K, dtype=like.dtype)


def _gram_distance(X: Array, target: Array, name: str) -> Array:
    G = X @ X.T
    nG = _fro(G)
    if float(nG) == 0.0:
        raise ValueError(f"{name} is zero; its normalised Gram is undefined")
    T = _like(target, G)
    nT = _fro(T)
    if float(nT) == 0.0:
        raise ValueError("target_gram is zero; its normalisation is undefined")
    return _fro(G / nG - T / nT)


def _stack_rows(W: Array | None, M: Array | None) -> Array:
    if W is None:
        return M.T
    if M is None:
        return W
    if is_torch(W):
        import torch

        return torch.cat([W, M.T], dim=0)
    return np.concatenate([W, M.T], axis=0)


def _nc2_means_stats(st: CollapseStats) -> Array:
    Mc = st.check_spread()
    return _gram_distance(Mc.T, etf_gram(st.K), "the centred class means")


def _nc2_classifier_stats(st: CollapseStats, W: Array) -> Array:
    return _gram_distance(W, etf_gram(W.shape[0]), "W")


def _nc3_stats(st: CollapseStats) -> Array:
    if st.cos_sum is None:
        raise ValueError("nc3 needs the cosine sum: form the statistics with W")
    return 1 - st.cos_sum / st.N


def _nc3_duality_stats(st: CollapseStats, W: Array) -> Array:
    Mc = st.check_spread()
    nW = _fro(W)
    if float(nW) == 0.0:
        raise ValueError("W is zero; nc3_duality is undefined")
    return _fro(W / nW - Mc.T / _fro(Mc))


def _gufm_distance_stats(st: CollapseStats, W: Array, ref_gram: Array) -> Array:
    K = st.K
    if tuple(ref_gram.shape) != (2 * K, 2 * K):
        raise ValueError(f"reference Gram must have shape (2K, 2K) = ({2 * K}, {2 * K}), got "
                         f"{tuple(ref_gram.shape)}")
    return _gram_distance(_stack_rows(W, st.means), ref_gram, "[W; class means^T]")


# ------------------------------------------------------------------------------ public functions
def nc1(H: Array, labels: Array, *, num_classes: int | None = None,
        rcond: float | None = None) -> Any:
    r"""NC1 of Papyan, Han & Donoho (2020): :math:`\mathrm{tr}(\Sigma_W \Sigma_B^{+})/K`.

    Parameters
    ----------
    H : array (d, N)
        Features as columns.
    labels : array of int (N,)
    num_classes : int, optional
        K (default ``labels.max() + 1``); every class needs a sample.
    rcond : float, optional
        Singular values of :math:`\bar M` below ``rcond * max(s_max, max_k ||mu_k||)`` are
        dropped from the pseudo-inverse (default ``max(d, K) * eps``: the rounding level of
        centring the means, so a large common offset does not create spurious directions).

    Returns
    -------
    float or 0-d tensor
        :math:`\frac1K\mathrm{tr}(\Sigma_W\Sigma_B^{+})` with :math:`\Sigma_B = \bar M\bar M^\top/K`
        (1/K class weighting, sample global mean).  Computed as
        :math:`\sum_j u_j^\top\Sigma_W u_j / s_j^2` from the SVD :math:`\bar M = U S V^\top`,
        never forming a ``d x d`` matrix.  0 under exact collapse; invariant to rotation,
        translation and scaling of ``H``.
    """
    return _out(_nc1_stats(collapse_stats(H, labels, num_classes=num_classes), rcond), H)


def nc1_trace_ratio(H: Array, labels: Array, *, num_classes: int | None = None) -> Any:
    r"""Trace-ratio NC1: :math:`\mathrm{tr}(\Sigma_W)/\mathrm{tr}(\Sigma_B)`.

    :math:`\mathrm{tr}\,\Sigma_W = \frac1N\sum_i\lVert h_i - \mu_{y_i}\rVert^2`,
    :math:`\mathrm{tr}\,\Sigma_B = \frac1K\sum_k\lVert\mu_k - \mu_G\rVert^2` (sample global mean).
    No :math:`1/K` in front.  Invariant to rotation, translation and scaling of ``H``.
    """
    return _out(_nc1_trace_ratio_stats(collapse_stats(H, labels, num_classes=num_classes)), H)


def nc1_cdnv(H: Array, labels: Array, *, num_classes: int | None = None) -> Any:
    r"""Class-distance normalised variance (Galanti et al. 2022), averaged over class pairs.

    .. math::

        \mathrm{CDNV} = \binom K2^{-1}\sum_{k<j}
        \frac{\sigma_k^2 + \sigma_j^2}{2\lVert\mu_k - \mu_j\rVert^2},\qquad
        \sigma_k^2 = \frac1{n_k}\sum_{y_i = k}\lVert h_i - \mu_k\rVert^2 .

    A single-sample class has :math:`\sigma_k^2 = 0`; a pair of coinciding means gives ``inf``.
    Invariant to rotation, translation and scaling of ``H``.
    """
    return _out(_nc1_cdnv_stats(collapse_stats(H, labels, num_classes=num_classes)), H)


def nc2_gram(W: Array | None, M: Array | None, target_gram: Array) -> Any:
    r"""Distance between the normalised Gram of :math:`X = [W; M^\top]` and a target Gram.

    .. math::

        \Big\lVert \frac{XX^\top}{\lVert XX^\top\rVert_F}
        - \frac{T}{\lVert T\rVert_F}\Big\rVert_F \in [0, 2]

    Parameters
    ----------
    W : array (K, d) or None
        Rows stacked first.
    M : array (d, K) or None
        Columns (e.g. class means) stacked below as rows.
    target_gram : array
        ``T``, square of the size of ``X X^T`` (normalised here, so any scale).

    Invariant to rotations :math:`X \mapsto XQ` and to scaling ``X``.  This single formula
    is :func:`nc2_classifier` (``M=None``, ``T = E_K``), :func:`nc2_means` (``W=None``) and
    :func:`gufm_distance` (both, ``T`` the GUFM optimum's Gram).
    """
    if W is None and M is None:
        raise ValueError("give W or M (or both)")
    like = None
    if W is not None:
        W = _as_array(W, "W", 2)
        like = W
    if M is not None:
        M = _as_array(M, "M", 2, like=like)
        like = M if like is None else like
        if W is not None and tuple(M.shape) != (W.shape[1], W.shape[0]):
            raise ValueError(f"M must have shape (d, K) = ({W.shape[1]}, {W.shape[0]}), got "
                             f"{tuple(M.shape)}")
    X = _stack_rows(W, M)
    T = _as_array(target_gram, "target_gram", 2, like=X)
    if tuple(T.shape) != (X.shape[0], X.shape[0]):
        raise ValueError(f"target_gram must have shape ({X.shape[0]}, {X.shape[0]}), got "
                         f"{tuple(T.shape)}")
    return _out(_gram_distance(X, T, "W" if M is None else "M" if W is None else "[W; M^T]"),
                like)


def nc2_classifier(W: Array) -> Any:
    r"""NC2 on the classifier (the GUFM paper's NC2): :math:`\lVert WW^\top/\lVert WW^\top\rVert_F
    - E_K\rVert_F`.

    ``W`` is ``(K, d)``; :math:`E_K = (I - \mathbf 1\mathbf 1^\top/K)/\sqrt{K-1}` has unit
    Frobenius norm.  0 iff the rows of ``W`` form a simplex ETF (any scale, any rotation).
    No centring of ``W``.  For MSE the GUFM optimum is an orthogonal frame, not an ETF: compare
    with ``nc2_gram(W, None, np.eye(K))`` or :func:`gufm_distance` instead.
    """
    W = _check_W(W, None)
    return _out(_nc2_classifier_stats(None, W), W)  # type: ignore[arg-type]


def nc2_means(H: Array, labels: Array, *, num_classes: int | None = None) -> Any:
    r"""NC2 on the centred class means: :math:`\lVert \bar M^\top\bar M/\lVert\bar M^\top\bar
    M\rVert_F - E_K\rVert_F`.

    :math:`\bar M = [\mu_k - \mu_G]` with the sample global mean.  Invariant to rotation,
    translation and scaling of ``H``.
    """
    return _out(_nc2_means_stats(collapse_stats(H, labels, num_classes=num_classes)), H)


def nc3(H: Array, labels: Array, W: Array, b: Array | None = None) -> Any:
    r"""NC3 as in the GUFM paper: :math:`1 - \frac1N\sum_i \cos(h_i, w_{y_i})`.

    Raw (uncentred) features and classifier rows; :math:`\cos(x, 0) = 0`.  Range
    ``[0, 2]``; 0 iff every feature points along its class's classifier row.  Classes may be
    empty here.  ``b`` is ignored.
    """
    H = _as_array(H, "H", 2)
    W = _check_W(W, H.shape[0])
    H, W = _common(H, W)
    y, K = _check_labels(labels, H.shape[1], W.shape[0], H)
    _check_b(b, K)
    return _out(1 - _cosines(H, y, W).mean(), H)


def nc3_duality(H: Array, labels: Array, W: Array, b: Array | None = None) -> Any:
    r"""NC3 of Papyan et al. (self-duality): :math:`\lVert W/\lVert W\rVert_F - \bar M^\top/
    \lVert\bar M\rVert_F\rVert_F`.

    ``W`` is ``(K, d)``, :math:`\bar M^\top` ``(K, d)`` the centred class means as rows.  Range
    ``[0, 2]``.  Invariant to scaling ``W`` and ``H`` separately and translating ``H``.
    (For MSE optima ``W`` is not centred, so this is not 0 there; use :func:`nc3`.)
    """
    st = collapse_stats(H, labels, W)
    _check_b(b, st.K)
    return _out(_nc3_duality_stats(st, _like(W, st.means)), st.means)


# ----------------------------------------------------------------------------- GUFM reference
def reference_gram(reference: Any) -> np.ndarray:
    r"""The Gram :math:`XX^\top` of :math:`X = [W; \bar H^\top]` of a GUFM solution, ``(2K, 2K)``.

    ``reference`` is a :class:`gufm.SolveResult` (anything with ``.W`` (K, d) and
    ``.class_features`` (d, K)) or already a square Gram matrix (returned as float64 numpy).
    """
    if hasattr(reference, "W") and hasattr(reference, "class_features"):
        W = np.asarray(to_numpy(reference.W), dtype=float)
        Hb = np.asarray(to_numpy(reference.class_features), dtype=float)
        if Hb.shape[1] != W.shape[0]:
            raise ValueError(
                f"reference: class_features has {Hb.shape[1]} groups but W has {W.shape[0]} "
                "classes (soft-label references are not supported)"
            )
        X = np.concatenate([W, Hb.T], axis=0)
        return X @ X.T
    G = np.asarray(to_numpy(reference), dtype=float)
    if G.ndim != 2 or G.shape[0] != G.shape[1]:
        raise ValueError(f"reference must be a SolveResult or a square Gram, got shape {G.shape}")
    if not np.all(np.isfinite(G)):
        raise ValueError("reference contains NaN or inf")
    return G


@functools.lru_cache(maxsize=32)
def _solved_gram(counts: tuple[int, ...], dim: int, loss: str, lam_W: float,
                 lam_b: float | None, features: str, radius: float | None) -> np.ndarray:

    prob = GUFM(counts=np.asarray(counts), dim=dim, loss=loss, lam_W=lam_W, lam_b=lam_b,
                     features=features, radius=radius)
    return reference_gram(solve(prob, method="auto"))


def _resolve_reference(counts: Array, d: int, *, loss: str, lam: float | None,
                       lam_b: float | None, features: str, radius: float | None,
                       problem: Any, reference: Any) -> np.ndarray:
    K = int(counts.shape[0])
    if reference is not None:
        G = reference_gram(reference)
    elif problem is not None:

        if problem.K != K or problem.dim != d:
            raise ValueError(f"problem has K = {problem.K}, dim = {problem.dim}; the features "
                             f"have K = {K}, d = {d}")
        G = reference_gram(solve(problem, method="auto"))
    elif lam is not None:
        c = tuple(int(round(float(v))) for v in to_numpy(counts))
        G = _solved_gram(c, int(d), loss, float(lam), None if lam_b is None else float(lam_b),
                         features, None if radius is None else float(radius))
    else:
        raise ValueError("gufm_distance needs lam= (to solve the GUFM), problem= or reference=")
    if G.shape != (2 * K, 2 * K):
        raise ValueError(f"reference Gram must have shape (2K, 2K) = ({2 * K}, {2 * K}), got "
                         f"{G.shape}")
    return G


def gufm_distance(H_or_class_means: Array, labels: Array | None, W: Array,
                  b: Array | None = None, *, loss: str = "ce", lam: float | None = None,
                  lam_b: float | None = None, features: str = "layernorm",
                  radius: float | None = None, counts: Array | None = None,
                  problem: Any = None, reference: Any = None) -> Any:
    r"""Rotation-invariant distance to a GUFM optimum: normalised Grams of :math:`[W; \bar H^\top]`.

    .. math::

        \Big\lVert \frac{XX^\top}{\lVert XX^\top\rVert_F}
        - \frac{X^*X^{*\top}}{\lVert X^*X^{*\top}\rVert_F}\Big\rVert_F,\qquad
        X = \begin{bmatrix} W \\ \bar H^\top\end{bmatrix} \in R^{2K\times d}

    with :math:`\bar H = [\mu_1, \dots, \mu_K]` the **uncentred** class means (GUFM optima are
    not centred for imbalanced classes or MSE) and :math:`X^*` the same for a GUFM optimum
    with the same class counts, dimension, loss and :math:`\lambda`'s (``features="layernorm"``,
    radius :math:`\sqrt d` by default), solved by ``gufm.solve(..., method="auto")`` and cached.
    Invariant to rotations and to scaling ``W`` and ``H`` jointly; 0 at the optimum.  When the
    optimal set holds several Grams this is the distance to the one the solver returns (an upper
    bound on the distance to the set).  ``b`` is ignored.

    Parameters
    ----------
    H_or_class_means : array
        Features ``(d, N)`` with ``labels``, or class means ``(d, K)`` with ``labels=None``.
    labels : array of int (N,) or None
    W : array (K, d)
    loss : {"ce", "mse"}
    lam, lam_b : float
        :math:`\lambda_W` and :math:`\lambda_b` (``None``: no bias) of the reference problem.
    features, radius
        Feature model of the reference problem.
    counts : array of int (K,), optional
        Class counts when class means are given (default: balanced).
    problem : gufm.GUFM, optional
        Solve this problem instead of building one.
    reference : SolveResult or array (2K, 2K), optional
        A precomputed solution or Gram: no solve.
    """
    if labels is None:
        Hb = _as_array(H_or_class_means, "H_or_class_means", 2)
        Wc = _check_W(W, Hb.shape[0])
        Hb, Wc = _common(Hb, Wc)
        K = Wc.shape[0]
        if Hb.shape[1] != K:
            raise ValueError(f"class means must have shape (d, K) = ({Hb.shape[0]}, {K}), got "
                             f"{tuple(Hb.shape)}")
        if counts is None:
            cnt = np.ones(K)
        else:
            cnt = np.asarray(to_numpy(counts), dtype=float)
            if cnt.shape != (K,) or np.any(cnt <= 0):
                raise ValueError(f"counts must be {K} positive integers, got {cnt}")
        st = CollapseStats(counts=_like(cnt, Hb), means=Hb, within_ss=_like(np.zeros(K), Hb),
                           quad=lambda U: U.sum(axis=0) * 0)
    else:
        st = collapse_stats(H_or_class_means, labels, W)
        Wc = _like(W, st.means)
    _check_b(b, st.K)
    G = _resolve_reference(st.counts, st.d, loss=loss, lam=lam, lam_b=lam_b, features=features,
                           radius=radius, problem=problem, reference=reference)
    return _out(_gufm_distance_stats(st, Wc, _like(G, st.means)), st.means)


# ------------------------------------------------------------------------------------ registry
@dataclass(frozen=True)
class Metric:
    """A registered metric: the public function, a one-line description, and its formula on
    :class:`CollapseStats` (used by :func:`collapse_report` and the streaming accumulator).

    ``from_stats(st, W)`` returns the value from :class:`CollapseStats` ``st`` (``W`` may be
    None when ``needs_W`` is False); for ``gufm_distance`` it is ``from_stats(st, W, G)`` with
    ``G`` the reference Gram.  Calling a ``Metric`` calls ``func``.
    """

    name: str
    func: Callable[..., Any]
    description: str
    needs_W: bool
    from_stats: Callable[..., Array] = field(repr=False)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.func(*args, **kwargs)


METRICS: dict[str, Metric] = {
    m.name: m for m in [
        Metric("nc1", nc1, "tr(Sigma_W Sigma_B^+)/K (Papyan et al.; 1/K-weighted Sigma_B)",
               False, lambda st, W: _nc1_stats(st)),
        Metric("nc1_trace_ratio", nc1_trace_ratio, "tr(Sigma_W)/tr(Sigma_B)", False,
               lambda st, W: _nc1_trace_ratio_stats(st)),
        Metric("nc1_cdnv", nc1_cdnv,
               "class-distance normalised variance, mean over pairs (Galanti et al.)", False,
               lambda st, W: _nc1_cdnv_stats(st)),
        Metric("nc2_classifier", nc2_classifier, "|| W W^T/||W W^T||_F - E_K ||_F (the paper's NC2)",
               True, lambda st, W: _nc2_classifier_stats(st, W)),
        Metric("nc2_means", nc2_means, "|| Mbar^T Mbar/||.||_F - E_K ||_F on centred class means",
               False, lambda st, W: _nc2_means_stats(st)),
        Metric("nc3", nc3, "1 - mean_i cos(h_i, w_{y_i}) (the paper's NC3)", True,
               lambda st, W: _nc3_stats(st)),
        Metric("nc3_duality", nc3_duality, "|| W/||W||_F - Mbar^T/||Mbar||_F ||_F (Papyan et al.)",
               True, lambda st, W: _nc3_duality_stats(st, W)),
        Metric("gufm_distance", gufm_distance,
               "normalised-Gram distance of [W; class means^T] to a GUFM optimum", True,
               lambda st, W, G: _gufm_distance_stats(st, W, G)),
    ]
}


def report_from_stats(st: CollapseStats, W: Array | None = None, *, as_frame: bool = False,
                      gufm_reference: Any = None, lam: float | None = None, loss: str = "ce",
                      lam_b: float | None = None, features: str = "layernorm") -> Any:
    """Every metric of :data:`METRICS` from statistics (see :func:`collapse_report`).

    Metrics needing ``W`` are left out when ``W`` is None; ``nc3`` also when the statistics
    carry no cosine sum; ``gufm_distance`` unless ``lam`` or ``gufm_reference`` is given.
    ``W`` is converted to the statistics' framework and dtype; outputs follow the statistics.
    """
    like = st.means
    if W is not None:
        W = _check_W(W, st.d)
        if W.shape[0] != st.K:
            raise ValueError(f"W must have K = {st.K} rows, got {W.shape[0]}")
        W = _like(W, like)
    out: dict[str, Any] = {}
    for name, m in METRICS.items():
        if name == "gufm_distance":
            continue
        if m.needs_W and W is None:
            continue
        if name == "nc3" and st.cos_sum is None:
            continue
        out[name] = _out(m.from_stats(st, W), like)
    if W is not None and (lam is not None or gufm_reference is not None):
        G = _resolve_reference(st.counts, st.d, loss=loss, lam=lam, lam_b=lam_b,
                               features=features, radius=None, problem=None,
                               reference=gufm_reference)
        out["gufm_distance"] = _out(_gufm_distance_stats(st, W, _like(G, like)), like)
    if as_frame:
        import pandas as pd

        return pd.DataFrame([{k: float(v) for k, v in out.items()}])
    return out


def collapse_report(H: Array, labels: Array, W: Array, b: Array | None = None, *,
                    as_frame: bool = False, gufm_reference: Any = None, lam: float | None = None,
                    loss: str = "ce", lam_b: float | None = None,
                    features: str = "layernorm") -> Any:
    """All neural-collapse variants of :data:`METRICS` at once (one pass over ``H``).

    Parameters
    ----------
    H : array (d, N)
    labels : array of int (N,)
    W : array (K, d)
    b : array (K,), optional
        Validated, unused.
    as_frame : bool
        Return a one-row ``pandas.DataFrame`` (python floats) instead of a dict.
    gufm_reference : SolveResult or array (2K, 2K), optional
        Precomputed GUFM optimum (or its Gram) for ``gufm_distance``.
    lam, loss, lam_b, features
        Solve the GUFM for ``gufm_distance`` (cached) when no reference is given.

    Returns
    -------
    dict or DataFrame
        Keys ``nc1, nc1_trace_ratio, nc1_cdnv, nc2_classifier, nc2_means, nc3, nc3_duality`` and
        ``gufm_distance`` when ``lam`` or ``gufm_reference`` is given.
    """
    st = collapse_stats(H, labels, W)
    _check_b(b, st.K)
    return report_from_stats(st, _like(W, st.means), as_frame=as_frame,
                             gufm_reference=gufm_reference, lam=lam, loss=loss, lam_b=lam_b,
                             features=features)
