r"""Closed-form optima of balanced GUFM instances (docs/closed_forms.md), derived and re-checked in tests.

* **CE, sphere-type features** (``layernorm`` needs :math:`d-1 \ge K-1`, ``sphere``/``ball`` need
  :math:`d \ge K-1`; any bias): simplex-ETF collapse :math:`h_k = \rho m_k`, :math:`w_k = s m_k`,
  :math:`m_k^\top m_j = -1/(K-1)`; the margin is :math:`a s` with :math:`a = \rho K/(K-1)` and

  .. math:: \varphi(s) = \log\big(1 + (K-1)e^{-a s}\big) + \tfrac{\lambda_W K s^2}{2},
            \qquad F^* = \min_{s \ge 0}\varphi(s).

  A bias is zero at the optimum (CE is invariant to a constant logit shift, so a penalised
  bias only costs; an unpenalised one can be taken as zero).
* **MSE, no bias, sphere-type features**: with :math:`r = \min(K, m)` the class features form an
  equal-norm tight frame (an orthogonal frame when :math:`m \ge K`, *not* a simplex ETF),
  :math:`W = \bar H^\top/(K(x + \lambda_W))`, :math:`x = \rho^2/r`, and

  .. math:: F^* = \tfrac12\Big(1 - \tfrac rK \tfrac{x}{x + \lambda_W}\Big).

* **CE, penalty features** (Zhu et al. 2021; any bias; :math:`d \ge K-1`): with n samples per
  class, AM-GM on :math:`\lambda_W K s_w^2/2 + \lambda_H n K s_h^2/2` at fixed product
  :math:`t = s_w s_h` gives

  .. math:: F^* = \min_{t\ge 0} \log\big(1 + (K-1)e^{-tK/(K-1)}\big) + K t\sqrt{\lambda_W\lambda_H n},

  with :math:`s_w^2 = t\sqrt{\lambda_H n/\lambda_W}` and :math:`s_h^2 = t\sqrt{\lambda_W/(\lambda_H n)}`;
  the solution collapses to zero (:math:`t^* = 0`, :math:`F^* = \log K`) when
  :math:`K\sqrt{\lambda_W\lambda_H n} \ge 1`.
"""

from __future__ import annotations

import math
import time

import numpy as np
import scipy.optimize

from gufm.model.geometry import simplex_etf
from gufm.model.problem import GUFM
from gufm.solvers.finish import finish
from gufm.solvers.result import ATOL, RTOL, SolveResult


def _ce_margin_min(K: int, a: float, quad: float, lin: float) -> float:
    """argmin over s >= 0 of log(1 + (K-1) e^{-a s}) + quad s^2 / 2 + lin s."""

    def dphi(s: float) -> float:
        e = (K - 1) * math.exp(-a * s)
        return -a * e / (1.0 + e) + quad * s + lin

    if dphi(0.0) >= 0:
        return 0.0
    hi = 1.0
    while dphi(hi) < 0:
        hi *= 2.0
    return scipy.optimize.brentq(dphi, 0.0, hi, xtol=1e-300, rtol=4 * np.finfo(float).eps,
                                 maxiter=500)


def ce_etf_scale(K: int, rho: float, lam_W: float) -> float:
    """Optimal classifier scale :math:`s^*` of the CE simplex-ETF solution.

    Examples
    --------
    >>> import math
    >>> round(ce_etf_scale(4, math.sqrt(8), 0.01), 5)
    1.40305
    """
    return _ce_margin_min(K, rho * K / (K - 1.0), lam_W * K, 0.0)


def ce_etf_value(K: int, rho: float, lam_W: float) -> float:
    r""":math:`\min_s \varphi(s)` for CE with sphere-type features (module docstring).

    Examples
    --------
    >>> import math
    >>> round(ce_etf_value(4, math.sqrt(8), 0.01), 7)
    0.0543647
    """
    a = rho * K / (K - 1.0)
    s = ce_etf_scale(K, rho, lam_W)
    return math.log1p((K - 1) * math.exp(-a * s)) + lam_W * K * s * s / 2.0


