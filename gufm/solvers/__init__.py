"""Solvers for the GUFM.  :func:`solve` is the single entry point (``gufm.solve``).

=========== ============================================================================
method      what it does
=========== ============================================================================
closed_form the balanced closed forms (:mod:`gufm.solvers.closed_form`, docs/closed_forms.md)
gradient    L-BFGS on the reduced problem + dual certificate + saddle escapes
            (:mod:`gufm.solvers.reduced`, with :mod:`gufm.solvers.symmetric` first)
sdp         the cvxpy convex relaxation (SCS), status checked, rounded and certified
full        gradient over all N features (the literature's method; the baseline)
auto        closed_form if it applies and certifies, else gradient; sdp bound if uncertified
=========== ============================================================================

Every method ends with the one finish step :func:`gufm.solvers.finish.finish`.
"""

from __future__ import annotations

from typing import Any

from gufm.model.problem import GUFM
from gufm.solvers.closed_form import closed_form_kind, solve_closed_form
from gufm.solvers.finish import Budget, finish
from gufm.solvers.full_n import solve_full
from gufm.solvers.reduced import solve_gradient
from gufm.solvers.result import ATOL, RTOL, SolveResult, check_tolerances
from gufm.solvers.sdp import solve_sdp

METHODS = ("auto", "closed_form", "gradient", "sdp", "full")
#: wall-time cap of the SDP bound that ``auto`` adds to an uncertified gradient solve
AUTO_SDP_SECONDS = 20.0


def solve(prob: GUFM, method: str = "auto", *, rtol: float = RTOL, atol: float = ATOL,
          max_seconds: float | None = None, **options: Any) -> SolveResult:
    """Solve a GUFM instance and certify the result.

    Parameters
    ----------
    prob : GUFM
    method : {"auto", "closed_form", "gradient", "sdp", "full"}
    rtol, atol : float
        ``certified`` iff ``-rounding <= value - lower_bound <= atol * s + rtol * |value|``
        with ``s`` the loss at the origin (:func:`gufm.solvers.result.is_certified`);
        ``0 <= rtol < 1`` and ``atol >= 0``.
    max_seconds : float, optional
        Wall-time budget for the whole solve, honoured by every method; a solve it ends says
        "time limit" in ``stop_reason`` and is certified only if its certificate holds.
    **options
        Passed to the method's solver (see :func:`gufm.solvers.reduced.solve_gradient`,
        :func:`gufm.solvers.sdp.solve_sdp`, :func:`gufm.solvers.full_n.solve_full`).

    Returns
    -------
    SolveResult

    Examples
    --------
    >>> from gufm.model.problem import GUFM
    >>> res = solve(GUFM(counts=[5, 3, 2], dim=5, lam_W=0.01), max_seconds=30)
    >>> res.certified, res.lower_bound <= res.value + 1e-12
    (True, True)
    """
    if not isinstance(prob, GUFM):
        raise TypeError(f"prob must be a gufm.GUFM, got {type(prob).__name__}")
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    rtol, atol = check_tolerances(rtol, atol)
    budget = Budget(max_seconds)
    tol = {"rtol": rtol, "atol": atol}
    if method == "closed_form":
        if options:
            raise TypeError(f"method='closed_form' takes no options, got {sorted(options)}")
        return solve_closed_form(prob, **tol)
    if method == "gradient":
        return solve_gradient(prob, **tol, max_seconds=max_seconds, **options)
    if method == "sdp":
        return solve_sdp(prob, **tol, max_seconds=max_seconds, **options)
    if method == "full":
        return solve_full(prob, **tol, max_seconds=max_seconds, **options)
    return _solve_auto(prob, tol, options, budget)


def _solve_auto(prob: GUFM, tol: dict, options: dict, budget: Budget) -> SolveResult:
    tried = []
    if closed_form_kind(prob)[0] is not None and not options:
        res = solve_closed_form(prob, **tol)
        tried.append(("closed_form", res.value, res.lower_bound))
        if res.certified:
            res.info["auto_tried"] = tried
            return res
    left = None if budget.max_seconds is None else budget.remaining()
    res = solve_gradient(prob, **tol, max_seconds=left, **options)
    tried.append(("gradient", res.value, res.lower_bound))
    if not res.certified and prob.K + prob.G <= 60 and not budget.expired():
        # the SDP relaxation gives the tightest bound the convex relaxation can; keep the best
        # value and the best bound (both are valid for the same problem)
        try:
            # the SDP only adds a bound here: it gets at most AUTO_SDP_SECONDS (SCS at 1e-9
            # runs for minutes on K + G ~ 60 when the relaxation is not tight)
            sdp = solve_sdp(prob, **tol, max_seconds=min(budget.remaining(), AUTO_SDP_SECONDS))
            tried.append(("sdp", sdp.value, sdp.lower_bound))
            best = sdp if sdp.value < res.value else res
            bound = max(sdp.lower_bound, res.lower_bound)
            res = finish(prob, best.W, best.b, best.class_features, method=best.method,
                         t0=budget.t0, stop_reason=best.stop_reason, iterations=best.iterations,
                         reduced=False, certificate=best.certificate, bounds=(bound,),
                         info=best.info, **tol)
            if bound > best.certificate.lower_bound:
                res.info["lower_bound_from"] = "sdp" if bound == sdp.lower_bound else "gradient"
        except Exception as exc:  # noqa: BLE001 - the bound is optional, the failure recorded
            tried.append(("sdp", "failed", repr(exc)))
    if budget.expired() and not res.certified and "time limit" not in res.stop_reason:
        res.stop_reason = f"{budget.reason()}: {res.stop_reason}"
    res.info["auto_tried"] = tried
    res.seconds = budget.elapsed()
    return res
