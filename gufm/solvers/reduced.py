"""Reduced-problem gradient solver: L-BFGS over (W, b, one feature per group) in float64.

The reduced problem (docs/reduction.md) has one feature per group, so its size is
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
from dataclasses import dataclass

import numpy as np
import torch

from gufm._util import limit_threads, reuse_freed_memory
from gufm.backend import Array, get_backend, is_torch, to_numpy
from gufm.model.certificate import Certificate, certify
from gufm.model.geometry import centred_simplex_etf, simplex_etf
from gufm.model.objective import column_data, evaluate, group_objective
from gufm.model.problem import GUFM
from gufm.model.typed import class_types
from gufm.solvers.closed_form import etf_scales
from gufm.solvers.finish import Budget, embed, finish
from gufm.solvers.lbfgs import lbfgs
from gufm.solvers.result import (
    ATOL,
    RTOL,
    SolveResult,
    check_tolerances,
    is_certified,
    loss_scale,
)
from gufm.solvers.riemannian import frame_start, supports, trust_region
from gufm.solvers.symmetric import solve_symmetric


@dataclass
class ReducedParametrisation:
    """Flat-vector parametrisation of a reduced point in working dimension ``p``.

    The vector holds ``W`` (K, p), ``b`` (K,) when the problem has a bias, and the latent
    features ``V`` (q, G) of the feature model (``H = fm.parametrise(V)``, see
    :mod:`gufm.model.features`).  :meth:`fun` returns the objective and its gradient in the
    flat vector, evaluated with numpy or with torch on ``device``.

    Examples
    --------
    >>> import numpy as np
    >>> from gufm.model.problem import GUFM
    >>> par = ReducedParametrisation(GUFM(counts=[2, 1], dim=3, lam_W=0.1), p=2)
    >>> x = par.pack(np.zeros((2, 2)), None, np.array([[1.0, -1.0], [0.0, 0.0]]) * 3 ** 0.5)
    >>> round(par.fun(x)[0], 6) == round(float(np.log(2)), 6)
    True
    """

    prob: GUFM
    p: int
    device: str | None = None

    def __post_init__(self) -> None:
        prob = self.prob
        self.fm = prob.feature_model
        self.K, self.G = prob.K, prob.G
        self.q = self.fm.latent_rows(self.p)
        self.nW = self.K * self.p
        self.nb = self.K if prob.has_bias else 0
        Q, w, n = column_data(prob, prob.G, "groups")
        self.like = None if self.device is None else torch.zeros(
            (), dtype=torch.float64, device=self.device)
        self.nx = get_backend(self.like)
        self.consts = tuple(self.nx.from_numpy(a, like=self.like) for a in (Q, w, n))
        self.nfev = 0

    @property
    def size(self) -> int:
        """Length of the flat vector."""
        return self.nW + self.nb + self.q * self.G

    def unpack(self, x: Array) -> tuple[Array, Array | None, Array]:
        """``(W, b, V)`` views of a flat vector."""
        W = x[: self.nW].reshape(self.K, self.p)
        b = x[self.nW : self.nW + self.nb] if self.nb else None
        V = x[self.nW + self.nb :].reshape(self.q, self.G)
        return W, b, V

    def pack(self, W: np.ndarray, b: np.ndarray | None, H: np.ndarray) -> np.ndarray:
        """Flat vector for the point ``(W, b, H)`` (H of shape (p, G), feasible)."""
        V = self.fm.to_latent(H, self.prob.rho)
        parts = [W.ravel()] + ([b.ravel()] if self.nb else []) + [V.ravel()]
        return np.concatenate(parts)

    def point(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """The point ``(W, b, H)`` (numpy, reduced coordinates) of a flat vector."""
        W, b, V = self.unpack(np.asarray(x, dtype=float))
        H, _ = self.fm.parametrise(V, self.prob.rho)
        return W, b, H

    def fun(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """Objective and gradient at the flat vector ``x``."""
        self.nfev += 1
        xt = self.nx.from_numpy(x, like=self.like)
        W, b, V = self.unpack(xt)
        H, aux = self.fm.parametrise(V, self.prob.rho)
        val, gr = evaluate(self.prob, W, b, H, *self.consts)
        gV = self.fm.vjp(gr.H, aux, self.prob.rho)
        parts = [gr.W.reshape(-1)] + ([gr.b.reshape(-1)] if self.nb else []) + [gV.reshape(-1)]
        return float(val), self.nx.to_numpy(self.nx.concatenate(parts))


#: a round stops when STALL_WINDOW iterations lower F by at most STALL_FRACTION * rtol * |F|:
#: at that pace the certificate's gap cannot close (degenerate optima converge sublinearly)
STALL_WINDOW = 500
STALL_FRACTION = 1.0


def initial_point(prob: GUFM, p: int, init: str, rng: np.random.Generator):
    """A starting point ``(W, b, H)`` in ``p`` reduced dimensions.

    ``init="etf"`` (or ``"auto"`` for CE with hard labels and ``p >= K - 1``): a slightly
    perturbed simplex ETF at the balanced closed form's scales; when ``p >= K`` the exact ETF in
    the centred gauge (:func:`gufm.model.geometry.centred_simplex_etf`), only its extra rows
    perturbed; ``"random"``: Gaussian, the
    features moved onto the feature model's boundary.

    Examples
    --------
    >>> import numpy as np
    >>> from gufm.model.problem import GUFM
    >>> W, b, H = initial_point(GUFM(counts=[2, 2, 2], dim=4), 3, "etf", np.random.default_rng(0))
    >>> W.shape, b, H.shape
    ((3, 3), None, (3, 3))
    """
    K, G = prob.K, prob.G
    fm = prob.feature_model
    if init not in ("auto", "etf", "random"):
        raise ValueError(f"init must be 'auto', 'etf' or 'random', got {init!r}")
    use_etf = init == "etf" or (
        init == "auto" and prob.hard_labels and prob.loss == "ce" and p >= K - 1
    )
    if use_etf and p < K - 1:
        raise ValueError(f"init='etf' needs p >= K - 1 = {K - 1}, got p = {p}")
    if use_etf:
        if p >= K:
            # the centred gauge (close to the identity), unperturbed in its K rows: the
            # preconditioner's diagonal fits it best, and a random rotation of the gauge would
            # never be undone (a flat direction); rows beyond K are perturbed so the solver
            # can use them
            M = centred_simplex_etf(K, p)
            M[K:] = 1e-3 * rng.standard_normal((p - K, K))
        else:
            M = simplex_etf(K, p) + 1e-3 * rng.standard_normal((p, K))
        M /= np.linalg.norm(M, axis=0)
        sw, sh = etf_scales(prob)
        H = sh * M[:, prob.groups.targets.argmax(0)] if G != K else sh * M
        return sw * M.T, (np.zeros(K) if prob.has_bias else None), H
    if init == "auto" and prob.hard_labels and prob.loss == "mse" and p >= K and supports(prob):
        return frame_start(prob, p)  # the MSE closed form's orthogonal frame
    H = fm.on_boundary(rng.standard_normal((p, G)), prob.rho)
    W = rng.standard_normal((K, p)) / math.sqrt(p)
    return W, (np.zeros(K) if prob.has_bias else None), H


def _lift(prob: GUFM, Wp, b, Hp, cert: Certificate, param_new: ReducedParametrisation):
    """Second-order descent step into one more dimension along the certificate's eigenvector."""
    v = cert.escape
    w_col = -(cert.Y @ v) / prob.lam_W
    scale = prob.rho if prob.feature_model.radial else max(float(np.abs(Hp).max()), 1e-3)
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
    max_seconds: float | None = None,
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
        L-BFGS gradient tolerance, relative to ``|F|`` (so tiny optima are resolved too; a
        round also ends when it stalls, see :data:`STALL_WINDOW`).
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
        Warm start in ``d`` dimensions (``H`` of shape (d, G)); overrides ``init``.  When its
        arrays are torch tensors, the result's arrays are too (same dtype and device).
    symmetry : bool
        First solve over the family invariant under permutations of equal-count classes
        (:mod:`gufm.solvers.symmetric`), lift, and return it if the full certificate holds;
        otherwise use it as the warm start.
    threads : int, optional
        BLAS/torch threads during the solve.  Default: 1 for small problems (``K p < 4e4``,
        where threading only adds overhead and oversubscription can cost 10x), else unchanged.
    max_seconds : float, optional
        Wall-time budget; when it ends the solve, ``stop_reason`` starts with "time limit"
        and the best point so far is returned, certified only if its certificate holds.

    Notes
    -----
    When an iterate's arrays exceed 32 MiB (``K p > 4.2e6``, e.g. K > 2050 with d = K + 1),
    the solve runs inside :func:`gufm._util.reuse_freed_memory`: freed arrays stay in the
    heap for reuse instead of being unmapped and faulted in afresh (glibc; disable with the
    environment variable ``GUFM_HEAP_REUSE=0``).

    Examples
    --------
    >>> from gufm.model.problem import GUFM
    >>> res = solve_gradient(GUFM(counts=[3, 2, 1], dim=4, lam_W=0.05))
    >>> res.certified, res.method
    (True, 'gradient')
    """
    rtol, atol = check_tolerances(rtol, atol)
    budget = Budget(max_seconds)
    p_max = min(prob.m, prob.K + prob.G)
    small = prob.K * p_max < 40000
    n_threads = threads if threads is not None else (1 if small else None)
    # iterates above glibc's largest mmap threshold (32 MiB) are mmapped afresh every time:
    # keep them in the heap for the solve (gufm._util.reuse_freed_memory)
    large = 8 * max(prob.K, prob.G) * p_max > 2**25
    with limit_threads(n_threads), reuse_freed_memory(large):
        return _solve_gradient(prob, p=p, init=init, seed=seed, gtol=gtol, maxiter=maxiter,
                               max_escapes=max_escapes, restarts=restarts, device=device,
                               rtol=rtol, atol=atol, x0=x0, symmetry=symmetry, budget=budget)


def _solve_gradient(prob, *, p, init, seed, gtol, maxiter, max_escapes, restarts, device,
                    rtol, atol, x0, symmetry, budget: Budget) -> SolveResult:
    t0 = budget.t0
    like = None if x0 is None else next((a for a in x0 if is_torch(a)), None)
    sym_info: dict = {}
    # work in the normalised scale (radius 1, lam_W / rho^2; same logits) and map back
    orig = prob
    prob, rho = orig.normalised()
    fm = prob.feature_model
    if x0 is None and symmetry and device is None:
        sym = solve_symmetric(prob, seed=seed, rtol=rtol / 10, atol=atol / 10, budget=budget)
        if sym is not None:
            Ws, bs, Hs, sym_info = sym
            res = finish(orig, Ws / rho, bs, Hs * rho, method="gradient", t0=t0,
                         stop_reason="certified (symmetry-reduced)",
                         iterations=sym_info["sym_iterations"], rtol=rtol, atol=atol,
                         info={"symmetry_reduced": True, "p": Ws.shape[1], "escapes": 0,
                               "restarts": 0, "device": "numpy", **sym_info},
                         types=class_types(orig))
            sym_info["sym_lower_bound"] = res.lower_bound
            if res.certified:
                return res
            W, H = embed(prob, Ws, Hs)
            x0 = (W, bs, H)
    rng = np.random.default_rng(seed)
    p_max = min(prob.m, prob.K + prob.G)
    if p is None:
        p = min(prob.m, prob.K + 1)
    if not 1 <= p <= prob.m:
        raise ValueError(f"p must lie in [1, m] = [1, {prob.m}], got {p}")
    if x0 is not None:
        W0, b0, H0 = (None if a is None else np.asarray(to_numpy(a), dtype=float) for a in x0)
        p = prob.m
        E = fm.basis(prob.dim, p)
        W0, H0 = (W0 @ E) * rho, fm.project(E.T @ H0 / rho, prob.rho)
    else:
        W0, b0, H0 = initial_point(prob, p, init, rng)
    param = ReducedParametrisation(prob, p, device)
    x = param.pack(W0, b0, H0)
    history = []
    best = None
    best_cert: Certificate | None = None
    escapes = restarts_done = 0
    nit = 0

    def out_of_time(x: np.ndarray, f: float) -> bool:
        return budget.expired()

    # progress below the absolute tolerance floor cannot matter to the certificate
    stall_atol = max(atol, ATOL) * loss_scale(prob)

    while True:
        if supports(prob):  # second order: Riemannian trust regions (gufm.solvers.riemannian)
            res = trust_region(prob, param.p, x, gtol=gtol, maxiter=maxiter, device=device,
                               callback=out_of_time, stall_rtol=STALL_FRACTION * rtol)
        else:
            res = lbfgs(param.fun, x, gtol=gtol, maxiter=maxiter, callback=out_of_time,
                        callback_every=1 if budget.max_seconds is not None else 50,
                        stall_window=STALL_WINDOW, stall_rtol=STALL_FRACTION * rtol,
                        stall_atol=stall_atol,
                        fscale=0.0)
        nit += int(res.nit)
        x = res.x
        Wp, b, Hp = param.point(x)
        value = float(group_objective(prob, *_embedded(prob, Wp, b, Hp), check_feasible=False))
        cert = certify(prob, Wp @ Hp, b)
        history.append({"p": param.p, "value": value, "lower_bound": cert.lower_bound,
                        "lambda_min": cert.lambda_min, "message": str(res.message)})
        # every certificate bounds the global optimum, whatever point it came from:
        # keep the lowest value and the highest bound seen over all rounds
        if best is None or value < best[0]:
            best = (value, Wp, b, Hp, cert, param.p)
        if best_cert is None or cert.lower_bound > best_cert.lower_bound:
            best_cert = cert
        if is_certified(prob, best[0], best_cert.lower_bound, rtol, atol):
            reason = "certified"
            break
        if budget.expired():
            reason = f"not certified: {budget.reason()}"
            break
        lift_possible = param.p < p_max and cert.escape is not None and cert.lambda_min < 0
        if lift_possible and escapes < max_escapes:
            escapes += 1
            new = ReducedParametrisation(prob, param.p + 1, device)
            new.nfev = param.nfev
            x = _lift(prob, Wp, b, Hp, cert, new)
            param = new
            continue
        if restarts_done < restarts and param.p >= p_max:
            restarts_done += 1
            W0, b0, H0 = initial_point(prob, param.p, "random", rng)
            x = param.pack(W0, b0, H0)
            continue
        reason = (
            f"not certified: rank constraint binds (lambda_min = {cert.lambda_min:.3g} < 0 at "
            f"full dimension; last round: {res.message})"
            if cert.lambda_min < 0 and param.p >= p_max
            else f"not certified: {res.message}"
        )
        break
    value, Wp, b, Hp, cert, pused = best
    # the normalised problem has the same logits, value and optimum at the mapped point: its
    # value is orig's, and its certificate rescales to orig's (Certificate.rescaled)
    return finish(
        orig, Wp / rho, b, Hp * rho, method="gradient", t0=t0,
        stop_reason=reason if reason == "certified" else f"{reason}; best of {len(history)} rounds",
        iterations=nit, rtol=rtol, atol=atol, certificate=cert.rescaled(rho), value=value,
        bounds=(best_cert.lower_bound,), like=like,
        info={"symmetry_reduced": False, **sym_info, "p": pused, "escapes": escapes,
              "restarts": restarts_done, "nfev": param.nfev, "rounds": history,
              "device": device or "numpy"},
    )


def _embedded(prob: GUFM, Wp, b, Hp):
    W, H = embed(prob, Wp, Hp)
    return W, b, H