def mse_value(K: int, m: int, rho: float, lam_W: float) -> float:
    r""":math:`\tfrac12(1 - (r/K)\,x/(x+\lambda_W))`, :math:`r = \min(K, m)`, :math:`x = \rho^2/r`.

    Examples
    --------
    >>> import math
    >>> round(mse_value(4, 7, math.sqrt(8), 0.01), 8)      # layernorm, d = 8: m = 7
    0.00248756
    """
    r = min(K, m)
    x = rho**2 / r
    return 0.5 * (1.0 - (r / K) * x / (x + lam_W))


def penalty_ce_scales(K: int, n: float, lam_W: float, lam_H: float) -> tuple[float, float]:
    """Scales ``(s_w, s_h)`` of the penalty-CE ETF solution with ``n`` samples per class.

    Examples
    --------
    >>> [round(s, 5) for s in penalty_ce_scales(4, 10, 0.01, 0.001)]
    [1.8523, 1.8523]
    >>> penalty_ce_scales(4, 10, 1.0, 1.0)       # K sqrt(lam_W lam_H n) >= 1: collapse to zero
    (0.0, 0.0)
    """
    c = K * math.sqrt(lam_W * lam_H * n)
    t = _ce_margin_min(K, K / (K - 1.0), 0.0, c)
    return math.sqrt(t * math.sqrt(lam_H * n / lam_W)), math.sqrt(t * math.sqrt(lam_W / (lam_H * n)))


def penalty_ce_value(K: int, n: float, lam_W: float, lam_H: float) -> float:
    """Optimal value of the balanced penalty-CE UFM (module docstring).

    Examples
    --------
    >>> import math
    >>> round(penalty_ce_value(4, 10, 0.01, 0.001), 6)
    0.167701
    >>> penalty_ce_value(4, 10, 1.0, 1.0) == math.log(4)
    True
    """
    sw, sh = penalty_ce_scales(K, n, lam_W, lam_H)
    t = sw * sh
    return math.log1p((K - 1) * math.exp(-t * K / (K - 1.0))) + K * t * math.sqrt(
        lam_W * lam_H * n
    )


def etf_scales(prob: GUFM) -> tuple[float, float]:
    r"""Scales ``(s_w, s_h)`` of a simplex-ETF starting point for any (imbalanced) instance.

    Radial models: the CE closed form's ``s*`` and :math:`\rho`; penalty: the penalty-CE
    scales at the mean count, floored at ``1e-2`` (a collapsed start cannot move).

    Examples
    --------
    >>> from gufm.model.problem import GUFM
    >>> sw, sh = etf_scales(GUFM(counts=[2, 3], dim=3, radius=1.0, lam_W=0.1))
    >>> sh, sw > 0
    (1.0, True)
    """
    K = prob.K
    if prob.feature_model.penalised:
        sw, sh = penalty_ce_scales(K, float(np.mean(prob.groups.counts)), prob.lam_W, prob.lam_H)
        return max(sw, 1e-2), max(sh, 1e-2)
    return ce_etf_scale(K, prob.rho, prob.lam_W), prob.rho


