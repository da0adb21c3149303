r"""Positive-semidefiniteness decisions for the dual certificate (see docs/certificate.md).

The certificate needs, for the symmetric Schur complement
:math:`S = \operatorname{diag}(\mu) - Y^\top Y/(2\lambda_W)`, a shift :math:`t \ge 0` with
:math:`S + tI \succeq 0` *proved*, and, when :math:`S` is clearly indefinite, its smallest
eigenvalue and eigenvector (the escape direction of the Burer-Monteiro lift).

* **Cholesky decides.**  If the Cholesky factorisation of :math:`A = S + \tau I` succeeds in
  floating point, then :math:`A + E = R^\top R \succeq 0` with
  :math:`|E_{ij}| \le \gamma_{n+1}\sqrt{a_{ii}a_{jj}}`, :math:`\gamma_k = k u/(1 - k u)`
  (Demmel 1989; Higham, *Accuracy and Stability*, Thm 10.5), so
  :math:`\lVert E\rVert_2 \le \gamma_{n+1}\operatorname{tr}A` and

  .. math:: S + \big(\tau + \gamma_{n+1}\operatorname{tr}(S + \tau I)\big) I \succeq 0 .

  One factorisation (:math:`n^3/3` flops, ~10x cheaper than a full ``eigh``) gives a valid
  shift.  We try :math:`\tau = \gamma_{n+1}\operatorname{tr}^+(S)`, the rounding level.
* **LOBPCG** (scipy) estimates :math:`\lambda_{\min}` and its eigenvector when the
  factorisation fails; the shift :math:`-\lambda_{\min}` (plus a rounding margin) is then
  re-checked by Cholesky.
* **A negligible shift.**  At a near-optimal point the bottom of the spectrum is a cluster of
  eigenvalues within the optimiser's accuracy of zero, some slightly negative: the first
  factorisation fails, LOBPCG does not converge, and ``eigh`` would decide.  When the caller
  names a shift it does not mind paying (``negligible``; the certificate: a bound cost of
  1e-10 of the bound), Cholesky factorisations at it and six geometric bisections prove the
  smallest shift up to it, with no eigenpair (7 factorisations; at :math:`n = 3000` about
  1 s against LOBPCG's 1 s plus eigh's 4 s).
* The full ``eigh`` is the fallback when LOBPCG does not converge within a few dozen block
  iterations (a clustered bottom of the spectrum, typical of near-optimal points, where its
  matrix products would cost more than ``eigh``) or its shift does not pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg

_U = float(np.finfo(float).eps) / 2  # unit roundoff of float64


@dataclass
class PSDShift:
    """A proved PSD shift of a symmetric matrix and what was learned on the way.

    Attributes
    ----------
    shift : float
        :math:`t \\ge 0` with :math:`S + tI \\succeq 0` (including the rounding bound of the
        Cholesky factorisation that proved it).
    lambda_min : float
        Smallest eigenvalue of ``S``: exact (to solver accuracy) when ``method`` is
        ``"lobpcg"`` or ``"eigh"``; for ``"cholesky"`` the proved lower bound ``-shift``.
    vector : ndarray or None
        Unit eigenvector of ``lambda_min`` (``None`` when Cholesky decided at the first try).
    method : str
        ``"cholesky"`` (one factorisation decided), ``"lobpcg"`` or ``"eigh"``.

    Examples
    --------
    >>> import numpy as np
    >>> ok = psd_shift(np.diag([1.0, 2.0]))                 # PSD: one Cholesky decides
    >>> ok.method, ok.shift < 1e-12, ok.vector
    ('cholesky', True, None)
    >>> bad = psd_shift(np.diag([-1.0, 2.0]))               # indefinite: eigenpair and shift
    >>> round(bad.lambda_min, 12), bool(bad.shift >= 1.0), np.abs(bad.vector).tolist()
    (-1.0, True, [1.0, 0.0])
    """

    shift: float
    lambda_min: float
    vector: np.ndarray | None
    method: str


def _gamma(n: int) -> float:
    k = (n + 1) * _U
    return k / (1.0 - k)


def _check_symmetric(S: np.ndarray) -> np.ndarray:
    S = np.asarray(S, dtype=float)
    if S.ndim != 2 or S.shape[0] != S.shape[1] or S.shape[0] == 0:
        raise ValueError(f"S must be a non-empty square matrix, got shape {S.shape}")
    if not np.all(np.isfinite(S)):
        raise ValueError("S contains NaN or inf")
    return S


def cholesky_certifies(S: np.ndarray, tau: float) -> float | None:
    """Try the Cholesky factorisation of ``S + tau I``.

    Returns the proved shift ``tau + gamma_{n+1} tr(S + tau I)`` when it succeeds (then
    ``S + shift I`` is PSD in exact arithmetic), ``None`` when it fails.

    Examples
    --------
    >>> import numpy as np
    >>> cholesky_certifies(np.eye(3), 0.0) is not None
    True
    >>> cholesky_certifies(np.diag([1.0, -1e-3]), 0.0) is None
    True
    """
    S = _check_symmetric(S)
    if not math.isfinite(tau) or tau < 0:
        raise ValueError(f"tau must be finite and >= 0, got {tau!r}")
    n = S.shape[0]
    A = S + tau * np.eye(n)
    try:
        scipy.linalg.cholesky(A, lower=True, overwrite_a=True, check_finite=False)
    except np.linalg.LinAlgError:
        return None
    tr = float(np.trace(S)) + n * tau
    return tau + _gamma(n) * max(tr, 0.0)


def lobpcg_min(S: np.ndarray, *, tol: float | None = None, maxiter: int = 40,
               seed: int = 0) -> tuple[float, np.ndarray, float] | None:
    r"""Smallest eigenpair of ``S`` by LOBPCG (block of 4) and its residual norm
    :math:`\lVert Sv - \lambda v\rVert` (an eigenvalue of ``S`` lies within it of
    ``lambda``), or ``None`` when it does not converge or ``S`` is too small (n < 16).

    Examples
    --------
    >>> import numpy as np
    >>> S = np.diag(np.arange(1.0, 41.0)); S[0, 0] = -2.0
    >>> lam, v, res = lobpcg_min(S)
    >>> round(lam, 8), round(abs(float(v[0])), 6), bool(res < 1e-8)
    (-2.0, 1.0, True)
    """
    import scipy.sparse.linalg as sla

    S = _check_symmetric(S)
    n = S.shape[0]
    k = 4
    if n < 4 * k:
        return None
    scale = max(float(np.abs(S).max()), 1e-300)
    tol = 1e-10 * scale if tol is None else tol
    X = np.random.default_rng(seed).standard_normal((n, k))
    # a good start: the coordinate of the most negative diagonal entry
    X[:, 0] = 0.0
    X[int(np.argmin(np.diag(S))), 0] = 1.0
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            w, V, res = sla.lobpcg(S, X, largest=False, tol=tol, maxiter=maxiter,
                                   retResidualNormsHistory=True)
        except (np.linalg.LinAlgError, ValueError):
            return None
    i = int(np.argmin(w))
    r = S @ V[:, i] - w[i] * V[:, i]
    if not np.isfinite(w[i]) or float(np.linalg.norm(r)) > 1e3 * tol:
        return None
    v = V[:, i] / np.linalg.norm(V[:, i])
    return float(w[i]), v, float(np.linalg.norm(S @ v - w[i] * v))


def _bracket(S: np.ndarray, lo: float, hi: float, steps: int = 6) -> float | None:
    """The smallest shift in ``[lo, hi]`` (to ``steps`` geometric bisections) that Cholesky
    proves, or ``None`` when ``hi`` already fails; ``lo`` is known to fail."""
    t = cholesky_certifies(S, hi)
    if t is None:
        return None
    for _ in range(steps):
        mid = math.sqrt(lo * hi) if lo > 0 else 0.5 * hi
        tm = cholesky_certifies(S, mid)
        if tm is None:
            lo = mid
        else:
            hi, t = mid, tm
    return t


def psd_shift(S: np.ndarray, negligible: float = 0.0) -> PSDShift:
    r"""The smallest proved shift ``t >= 0`` with ``S + t I`` PSD, computed cheaply.

    Order of work (module docstring): one Cholesky at the rounding level; on failure LOBPCG
    for ``lambda_min`` and its vector, the shift ``-lambda_min`` plus a margin re-checked by
    Cholesky; ``eigh`` when that fails.

    Parameters
    ----------
    S : ndarray (n, n)
        Symmetric (only the lower triangle is read by the factorisation).
    negligible : float
        A shift the caller does not mind paying (the certificate: one that costs the bound
        1e-10 of its size).  When the rounding-level factorisation fails, the smallest shift
        up to this that Cholesky proves (seven factorisations, geometric bisection) is
        returned, like the first case with ``lambda_min = -shift`` (a lower bound) and no
        vector.  0 (default): LOBPCG and eigh decide.

    Returns
    -------
    PSDShift

    Examples
    --------
    >>> import numpy as np
    >>> r = psd_shift(np.diag([2.0, 1.0, 0.5]))
    >>> r.method, r.shift < 1e-14
    ('cholesky', True)
    >>> r = psd_shift(np.diag([2.0, 1.0, -0.5]))
    >>> r.method, round(r.lambda_min, 12), bool(0.5 <= r.shift < 0.5 + 1e-12)
    ('eigh', -0.5, True)
    """
    S = _check_symmetric(S)
    S = 0.5 * (S + S.T)
    n = S.shape[0]
    d = np.diag(S)
    tau0 = _gamma(n) * float(np.clip(d, 0, None).sum())
    t = cholesky_certifies(S, tau0)
    if t is not None:
        return PSDShift(t, -t, None, "cholesky")
    if negligible > tau0:
        # the caller does not mind this shift: prove the smallest one up to it by Cholesky
        # factorisations alone (a cluster of near-zero eigenvalues at a near-optimal point,
        # where LOBPCG does not converge and eigh costs some 20 factorisations)
        t = _bracket(S, tau0, negligible)
        if t is not None:
            return PSDShift(t, -t, None, "cholesky")
    scale = max(float(np.abs(d).max()), float(np.abs(S).max()), 1e-300)
    found = lobpcg_min(S)
    if found is not None:
        lam, v, res = found
        # a well-separated Ritz value is accurate to ~res^2/gap, i.e. to rounding: a small
        # margin passes.  In a cluster (near-optimal certificates have a large near-zero one)
        # it may not be the smallest eigenvalue: the factorisation fails and eigh decides
        # (a residual-based margin would be valid but loose, and looseness costs the bound)
        t = cholesky_certifies(S, max(-lam, 0.0) + 1e-14 * scale + tau0)
        if t is not None:
            return PSDShift(t, lam, v, "lobpcg")
    w, V = scipy.linalg.eigh(S)
    lam, v = float(w[0]), V[:, 0]
    base = max(-lam, 0.0)
    # eigh's eigenvalues are accurate to ~ n u ||S||; the factorisation needs about as much
    margin = 4 * n * _U * max(float(np.abs(w).max()), 1e-300) + tau0
    for _ in range(60):
        t = cholesky_certifies(S, base + margin)
        if t is not None:
            return PSDShift(t, lam, v, "eigh")
        margin *= 4.0
    raise RuntimeError("no PSD shift could be proved for S (numerically singular beyond repair)")
