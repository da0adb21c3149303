"""The one finish step of every method: embed, evaluate exactly, certify, build the result.

Every solver (closed form, gradient, symmetric, SDP, full-N) ends with :func:`finish`, so the
value is always the objective at the returned feasible point (never an optimiser's own
number), the bound is always the dual certificate (plus any other valid bounds the method
found), and the result fields mean the same for every method.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from gufm.backend import Array, convert, to_numpy
from gufm.model.certificate import Certificate, certify
from gufm.model.objective import group_objective, objective
from gufm.model.problem import GUFM
from gufm.model.typed import Types, certify_typed, typed_logits, typed_value
from gufm.solvers.result import SolveResult, check_tolerances, is_certified

__all__ = ["finish", "embed", "Budget", "failed_result"]


class Budget:
    """A wall-time budget started at construction (``max_seconds=None``: unlimited).

    Examples
    --------
    >>> b = Budget(None); b.expired(), b.remaining()
    (False, inf)
    >>> Budget(0.0).expired()
    True
    """

    def __init__(self, max_seconds: float | None, t0: float | None = None) -> None:
        if max_seconds is not None:
            if isinstance(max_seconds, bool) or not isinstance(max_seconds, (int, float)):
                raise TypeError(f"max_seconds must be a number or None, got {max_seconds!r}")
            if not (max_seconds >= 0 and math.isfinite(max_seconds)):
                raise ValueError(f"max_seconds must be finite and >= 0, got {max_seconds!r}")
        self.max_seconds = max_seconds
        self.t0 = time.perf_counter() if t0 is None else t0

    def elapsed(self) -> float:
        """Seconds since the start."""
        return time.perf_counter() - self.t0

    def remaining(self) -> float:
        """Seconds left (``inf`` without a budget, never negative)."""
        if self.max_seconds is None:
            return math.inf
        return max(0.0, self.max_seconds - self.elapsed())

    def expired(self) -> bool:
        """True once the budget is spent."""
        return self.max_seconds is not None and self.elapsed() >= self.max_seconds

    def reason(self) -> str:
        """The stop reason a solver reports when the budget ends it."""
        return f"time limit ({self.max_seconds:g} s)"


def embed(prob: GUFM, Wp: np.ndarray, Hp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Embed a reduced point (``Wp`` (K, p), ``Hp`` (p, G)) in ``R^d`` with the feature
    model's basis: ``W = Wp Eᵀ``, ``H = E Hp`` (``E`` orthonormal, so ``W H = Wp Hp``), by
    :meth:`FeatureModel.embed <gufm.model.features.FeatureModel.embed>` (``O(d (K + G))``
    for LayerNorm's Helmert basis, no matrix product).

    Examples
    --------
    >>> import numpy as np
    >>> from gufm.model.problem import GUFM
    >>> W, H = embed(GUFM(counts=[1, 1], dim=3), np.ones((2, 1)), np.ones((1, 2)))
    >>> W.shape, H.shape, bool(np.allclose(H.sum(0), 0))
    ((2, 3), (3, 2), True)
    """
    fm = prob.feature_model
    return fm.embed(np.asarray(Wp), prob.dim, axis=1), fm.embed(Hp, prob.dim)


