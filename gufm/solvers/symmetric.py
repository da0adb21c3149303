r"""Exact symmetry reduction for hard labels with repeated class counts.

Classes with equal counts are exchangeable, so the convex relaxation (docs/certificate.md, section 1) has an
optimum invariant under permuting them.  We search that invariant family directly: classes are
grouped into *types* ``t`` (equal counts ``n_t``, multiplicity ``m_t``) and, for class ``k`` of
type ``t``,

.. math::

    h_k = \big(u_t,\; a_t s_k\big), \qquad w_k = \big(v_t,\; c_t s_k\big),

with shared type vectors :math:`u_t, v_t \in R^q` and, for each type, unit vectors
:math:`s_k` forming a simplex ETF of :math:`m_t` vectors in a private :math:`(m_t-1)`-dimensional
block (:math:`s_j^\top s_k = -1/(m_t - 1)` within a type, ``0`` across types).  The logits of a
class of type ``t`` are then :math:`z_{own} = v_t^\top u_t + c_t a_t`, :math:`m_t - 1` copies of
:math:`z_{same} = v_t^\top u_t - c_t a_t/(m_t - 1)` and :math:`m_{t'}` copies of
:math:`v_{t'}^\top u_t` for each other type, so the objective costs ``O(T^2 q)`` instead of
``O(K^2 p)``.  The reduced optimum is lifted to all K classes and **certified with the full K x K
dual certificate**; nothing is assumed about the symmetric point being optimal — when the
certificate fails, the caller falls back to the general solver from this warm start.
"""

from __future__ import annotations

import numpy as np
import torch

from gufm.model.certificate import certify
from gufm.model.geometry import simplex_etf
from gufm.model.problem import GUFM
from gufm.model.typed import TypedMatrix, Types, certify_typed, class_types
from gufm.solvers.closed_form import etf_scales
from gufm.solvers.finish import Budget
from gufm.solvers.lbfgs import lbfgs
from gufm.solvers.result import ATOL, is_certified, loss_scale


def shared_dim(prob: GUFM, types: Types) -> int:
    """Dimension ``q`` of the shared block: ``min(2T, m - (K - T))`` (0 if it does not fit).

    Examples
    --------
    >>> from gufm.model.problem import GUFM
    >>> prob = GUFM(counts=[3, 3, 1, 3, 1], dim=8)        # T = 2 types, m = 7
    >>> shared_dim(prob, class_types(prob))               # min(4, 7 - 3)
    4
    """
    return max(0, min(2 * types.T, prob.m - (prob.K - types.T)))


