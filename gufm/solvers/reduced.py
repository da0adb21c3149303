"""Reduced-problem gradient solver: L-BFGS over (W, b, one feature per group) in float64.

The reduced problem (spec section 2) has one feature per group, so its size is
``O((K + G) p)`` whatever N is.  Rotation invariance lets us solve in ``p <= m`` dimensions
(``m = d - 1`` for ``layernorm``, else ``d``) and embed the solution in ``R^d`` with an
orthonormal basis of the feature subspace; ``p`` starts at ``min(m, K + 1)`` and grows by
*escaping saddles*: when the dual certificate's Schur complement has a negative eigenvalue
with eigenvector ``v``, the lift ``[W, -eps Y v/λ_W]``, ``[H; eps vᵀ]`` is a second-order
descent direction (Burer–Monteiro), and L-BFGS restarts from it.

Constraints are handled by smooth parametrisations, so an unconstrained quasi-Newton method
applies: sphere-type features are ``ρ v/‖v‖``; ball features are the first ``p`` coordinates of
``ρ v/‖v‖`` with ``v ∈ R^{p+1}`` (the projection of a sphere onto a ball); penalty features are
free.  The objective and gradient come from :func:`gufm.objective.evaluate`, run on numpy (CPU) or
torch (any device).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from gufm._util import limit_threads
from gufm.model.certificate import Certificate, certify
from gufm.model.geometry import feature_basis, simplex_etf
from gufm.model.objective import column_data, evaluate, group_objective
from gufm.model.problem import GUFM
from gufm.solvers.lbfgs import lbfgs
from gufm.solvers.result import ATOL, RTOL, SolveResult


@dataclass
class _Param:
    """Flat-vector parametrisation of a reduced point in dimension ``p``."""

    prob: GUFM
    p: int
    device: str | None = None

    def __post_init__(self) -> None:
        prob = self.prob
        self.K, self.G = prob.K, prob.G
        self.q = self.p + 1 if prob.features == "ball" else self.p
        self.nW = self.K * self.p
        self.nb = self.K if prob.has_bias else 0
        Q, w, n = column_data(prob, prob.G, "groups")
        self.consts = tuple(self._arr(a) for a in (Q, w, n))
        self.nfev = 0

    # array conversion --------------------------------------------------------
    def _arr(self, a: np.ndarray):
        if self.device is None:
            return np.asarray(a, dtype=float)
        import torch

        return torch.as_tensor(np.asarray(a), dtype=torch.float64, device=self.device)

    def _np(self, a) -> np.ndarray:
        return a if self.device is None else a.detach().cpu().numpy()

    # packing -----------------------------------------------------------------
    def unpack(self, x: np.ndarray):
        W = x[: self.nW].reshape(self.K, self.p)
        b = x[self.nW : self.nW + self.nb] if self.nb else None
        V = x[self.nW + self.nb :].reshape(self.q, self.G)
        return W, b, V

    def pack(self, W: np.ndarray, b: np.ndarray | None, H: np.ndarray) -> np.ndarray:
        """Flat vector for the point ``(W, b, H)`` (H of shape (p, G), feasible)."""
        V = self.h_to_v(H)
        parts = [W.ravel()] + ([b.ravel()] if self.nb else []) + [V.ravel()]
        return np.concatenate(parts)

    def h_to_v(self, H: np.ndarray) -> np.ndarray:
        if self.prob.features == "ball":
            slack = np.sqrt(np.maximum(self.prob.rho**2 - (H**2).sum(0), 0.0))
            return np.vstack([H, slack[None, :]])
        return H

    def features(self, V):
        """Feature map ``V -> H`` and the data needed for the chain rule."""
        if self.prob.features == "penalty":
            return V, None
        norms = (V**2).sum(0) ** 0.5
        U = V / norms
        H = self.prob.rho * U
        return (H[: self.p] if self.prob.features == "ball" else H), (U, norms)

    def features_np(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        W, b, V = self.unpack(x)
        H, _ = self.features(V)
        return W, b, H

    # objective ---------------------------------------------------------------
    def fun(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        self.nfev += 1
        xt = self._arr(x)
        W, b, V = self.unpack(xt)
        H, aux = self.features(V)
        val, gr = evaluate(self.prob, W, b, H, *self.consts)
        gV = gr.H
        if aux is not None:
            U, norms = aux
            if self.prob.features == "ball":
                gU = self._pad(gr.H)
            else:
                gU = gr.H
            gV = self.prob.rho * (gU - U * (U * gU).sum(0)) / norms
        parts = [gr.W.reshape(-1)] + ([gr.b.reshape(-1)] if self.nb else []) + [gV.reshape(-1)]
        if self.device is None:
            return float(val), np.concatenate(parts)
        import torch

        return float(val), torch.cat(parts).cpu().numpy()

    def _pad(self, gH):
        z = gH[:1] * 0
        if self.device is None:
            return np.vstack([gH, z])
        import torch

        return torch.cat([gH, z], 0)


def _initial_point(prob: GUFM, p: int, init: str, rng: np.random.Generator):
    K, G = prob.K, prob.G
    use_etf = init == "etf" or (
        init == "auto" and prob.hard_labels and prob.loss == "ce" and p >= K - 1
    )
    if init not in ("auto", "etf", "random"):
        raise ValueError(f"init must be 'auto', 'etf' or 'random', got {init!r}")
    if use_etf and p < K - 1:
        raise ValueError(f"init='etf' needs p >= K - 1 = {K - 1}, got p = {p}")
    if use_etf:
        M = simplex_etf(K, p) + 1e-3 * rng.standard_normal((p, K))
        M /= np.linalg.norm(M, axis=0)
        if prob.features == "penalty":
            from gufm.solvers.closed_form import penalty_ce_scales

            sw, sh = penalty_ce_scales(K, float(np.mean(prob.groups.counts)), prob.lam_W, prob.lam_H)
            sw, sh = max(sw, 1e-2), max(sh, 1e-2)
        else:
            from gufm.solvers.closed_form import ce_etf_scale

            sh = prob.rho
            sw = ce_etf_scale(K, prob.rho, prob.lam_W)
        H = sh * M[:, prob.groups.targets.argmax(0)] if G != K else sh * M
        return sw * M.T, (np.zeros(K) if prob.has_bias else None), H
    H = rng.standard_normal((p, G))
    if prob.features != "penalty":
        H *= prob.rho / np.linalg.norm(H, axis=0)
    W = rng.standard_normal((K, p)) / math.sqrt(p)
    return W, (np.zeros(K) if prob.has_bias else None), H


def _lbfgs(param: _Param, x0: np.ndarray, gtol: float, maxiter: int):
    return lbfgs(param.fun, x0, gtol=gtol, maxiter=maxiter)


def _finish(prob: GUFM, param: _Param, x: np.ndarray):
    """Embed a reduced point in R^d and certify it."""
    Wp, b, Hp = param.features_np(x)
    E = feature_basis(prob.features, prob.dim, param.p)
    W, H = Wp @ E.T, E @ Hp
    value = group_objective(prob, W, b, H, check_feasible=False)
    cert = certify(prob, Wp @ Hp, b)
    return W, b, H, Wp, Hp, float(value), cert


def _lift(prob: GUFM, Wp, b, Hp, cert: Certificate, param_new: _Param):
    """Second-order descent step into one more dimension along the certificate's eigenvector."""
    v = cert.escape
    w_col = -(cert.Y @ v) / prob.lam_W
    scale = prob.rho if prob.features != "penalty" else max(float(np.abs(Hp).max()), 1e-3)
    best = None
    f0 = param_new.fun(param_new.pack(np.hstack([Wp, 0 * w_col[:, None]]), b,
                                      np.vstack([Hp, 0 * v[None, :]])))[0]
    for eps in scale * 0.5 ** np.arange(1, 20):
        Wn = np.hstack([Wp, eps * w_col[:, None]])
        Hn = np.vstack([Hp, eps * v[None, :]])
        x = param_new.pack(Wn, b, Hn)
        f = param_new.fun(x)[0]
        if f < f0:
            best = x
            break
    if best is None:  # no decrease found: plain random perturbation
        rng = np.random.default_rng(0)
        Hn = np.vstack([Hp, 1e-3 * scale * rng.standard_normal((1, Hp.shape[1]))])
        best = param_new.pack(np.hstack([Wp, np.zeros((Wp.shape[0], 1))]), b, Hn)
    return best


