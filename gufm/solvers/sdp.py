r"""The convex relaxation of docs/certificate.md, section 1, solved with cvxpy (SCS by default).

.. math::

    \min_{M \succeq 0,\, b}\; g(Z + b\mathbf 1^\top) + \tfrac{\lambda_W}{2}\operatorname{tr}A
    + \tfrac{\lambda_b}{2}\lVert b\rVert^2 \;[+\tfrac{\lambda_H}{2}\textstyle\sum_g n_g B_{gg}]
    \quad M = \begin{bmatrix}A & Z\\ Z^\top & B\end{bmatrix},\;
    \operatorname{diag}(B) = \rho^2 \ (\le \rho^2 \text{ for ball}).

The solver's own numbers are never reported as they are: the status is checked, the primal
residuals (PSD violation, norm constraint) are recomputed, the **lower bound** comes from the dual
certificate (:func:`gufm.certificate.certify`) evaluated at the SDP's ``Z``, which is valid for
any ``Z`` (weak duality), and the **value** is the objective at a feasible point: ``M`` factored to
rank ``m``, features renormalised, then polished by the gradient solver.
"""

from __future__ import annotations

import math

import numpy as np

from gufm.model.certificate import certify
from gufm.model.problem import GUFM
from gufm.solvers.closed_form import etf_scales
from gufm.solvers.finish import Budget, failed_result, finish
from gufm.solvers.reduced import solve_gradient
from gufm.solvers.result import ATOL, RTOL, SolveResult, check_tolerances


def _build(prob: GUFM):
    import cvxpy as cp

    K, G = prob.K, prob.G
    g = prob.groups
    p, Q = g.weights, g.targets
    M = cp.Variable((K + G, K + G), PSD=True)
    A, Z, B = M[:K, :K], M[:K, K:], M[K:, K:]
    b = cp.Variable(K) if prob.has_bias else None
    L = Z if b is None else Z + cp.reshape(b, (K, 1), order="F") @ np.ones((1, G))
    if prob.loss == "ce":
        loss = cp.sum(cp.multiply(p, cp.log_sum_exp(L, axis=0))) - cp.sum(cp.multiply(L, Q * p))
    else:
        loss = 0.5 * cp.sum(cp.multiply(np.broadcast_to(p, (K, G)), cp.square(L - Q)))
    obj = loss + prob.lam_W / 2 * cp.trace(A)
    if b is not None and prob.lam_b > 0:
        obj = obj + prob.lam_b / 2 * cp.sum_squares(b)
    fterm, cons = prob.feature_model.sdp_terms(cp.diag(B), prob.rho, g.counts, prob.lam_H)
    return cp.Problem(cp.Minimize(obj + fterm), cons), M, b


def _round(prob: GUFM, Mv: np.ndarray, r: int):
    """Factor the PSD part of ``Mv`` to rank ``r``: rows of ``[W; Hbarᵀ]`` in ``R^r``."""
    K = prob.K
    w, V = np.linalg.eigh((Mv + Mv.T) / 2)
    w = np.clip(w, 0, None)
    idx = np.argsort(w)[::-1][:r]
    X = V[:, idx] * np.sqrt(w[idx])
    Wr, Hr = X[:K], X[K:].T.copy()
    return Wr, prob.feature_model.project(Hr, prob.rho)


