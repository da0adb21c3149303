r"""Dual certificate of global optimality for the GUFM (see docs/certificate.md).

The convex relaxation over the Gram matrix :math:`M = [[A, Z],[Z^\top, B]] \succeq 0`
(:math:`A = WW^\top`, :math:`B = \bar H^\top \bar H`, :math:`Z = W\bar H`) has the Lagrange dual

.. math::

    \max_{Y,\mu}\; -g^*(Y) - \rho^2 \sum_g \mu_g - \frac{\lVert Y\mathbf 1\rVert^2}{2\lambda_b}
    \quad\text{s.t.}\quad
    S = \begin{bmatrix} \tfrac{\lambda_W}{2} I & Y/2 \\ Y^\top/2 & \operatorname{diag}(\mu)
    \end{bmatrix} \succeq 0,

(``ball``: :math:`\mu \ge 0`; unpenalised bias: :math:`Y\mathbf 1 = 0` and no bias term;
``penalty``: no :math:`\mu`, the lower-right block is :math:`\operatorname{diag}(\lambda_H n_g/2)`
and the value is :math:`-g^*(Y)`).  Any feasible :math:`(Y, \mu)` gives a lower bound on the
GUFM optimum (weak duality; the relaxation only drops the rank constraint).

From a stationary point we take :math:`Y = \nabla g(Z + b\mathbf 1^\top)` and
:math:`\mu_g = -Z_{:,g}^\top Y_{:,g} / (2\rho^2)` (Riemannian stationarity
:math:`W^\top Y_{:,g} = -2\mu_g h_g`, written in Gram terms so no factorisation is needed).
By the Schur complement, :math:`S \succeq 0 \iff \operatorname{diag}(\mu) - Y^\top Y/(2\lambda_W)
\succeq 0`; we restore exact feasibility by raising every :math:`\mu_g` by
:math:`t = \max(0, -\lambda_{\min})`, which lowers the bound by :math:`\rho^2 G t`.  For
``penalty`` we instead scale :math:`Y \to sY` with the largest :math:`s \le 1` that keeps the block
PSD (for CE, :math:`sY` stays in the conjugate's domain by convexity of the simplex).

The cost is one G x G Cholesky factorisation when the point is optimal (an eigenproblem only
when the Schur complement is indefinite; :mod:`gufm.model.psd`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from gufm.backend import Array, to_numpy
from gufm.model.losses import conjugate, weighted_loss_grad
from gufm.model.problem import GUFM
from gufm.model.psd import psd_shift

#: what the lower bound may lose, relative to its size, to a shift proved by Cholesky alone
#: (gufm.model.psd.psd_shift): 1e-3 of the default rtol, and below what eigh's own margin
#: costs at K = 3000 (3.4e-12 on a bound of 0.34)
NEGLIGIBLE_BOUND_COST = 1e-10


@dataclass
class Certificate:
    """A dual point and the lower bound it certifies.

    Attributes
    ----------
    lower_bound : float
        A valid lower bound on the GUFM optimum (``-inf`` when no dual point could be built).
    lambda_min : float
        Smallest eigenvalue of the Schur complement ``diag(mu) - YᵀY/(2 λ_W)`` *before* the
        feasibility correction.  Clearly negative means the stationary point is not a global
        optimum of the relaxation (a saddle, or the rank constraint binds).  When one
        Cholesky factorisation proves PSD (:func:`gufm.model.psd.psd_shift`) it is the proved
        lower bound ``-shift`` (rounding level) and ``escape`` is None.
    shift : float
        Amount added to every ``mu_g`` (sphere models) or ``1 - s`` of the scaling (penalty).
    Y : ndarray (K, G)
        Dual variable.
    mu : ndarray (G,) or None
        Multipliers of the norm constraints after correction.
    escape : ndarray (G,) or None
        Eigenvector of ``lambda_min``: a direction for a higher-rank lift of the features.
    reason : str
        Why the bound may be weak (``""`` when nothing is wrong).

    Examples
    --------
    >>> from gufm.model.problem import GUFM
    >>> from gufm.solvers import solve
    >>> cert = solve(GUFM(counts=[3, 2, 1], dim=4, lam_W=0.1)).certificate
    >>> cert.Y.shape, cert.mu.shape, cert.reason
    ((3, 3), (3,), '')
    """

    lower_bound: float
    lambda_min: float
    shift: float
    Y: np.ndarray
    mu: np.ndarray | None
    escape: np.ndarray | None
    reason: str = ""

    def rescaled(self, c: float) -> Certificate:
        r"""The same certificate for the problem :meth:`GUFM.rescaled
        <gufm.model.problem.GUFM.rescaled>` maps this one's onto with the factor ``c``.

        A certificate of the problem with radius :math:`r` and :math:`\lambda_W` is, at the
        same logits, one of the problem with radius :math:`c r` and :math:`c^2 \lambda_W`: ``Y``
        and the bound are unchanged, and the Schur complement scales as
        :math:`\operatorname{diag}(\mu) - Y^\top Y/(2c^2\lambda_W) = S/c^2`, so ``mu``,
        ``lambda_min`` and ``shift`` are divided by :math:`c^2` (the bound's dual term
        :math:`(c r)^2 \sum_g \mu_g/c^2` is the same number).  Only sphere-type (``mu``)
        certificates rescale; ``c = 1`` returns ``self``.

        Examples
        --------
        >>> import numpy as np
        >>> from gufm.model.problem import GUFM
        >>> prob = GUFM(counts=[3, 2, 1], dim=4, lam_W=0.1)
        >>> norm, c = prob.normalised()
        >>> Z = np.random.default_rng(0).standard_normal((3, 3))
        >>> a, b = certify(prob, Z), certify(norm, Z).rescaled(c)
        >>> bool(np.isclose(a.lower_bound, b.lower_bound)), bool(np.allclose(a.mu, b.mu))
        (True, True)
        """
        c = float(c)
        if not (c > 0 and math.isfinite(c)):
            raise ValueError(f"c must be a positive finite float, got {c!r}")
        if c == 1.0:
            return self
        if self.mu is None:
            raise ValueError("only certificates with multipliers mu (sphere-type features) "
                             "rescale; penalty problems have no radius")
        c2 = c * c
        return Certificate(self.lower_bound, self.lambda_min / c2, self.shift / c2, self.Y,
                           self.mu / c2, self.escape, self.reason)


def certify(prob: GUFM, Z: Array, b: Array | None = None) -> Certificate:
    """Build the dual certificate at the point with group logits ``Z + b 1ᵀ``.

    Parameters
    ----------
    prob : GUFM
    Z : array (K, G)
        ``W @ Hbar`` at the candidate point (group features, no bias).
    b : array (K,) or None

    Returns
    -------
    Certificate
        ``lower_bound`` is valid for *any* input; it matches the primal value exactly at a
        global optimum of the relaxation (see docs/certificate.md, sections 4 and 7).

    Examples
    --------
    At the closed-form optimum the bound meets the value; at any other point it stays below:

    >>> import numpy as np
    >>> from gufm.model.problem import GUFM
    >>> from gufm.solvers import solve
    >>> prob = GUFM(counts=[2, 2, 2], dim=4, lam_W=0.1)
    >>> res = solve(prob, method="closed_form")
    >>> cert = certify(prob, res.W @ res.class_features)
    >>> bool(abs(cert.lower_bound - res.value) < 1e-9)
    True
    >>> bool(certify(prob, np.zeros((3, 3))).lower_bound <= res.value)
    True
    """
    g = prob.groups
    Z = np.asarray(to_numpy(Z), dtype=float)
    if Z.shape != (prob.K, prob.G):
        raise ValueError(f"Z must have shape (K, G) = ({prob.K}, {prob.G}), got {Z.shape}")
    logits = Z if b is None else Z + np.asarray(to_numpy(b), dtype=float)[:, None]
    p, Q = g.weights, g.targets
    Y = weighted_loss_grad(prob.loss, logits, Q, p)
    reason = ""
    if prob.has_bias and prob.lam_b == 0:
        # unpenalised bias: the dual requires Y 1 = 0 exactly; remove the row means (column
        # sums stay zero, so CE's s_g keep summing to one; the domain is re-checked by g*)
        Y = Y - Y.mean(1, keepdims=True)
    lam2 = 2.0 * prob.lam_W
    YtY = (Y.T @ Y) / lam2
    fm = prob.feature_model
    block = fm.dual_diagonal(Z, Y, prob.rho, g.counts, prob.lam_H)

    if block.repair == "scale":
        D = block.diag
        # largest s <= 1 with D - s^2 YtY >= 0  <=>  s^2 <= 1 / lambda_max(D^-1/2 YtY D^-1/2)
        Dm = 1.0 / np.sqrt(D)
        w, V = scipy.linalg.eigh(np.diag(D) - YtY)
        lmin, vec = float(w[0]), V[:, 0]
        top = float(scipy.linalg.eigvalsh(Dm[:, None] * YtY * Dm[None, :])[-1])
        s = 1.0 if top <= 1.0 else 1.0 / math.sqrt(top) * (1 - 1e-12)
        Ys = s * Y
        lb = -conjugate(prob.loss, Ys, Q, p)
        if prob.has_bias and prob.lam_b > 0:
            lb -= float((Ys.sum(1) ** 2).sum()) / (2 * prob.lam_b)
        return Certificate(lb, lmin, 1.0 - s, Ys, None, vec, reason)

    mu = block.diag
    gstar = conjugate(prob.loss, Y, Q, p)
    bias = (float((Y.sum(1) ** 2).sum()) / (2 * prob.lam_b)
            if prob.has_bias and prob.lam_b > 0 else 0.0)
    # a shift t costs the bound rho^2 G t (dual_term); one costing at most
    # NEGLIGIBLE_BOUND_COST of the bound needs no eigenpair (gufm.model.psd.psd_shift)
    negligible = 0.0
    if not math.isinf(gstar):
        lb0 = abs(-gstar - fm.dual_term(mu, prob.rho) - bias)
        negligible = NEGLIGIBLE_BOUND_COST * lb0 / max(prob.rho**2 * len(mu), 1e-300)
    # one Cholesky proves the shift in the common case; LOBPCG/eigh when S is indefinite
    # (gufm.model.psd: the shift includes the factorisation's rounding bound)
    ps = psd_shift(np.diag(mu) - YtY, negligible=negligible)
    lmin, vec, t = ps.lambda_min, ps.vector, ps.shift
    mu = mu + t
    if math.isinf(gstar):
        return Certificate(-math.inf, lmin, t, Y, mu, vec, "Y outside the conjugate's domain")
    lb = -gstar - fm.dual_term(mu, prob.rho) - bias
    return Certificate(lb, lmin, t, Y, mu, vec, reason)