def solve_gradient(
    prob: GUFM,
    *,
    p: int | None = None,
    init: str = "auto",
    seed: int = 0,
    gtol: float = 1e-11,
    maxiter: int = 20000,
    max_escapes: int = 20,
    restarts: int = 3,
    device: str | None = None,
    rtol: float = RTOL,
    atol: float = ATOL,
    x0: tuple | None = None,
    symmetry: bool = True,
    threads: int | None = None,
) -> SolveResult:
    """Solve the reduced GUFM by L-BFGS, certify, and escape saddles until certified.

    Parameters
    ----------
    prob : GUFM
    p : int, optional
        Starting working dimension (default ``min(m, K + 1)``).
    init : {"auto", "etf", "random"}
        ``auto``: a perturbed simplex ETF for CE with hard labels, else random.
    seed : int
    gtol : float
        L-BFGS-B projected-gradient tolerance.
    maxiter : int
        L-BFGS iterations per round.
    max_escapes : int
        Rank lifts before giving up.
    restarts : int
        Extra random starts when the working dimension is maxed out and the certificate still
        fails (the rank constraint binds, e.g. ``K > m + 1``); the best value is kept.
    device : str, optional
        ``None`` evaluates with numpy; a torch device string (``"cpu"``, ``"cuda"``) evaluates
        with torch in float64 on that device.
    x0 : tuple (W, b, H), optional
        Warm start in ``d`` dimensions (``H`` of shape (d, G)); overrides ``init``.
    symmetry : bool
        First solve over the family invariant under permutations of equal-count classes
        (:mod:`gufm.solvers.symmetric`), lift, and return it if the full certificate holds;
        otherwise use it as the warm start.
    threads : int, optional
        BLAS/torch threads during the solve.  Default: 1 for small problems (``K p < 4e4``,
        where threading only adds overhead and oversubscription can cost 10x), else unchanged.
    """
    small = prob.K * min(prob.m, prob.K + prob.G) < 40000
    n_threads = threads if threads is not None else (1 if small else None)
    with limit_threads(n_threads):
        return _solve_gradient(prob, p=p, init=init, seed=seed, gtol=gtol, maxiter=maxiter,
                               max_escapes=max_escapes, restarts=restarts, device=device,
                               rtol=rtol, atol=atol, x0=x0, symmetry=symmetry)


