r"""The registry of neural-collapse variants (:data:`METRICS`) and the all-at-once report.

Published code disagrees on what NC1 ... NC5 mean (NC2 on the classifier or on the means, NC1
with or without the :math:`1/K`, which global mean, NC4 as agreement or disagreement).  Every
variant has its own function (:mod:`gufm.collapse.variants`, each stating its formula and paper)
and its entry here; :func:`collapse_report` evaluates all of them from one set of sufficient
statistics (:class:`~gufm.collapse.stats.CollapseStats`), which the streaming
:class:`~gufm.collapse.streaming.CollapseAccumulator` produces by the same algorithm, so in-memory
and streamed reports run the very same formulas.  See docs/metrics.md.

Conventions
-----------
* ``H`` has shape ``(d, N)``: **columns are samples**.  Streaming takes row-major
  ``(batch, d)`` batches instead, as forward hooks and data loaders produce them.
* ``labels`` ``(N,)`` integers in ``0..K-1``; ``W`` ``(K, d)``; ``b`` ``(K,)`` enters only the
  classifier's decision of ``nc4``.
* :math:`\mu_G` is the sample mean by default; ``center="classes"`` takes the mean of the class
  means instead (in every variant that centres: ``nc1``, ``nc1_trace_ratio``, ``nc2_means``,
  ``nc2_equinorm``, ``gnc2_*``, ``nc3_duality``, ``nc3_self_duality``, ``unc3``, ``nc5``).
  :math:`\Sigma_B = \frac1K\sum_k(\mu_k - \mu_G)(\mu_k - \mu_G)^\top` weights classes equally.
* numpy and torch (CPU or GPU) alike; a torch tensor stays on its device.  A numpy input gives
  python floats, a torch input 0-d tensors of its floating dtype.  numpy and torch agree to
  ~1e-13 in float64.
* A single-sample class has within-class variance exactly 0.  A class with no sample, ``K < 2``,
  NaN/inf, labels out of range and wrong shapes raise ``ValueError`` naming the argument; so does
  zero between-class spread in every variant that divides by it.

Invariances (tested): every metric is invariant to a rotation :math:`h \mapsto Qh,\ w \mapsto Qw`
and to relabelling the classes; the ``W``-free ones except ``nc1_cdnv``'s ``inf`` cases to
translating and scaling ``H``; ``gufm_distance`` only to scaling ``W`` and ``H`` jointly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gufm.backend import Array, convert
from gufm.collapse import formulas as F
from gufm.collapse._checks import as_float, check_center, check_W, out
from gufm.collapse.reference import (
    gufm_distance,
    gufm_distance_from_stats,
    nc2_gram,
    reference_gram,
    resolve_reference,
)
from gufm.collapse.stats import CollapseStats, collapse_stats
from gufm.collapse.variants import (
    gnc2_dist,
    gnc2_log,
    nc1,
    nc1_cdnv,
    nc1_trace_ratio,
    nc2_classifier,
    nc2_equinorm,
    nc2_means,
    nc3,
    nc3_duality,
    nc3_self_duality,
    nc4,
    nc5,
    unc3,
)

__all__ = [
    "METRICS", "Metric", "CollapseStats", "collapse_stats", "collapse_report", "report_from_stats",
    "nc1", "nc1_trace_ratio", "nc1_cdnv", "nc2_classifier", "nc2_means", "nc2_equinorm",
    "gnc2_dist", "gnc2_log", "nc2_gram", "nc3", "nc3_duality", "nc3_self_duality", "unc3", "nc4",
    "nc5", "gufm_distance", "reference_gram",
]


@dataclass(frozen=True)
class Metric:
    """A registered metric: the public function, a one-line description, and its formula on
    :class:`CollapseStats` (used by :func:`collapse_report` and the streaming accumulator).

    ``from_stats(st, W, center="samples")`` returns the value from statistics ``st`` (``W`` may be
    None when ``needs_W`` is False); for ``gufm_distance`` it is ``from_stats(st, W, G)`` with
    ``G`` the reference Gram.  ``needs`` names what the statistics must carry beyond the means:
    ``"cos"`` (NC3's cosines), ``"decisions"`` (NC4, a two-pass ``W``), ``"ood"`` (NC5).
    Calling a ``Metric`` calls ``func``.

    Examples
    --------
    >>> METRICS["nc4"].needs, METRICS["nc1"].needs_W
    ('decisions', False)
    """

    name: str
    func: Callable[..., Any]
    description: str
    needs_W: bool
    from_stats: Callable[..., Array] = field(repr=False)
    needs: str | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.func(*args, **kwargs)


def _m(name: str, func: Callable[..., Any], description: str, needs_W: bool,
       formula: Callable[..., Array], needs: str | None = None) -> Metric:
    return Metric(name, func, description, needs_W,
                  lambda st, W, center="samples": formula(st, W, center=center), needs)


METRICS: dict[str, Metric] = {
    m.name: m for m in [
        _m("nc1", nc1, "tr(Sigma_W Sigma_B^+)/K (Papyan et al.; 1/K-weighted Sigma_B)", False,
           F._nc1),
        _m("nc1_trace_ratio", nc1_trace_ratio, "tr(Sigma_W)/tr(Sigma_B) (Tirer et al.)", False,
           F._nc1_trace_ratio),
        _m("nc1_cdnv", nc1_cdnv,
           "class-distance normalised variance, mean over pairs (Galanti et al.)", False,
           F._nc1_cdnv),
        _m("nc2_classifier", nc2_classifier, "|| W W^T/||W W^T||_F - E_K ||_F (the paper's NC2)",
           True, F._nc2_classifier),
        _m("nc2_means", nc2_means, "|| Mbar^T Mbar/||.||_F - E_K ||_F on centred class means",
           False, F._nc2_means),
        _m("nc2_equinorm", nc2_equinorm, "std/mean of the norms of the centred class means",
           False, F._nc2_equinorm),
        _m("gnc2_dist", gnc2_dist, "variance over pairs of distances of normalised centred means "
           "(Liu et al.)", False, F._gnc2_dist),
        _m("gnc2_log", gnc2_log, "variance over pairs of log(1/distance) of normalised centred "
           "means (Liu et al.)", False, F._gnc2_log),
        _m("nc3", nc3, "1 - mean_i cos(h_i, w_{y_i}) (the paper's NC3)", True, F._nc3, "cos"),
        _m("nc3_duality", nc3_duality, "|| W/||W||_F - Mbar^T/||Mbar||_F ||_F (Papyan et al.)",
           True, F._nc3_duality),
        _m("nc3_self_duality", nc3_self_duality, "|| W Mbar/||W Mbar||_F - E_K ||_F (Zhu et al.; "
           "self_duality_error, WH_relation)", True, F._nc3_self_duality),
        _m("unc3", unc3, "variance over classes of w_k . (mu_k - mu_G) (Wu & Papyan)", True,
           F._unc3),
        _m("nc4", nc4, "rate of disagreement of argmax(W h + b) with the nearest class centre",
           True, F._nc4, "decisions"),
        _m("nc5", nc5, "mean_k |cos(mu_k - mu_G, mu_OOD - mu_G)| (Ammar et al.)", False, F._nc5,
           "ood"),
        Metric("gufm_distance", gufm_distance,
               "normalised-Gram distance of [W; class means^T] to a GUFM optimum", True,
               lambda st, W, G: gufm_distance_from_stats(st, W, G)),
    ]
}

_CARRIED = {"cos": "cos_sum", "decisions": "disagree", "ood": "ood_sum"}


def report_from_stats(st: CollapseStats, W: Array | None = None, *, center: str = "samples",
                      as_frame: bool = False, gufm_reference: Any = None,
                      lam: float | None = None, loss: str = "ce", lam_b: float | None = None,
                      features: str = "layernorm", like: Array | None = None) -> Any:
    """Every metric of :data:`METRICS` from statistics (see :func:`collapse_report`).

    Metrics needing ``W`` are left out when ``W`` is None; ``nc3``, ``nc4`` and ``nc5`` also when
    the statistics carry no cosine sum, decision count or OOD sum; ``gufm_distance`` unless
    ``lam`` or ``gufm_reference`` is given.  ``W`` is converted to the statistics' framework and
    dtype; outputs follow ``like`` (default: the statistics).

    Examples
    --------
    >>> import numpy as np
    >>> st = collapse_stats(np.array([[0., 2., 0., 0.], [0., 0., 4., 6.]]), [0, 0, 1, 1])
    >>> sorted(report_from_stats(st))[:3]
    ['gnc2_dist', 'gnc2_log', 'nc1']
    """
    check_center(center)
    ref = st.means
    like = ref if like is None else like
    if W is not None:
        W = check_W(W, st.d)
        if W.shape[0] != st.K:
            raise ValueError(f"W must have K = {st.K} rows, got {W.shape[0]}")
        W = convert(W, ref)
    res: dict[str, Any] = {}
    for name, m in METRICS.items():
        if name == "gufm_distance" or (m.needs_W and W is None):
            continue
        if m.needs is not None and getattr(st, _CARRIED[m.needs]) is None:
            continue
        res[name] = out(m.from_stats(st, W, center=center), like)
    if W is not None and (lam is not None or gufm_reference is not None):
        G = resolve_reference(st.counts, st.d, loss=loss, lam=lam, lam_b=lam_b,
                              features=features, reference=gufm_reference)
        res["gufm_distance"] = out(gufm_distance_from_stats(st, W, G), like)
    if as_frame:
        import pandas as pd

        return pd.DataFrame([{k: float(v) for k, v in res.items()}])
    return res


def collapse_report(H: Array, labels: Array, W: Array, b: Array | None = None, *,
                    ood: Array | None = None, center: str = "samples", as_frame: bool = False,
                    gufm_reference: Any = None, lam: float | None = None, loss: str = "ce",
                    lam_b: float | None = None, features: str = "layernorm") -> Any:
    """All neural-collapse variants of :data:`METRICS` at once (two reads of ``H``).

    The statistics come from the same blockwise two-pass algorithm as the streamed report
    (:func:`~gufm.collapse.stats.collapse_stats`: cost O(NdK), no ``N x d`` temporary, on
    ``H``'s device).

    Parameters
    ----------
    H : array (d, N)
    labels : array of int (N,)
    W : array (K, d)
    b : array (K,), optional
        Bias of the classifier's decision in ``nc4``.
    ood : array (d, N_ood), optional
        Out-of-distribution features: adds ``nc5``.
    center : {"samples", "classes"}
        Global mean of the centring variants: the sample mean (default) or the mean of the
        class means.
    as_frame : bool
        Return a one-row ``pandas.DataFrame`` (python floats) instead of a dict.
    gufm_reference : SolveResult or array (2K, 2K), optional
        Precomputed GUFM optimum (or its Gram) for ``gufm_distance``.
    lam, loss, lam_b, features
        Solve the GUFM for ``gufm_distance`` (cached) when no reference is given.

    Returns
    -------
    dict or DataFrame
        Keys in the order of :data:`METRICS`; ``nc5`` only with ``ood``, ``gufm_distance`` only
        with ``lam`` or ``gufm_reference``.

    Examples
    --------
    >>> import numpy as np
    >>> H = np.array([[0., 2., 0., 0.], [0., 0., 4., 6.]])
    >>> rep = collapse_report(H, [0, 0, 1, 1], np.eye(2))
    >>> round(rep["nc1"] * 26, 12), rep["nc3"], rep["nc4"]
    (1.0, 0.25, 0.0)
    """
    st = collapse_stats(H, labels, W, b, ood=ood)
    like = as_float(H, "H", 2, check_finite=False)
    return report_from_stats(st, W, center=center, as_frame=as_frame,
                             gufm_reference=gufm_reference, lam=lam, loss=loss, lam_b=lam_b,
                             features=features, like=like)