def finish(
    prob: GUFM,
    W: np.ndarray,
    b: np.ndarray | None,
    H: np.ndarray,
    *,
    method: str,
    t0: float,
    stop_reason: str,
    iterations: int = 0,
    rtol: float,
    atol: float,
    reduced: bool = True,
    H_samples: np.ndarray | None = None,
    certificate: Certificate | None = None,
    bounds: tuple[float, ...] = (),
    info: dict[str, Any] | None = None,
    like: Array | None = None,
    check_tol: float | None = None,
    types: Types | None = None,
    value: float | None = None,
) -> SolveResult:
    """Evaluate a candidate exactly, certify it and build the :class:`SolveResult`.

    Parameters
    ----------
    prob : GUFM
    W, b, H : arrays
        The candidate: ``W`` (K, p), ``H`` (p, G) in reduced coordinates when ``reduced``
        (embedded with :func:`embed`), else ambient ``W`` (K, d) and group features ``H`` (d, G).
    method : str
    t0 : float
        ``time.perf_counter()`` at the start of the solve (``seconds`` is measured from it).
    stop_reason : str
        Why the optimiser stopped; ``"certified"`` replaces it when the result certifies and
        the reason did not already say so.
    iterations : int
        Optimiser iterations.
    rtol, atol : float
        Certification tolerances (validated).
    H_samples : array (d, N), optional
        Per-sample features (full-N methods): the value is the objective at them, and ``H``
        (their group means) is used for the certificate only.
    certificate : Certificate, optional
        A certificate already computed at this point (else :func:`certify` is called).
    bounds : tuple of float
        Other valid lower bounds (e.g. an earlier round's certificate); the best is reported.
    info : dict, optional
        Method-specific diagnostics.
    like : array, optional
        Return ``W``, ``b`` and ``class_features`` in this array's type (numpy or torch, its
        dtype and device), e.g. the caller's ``x0``.
    check_tol : float, optional
        When set, raise unless the point is feasible within it (closed forms).
    types : Types, optional
        The point is invariant under permuting equal-count classes (the symmetric solver):
        evaluate and certify it from one class per type (:func:`gufm.model.typed.typed_value`,
        :func:`gufm.model.typed.certify_typed`, ``O(K d T)``); when the point turns out not to
        be type-structured, the dense evaluation and certificate are used.
    value : float, optional
        The objective at this point, already evaluated exactly by the caller (e.g. by
        :func:`gufm.model.objective.group_objective` on the rescaled problem the solver worked
        in, which has the same value at the mapped point); with ``certificate`` it spares the
        two ``K x d x G`` products of evaluating and certifying again.  Not for ``H_samples``,
        ``check_tol`` or ``types``.

    Returns
    -------
    SolveResult

    Examples
    --------
    >>> import time, numpy as np
    >>> from gufm.model.problem import GUFM
    >>> prob = GUFM(counts=[1, 1], dim=2, features="sphere", radius=1.0, lam_W=1.0, loss="mse")
    >>> res = finish(prob, np.zeros((2, 2)), None, np.eye(2), method="demo", t0=time.perf_counter(),
    ...              stop_reason="given", rtol=1e-7, atol=0.0)
    >>> res.value, res.iterations, res.stop_reason
    (0.5, 0, 'given')
    """
    rtol, atol = check_tolerances(rtol, atol)
    if value is not None and (H_samples is not None or check_tol is not None
                              or types is not None):
        raise ValueError("value= cannot be combined with H_samples, check_tol or types")
    W, H = np.asarray(to_numpy(W), dtype=float), np.asarray(to_numpy(H), dtype=float)
    b = None if b is None else np.asarray(to_numpy(b), dtype=float)
    Z = None
    if reduced:
        if types is None and certificate is None:
            Z = W @ H  # the reduced product is the cheaper one
        W, H = embed(prob, W, H)
    cert = None
    if value is not None:
        value = float(value)
        cert = certificate if certificate is not None else certify(
            prob, W @ H if Z is None else Z, b)
    elif types is not None and H_samples is None and check_tol is None and certificate is None:
        Zt = typed_logits(types, W, H)
        cert = None if Zt is None else certify_typed(prob, types, Zt, b)
        value = None if cert is None else typed_value(prob, types, W, b, H)
    if value is None:
        if H_samples is not None:
            value = float(objective(prob, W, b, H_samples, check_feasible=False))
        elif check_tol is not None:
            value = float(group_objective(prob, W, b, H, check_feasible=True, tol=check_tol))
        else:
            value = float(group_objective(prob, W, b, H, check_feasible=False))
        if certificate is None:
            cert = certify(prob, W @ H if Z is None else Z, b)
        else:
            cert = certificate
    lower = max((cert.lower_bound, *bounds), default=-math.inf)
    info = dict(info or {})
    if lower > cert.lower_bound:
        info["lower_bound_from"] = "earlier round"
    certified = is_certified(prob, value, lower, rtol, atol)
    if certified and not stop_reason.startswith("certified"):
        stop_reason = f"certified ({stop_reason})"
    return SolveResult(
        problem=prob, value=value, lower_bound=lower, W=convert(W, like), b=convert(b, like),
        class_features=convert(H, like), method=method, seconds=time.perf_counter() - t0,
        stop_reason=stop_reason, certificate=cert, info=info, rtol=rtol, atol=atol,
        iterations=int(iterations),
    )


def failed_result(prob: GUFM, *, method: str, t0: float, stop_reason: str, rtol: float,
                  atol: float, info: dict[str, Any] | None = None) -> SolveResult:
    """The result of a method that produced no point: ``value = nan``, ``lower_bound = -inf``,
    never certified, the reason in ``stop_reason``.

    Examples
    --------
    >>> import time
    >>> from gufm.model.problem import GUFM
    >>> r = failed_result(GUFM(counts=[1, 1], dim=2), method="sdp", t0=time.perf_counter(),
    ...                   stop_reason="solver failed", rtol=1e-7, atol=0.0)
    >>> r.certified, r.stop_reason
    (False, 'solver failed')
    """
    K, d, G = prob.K, prob.dim, prob.G
    return SolveResult(
        problem=prob, value=math.nan, lower_bound=-math.inf, W=np.full((K, d), np.nan), b=None,
        class_features=np.full((d, G), np.nan), method=method,
        seconds=time.perf_counter() - t0, stop_reason=stop_reason, info=dict(info or {}),
        rtol=rtol, atol=atol,
    )