def _solve_gradient(prob, *, p, init, seed, gtol, maxiter, max_escapes, restarts, device,
                    rtol, atol, x0, symmetry) -> SolveResult:
    t0 = time.perf_counter()
    sym_info: dict = {}
    if x0 is None and symmetry and device is None:
        from gufm.solvers.symmetric import solve_symmetric

        sym = solve_symmetric(prob, seed=seed, rtol=rtol / 10, atol=atol / 10)
        if sym is not None:
            Ws, bs, Hs, sym_info = sym
            E = feature_basis(prob.features, prob.dim, Ws.shape[1])
            W, H = Ws @ E.T, E @ Hs
            value = float(group_objective(prob, W, bs, H, check_feasible=False))
            cert = certify(prob, Ws @ Hs, bs)
            sym_info["sym_lower_bound"] = cert.lower_bound
            if value - cert.lower_bound <= atol + rtol * abs(value):
                return SolveResult(
                    problem=prob, value=value, lower_bound=cert.lower_bound, W=W, b=bs,
                    class_features=H, method="gradient", seconds=time.perf_counter() - t0,
                    stop_reason="certified (symmetry-reduced)", certificate=cert,
                    info={"symmetry_reduced": True, "p": Ws.shape[1], "escapes": 0,
                          "restarts": 0, "iterations": sym_info["sym_iterations"],
                          "device": "numpy", **sym_info},
                    rtol=rtol, atol=atol,
                )
            x0 = (W, bs, H)
    rng = np.random.default_rng(seed)
    p_max = min(prob.m, prob.K + prob.G)
    if p is None:
        p = min(prob.m, prob.K + 1)
    if not 1 <= p <= prob.m:
        raise ValueError(f"p must lie in [1, m] = [1, {prob.m}], got {p}")
    if x0 is not None:
        W0, b0, H0 = x0
        p = prob.m if prob.features == "layernorm" else prob.dim
        E = feature_basis(prob.features, prob.dim, p)
        W0, H0 = np.asarray(W0) @ E, E.T @ np.asarray(H0)
        b0 = None if b0 is None else np.asarray(b0, dtype=float)
    else:
        W0, b0, H0 = _initial_point(prob, p, init, rng)
    param = _Param(prob, p, device)
    x = param.pack(W0, b0, H0)
    history = []
    best = None
    best_cert: Certificate | None = None
    escapes = restarts_done = 0
    nit = 0
    while True:
        res = _lbfgs(param, x, gtol, maxiter)
        nit += int(res.nit)
        x = res.x
        W, b, H, Wp, Hp, value, cert = _finish(prob, param, x)
        history.append({"p": param.p, "value": value, "lower_bound": cert.lower_bound,
                        "lambda_min": cert.lambda_min, "message": str(res.message)})
        # every certificate bounds the global optimum, whatever point it came from:
        # keep the lowest value and the highest bound seen over all rounds
        if best is None or value < best[0]:
            best = (value, W, b, H, param.p)
        if best_cert is None or cert.lower_bound > best_cert.lower_bound:
            best_cert = cert
        value = best[0]
        cert_lb = best_cert.lower_bound
        gap = value - cert_lb
        if math.isfinite(gap) and gap <= atol + rtol * abs(value):
            reason = "certified"
            break
        lift_possible = param.p < p_max and cert.escape is not None and cert.lambda_min < 0
        if lift_possible and escapes < max_escapes:
            escapes += 1
            new = _Param(prob, param.p + 1, device)
            new.nfev = param.nfev
            x = _lift(prob, Wp, b, Hp, cert, new)
            param = new
            continue
        if restarts_done < restarts and param.p >= p_max:
            restarts_done += 1
            W0, b0, H0 = _initial_point(prob, param.p, "random", rng)
            x = param.pack(W0, b0, H0)
            continue
        reason = (
            "not certified: rank constraint binds (lambda_min < 0 at full dimension)"
            if cert.lambda_min < 0 and param.p >= p_max
            else f"not certified: {res.message}"
        )
        break
    value, W, b, H, pused = best
    cert = best_cert
    return SolveResult(
        problem=prob, value=value, lower_bound=cert.lower_bound, W=W, b=b, class_features=H,
        method="gradient", seconds=time.perf_counter() - t0,
        stop_reason=reason if reason == "certified" else f"{reason}; best of {len(history)} rounds",
        certificate=cert,
        info={"symmetry_reduced": False, **sym_info, "p": pused, "escapes": escapes,
              "restarts": restarts_done, "iterations": nit, "nfev": param.nfev,
              "rounds": history, "device": device or "numpy"},
        rtol=rtol, atol=atol,
    )
