r"""The baseline: gradient methods over every sample's feature, in the ambient dimension d.

This is how published UFM experiments solve the model (e.g. Zhu et al. 2021: gradient descent
on ``W``, ``b`` and every sample's feature).  Features are parametrised as in a network's last
layer: ``layernorm``: :math:`h = \rho\,Pv/\lVert Pv\rVert` with :math:`P = I - \mathbf 1\mathbf
1^\top/d` (LayerNorm without affine parameters, eps = 0); ``sphere``: :math:`\rho v/\lVert v\rVert`;
``ball``: first d coordinates of :math:`\rho v/\lVert v\rVert`, :math:`v \in R^{d+1}`;
``penalty``: free.  The value is the objective at the returned point; the lower bound is the
dual certificate at the per-group mean logits (valid for any point, by weak duality).
"""

from __future__ import annotations

import math

import numpy as np

from gufm.model.objective import column_data, evaluate
from gufm.model.problem import GUFM
from gufm.solvers.finish import Budget, finish
from gufm.solvers.lbfgs import LBFGSResult, lbfgs
from gufm.solvers.result import ATOL, RTOL, SolveResult

OPTIMIZERS = ("lbfgs", "adam", "gd")


class FullParametrisation:
    """Flat-vector parametrisation of ``(W, b, all N features)`` in the ambient dimension.

    Features come from the feature model's ambient parametrisation
    (:meth:`gufm.model.features.FeatureModel.parametrise` with ``ambient=True``).

    Examples
    --------
    >>> import numpy as np
    >>> from gufm.model.problem import GUFM
    >>> par = FullParametrisation(GUFM(counts=[2, 1], dim=3, lam_W=0.1))
    >>> f, g = par.fun(np.random.default_rng(0).standard_normal(par.n)); g.shape == (par.n,)
    True
    """

    def __init__(self, prob: GUFM):
        self.prob = prob
        self.fm = prob.feature_model
        K, d, N = prob.K, prob.dim, prob.N
        self.q = self.fm.latent_rows(d)
        self.nW, self.nb = K * d, (K if prob.has_bias else 0)
        self.consts = column_data(prob, N, "samples")
        self.n = self.nW + self.nb + self.q * N

    def unpack(self, x: np.ndarray):
        """``(W, b, V)`` views of a flat vector."""
        prob = self.prob
        W = x[: self.nW].reshape(prob.K, prob.dim)
        b = x[self.nW : self.nW + self.nb] if self.nb else None
        V = x[self.nW + self.nb :].reshape(self.q, prob.N)
        return W, b, V

    def features(self, V: np.ndarray):
        """Per-sample features ``H`` (d, N) and the data for the chain rule."""
        return self.fm.parametrise(V, self.prob.rho, ambient=True)

    def fun(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """Objective and gradient at the flat vector ``x``."""
        prob = self.prob
        W, b, V = self.unpack(x)
        H, aux = self.features(V)
        val, gr = evaluate(prob, W, b, H, *self.consts)
        gV = self.fm.vjp(gr.H, aux, prob.rho, ambient=True)
        parts = [gr.W.ravel()] + ([gr.b.ravel()] if self.nb else []) + [gV.ravel()]
        return float(val), np.concatenate(parts)


def _first_order(fun, x, *, optimizer, lr, maxiter, target, gtol, budget: Budget):
    """Plain gradient descent or Adam (Kingma & Ba defaults) on the flat vector."""
    m = np.zeros_like(x) if optimizer == "adam" else None
    v = np.zeros_like(x) if optimizer == "adam" else None
    b1, b2, eps = 0.9, 0.999, 1e-8
    f, g = fun(x)
    it = 0
    msg = "maximum iterations reached"
    for it in range(1, maxiter + 1):  # noqa: B007
        if target is not None and f <= target:
            msg = "target value reached"
            break
        if float(np.abs(g).max()) <= gtol:
            msg = "gradient tolerance reached"
            break
        if budget.expired():
            msg = budget.reason()
            break
        if optimizer == "gd":
            x = x - lr * g
        else:
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            x = x - lr * (m / (1 - b1**it)) / (np.sqrt(v / (1 - b2**it)) + eps)
        f, g = fun(x)
        if not math.isfinite(f):
            msg = "diverged (non-finite objective)"
            break
    return x, f, it, msg


def solve_full(
    prob: GUFM,
    *,
    optimizer: str = "lbfgs",
    lr: float = 1e-2,
    maxiter: int = 100000,
    gtol: float = 1e-11,
    target: float | None = None,
    seed: int = 0,
    memory: int = 10,
    max_seconds: float | None = None,
    rtol: float = RTOL,
    atol: float = ATOL,
) -> SolveResult:
    """Optimise all N features, W and b from a random start (the literature's method).

    Parameters
    ----------
    optimizer : {"lbfgs", "adam", "gd"}
    lr : float
        Step size of ``adam``/``gd``.
    maxiter : int
    gtol : float
        Gradient sup-norm tolerance (relative to ``max(1, |F|)`` for L-BFGS).
    target : float, optional
        Stop as soon as the objective is ``<= target`` (benchmarks use the certified optimum
        times ``1 + 1e-6``).
    memory : int
        L-BFGS history (each pair costs ``2 (K + N) d`` doubles).
    max_seconds : float, optional
        Wall-time budget; the stop reason says "time limit" when it ends the run.

    Examples
    --------
    >>> from gufm.model.problem import GUFM
    >>> res = solve_full(GUFM(counts=[2, 2], dim=3, lam_W=0.1), max_seconds=5)
    >>> res.method, res.iterations > 0
    ('full', True)
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    budget = Budget(max_seconds)
    t0 = budget.t0
    rng = np.random.default_rng(seed)
    param = FullParametrisation(prob)
    K, d, N = prob.K, prob.dim, prob.N
    x0 = np.concatenate([
        rng.standard_normal(K * d) / math.sqrt(d),
        np.zeros(param.nb),
        rng.standard_normal(param.q * N) * (1.0 if prob.feature_model.radial else 0.1),
    ])
    if optimizer == "lbfgs":

        def out_of_time(x: np.ndarray, f: float) -> bool:
            return budget.expired()

        if target is None:
            res = lbfgs(param.fun, x0, gtol=gtol, maxiter=maxiter, memory=memory,
                        callback=out_of_time, callback_every=1)
        else:  # stop at the target: wrap fun to raise once reached
            res = _lbfgs_to_target(param.fun, x0, gtol, maxiter, memory, target, out_of_time)
        x, nit, msg = res.x, res.nit, res.message
        if msg == "stopped by callback":
            msg = budget.reason()
    else:
        x, _, nit, msg = _first_order(param.fun, x0, optimizer=optimizer, lr=lr,
                                      maxiter=maxiter, target=target, gtol=gtol, budget=budget)
    W, b, V = param.unpack(x)
    H, _ = param.features(V)
    g = prob.groups
    Hbar = (H @ _membership(g.sample_group, prob.G)) / g.counts
    return finish(
        prob, W, b, Hbar, method="full", t0=t0, stop_reason=f"{optimizer}: {msg}",
        iterations=nit, rtol=rtol, atol=atol, reduced=False, H_samples=H,
        info={"optimizer": optimizer, "n_variables": param.n},
    )


def _membership(sample_group: np.ndarray, G: int):
    import scipy.sparse

    N = sample_group.shape[0]
    return scipy.sparse.csr_matrix((np.ones(N), (np.arange(N), sample_group)), shape=(N, G))


class _Reached(Exception):
    def __init__(self, x):
        self.x = x


def _lbfgs_to_target(fun, x0, gtol, maxiter, memory, target, callback=None):
    calls = {"n": 0}

    def wrapped(x):
        f, g = fun(x)
        calls["n"] += 1
        if f <= target:
            raise _Reached(x.copy())
        return f, g

    try:
        return lbfgs(wrapped, x0, gtol=gtol, maxiter=maxiter, memory=memory, callback=callback,
                     callback_every=1)
    except _Reached as r:
        return LBFGSResult(r.x, math.nan, math.nan, calls["n"], calls["n"],
                           "target value reached")
