r"""Riemannian trust-region Newton solver for the reduced GUFM (second order, float64).

The optimiser is the Riemannian trust region of Absil, Baker & Gallivan (2007) with the
Steihaug-Toint truncated conjugate gradient, preconditioned by the diagonal of the Hessian
(the W block and the feature block differ in scale by orders of magnitude; see
docs/certificate.md for why the certificate needs stationarity to ~1e-11).  The cost, the
Riemannian gradient and the Hessian-vector products it uses (and their formulas) are those of
:class:`gufm.solvers.manifold.ReducedManifold`, re-exported here with :func:`supports` and
:func:`frame_start`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gufm.backend import Array, is_torch
from gufm.model.problem import GUFM
from gufm.solvers.manifold import (
    ReducedManifold,
    frame_start,
    imul_add,
    mul_into,
    supports,
)

__all__ = ["ReducedManifold", "TrustRegionResult", "frame_start", "supports", "trust_region"]


@dataclass
class TrustRegionResult:
    """Outcome of :func:`trust_region`.

    Attributes
    ----------
    x : ndarray
        Final point in the flat layout ``[W.ravel(), b, H.ravel()]`` (features on the sphere
        for sphere-type models).
    fun : float
        Objective value at ``x``.
    grad_norm : float
        Sup-norm of the Riemannian gradient at ``x``.
    nit : int
        Outer (trust-region) iterations.
    nhess : int
        Hessian-vector products (inner conjugate-gradient iterations).
    message : str
        Why it stopped.

    Examples
    --------
    >>> import numpy as np
    >>> from gufm.model.problem import GUFM
    >>> prob = GUFM(counts=[2, 2, 2], dim=4, lam_W=0.1)
    >>> man = ReducedManifold(prob, 3)
    >>> res = trust_region(prob, 3, man.to_flat(man.random_point(np.random.default_rng(0))))
    >>> res.x.shape, res.message, bool(res.grad_norm <= 1e-11 * max(1.0, res.fun))
    ((18,), 'gradient tolerance reached', True)
    """

    x: np.ndarray
    fun: float
    grad_norm: float
    nit: int
    nhess: int
    message: str


#: default relative tolerance of the low-rank Hessian products (gufm.solvers.lowrank): at
#: 1e-6 the trust region needs as many products as with exact ones (measured up to K = 3000)
LOWRANK_TOL = 1e-6
#: from this many classes on the factorisation pays (distinct CE, d = K + 1:
#: ``python -m benchmarks.bench_certified --lowrank``)
LOWRANK_MIN_K = 700


def _workspace(grad: list[Array]) -> dict[str, list[Array]]:
    """The truncated CG's vectors, allocated once per solve (numpy or torch, like ``grad``):
    on large problems fresh ``K x p`` arrays cost page faults that outlast the arithmetic."""
    def empty(g: Array) -> Array:
        return g.new_empty(g.shape) if is_torch(g) else np.empty_like(g)

    return {name: [empty(g) for g in grad]
            for name in ("eta", "Heta", "r", "Ps", "work", "z", "d", "Hd")}


def _weighted_norm2(v: list[Array], w: list[Array], work: list[Array],
                    divide: bool = False) -> float:
    """``sum(v * v * w)`` (``divide``: ``sum(v * v / w)``) with ``work`` as the buffer."""
    for a, wi, wk in zip(v, w, work, strict=True):
        if divide:
            wk[...] = a
            wk /= wi
        else:
            mul_into(a, wi, wk)
    return ReducedManifold.inner(v, work)


def _tcg(man: ReducedManifold, x: list[Array], cache: dict[str, Array], grad: list[Array],
         Pinv: list[Array], delta: float, maxinner: int, kappa: float, theta: float,
         shift: float, ws: dict[str, list[Array]] | None = None
         ) -> tuple[list[Array], list[Array], int, str]:
    """Steihaug-Toint truncated CG for ``min <g,e> + <e,(H + shift P)e>/2``, ``||e||_P <= delta``.

    ``Pinv`` is the inverse diagonal preconditioner ``P^-1``; the trust region is measured in
    the norm ``||e||_P^2 = <e, P e>``.  Returns ``(eta, (H + shift P) eta, iterations, why)``.
    The iteration vectors live in ``ws`` (:func:`_workspace`; the returned ``eta`` and
    ``H eta`` are its arrays, valid until the next call) and are updated in place (each step
    streams ``K x p`` arrays, so avoiding temporaries is most of its cost).
    """
    inner = man.inner
    ws = _workspace(grad) if ws is None else ws
    eta, Heta, r, Ps, work, z, d, Hd = (ws[k] for k in
                                        ("eta", "Heta", "r", "Ps", "work", "z", "d", "Hd"))
    for a, b, ri, g, pi, ps in zip(eta, Heta, r, grad, Pinv, Ps, strict=True):
        a[...] = 0
        b[...] = 0
        ri[...] = g
        ps[...] = shift  # the shift's diagonal sigma P = shift / P^-1
        ps /= pi
    for zi, ri, pi in zip(z, r, Pinv, strict=True):
        mul_into(ri, pi, zi)
    man.proj_(x, z, work)
    r_z = inner(r, z)
    for di, zi in zip(d, z, strict=True):
        di[...] = zi
        di *= -1
    e_Pe, e_Pd, d_Pd = 0.0, 0.0, r_z
    r0 = math.sqrt(inner(r, r))
    why = "maximum inner iterations"
    j = 0
    for j in range(1, maxinner + 1):  # noqa: B007 - returned
        man.hess(x, cache, d, out=Hd)
        for hd, di, ps, wk in zip(Hd, d, Ps, work, strict=True):
            imul_add(hd, di, ps, wk)
        dHd = inner(d, Hd)
        alpha = r_z / dHd if dHd > 0 else math.inf
        e_Pe_new = e_Pe + 2 * alpha * e_Pd + alpha**2 * d_Pd
        if dHd <= 0 or e_Pe_new >= delta**2:
            tau = (-e_Pd + math.sqrt(max(e_Pd**2 + d_Pd * (delta**2 - e_Pe), 0.0))) / d_Pd
            for a, b, c, e, wk in zip(eta, d, Heta, Hd, work, strict=True):
                imul_add(a, b, tau, wk)
                imul_add(c, e, tau, wk)
            why = "negative curvature" if dHd <= 0 else "trust-region boundary"
            break
        e_Pe = e_Pe_new
        for a, b, c, e, ri, wk in zip(eta, d, Heta, Hd, r, work, strict=True):
            imul_add(a, b, alpha, wk)
            imul_add(c, e, alpha, wk)
            ri += wk  # work holds alpha Hd: computed once for both updates
        man.proj_(x, r, work)
        rn = math.sqrt(inner(r, r))
        if rn <= r0 * min(r0**theta, kappa):
            why = "converged"
            break
        for zi, ri, pi in zip(z, r, Pinv, strict=True):
            mul_into(ri, pi, zi)
        man.proj_(x, z, work)
        r_z_old, r_z = r_z, inner(r, z)
        beta = r_z / r_z_old
        for di, zi in zip(d, z, strict=True):  # d = -z + beta d
            di *= beta
            di -= zi
        e_Pd = beta * (e_Pd + alpha * d_Pd)
        d_Pd = r_z + beta**2 * d_Pd
    return eta, Heta, j, why


def _sup(v: list[Array]) -> float:
    return max(float(abs(a).max()) for a in v)


def trust_region(
    prob: GUFM,
    p: int,
    x0: np.ndarray,
    *,
    gtol: float = 1e-11,
    maxiter: int = 500,
    maxinner: int | None = None,
    device: str | None = None,
    kappa: float = 0.1,
    theta: float = 0.5,
    precondition: bool = True,
    delta0: float | None = None,
    shift: float = 1e-10,
    gshift: float = 30.0,
    callback: Callable[[np.ndarray, float], bool] | None = None,
    stall_window: int = 25,
    stall_rtol: float = 1e-12,
    mixed: bool = True,
    lowrank: float | str | None = "auto",
    verbose: bool = False,
) -> TrustRegionResult:
    """Minimise the reduced GUFM by Riemannian trust regions (Newton with truncated CG).

    Parameters
    ----------
    prob : GUFM
        Sphere-type (``layernorm``, ``sphere``) or ``penalty`` features; any bias.
    p : int
        Working dimension of ``W`` (K x p) and the features (p x G).
    x0 : ndarray
        Start in the flat layout ``[W.ravel(), b, H.ravel()]`` (features are normalised).
    gtol : float
        Stop when the sup-norm of the Riemannian gradient is ``<= gtol * max(1, |f|)`` (the
        criterion of :func:`gufm.solvers.lbfgs.lbfgs`).
    maxiter : int
        Outer iterations.
    maxinner : int, optional
        CG iterations per outer iteration (default: the number of variables, at most 500).
    device : str, optional
        ``None``: numpy; a torch device string: float64 torch on that device.
    kappa, theta : float
        Inner stopping rule ``||r|| <= ||r0|| min(||r0||^theta, kappa)`` (theta = 1: locally
        quadratic convergence; the default 0.5, superlinear, needed the fewest Hessian
        products in benchmarks/bench_riemannian.py).
    precondition : bool
        Precondition the inner CG with the Hessian's diagonal (:meth:`ReducedManifold.hess_diag`).
    delta0 : float, optional
        Initial trust-region radius in units of the preconditioned gradient's length
        ``||P^-1 g||_P`` at ``x0`` (default 4).
    shift, gshift : float
        Levenberg-Marquardt shift ``sigma P`` added to the Hessian in the inner CG, ``sigma =
        shift + gshift ||P^-1 g||_P / ||x||_P`` (``P`` the preconditioner; see the comment in
        the code: the rotation gauge).
    callback : callable, optional
        ``callback(x, f)`` before every outer iteration (``x`` the point as ``[W, (b), U]``);
        returning True stops ("stopped by callback"), e.g. on a time budget.
    stall_window, stall_rtol : int, float
        Stop ("stalled") when ``stall_window`` outer iterations lower ``f`` by at most
        ``stall_rtol * max(1, |f|)`` (degenerate optima converge sublinearly).
    mixed : bool
        With numpy, compute the Hessian-vector products' matrix products in float32 (twice
        as fast; everything else, the gradient and the values stay float64): an inexact
        Newton direction whose relative error ~1e-6 is far below the inner CG tolerance, so the
        outer iteration keeps its convergence; torch devices always use float64.
    lowrank : float, "auto" or None
        A relative tolerance: with numpy, the Hessian-vector products use
        diagonal-plus-low-rank approximations of ``W``, ``H`` and the loss gradient at each
        outer iterate (:mod:`gufm.solvers.lowrank`) whenever they meet it, else the
        (mixed-precision) dense products.  ``"auto"``: :data:`LOWRANK_TOL` from
        :data:`LOWRANK_MIN_K` classes on (below, the factorisation costs more than it saves);
        ``None``: always dense.
    verbose : bool
        Print one line per outer iteration.

    Returns
    -------
    TrustRegionResult

    Examples
    --------
    >>> import numpy as np
    >>> from gufm.model.problem import GUFM
    >>> from gufm.solvers.closed_form import ce_etf_value
    >>> prob = GUFM(counts=[5, 5, 5, 5], dim=5, lam_W=5e-3)
    >>> man = ReducedManifold(prob, 4)
    >>> x0 = man.to_flat(man.random_point(np.random.default_rng(1)))
    >>> res = trust_region(prob, 4, x0)
    >>> res.message, bool(abs(res.fun - ce_etf_value(4, prob.rho, 5e-3)) < 1e-10)
    ('gradient tolerance reached', True)
    """
    man = ReducedManifold(prob, p, device)
    man.mixed = bool(mixed) and device is None
    if isinstance(lowrank, str):
        if lowrank != "auto":
            raise ValueError(f"lowrank must be a tolerance, 'auto' or None, got {lowrank!r}")
        lowrank = LOWRANK_TOL if prob.K >= LOWRANK_MIN_K else None
    if lowrank is not None and device is None:
        man.lowrank_tol = float(lowrank)
    x = man.from_flat(x0)
    f, g, cache = man.cost_grad(x)
    n_var = int(sum(np.prod(s) for s in man.shapes))
    maxinner = min(n_var, 500) if maxinner is None else int(maxinner)
    nhess = 0

    def precond(x: list[Array], cache: dict[str, Array]) -> list[Array]:
        if not precondition:
            return [1.0 + 0 * a for a in x]
        D = man.hess_diag(x, cache, floor=-math.inf)
        for d in D:  # fresh arrays: clipped and inverted in place
            # floor relative to the block's mean: near-zero or negative diagonal entries (the
            # Weingarten term away from stationarity) must not blow the metric up
            lo = max(1e-2 * float(abs(d).mean()), 1e-300)
            if is_torch(d):
                d.clamp_(min=lo).reciprocal_()
            else:
                np.maximum(d, lo, out=d)
                np.reciprocal(d, out=d)
        return D

    Pinv = precond(x, cache)
    delta_bar = math.inf
    ws = _workspace(g)
    gPg0 = _weighted_norm2(g, Pinv, ws["work"])
    delta = 4.0 * math.sqrt(gPg0) if delta0 is None else float(delta0) * math.sqrt(gPg0)
    message = "maximum iterations reached"
    it = rejected = 0
    f_hist = [f]
    for it in range(1, maxiter + 1):  # noqa: B007 - reported
        gn = _sup(g)
        if gn <= gtol * max(1.0, abs(f)):
            message = "gradient tolerance reached"
            it -= 1
            break
        if callback is not None and callback(x, f):
            message = "stopped by callback"
            it -= 1
            break
        # Levenberg-Marquardt shift sigma P: the rotation gauge (W, H) -> (W R, Rᵀ H) makes the
        # Hessian singular at critical points and indefinite along the gauge orbits elsewhere,
        # with (preconditioned) Rayleigh quotients of the order of the relative Newton step
        # ||P^-1 g||_P / ||x||_P; a shift proportional to it keeps the inner CG out of those
        # directions and keeps local superlinear convergence
        gPg = _weighted_norm2(g, Pinv, ws["work"])
        xPx = _weighted_norm2(x, Pinv, ws["work"], divide=True)
        sigma = shift + gshift * math.sqrt(gPg / max(xPx, 1e-300))
        eta, Heta, nin, why = _tcg(man, x, cache, g, Pinv, delta, maxinner, kappa, theta, sigma,
                                   ws)
        nhess += nin
        xn = man.retract(x, eta)
        fn, gn_vec, cache_n = man.cost_grad(xn)
        model = -(man.inner(g, eta) + 0.5 * man.inner(eta, Heta))
        reg = max(1.0, abs(f)) * 1e-14
        ratio = (f - fn + reg) / (model + reg) if model + reg > 0 else -math.inf
        # at the rounding level of f the ratio is noise: accept a step that shrinks the gradient
        tiny = abs(f - fn) <= 1e-14 * max(1.0, abs(f))
        accept = ratio > 0.1 or (tiny and _sup(gn_vec) < gn)
        enorm = math.sqrt(max(_weighted_norm2(eta, Pinv, ws["work"], divide=True), 0.0))
        if ratio < 0.25 and not (tiny and accept):
            delta = 0.25 * min(delta, enorm) if enorm > 0 else 0.25 * delta
        elif ratio > 0.75 and why in ("trust-region boundary", "negative curvature"):
            delta = min(2 * delta, delta_bar)
        if verbose:
            print(f"  it {it:3d} f {f:.16g} |g| {gn:.2e} delta {delta:.2e} inner {nin:4d} ({why})"
                  f" ratio {ratio:.4f} accept {accept}")
        if accept:
            x, f, g, cache = xn, fn, gn_vec, cache_n
            Pinv = precond(x, cache)
            rejected = 0
            f_hist.append(f)
            if len(f_hist) > stall_window and (
                    f_hist[-stall_window - 1] - f <= stall_rtol * max(1.0, abs(f))):
                message = "stalled"
                break
        else:
            rejected += 1
        near = gn <= 1e3 * gtol * max(1.0, abs(f))  # rejections there are rounding noise
        if rejected >= (3 if near else 40) or delta < 1e-30:
            message = "no further decrease at float64 precision"
            break
    return TrustRegionResult(man.to_flat(x), float(f), _sup(g), it, nhess, message)
