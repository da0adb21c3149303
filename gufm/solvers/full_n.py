r"""The baseline: gradient methods over all N features in the ambient dimension d.

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
import time

import numpy as np

from gufm.model.certificate import certify
from gufm.model.objective import column_data, evaluate, objective
from gufm.model.problem import GUFM
from gufm.solvers.lbfgs import lbfgs
from gufm.solvers.result import ATOL, RTOL, SolveResult

OPTIMIZERS = ("lbfgs", "adam", "gd")


class _FullParam:
    def __init__(self, prob: GUFM):
        self.prob = prob
        K, d, N = prob.K, prob.dim, prob.N
        self.q = d + 1 if prob.features == "ball" else d
        self.nW, self.nb = K * d, (K if prob.has_bias else 0)
        self.consts = column_data(prob, N, "samples")
        self.n = self.nW + self.nb + self.q * N

    def unpack(self, x):
        prob = self.prob
        W = x[: self.nW].reshape(prob.K, prob.dim)
        b = x[self.nW : self.nW + self.nb] if self.nb else None
        V = x[self.nW + self.nb :].reshape(self.q, prob.N)
        return W, b, V

    def features(self, V):
        prob = self.prob
        if prob.features == "penalty":
            return V, None
        U = V - V.mean(0) if prob.features == "layernorm" else V
        norms = np.sqrt((U * U).sum(0))
        U = U / norms
        H = prob.rho * U
        return (H[: prob.dim] if prob.features == "ball" else H), (U, norms)

    def fun(self, x):
        prob = self.prob
        W, b, V = self.unpack(x)
        H, aux = self.features(V)
        val, gr = evaluate(prob, W, b, H, *self.consts)
        gV = gr.H
        if aux is not None:
            U, norms = aux
            gU = np.vstack([gr.H, np.zeros((1, prob.N))]) if prob.features == "ball" else gr.H
            gV = prob.rho * (gU - U * (U * gU).sum(0)) / norms
            if prob.features == "layernorm":
                gV = gV - gV.mean(0)
        parts = [gr.W.ravel()] + ([gr.b.ravel()] if self.nb else []) + [gV.ravel()]
        return float(val), np.concatenate(parts)


def _first_order(fun, x, *, optimizer, lr, maxiter, target, gtol):
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
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    param = _FullParam(prob)
    K, d, N = prob.K, prob.dim, prob.N
    x0 = np.concatenate([
        rng.standard_normal(K * d) / math.sqrt(d),
        np.zeros(param.nb),
        rng.standard_normal(param.q * N) * (1.0 if prob.features != "penalty" else 0.1),
    ])
    if optimizer == "lbfgs":
        deadline = None if max_seconds is None else t0 + max_seconds

        def out_of_time(x: np.ndarray, f: float) -> bool:
            return deadline is not None and time.perf_counter() > deadline

        if target is None:
            res = lbfgs(param.fun, x0, gtol=gtol, maxiter=maxiter, memory=memory,
                        callback=out_of_time, callback_every=1)
        else:  # stop at the target: wrap fun to raise once reached
            res = _lbfgs_to_target(param.fun, x0, gtol, maxiter, memory, target, out_of_time)
        x, nit, msg = res.x, res.nit, res.message
        if msg == "stopped by callback":
            msg = f"time limit ({max_seconds} s)"
    else:
        x, _, nit, msg = _first_order(param.fun, x0, optimizer=optimizer, lr=lr,
                                      maxiter=maxiter, target=target, gtol=gtol)
    W, b, V = param.unpack(x)
    H, _ = param.features(V)
    value = float(objective(prob, W, b, H, check_feasible=False))
    g = prob.groups
    Hbar = (H @ _membership(g.sample_group, prob.G)) / g.counts
    cert = certify(prob, W @ Hbar, b)
    return SolveResult(
        problem=prob, value=value, lower_bound=cert.lower_bound, W=W.copy(),
        b=None if b is None else b.copy(), class_features=Hbar, method="full",
        seconds=time.perf_counter() - t0, stop_reason=f"{optimizer}: {msg}", certificate=cert,
        info={"optimizer": optimizer, "iterations": nit, "n_variables": param.n},
        rtol=rtol, atol=atol,
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
        from gufm.solvers.lbfgs import LBFGSResult

        return LBFGSResult(r.x, math.nan, math.nan, calls["n"], calls["n"],
                           "target value reached")
