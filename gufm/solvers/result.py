"""The result object every solver returns."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gufm.model.certificate import Certificate
from gufm.model.problem import GUFM

#: default certification tolerance: gap <= ATOL + RTOL * |value|
RTOL = 1e-7
ATOL = 1e-9


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
        Certification tolerance: ``certified`` iff ``gap <= atol + rtol * |value|``.
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

    @property
    def gap(self) -> float:
        """``value - lower_bound`` (non-negative up to rounding; ``inf`` with no bound)."""
        return self.value - self.lower_bound

    @property
    def certified(self) -> bool:
        """True when the gap is within ``atol + rtol * |value|``."""
        g = self.gap
        return bool(math.isfinite(g) and g <= self.atol + self.rtol * abs(self.value))

    @property
    def rank(self) -> int:
        """Numerical rank of the Gram matrix of ``[W; Hbarᵀ]``."""
        X = np.vstack([self.W, self.class_features.T])
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
            + (f"  lam_H={p.lam_H:g}" if p.features == "penalty" else ""),
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
        }

    def __repr__(self) -> str:
        return (
            f"SolveResult(value={self.value:.10g}, lower_bound={self.lower_bound:.10g}, "
            f"gap={self.gap:.3g}, certified={self.certified}, method={self.method!r}, "
            f"seconds={self.seconds:.3g}, stop_reason={self.stop_reason!r})"
        )