class _SymParam:
    def __init__(self, prob: GUFM, types: Types, q: int):
        self.prob, self.types, self.q = prob, types, q
        T = types.T
        self.T = T
        self.has_a = torch.tensor(types.mult >= 2, dtype=torch.float64)
        self.mult = torch.tensor(types.mult, dtype=torch.float64)
        self.wt = torch.tensor(types.mult * types.counts / prob.N, dtype=torch.float64)
        r = prob.feature_model.latent_rows(q + 1)  # feature vector [u_t, a_t, (slack)]
        self.sizes = [q * T, T, r * T] + ([T] if prob.has_bias else [])
        self.r = r

    def split(self, x: torch.Tensor):
        parts = torch.split(x, self.sizes)
        V = parts[0].reshape(self.q, self.T)
        c = parts[1] * self.has_a
        F = parts[2].reshape(self.r, self.T)
        b = parts[3] if self.prob.has_bias else None
        return V, c, F, b

    def features(self, F: torch.Tensor):
        mask = torch.ones(self.r, 1, dtype=F.dtype)
        mask[self.q] = 0
        F = F * mask + F * (1 - mask) * self.has_a  # a_t exists only when m_t >= 2
        Fn, _ = self.prob.feature_model.parametrise(F, self.prob.rho)
        return Fn[: self.q], Fn[self.q]

    def value(self, x: torch.Tensor) -> torch.Tensor:
        prob, m = self.prob, self.mult
        V, c, F, b = self.split(x)
        U, a = self.features(F)
        S = V.T @ U  # S[t', t] = v_t'^T u_t
        if b is not None:
            S = S + b[:, None]
        diag = torch.diagonal(S)
        inner = c * a
        z_own = diag + inner
        z_same = diag - inner / torch.clamp(m - 1, min=1)
        eye = torch.eye(self.T, dtype=S.dtype)
        mult_other = (m[:, None] * (1 - eye))  # multiplicity of S[t', t], t' != t
        if prob.loss == "ce":
            # logsumexp over {other types (m_t'), same type (m_t - 1), own (1)}
            zmax = torch.maximum(S.max(0).values, z_own)
            terms = (mult_other * torch.exp(S - zmax)).sum(0) + (m - 1) * torch.exp(
                z_same - zmax) + torch.exp(z_own - zmax)
            per_class = torch.log(terms) + zmax - z_own
        else:
            per_class = 0.5 * ((z_own - 1) ** 2 + (m - 1) * z_same**2
                               + (mult_other * S**2).sum(0))
        val = (self.wt * per_class).sum()
        val = val + prob.lam_W / 2 * (m * ((V**2).sum(0) + c**2)).sum()
        if b is not None:
            val = val + prob.lam_b / 2 * (m * b**2).sum()
        n = torch.tensor(self.types.counts, dtype=S.dtype)
        freg, _ = prob.feature_model.regulariser(torch.cat([U, a[None]], 0), m * n, prob.lam_H)
        val = val + freg
        return val

    def fun(self, x: np.ndarray):
        xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        v = self.value(xt)
        (g,) = torch.autograd.grad(v, xt)
        return float(v.detach()), g.numpy()

    def hessp(self, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Hessian-vector product by double backward."""
        xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        (g,) = torch.autograd.grad(self.value(xt), xt, create_graph=True)
        (hv,) = torch.autograd.grad(g, xt, grad_outputs=torch.as_tensor(v, dtype=torch.float64))
        return hv.numpy()

    def newton_step(self, x: np.ndarray, maxiter: int = 300) -> np.ndarray:
        """``x + d`` with ``H d = -g`` solved by MINRES (the Hessian is singular: rotations)."""
        import scipy.sparse.linalg as sla

        g = self.fun(x)[1]
        op = sla.LinearOperator((x.size, x.size), matvec=lambda v: self.hessp(x, v), dtype=float)
        d, _ = sla.minres(op, -g, maxiter=min(maxiter, x.size), rtol=1e-10)
        return x + d

    def typed_logits(self, x: np.ndarray) -> tuple[TypedMatrix, np.ndarray | None]:
        """``(Z, b)`` of the lifted point without lifting: ``Z = W H`` as a
        :class:`~gufm.model.typed.TypedMatrix` (``A[t', t] = v_t'ᵀ u_t`` across types,
        ``z_same`` inside a type, ``z_own`` on the diagonal) and the bias per class."""
        types = self.types
        xt = torch.tensor(x, dtype=torch.float64)
        with torch.no_grad():
            V, c, F, b = self.split(xt)
            U, a = self.features(F)
        S = (V.T @ U).numpy()
        ca = (c * a).numpy()
        m = types.mult.astype(float)
        A = S.copy()
        inner = types.mult >= 2
        A[np.diag_indices_from(A)] = np.where(inner, S.diagonal() - ca / np.maximum(m - 1, 1),
                                              S.diagonal())
        e = np.where(inner, ca * m / np.maximum(m - 1, 1), 0.0)
        bb = None if b is None else b.numpy()[types.of_class]
        return TypedMatrix(types, A, e), bb

    def lift(self, x: np.ndarray):
        """Full ``(W, b, H)`` in ``R^p``, ``p = q + sum_t (m_t - 1)``."""
        types, K = self.types, self.prob.K
        xt = torch.tensor(x, dtype=torch.float64)
        with torch.no_grad():
            V, c, F, b = self.split(xt)
            U, a = self.features(F)
        V, c, U, a = V.numpy(), c.numpy(), U.numpy(), a.numpy()
        p = self.q + int((types.mult - 1).sum())
        W = np.zeros((K, p))
        H = np.zeros((p, K))
        off = self.q
        for t in range(types.T):
            idx = np.flatnonzero(types.of_class == t)
            W[idx, : self.q] = V[:, t]
            H[: self.q, idx] = U[:, [t]]
            mt = len(idx)
            if mt >= 2:
                Sx = simplex_etf(mt)  # (mt - 1, mt)
                W[idx, off : off + mt - 1] = c[t] * Sx.T
                H[off : off + mt - 1, idx] = a[t] * Sx
                off += mt - 1
        bb = None if b is None else b.numpy()[types.of_class]
        return W, bb, H


def _etf_start(prob: GUFM, types: Types, par: _SymParam, rng: np.random.Generator) -> np.ndarray:
    r"""The balanced optimum (a simplex ETF of all K classes) written in the symmetric family.

    For the ETF :math:`m_k = \sqrt{K/(K-1)}(e_k - \mathbf 1/K)`, the type means have Gram
    :math:`\tfrac{K}{K-1}(\operatorname{diag}(1/m_t) - 1/K)` and the within-type parts have norm
    :math:`\sqrt{K/(K-1)}\sqrt{1 - 1/m_t}`; a small perturbation breaks ties.
    """
    K, T, q = prob.K, types.T, par.q
    m = types.mult.astype(float)
    G = K / (K - 1.0) * (np.diag(1.0 / m) - 1.0 / K)
    w, V = np.linalg.eigh(G)
    U = (V * np.sqrt(np.clip(w, 0, None))).T[::-1][: min(q, T)]  # largest first
    U0 = np.zeros((q, T))
    U0[: U.shape[0]] = U
    a0 = np.sqrt(K / (K - 1.0) * (1.0 - 1.0 / m))
    sw, sh = etf_scales(prob)
    if prob.feature_model.radial:
        sh = 1.0  # the features are normalised: only directions matter
    F = np.vstack([sh * U0, sh * a0[None, :], np.zeros((par.r - q - 1, T))])
    F[: q] += 1e-3 * rng.standard_normal((q, T))
    parts = [(sw * U0).ravel(), sw * a0, F.ravel()]
    if prob.has_bias:
        parts.append(np.zeros(T))
    return np.concatenate(parts)


def solve_symmetric(prob: GUFM, *, seed: int = 0, gtol: float = 1e-9, maxiter: int = 20000,
                    rtol: float | None = None, atol: float = 0.0, newton_steps: int = 3,
                    budget: Budget | None = None):
    """Optimise over the symmetric family and lift; returns ``(W, b, H, info)`` in ``R^p``
    coordinates (``p <= m``), or ``None`` when the reduction does not apply or does not fit.

    With ``rtol`` set, up to ``newton_steps`` Newton steps follow L-BFGS until the lifted
    point's dual certificate closes the gap of :func:`gufm.solvers.result.is_certified`.
    ``budget`` (a :class:`gufm.solvers.finish.Budget`) stops L-BFGS and skips Newton steps
    once spent.  The caller finishes (evaluates and certifies) the lifted point.

    Examples
    --------
    >>> from gufm.model.problem import GUFM
    >>> W, b, H, info = solve_symmetric(GUFM(counts=[4, 4, 4, 2, 2, 2], dim=7, lam_W=0.05))
    >>> W.shape, H.shape, info["types"]
    ((6, 6), (6, 6), 2)
    """
    types = class_types(prob)
    if types is None or types.T > 0.5 * prob.K:  # too few ties to pay off (vs trust regions)
        return None
    q = shared_dim(prob, types)
    if q < 1:
        return None
    par = _SymParam(prob, types, q)
    x0 = _etf_start(prob, types, par, np.random.default_rng(seed))
    budget = Budget(None) if budget is None else budget
    res = lbfgs(par.fun, x0, gtol=gtol, maxiter=maxiter, callback=lambda x, f: budget.expired(),
                callback_every=1 if budget.max_seconds is not None else 50,
                stall_window=500, stall_rtol=rtol if rtol is not None else 1e-7,
                stall_atol=max(atol, ATOL) * loss_scale(prob))
    x, newton = res.x, 0
    if rtol is not None and not budget.expired():

        def closed(x: np.ndarray) -> bool:
            f = par.fun(x)[0]
            Zt, b = par.typed_logits(x)  # the lifted point's logits, O(K T) (no lift)
            cert = certify_typed(prob, types, Zt, b, dense=False)
            if cert is None:
                W, b, H = par.lift(x)
                cert = certify(prob, W @ H, b)
            return is_certified(prob, f, cert.lower_bound, rtol, atol)
        # Newton polish: quasi-Newton tails converge slowly on this ill-conditioned problem and
        # the certificate amplifies stationarity errors by rho^2 K; one or two Newton steps
        # (Hessian-vector products by double backward, MINRES for the singular Hessian) close it
        while not closed(x) and newton < newton_steps and not budget.expired():
            newton += 1
            xn = par.newton_step(x)
            if np.abs(par.fun(xn)[1]).max() >= np.abs(par.fun(x)[1]).max():
                break
            x = xn
    W, b, H = par.lift(x)
    return W, b, H, {"types": types.T, "q": q, "sym_iterations": res.nit, "newton_steps": newton,
                     "sym_message": res.message, "sym_value": res.fun}
