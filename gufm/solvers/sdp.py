r"""The convex relaxation of spec section 4, solved with cvxpy (SCS by default).

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
import time

import numpy as np

from gufm.model.certificate import certify
from gufm.model.problem import GUFM
from gufm.solvers.result import ATOL, RTOL, SolveResult


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
    cons = []
    if prob.features == "penalty":
        obj = obj + prob.lam_H / 2 * cp.sum(cp.multiply(g.counts.astype(float), cp.diag(B)))
    elif prob.features == "ball":
        cons.append(cp.diag(B) <= prob.rho**2)
    else:
        cons.append(cp.diag(B) == prob.rho**2)
    return cp.Problem(cp.Minimize(obj), cons), M, b


def _round(prob: GUFM, Mv: np.ndarray, r: int):
    """Factor the PSD part of ``Mv`` to rank ``r``: rows of ``[W; Hbarᵀ]`` in ``R^r``."""
    K = prob.K
    w, V = np.linalg.eigh((Mv + Mv.T) / 2)
    w = np.clip(w, 0, None)
    idx = np.argsort(w)[::-1][:r]
    X = V[:, idx] * np.sqrt(w[idx])
    Wr, Hr = X[:K], X[K:].T.copy()
    if prob.features in ("layernorm", "sphere"):
        n = np.linalg.norm(Hr, axis=0)
        n[n == 0] = 1.0
        Hr *= prob.rho / n
    elif prob.features == "ball":
        n = np.linalg.norm(Hr, axis=0)
        Hr *= np.minimum(1.0, prob.rho / np.maximum(n, 1e-300))
    return Wr, Hr


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
) -> SolveResult:
    """Solve the convex relaxation, certify its lower bound and round it to a feasible point.

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

    Returns
    -------
    SolveResult
        On solver failure: ``value = nan``, ``lower_bound = -inf``, ``certified = False`` and the
        reason in ``stop_reason`` (never a silent wrong number).
    """
    import cvxpy as cp

    t0 = time.perf_counter()
    K, G, d = prob.K, prob.G, prob.dim
    problem, M, bvar = _build(prob)
    kwargs = {"verbose": verbose}
    if solver.upper() == "SCS":
        kwargs.update(eps_abs=eps, eps_rel=eps, max_iters=max_iters)
    info: dict = {"solver": solver}
    try:
        problem.solve(solver=solver, **kwargs)
        status = problem.status
    except cp.error.SolverError as exc:
        status = f"solver error: {exc}"
    info["status"] = status
    if status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE) or M.value is None:
        return SolveResult(
            problem=prob, value=math.nan, lower_bound=-math.inf, W=np.full((K, d), np.nan),
            b=None, class_features=np.full((d, G), np.nan), method="sdp",
            seconds=time.perf_counter() - t0,
            stop_reason=f"SDP solver {solver} failed: status {status!r}", info=info,
            rtol=rtol, atol=atol,
        )
    Mv = np.asarray(M.value)
    bv = None if bvar is None else np.asarray(bvar.value, dtype=float)
    B = Mv[K:, K:]
    eig = np.linalg.eigvalsh((Mv + Mv.T) / 2)
    rank = int((eig > 1e-6 * max(eig[-1], 1e-300)).sum())
    info.update(
        solver_value=float(problem.value),
        psd_violation=float(max(0.0, -eig[0])),
        constraint_violation=(
            0.0 if prob.features == "penalty"
            else float(np.max(np.diag(B) - prob.rho**2)) if prob.features == "ball"
            else float(np.max(np.abs(np.diag(B) - prob.rho**2)))
        ),
        relaxation_rank=rank,
        rank_limit=prob.m,
        tight=bool(rank <= prob.m),
    )
    cert = certify(prob, Mv[:K, K:], bv)
    info["sdp_lower_bound"] = cert.lower_bound
    r = min(prob.m, max(rank, 1))
    Wr, Hr = _round(prob, Mv, r)
    from gufm.model.geometry import feature_basis
    from gufm.model.objective import group_objective
    from gufm.solvers.reduced import solve_gradient

    E = feature_basis(prob.features, d, r)
    W, H = Wr @ E.T, E @ Hr
    value = float(group_objective(prob, W, bv, H, check_feasible=False))
    info["rounded_value"] = value
    best_cert = cert
    reason = f"SDP {status}; rounded to rank {r}"
    if polish:
        pol = solve_gradient(prob, x0=(W, bv, H), rtol=rtol, atol=atol, restarts=0)
        info["polish"] = {k: pol.info[k] for k in ("iterations", "p", "escapes")}
        if pol.value <= value:
            W, bv, H, value = pol.W, pol.b, pol.class_features, pol.value
            reason += "; polished by gradient"
        if pol.certificate is not None and pol.lower_bound > best_cert.lower_bound:
            best_cert = pol.certificate
    return SolveResult(
        problem=prob, value=value, lower_bound=best_cert.lower_bound, W=W, b=bv,
        class_features=H, method="sdp", seconds=time.perf_counter() - t0, stop_reason=reason,
        certificate=best_cert, info=info, rtol=rtol, atol=atol,
    )
