"""The result object every solver returns."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gufm.backend import to_numpy
from gufm.model.certificate import Certificate
from gufm.model.problem import GUFM

#: default relative tolerance: certified when ``gap <= atol * loss_scale + rtol * |value|``
RTOL = 1e-7
#: default absolute tolerance, in units of :func:`loss_scale` (the loss at the origin): about
#: four float64 epsilons, the rounding level of the objective, so every optimum above
#: ``1e-8 * loss_scale`` is held to ``rtol`` and only smaller ones to the rounding floor
ATOL = 1e-15
#: a lower bound may exceed the value by rounding only: ``ROUNDING_ABS * loss_scale +
#: ROUNDING_REL * |value|``; more means a wrong value or bound, which is never certified
ROUNDING_ABS = 1e-15
ROUNDING_REL = 1e-12


def loss_scale(prob: GUFM) -> float:
    r"""The objective at the origin, :math:`F(0) = \sum_g p_g \ell(0, q_g)`: the problem's scale.

    CE: :math:`\log K`; MSE: :math:`\tfrac12\sum_g p_g\lVert q_g\rVert^2` (``1/2`` for hard
    labels).  ``atol`` is measured in this unit, so a tolerance means the same for every problem.

    Examples
    --------
    >>> from gufm.model.problem import GUFM
    >>> round(loss_scale(GUFM(counts=[2, 2, 2], dim=3)), 6)
    1.098612
    >>> loss_scale(GUFM(counts=[1, 1], dim=2, loss="mse"))
    0.5
    """
    g = prob.groups
    if prob.loss == "ce":
        return math.log(prob.K)
    return 0.5 * float((g.weights * (g.targets**2).sum(0)).sum())


def check_tolerances(rtol: float, atol: float) -> tuple[float, float]:
    """Validate ``rtol`` (finite, ``0 <= rtol < 1``) and ``atol`` (finite, ``>= 0``).

    Raises
    ------
    TypeError
        For a non-real value (``bool`` included).
    ValueError
        For a value out of range, naming the argument.

    Examples
    --------
    >>> check_tolerances(1e-7, 0.0)
    (1e-07, 0.0)
    >>> check_tolerances(2.0, 0.0)
    Traceback (most recent call last):
    ...
    ValueError: rtol must satisfy 0 <= rtol < 1, got 2.0
    """
    out = []
    for name, v in (("rtol", rtol), ("atol", atol)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
            raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
        v = float(v)
        if not math.isfinite(v):
            raise ValueError(f"{name} must be finite, got {v}")
        out.append(v)
    if not 0.0 <= out[0] < 1.0:
        raise ValueError(f"rtol must satisfy 0 <= rtol < 1, got {out[0]}")
    if out[1] < 0.0:
        raise ValueError(f"atol must be >= 0, got {out[1]}")
    return out[0], out[1]


def is_certified(prob: GUFM, value: float, lower_bound: float, rtol: float, atol: float) -> bool:
    r"""The certification rule (see docs/certificate.md):

    .. math:: -(\epsilon_a s + \epsilon_r |F|) \le F - L \le \mathrm{atol}\, s + \mathrm{rtol}\,|F|

    with :math:`s` = :func:`loss_scale`, :math:`\epsilon_a` = :data:`ROUNDING_ABS` and
    :math:`\epsilon_r` = :data:`ROUNDING_REL`: the bound may
    exceed the value only by rounding (more means one of them is wrong, which is never
    certified), and the gap is within the relative tolerance, with an absolute floor scaled to
    the problem so that tiny optima (``lam_W = 1e-10``) are still held to ``rtol``.

    Examples
    --------
    >>> from gufm.model.problem import GUFM
    >>> prob = GUFM(counts=[2, 2], dim=3)
    >>> is_certified(prob, 1.0, 1.0 - 1e-8, 1e-7, 0.0), is_certified(prob, 1.0, 1.0 - 1e-6, 1e-7, 0.0)
    (True, False)
    >>> is_certified(prob, 1.0, 1.0 + 1e-6, 1e-7, 0.0)  # a bound above the value
    False
    """
    gap = value - lower_bound
    if not math.isfinite(gap):
        return False
    s = loss_scale(prob)
    return -(ROUNDING_ABS * s + ROUNDING_REL * abs(value)) <= gap <= atol * s + rtol * abs(value)


@dataclass
class SolveResult:
    """Solution of a GUFM instance, with its certified lower bound.

    Attributes
    ----------
    problem : GUFM
    value : float
        Objective :math:`F` at the returned (feasible) point.
    lower_bound : float
        A proven lower bound on the optimum (dual certificate or SDP dual); ``-inf`` if none.
    W : ndarray (K, d)
    b : ndarray (K,) or None
    class_features : ndarray (d, G)
        One feature per group (per class for hard labels).
    method : str
        The method that produced ``value``.
    seconds : float
        Wall time of the whole solve.
    stop_reason : str
        Why the solver stopped (converged, max iterations, certificate failed, ...).
    certificate : Certificate or None
    info : dict
        Method-specific diagnostics (iterations, rank used, escapes, solver status, residuals).
    rtol, atol : float
        Certification tolerance, see :func:`is_certified`.
    iterations : int
        Iterations of the method's optimiser (0 for a closed form), uniform across methods.

    Examples
    --------
    >>> from gufm.model.problem import GUFM
    >>> from gufm.solvers import solve
    >>> res = solve(GUFM(counts=[3, 3, 3], dim=4, lam_W=0.01))
    >>> res.certified, res.method, res.iterations
    (True, 'closed_form', 0)
    """

    problem: GUFM
    value: float
    lower_bound: float
    W: np.ndarray
    b: np.ndarray | None
    class_features: np.ndarray
    method: str
    seconds: float
    stop_reason: str
    certificate: Certificate | None = None
    info: dict[str, Any] = field(default_factory=dict)
    rtol: float = RTOL
    atol: float = ATOL
    iterations: int = 0

    def __post_init__(self) -> None:
        self.rtol, self.atol = check_tolerances(self.rtol, self.atol)

    @property
    def gap(self) -> float:
        """``value - lower_bound`` (non-negative up to rounding; ``inf`` with no bound)."""
        return self.value - self.lower_bound

    @property
    def certified(self) -> bool:
        """True when :func:`is_certified` holds for ``value`` and ``lower_bound``."""
        return is_certified(self.problem, self.value, self.lower_bound, self.rtol, self.atol)

    @property
    def rank(self) -> int:
        """Numerical rank of the Gram matrix of ``[W; Hbarᵀ]``."""
        X = np.vstack([to_numpy(self.W), to_numpy(self.class_features).T])
        s = np.linalg.svd(X, compute_uv=False)
        return int((s > 1e-6 * s[0]).sum())

    def features(self, labels: np.ndarray | None = None) -> np.ndarray:
        """Features of all samples, shape ``(d, N)``.

        Parameters
        ----------
        labels : array of int (N,), optional
            Hard labels to lift with (``class_features[:, labels]``).  Default: the samples of
            the problem, in the order they were given.
        """
        if labels is None:
            return self.problem.lift(self.class_features)
        y = np.asarray(labels)
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise ValueError("labels must be a 1-d integer array")
        if y.size and (y.min() < 0 or y.max() >= self.class_features.shape[1]):
            raise ValueError(f"labels must lie in [0, {self.class_features.shape[1] - 1}]")
        return self.class_features[:, y]

    def summary(self) -> str:
        """A readable multi-line summary: problem, method, value, bound, gap, rank, time."""
        p = self.problem
        lines = [
            f"GUFM  K={p.K}  N={p.N}  d={p.dim}  loss={p.loss}  features={p.features}  "
            f"lam_W={p.lam_W:g}" + (f"  lam_b={p.lam_b:g}" if p.has_bias else "")
            + (f"  lam_H={p.lam_H:g}" if p.lam_H is not None else ""),
            f"  method       {self.method}  ({self.stop_reason})",
            f"  value        {self.value:.12g}",
            f"  lower bound  {self.lower_bound:.12g}",
            f"  gap          {self.gap:.3g}   certified: {'yes' if self.certified else 'NO'}",
            f"  rank         {self.rank}",
            f"  seconds      {self.seconds:.4g}",
        ]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (no arrays)."""
        return {
            "value": self.value,
            "lower_bound": self.lower_bound,
            "gap": self.gap,
            "certified": self.certified,
            "method": self.method,
            "seconds": self.seconds,
            "stop_reason": self.stop_reason,
            "iterations": self.iterations,
        }

    def __repr__(self) -> str:
        return (
            f"SolveResult(value={self.value:.10g}, lower_bound={self.lower_bound:.10g}, "
            f"gap={self.gap:.3g}, certified={self.certified}, method={self.method!r}, "
            f"seconds={self.seconds:.3g}, stop_reason={self.stop_reason!r})"
        )
