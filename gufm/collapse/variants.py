r"""The neural-collapse variants as functions of features, labels and classifier.

Each function states its formula and the paper it comes from; all evaluate one formula of
:mod:`gufm.collapse.formulas` on the statistics of :func:`gufm.collapse.stats.collapse_stats`
(see docs/metrics.md for the derivations and the conventions).

Conventions: ``H`` is ``(d, N)`` (**columns are samples**), ``labels`` ``(N,)`` integers in
``0..K-1``, ``W`` ``(K, d)``, ``b`` ``(K,)``; :math:`\mu_k` are the class means,
:math:`\bar M = [\mu_1 - \mu_G, \dots, \mu_K - \mu_G]` ``(d, K)`` the centred means and
:math:`E_K = (I - \mathbf 1\mathbf 1^\top/K)/\sqrt{K-1}` the normalised simplex-ETF Gram.
``center`` chooses the global mean :math:`\mu_G`: ``"samples"`` (default) the sample mean
:math:`\frac1N\sum_i h_i`, ``"classes"`` the mean of the class means :math:`\frac1K\sum_k\mu_k`
(rhubarbwu/neural-collapse's default); they coincide for balanced classes.  numpy input gives a
python float, torch input a 0-d tensor of its dtype on its device.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from gufm.backend import Array, convert, is_torch
from gufm.collapse import formulas as F
from gufm.collapse._checks import as_float, check_b, check_center, check_W, labels_tensor, out
from gufm.collapse.stats import collapse_stats, cosine_sum

__all__ = ["nc1", "nc1_trace_ratio", "nc1_cdnv", "nc2_classifier", "nc2_means", "nc2_equinorm",
           "gnc2_dist", "gnc2_log", "nc3", "nc3_duality", "nc3_self_duality", "unc3", "nc4",
           "nc5"]


def _eval(fn: Callable[..., Array], H: Array, labels: Array, W: Array | None = None,
          b: Array | None = None, *, num_classes: int | None = None, center: str = "samples",
          ood: Array | None = None, **kw: Any) -> Any:
    check_center(center)
    st = collapse_stats(H, labels, W, b, num_classes=num_classes, ood=ood)
    Wc = None if W is None else convert(check_W(W, st.d), st.means)
    return out(fn(st, Wc, center=center, **kw), as_float(H, "H", 2, check_finite=False))


# ----------------------------------------------------------------------------------- NC1
def nc1(H: Array, labels: Array, *, num_classes: int | None = None, center: str = "samples",
        rcond: float | None = None) -> Any:
    r"""NC1 of Papyan, Han & Donoho (2020, PNAS): :math:`\mathrm{tr}(\Sigma_W\Sigma_B^{+})/K`.

    :math:`\Sigma_W = \frac1N\sum_i (h_i - \mu_{y_i})(h_i - \mu_{y_i})^\top`,
    :math:`\Sigma_B = \frac1K\bar M\bar M^\top` (classes weighted equally).  Computed as
    :math:`\sum_j u_j^\top\Sigma_W u_j/s_j^2` from the SVD :math:`\bar M = USV^\top`, never forming
    a ``d x d`` matrix.  ``rcond``: singular values below ``rcond * max(s_max, max_k ||mu_k||)``
    are dropped (default ``max(d, K) * eps``, the rounding level of the centring).  0 under exact
    collapse; invariant to rotation, translation and scaling of ``H``.

    Examples
    --------
    >>> import numpy as np
    >>> H = np.array([[0., 2., 0., 0.], [0., 0., 4., 6.]])
    >>> round(nc1(H, [0, 0, 1, 1]) * 26, 12)        # (1/2) (2/13) / 2 = 1/26
    1.0
    """
    return _eval(F._nc1, H, labels, num_classes=num_classes, center=center, rcond=rcond)


def nc1_trace_ratio(H: Array, labels: Array, *, num_classes: int | None = None,
                    center: str = "samples") -> Any:
    r"""Trace-ratio NC1 (Tirer, Huang & Niles-Weed 2023, ICML): :math:`\mathrm{tr}\,\Sigma_W /
    \mathrm{tr}\,\Sigma_B`.

    :math:`\mathrm{tr}\,\Sigma_W = \frac1N\sum_i\lVert h_i - \mu_{y_i}\rVert^2`,
    :math:`\mathrm{tr}\,\Sigma_B = \frac1K\sum_k\lVert\mu_k - \mu_G\rVert^2`; no :math:`1/K` in
    front.  Invariant to rotation, translation and scaling of ``H``.

    Examples
    --------
    >>> import numpy as np
    >>> H = np.array([[0., 2., 0., 0.], [0., 0., 4., 6.]])
    >>> round(nc1_trace_ratio(H, [0, 0, 1, 1]) * 13, 12)   # 1 / (13/2)
    2.0
    """
    return _eval(F._nc1_trace_ratio, H, labels, num_classes=num_classes, center=center)


def nc1_cdnv(H: Array, labels: Array, *, num_classes: int | None = None) -> Any:
    r"""Class-distance normalised variance (Galanti, György & Hutter 2022, ICLR), mean over pairs.

    .. math::

        \mathrm{CDNV} = \binom K2^{-1}\sum_{k<j}
        \frac{\sigma_k^2 + \sigma_j^2}{2\lVert\mu_k - \mu_j\rVert^2},\qquad
        \sigma_k^2 = \frac1{n_k}\sum_{y_i = k}\lVert h_i - \mu_k\rVert^2 .

    Only the pairs are summed (relative rounding independent of the feature scale).  A
    single-sample class has :math:`\sigma_k^2 = 0`; a pair of coinciding means gives ``inf``.
    Needs no global mean.  Invariant to rotation, translation and scaling of ``H``.

    Examples
    --------
    >>> import numpy as np
    >>> H = np.array([[0., 2., 0., 0.], [0., 0., 4., 6.]])
    >>> round(nc1_cdnv(H, [0, 0, 1, 1]) * 26, 12)   # (1 + 1) / (2 * 26)
    1.0
    """
    return _eval(F._nc1_cdnv, H, labels, num_classes=num_classes)


# ----------------------------------------------------------------------------------- NC2
def nc2_classifier(W: Array) -> Any:
    r"""NC2 on the classifier (Papyan et al. 2020; the GUFM paper's NC2):
    :math:`\lVert WW^\top/\lVert WW^\top\rVert_F - E_K\rVert_F`.

    0 iff the rows of ``W`` form a simplex ETF (any scale, any rotation); no centring of ``W``.
    For MSE the GUFM optimum is an orthogonal frame, not an ETF: compare with
    ``nc2_gram(W, None, np.eye(K))`` or ``gufm_distance`` instead.

    Examples
    --------
    >>> import numpy as np
    >>> round(nc2_classifier(np.array([[1., 0.], [-1., 0.]])), 12)
    0.0
    """
    W = check_W(W, None)
    return out(F._nc2_classifier(None, W), W)


def nc2_means(H: Array, labels: Array, *, num_classes: int | None = None,
              center: str = "samples") -> Any:
    r"""NC2 on the centred class means (Papyan et al. 2020; Zhu et al. 2021):
    :math:`\lVert\bar M^\top\bar M/\lVert\bar M^\top\bar M\rVert_F - E_K\rVert_F`.

    rhubarbwu's ``simplex_etf_error``.  Invariant to rotation, translation and scaling of ``H``.

    Examples
    --------
    >>> import numpy as np
    >>> round(nc2_means(np.array([[1., 1., 0., 0.], [0., 0., 1., 1.]]), [0, 0, 1, 1]), 12)
    0.0
    """
    return _eval(F._nc2_means, H, labels, num_classes=num_classes, center=center)


def nc2_equinorm(H: Array, labels: Array, *, num_classes: int | None = None,
                 center: str = "samples") -> Any:
    r"""Equinorm NC2 (Papyan et al. 2020): :math:`\mathrm{std}_k\lVert\mu_k - \mu_G\rVert /
    \mathrm{mean}_k\lVert\mu_k - \mu_G\rVert`.

    The standard deviation is the sample one, :math:`\frac1{K-1}\sum_k(x_k - \bar x)^2` under the
    root (as ``torch.std`` in Papyan et al.'s and rhubarbwu's code).  0 iff the centred means
    have equal norms; invariant to rotation, translation and scaling of ``H``.

    Examples
    --------
    >>> import numpy as np
    >>> H = np.array([[0., 0., 3.]])   # centred means -1, -1, 2: std sqrt(1/3), mean 4/3
    >>> round(nc2_equinorm(H, [0, 1, 2]), 4)
    0.433
    """
    return _eval(F._nc2_equinorm, H, labels, num_classes=num_classes, center=center)


def gnc2_dist(H: Array, labels: Array, *, num_classes: int | None = None,
              center: str = "samples") -> Any:
    r"""GNC2, hyperspherical uniformity (Liu et al. 2023, ICLR) with the distance kernel.

    With :math:`u_k = (\mu_k - \mu_G)/\lVert\mu_k - \mu_G\rVert` (a zero vector stays zero), the
    variance over the :math:`\binom K2` pairs of :math:`\lVert u_k - u_j\rVert`:
    :math:`\binom K2^{-1}\sum_{k<j}(\lVert u_k - u_j\rVert - m)^2`, :math:`m` their mean
    (rhubarbwu's ``kernel_stats(M, m_G, dist_kernel)[1]``).  0 iff all pairs are equidistant,
    e.g. a simplex ETF; invariant to rotation, translation and scaling of ``H``.

    Examples
    --------
    >>> import numpy as np
    >>> H = np.array([[1., 0., 0.], [0., 1., 0.], [0., 0., 1.]])   # an ETF after centring
    >>> round(gnc2_dist(H, [0, 1, 2]), 12)
    0.0
    """
    return _eval(F._gnc2_dist, H, labels, num_classes=num_classes, center=center)


def gnc2_log(H: Array, labels: Array, *, num_classes: int | None = None,
             center: str = "samples") -> Any:
    r"""GNC2, hyperspherical uniformity (Liu et al. 2023, ICLR) with the logarithmic kernel.

    The variance over pairs of :math:`\log(1/\lVert u_k - u_j\rVert)` (:math:`u_k` as in
    :func:`gnc2_dist`; rhubarbwu's ``kernel_stats(M, m_G, log_kernel)[1]``); ``inf`` when two
    normalised means coincide.  0 for a simplex ETF.

    Examples
    --------
    >>> import numpy as np
    >>> H = np.array([[1., 0., 0.], [0., 1., 0.], [0., 0., 1.]])
    >>> round(gnc2_log(H, [0, 1, 2]), 12)
    0.0
    """
    return _eval(F._gnc2_log, H, labels, num_classes=num_classes, center=center)


# ----------------------------------------------------------------------------------- NC3
def nc3(H: Array, labels: Array, W: Array, b: Array | None = None) -> Any:
    r"""NC3 as in the GUFM paper: :math:`1 - \frac1N\sum_i \cos(h_i, w_{y_i})`.

    Raw (uncentred) features and classifier rows; :math:`\cos(x, 0) = 0`.  Range ``[0, 2]``; 0
    iff every feature points along its class's classifier row.  Classes may be empty here.
    ``b`` is validated and not used.

    Examples
    --------
    >>> import numpy as np
    >>> H = np.array([[0., 2., 0., 0.], [0., 0., 4., 6.]])
    >>> nc3(H, [0, 0, 1, 1], np.eye(2))            # cos: 0, 1, 1, 1
    0.25
    """
    H = as_float(H, "H", 2)
    W = check_W(W, H.shape[0])
    Ht = H if is_torch(H) else torch.as_tensor(H)
    y, K = labels_tensor(labels, H.shape[1], W.shape[0], Ht.device)
    check_b(b, K)
    Wt = torch.as_tensor(W).to(device=Ht.device, dtype=torch.float64)
    Wy = Wt.to(Ht.dtype)
    wn = (Wt * Wt).sum(1) ** 0.5
    total = torch.zeros((), dtype=torch.float64, device=Ht.device)
    for Hb, yb in zip(Ht.T.split(8192), y.split(8192), strict=True):
        total += cosine_sum((Hb * Wy[yb]).sum(1), Hb, wn[yb])
    return out(1 - total / H.shape[1], H)


def nc3_duality(H: Array, labels: Array, W: Array, b: Array | None = None, *,
                center: str = "samples") -> Any:
    r"""NC3 of Papyan et al. (2020): :math:`\lVert W/\lVert W\rVert_F - \bar M^\top/
    \lVert\bar M\rVert_F\rVert_F`.

    Range ``[0, 2]``; invariant to scaling ``W`` and ``H`` separately and translating ``H``.
    (For MSE optima ``W`` is not centred, so this is not 0 there; use :func:`nc3`.)  Named apart
    from :func:`nc3_self_duality`, the peers' "self-duality", which compares ``W Mbar`` with
    :math:`E_K` instead.  ``b`` is validated and not used.

    Examples
    --------
    >>> import numpy as np
    >>> H = np.array([[1., 1., -1., -1.], [0., 0., 0., 0.]])
    >>> round(nc3_duality(H, [0, 0, 1, 1], np.array([[2., 0.], [-2., 0.]])), 12)
    0.0
    """
    return _eval(F._nc3_duality, H, labels, W, b, center=center)


def nc3_self_duality(H: Array, labels: Array, W: Array, b: Array | None = None, *,
                     center: str = "samples") -> Any:
    r"""Self-duality NC3 (Zhu et al. 2021, NeurIPS; Kothapalli 2023):
    :math:`\lVert W\bar M/\lVert W\bar M\rVert_F - E_K\rVert_F`.

    ``W`` ``(K, d)``, :math:`\bar M` ``(d, K)``: entry ``(k, j)`` of the ``K x K`` product is
    :math:`w_k^\top(\mu_j - \mu_G)`.  tding1/Neural-Collapse's ``WH_relation`` and
    rhubarbwu's ``self_duality_error``.  0 iff :math:`W\bar M \propto E_K` (e.g. ``W`` a positive
    multiple of :math:`\bar M^\top`, rotated with ``H``, at a simplex ETF); invariant to scaling
    ``W`` and ``H`` separately.  ``b`` is validated and not used.

    Examples
    --------
    >>> import numpy as np
    >>> H = np.array([[1., 1., -1., -1.], [0., 0., 0., 0.]])
    >>> round(nc3_self_duality(H, [0, 0, 1, 1], np.array([[2., 0.], [-2., 0.]])), 12)
    0.0
    """
    return _eval(F._nc3_self_duality, H, labels, W, b, center=center)


def unc3(H: Array, labels: Array, W: Array, b: Array | None = None, *,
         center: str = "samples") -> Any:
    r"""Uniform duality UNC3 (Wu & Papyan 2024, NeurIPS): the variance over classes of
    :math:`w_k^\top(\mu_k - \mu_G)`.

    The sample variance, :math:`\frac1{K-1}\sum_k(v_k - \bar v)^2` with
    :math:`v_k = w_k^\top(\mu_k - \mu_G)` (``Tensor.var`` in rhubarbwu's
    ``similarities(W, M, m_G).var()``).  Not normalised: it scales with
    :math:`\lVert W\rVert^2\lVert H\rVert^2`.  0 when every class has the same similarity, e.g. at a
    simplex ETF with :math:`w_k \propto \mu_k - \mu_G`.  ``b`` is validated and not used.

    Examples
    --------
    >>> import numpy as np
    >>> H = np.array([[1., 1., -1., -1.], [0., 0., 0., 0.]])
    >>> unc3(H, [0, 0, 1, 1], np.array([[2., 0.], [-1., 0.]]))   # v = (2, 1)
    0.5
    """
    return _eval(F._unc3, H, labels, W, b, center=center)


# ----------------------------------------------------------------------------------- NC4, NC5
def nc4(H: Array, labels: Array, W: Array, b: Array | None = None) -> Any:
    r"""NC4 (Papyan et al. 2020), as a **disagreement** rate (0 at collapse, like the others).

    .. math::

        \frac1N\#\{i : \arg\max_k (w_k^\top h_i + b_k) \ne
        \arg\min_k\lVert h_i - \mu_k\rVert\}

    The classifier's decision (with the bias when ``b`` is given) against the nearest class
    centre; ties go to the lowest index.  rhubarbwu's ``clf_ncc_agreement`` is one minus this, with
    no bias.  Invariant to rotating ``H`` and ``W`` together, and to scaling ``H``.

    Examples
    --------
    >>> import numpy as np
    >>> H = np.array([[0., 2., 0., 0.], [0., 0., 4., 6.]])    # means (1, 0), (0, 5)
    >>> nc4(H, [0, 0, 1, 1], np.array([[1., 0.], [0., 1.]]))  # (0, 0): W says 0 (tie), NCC 0
    0.0
    >>> nc4(H, [0, 0, 1, 1], np.array([[1., 0.], [0., 1.]]), b=np.array([0., 1.]))
    0.25
    """
    return _eval(F._nc4, H, labels, W, b)


def nc5(H: Array, labels: Array, ood: Array, *, num_classes: int | None = None,
        center: str = "samples") -> Any:
    r"""NC5, ID/OOD orthogonality (Ammar et al. 2024, ICLR, "NECO"): with out-of-distribution
    features ``ood`` ``(d, N_ood)`` and their mean :math:`\mu_{OOD}`,

    .. math:: \frac1K\sum_k\,\lvert\cos(\mu_k - \mu_G,\ \mu_{OOD} - \mu_G)\rvert .

    Both are centred at the in-distribution global mean (translation invariant); rhubarbwu's
    ``orthogonality_deviation(M, m_G_ood)`` takes the raw means instead (pass ``M - mG`` and
    ``m_G_ood - mG`` to it to compare).  0 iff the OOD mean is orthogonal to every centred
    class mean; :math:`\cos(0, \cdot) = 0`; an OOD mean equal to :math:`\mu_G` raises.

    Examples
    --------
    >>> import numpy as np
    >>> H = np.array([[1., -1.], [0., 0.]])
    >>> nc5(H, [0, 1], np.array([[0., 0.], [1., 3.]]))       # OOD mean (0, 2): orthogonal
    0.0
    """
    return _eval(F._nc5, H, labels, num_classes=num_classes, center=center, ood=ood)