def tight_frame(K: int, r: int) -> np.ndarray:
    """Unit-norm tight frame of K vectors in R^r (r <= K), shape (r, K): ``U Uᵀ = (K/r) I``.

    ``r == K``: the identity.  Otherwise the real harmonic frame (a constant row when r is
    odd, then cosine/sine pairs of frequencies 1, 2, ...).

    Examples
    --------
    >>> import numpy as np
    >>> U = tight_frame(5, 3)
    >>> bool(np.allclose(U @ U.T, 5 / 3 * np.eye(3))), bool(np.allclose((U**2).sum(0), 1))
    (True, True)
    """
    if r == K:
        return np.eye(K)
    k = np.arange(K)
    rows = []
    if r % 2 == 1:
        rows.append(np.ones(K))
    for j in range(1, r // 2 + 1):
        rows += [math.sqrt(2) * np.cos(2 * math.pi * j * k / K),
                 math.sqrt(2) * np.sin(2 * math.pi * j * k / K)]
    return np.array(rows) / math.sqrt(r)


def closed_form_kind(prob: GUFM) -> tuple[str | None, str]:
    """Which closed form applies: ``("ce_etf" | "mse_frame" | "penalty_ce_etf" | None, why)``.

    Examples
    --------
    >>> closed_form_kind(GUFM(counts=[2, 2, 2], dim=4))
    ('ce_etf', '')
    >>> closed_form_kind(GUFM(counts=[2, 2, 2], dim=2))
    (None, 'no simplex ETF fits: K - 1 = 2 > feature dimension 1')
    """
    if not prob.is_balanced:
        return None, "classes are not balanced (or labels are soft)"
    K = prob.K
    if prob.loss == "ce":
        if prob.feature_model.penalised:
            if prob.dim < K - 1:
                return None, f"penalty CE needs dim >= K - 1 = {K - 1}"
            return "penalty_ce_etf", ""
        if prob.m < K - 1:
            return None, f"no simplex ETF fits: K - 1 = {K - 1} > feature dimension {prob.m}"
        return "ce_etf", ""
    if prob.feature_model.penalised:
        return None, "no closed form for MSE with penalty features"
    if prob.has_bias:
        return None, "no closed form for MSE with a bias"
    return "mse_frame", ""


def closed_form_value(prob: GUFM) -> float:
    """Closed-form optimal value, or ``ValueError`` when none applies.

    Examples
    --------
    >>> round(closed_form_value(GUFM(counts=[5] * 4, dim=8, loss="mse", lam_W=0.01)), 8)
    0.00248756
    """
    kind, why = closed_form_kind(prob)
    if kind == "ce_etf":
        return ce_etf_value(prob.K, prob.rho, prob.lam_W)
    if kind == "mse_frame":
        return mse_value(prob.K, prob.m, prob.rho, prob.lam_W)
    if kind == "penalty_ce_etf":
        return penalty_ce_value(prob.K, float(prob.groups.counts[0]), prob.lam_W, prob.lam_H)
    raise ValueError(f"method='closed_form' does not apply: {why}")


def solve_closed_form(prob: GUFM, *, rtol: float = RTOL, atol: float = ATOL) -> SolveResult:
    """Build the closed-form solution, evaluate it exactly and attach the dual certificate.

    ``value`` is the objective at the constructed point (not the formula), so tests can compare
    it with :func:`closed_form_value`.  ``lower_bound`` is the dual certificate's; when the
    relaxation is not tight (MSE with K > m) the closed form is still optimal but not certified.

    Examples
    --------
    >>> res = solve_closed_form(GUFM(counts=[5] * 4, dim=8, lam_W=0.01))
    >>> res.certified, round(res.value, 7), round(res.info["formula_value"], 7)
    (True, 0.0543647, 0.0543647)
    """
    t0 = time.perf_counter()
    kind, why = closed_form_kind(prob)
    if kind is None:
        raise ValueError(f"method='closed_form' does not apply: {why}")
    K = prob.K
    b = np.zeros(K) if prob.has_bias else None
    if kind == "mse_frame":
        r = min(K, prob.m)
        Hp = prob.rho * tight_frame(K, r)
        x = prob.rho**2 / r
        Wp = Hp.T / (K * (x + prob.lam_W))
    else:
        p = K - 1
        M = simplex_etf(K, p)
        if kind == "ce_etf":
            sw, sh = ce_etf_scale(K, prob.rho, prob.lam_W), prob.rho
        else:
            sw, sh = penalty_ce_scales(K, float(prob.groups.counts[0]), prob.lam_W, prob.lam_H)
        Wp, Hp = sw * M.T, sh * M
    return finish(
        prob, Wp, b, Hp, method="closed_form", t0=t0, stop_reason=f"closed form ({kind})",
        rtol=rtol, atol=atol, check_tol=1e-9,
        info={"kind": kind, "formula_value": closed_form_value(prob)},
    )
