"""Solvers for the GUFM.  :func:`solve` is the single entry point (``gufm.solve``).

========== ============================================================================
method     what it does
========== ============================================================================
closed_form the balanced closed forms of spec section 3 (:mod:`gufm.closed_form`)
gradient   L-BFGS on the reduced problem + dual certificate + saddle escapes
sdp        the cvxpy convex relaxation (SCS), status checked, rounded and certified
full       gradient over all N features (the literature's method; the baseline)
auto       closed_form if it applies and certifies, else gradient; sdp bound if uncertified
========== ============================================================================
"""

from __future__ import annotations

import time
from typing import Any

from gufm.model.problem import GUFM
from gufm.solvers.result import ATOL, RTOL, SolveResult

METHODS = ("auto", "closed_form", "gradient", "sdp", "full")


def solve(prob: GUFM, method: str = "auto", *, rtol: float = RTOL, atol: float = ATOL,
          **options: Any) -> SolveResult:
    """Solve a GUFM instance and certify the result.

    Parameters
    ----------
    prob : GUFM
    method : {"auto", "closed_form", "gradient", "sdp", "full"}
    rtol, atol : float
        ``certified`` iff ``value - lower_bound <= atol + rtol * |value|``.
    **options
        Passed to the method's solver (see :func:`gufm.solvers.gradient.solve_gradient`,
        :func:`gufm.solvers.sdp.solve_sdp`, :func:`gufm.solvers.full.solve_full`).

    Returns
    -------
    SolveResult
    """
    if not isinstance(prob, GUFM):
        raise TypeError(f"prob must be a gufm.GUFM, got {type(prob).__name__}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    tol = {"rtol": rtol, "atol": atol}
    if method == "closed_form":
        from gufm.solvers.closed_form import solve_closed_form

        return solve_closed_form(prob, **tol)
    if method == "gradient":
        from gufm.solvers.reduced import solve_gradient

        return solve_gradient(prob, **tol, **options)
    if method == "sdp":
        from gufm.solvers.sdp import solve_sdp

        return solve_sdp(prob, **tol, **options)
    if method == "full":
        from gufm.solvers.full_n import solve_full

        return solve_full(prob, **tol, **options)
    return _solve_auto(prob, tol, options)


def _solve_auto(prob: GUFM, tol: dict, options: dict) -> SolveResult:
    from gufm.solvers.closed_form import closed_form_kind, solve_closed_form
    from gufm.solvers.reduced import solve_gradient

    t0 = time.perf_counter()
    tried = []
    if closed_form_kind(prob)[0] is not None and not options:
        res = solve_closed_form(prob, **tol)
        tried.append(("closed_form", res.value, res.lower_bound))
        if res.certified:
            res.info["auto_tried"] = tried
            return res
    res = solve_gradient(prob, **tol, **options)
    tried.append(("gradient", res.value, res.lower_bound))
    if not res.certified and prob.K + prob.G <= 60:
        # the SDP relaxation gives the tightest bound the convex relaxation can; keep the best
        # value and the best bound (both are valid for the same problem)
        from gufm.solvers.sdp import solve_sdp

        try:
            sdp = solve_sdp(prob, **tol)
            tried.append(("sdp", sdp.value, sdp.lower_bound))
            if sdp.lower_bound > res.lower_bound:
                res.lower_bound = sdp.lower_bound
                res.info["lower_bound_from"] = "sdp"
            if sdp.value < res.value:
                sdp.lower_bound = max(sdp.lower_bound, res.lower_bound)
                res = sdp
        except Exception as exc:  # noqa: BLE001 - the bound is optional, the failure recorded
            tried.append(("sdp", "failed", repr(exc)))
    res.info["auto_tried"] = tried
    res.seconds = time.perf_counter() - t0
    return res