def solve_sdp(
    prob: GUFM,
    *,
    solver: str = "SCS",
    eps: float = 1e-9,
    max_iters: int = 200000,
    polish: bool = True,
    rtol: float = RTOL,
    atol: float = ATOL,
    verbose: bool = False,
    max_seconds: float | None = None,
) -> SolveResult:
    r"""Solve the convex relaxation, certify its lower bound and round it to a feasible point.

    The relaxation is solved in a rescaled copy (:meth:`gufm.model.problem.GUFM.rescaled`,
    which has the same ``Z = W H``) whose radius makes ``A`` and ``B`` comparable whatever
    :math:`\rho`; bound and value are computed on ``prob`` itself.

    Parameters
    ----------
    prob : GUFM
    solver : str
        A cvxpy conic solver (``"SCS"``; ``"CLARABEL"`` only for tiny problems: it runs out of
        memory on larger PSD cones).
    eps : float
        SCS accuracy (``eps_abs = eps_rel = eps``).
    polish : bool
        Polish the rounded point with the gradient solver (recommended: SCS is first-order).
    max_seconds : float, optional
        Wall-time budget: passed to SCS as its ``time_limit_secs`` and to the polish; a run it
        ends says "time limit" in ``stop_reason``.

    Returns
    -------
    SolveResult
        On solver failure: ``value = nan``, ``lower_bound = -inf``, ``certified = False`` and the
        reason in ``stop_reason`` (never a silent wrong number).

    Examples
    --------
    >>> from gufm.model.problem import GUFM
    >>> res = solve_sdp(GUFM(counts=[2, 1], dim=3, lam_W=0.1))  # doctest: +SKIP
    >>> res.certified  # doctest: +SKIP
    True
    """
    import cvxpy as cp

    rtol, atol = check_tolerances(rtol, atol)
    budget = Budget(max_seconds)
    t0 = budget.t0
    K = prob.K
    norm, rho = prob.rescaled(_balanced_radius(prob))
    problem, M, bvar = _build(norm)
    kwargs: dict = {"verbose": verbose}
    if solver.upper() == "SCS":
        kwargs.update(eps_abs=eps, eps_rel=eps, max_iters=max_iters)
        if max_seconds is not None:
            kwargs["time_limit_secs"] = max(budget.remaining(), 1e-3)
    info: dict = {"solver": solver}
    try:
        problem.solve(solver=solver, **kwargs)
        status = problem.status
    except cp.error.SolverError as exc:
        status = f"solver error: {exc}"
    info["status"] = status
    if status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE) or M.value is None:
        why = f"SDP solver {solver} failed: status {status!r}"
        if budget.expired():
            why = f"{budget.reason()}: {why}"
        return failed_result(prob, method="sdp", t0=t0, stop_reason=why, rtol=rtol, atol=atol,
                             info=info)
    Mv = np.asarray(M.value)
    bv = None if bvar is None else np.asarray(bvar.value, dtype=float)
    eig = np.linalg.eigvalsh((Mv + Mv.T) / 2)
    rank = int((eig > 1e-6 * max(eig[-1], 1e-300)).sum())
    info.update(
        solver_value=float(problem.value),
        psd_violation=float(max(0.0, -eig[0])),
        constraint_violation=_norm_violation(norm, Mv[K:, K:]),
        relaxation_rank=rank,
        rank_limit=prob.m,
        tight=bool(rank <= prob.m),
    )
    Z = Mv[:K, K:]  # the same in both scales
    cert = certify(prob, Z, bv)
    info["sdp_lower_bound"] = cert.lower_bound
    r = min(prob.m, max(rank, 1))
    Wr, Hr = _round(norm, Mv, r)
    Wr, Hr = Wr / rho, Hr * rho  # back to prob's scale
    reason = f"SDP {status}; rounded to rank {r}"
    res = finish(prob, Wr, bv, Hr, method="sdp", t0=t0, stop_reason=reason, rtol=rtol,
                 atol=atol, certificate=cert, info=info)
    info["rounded_value"] = res.value
    if polish and not res.certified and not budget.expired():
        pol = solve_gradient(prob, x0=(res.W, bv, res.class_features), rtol=rtol, atol=atol,
                             restarts=0, max_seconds=None if max_seconds is None
                             else budget.remaining())
        info["polish"] = {"iterations": pol.iterations, "p": pol.info["p"],
                          "escapes": pol.info["escapes"], "stop_reason": pol.stop_reason}
        bounds = (cert.lower_bound,)
        if pol.value <= res.value:
            return finish(prob, pol.W, pol.b, pol.class_features, method="sdp", t0=t0,
                          stop_reason=reason + "; polished by gradient", rtol=rtol,
                          atol=atol, reduced=False, certificate=pol.certificate,
                          bounds=bounds, info=info, iterations=pol.iterations)
        res = finish(prob, Wr, bv, Hr, method="sdp", t0=t0, stop_reason=reason, rtol=rtol,
                     atol=atol, certificate=cert, bounds=(pol.lower_bound,), info=info)
    if budget.expired() and not res.certified:
        res.stop_reason = f"{budget.reason()}: {res.stop_reason}"
    return res


def _balanced_radius(prob: GUFM) -> float:
    r"""A radius at which ``A = W Wᵀ`` and ``B = Hᵀ H`` have comparable scales: with the
    classifier scale :math:`s_w` of the simplex-ETF estimate, :math:`r = \sqrt{\rho s_w}`
    (then :math:`\lVert w\rVert \approx \lVert h\rVert \approx r`)."""
    if not prob.feature_model.radial:
        return math.nan
    sw = etf_scales(prob)[0]
    return math.sqrt(prob.rho * sw) if sw > 0 else prob.rho


def _norm_violation(norm: GUFM, B: np.ndarray) -> float:
    """Violation of the feature norms ``sqrt(B_gg)`` (radius ``norm.rho``) by the SDP."""
    fm = norm.feature_model
    if not fm.radial:
        return 0.0
    n = np.sqrt(np.clip(np.diag(B), 0.0, None)) / norm.rho
    return float(np.max(np.abs(n - 1.0) if fm.equality else np.clip(n - 1.0, 0.0, None)))
