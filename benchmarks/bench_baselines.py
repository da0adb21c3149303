"""gufm against the methods people use today, each run faithfully in the same process.

    python -m benchmarks.bench_baselines [--quick] [--part NAME ...] [--out FILE.json]

Parts (``run(quick)`` runs them all; every timing is wall time in this process):

``full_gradient``
    Gradient descent and Adam on all N features and W, as in Zhu et al. (2021)
    (``gufm.solve(prob, method="full", optimizer="gd"|"adam")``), run until the objective is
    within ``1e-6`` (relative) of gufm's certified optimum or the iteration budget is spent.  The
    step size of each is the best of a small grid on a small instance (recorded).  At the
    headline size (N = 50,000, d = 512, K = 10) the budget is a fixed time; when the target is
    not reached the reached relative error is reported and the time ratio is a lower bound.
``cvxpy_nuclear``
    The full-N convex problem of the penalty UFM as in Hong & Ling (2023): since
    :math:`\\min_{WH = Z} \\tfrac{\\lambda_W}{2}\\lVert W\\rVert_F^2 + \\tfrac{\\lambda_H}{2}\\lVert
    H\\rVert_F^2 = \\sqrt{\\lambda_W\\lambda_H}\\lVert Z\\rVert_*` (for d >= rank Z), the UFM
    equals :math:`\\min_Z \\frac1N\\sum_i \\ell(z_i, y_i) + \\sqrt{\\lambda_W\\lambda_H}\\lVert
    Z\\rVert_*` over ``Z`` (K x N), solved with cvxpy/SCS at growing N until the predicted time
    exceeds the cap.  The values must agree with gufm's certified optimum of the same
    ``features="penalty"`` problem (checked).  Also cvxpy on the reduced relaxation
    (``method="sdp"``).  ``lam_H = lam / N`` keeps the reduced problem the same at every N.
``pymanopt``
    Riemannian trust regions (pymanopt 2.2) on the reduced problem, manifold
    ``Product([Euclidean(K, m), Oblique(m, K)])`` (``h_k = rho u_k``, layernorm features in the
    Helmert coordinates of the sum-zero subspace), cost and Euclidean gradient from
    :func:`gufm.objective.value_and_grad`; pymanopt 2.2 needs a Hessian for trust regions, given
    as central finite differences of that gradient (what Manopt does when no Hessian is given;
    pymanopt's torch autodiff Hessian was ~60x slower here).  Its point is certified with
    gufm's dual certificate.
``metrics_numpy``
    The collapse metrics computed as published validation scripts do (all features in memory,
    ``np.cov`` per class, a pseudo-inverse of Sigma_B, NC1 = tr(Sigma_W pinv(Sigma_B))/K, NC2,
    NC3; :func:`numpy_collapse_metrics`) against :func:`gufm.metrics.collapse_report` and the
    streamed :class:`gufm.streaming.CollapseAccumulator` (one and two passes), and one read of
    the data (the memory-bandwidth limit).  NC1 is computed both with ``np.linalg.pinv``'s
    default cut-off (``nc1_pinv``: its relative cut-off 1e-15 does not scale with d, so it can
    invert rounding-level directions of the rank-(K-1) Sigma_B; recorded, and shown in the
    notes) and with the top K-1 eigenpairs (``nc1``, compared).
``gpu``
    When CUDA is available: ``gufm.solve(prob, method="gradient", device="cuda")`` against the
    same solve on the CPU, and the streamed metrics on the GPU against the CPU; otherwise
    ``{"skipped": "no CUDA"}``.

Ratios are baseline time / gufm time.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import gufm
from benchmarks._common import machine, write_json
from benchmarks.runner import make_row

PARTS = ("full_gradient", "cvxpy_nuclear", "pymanopt", "metrics_numpy", "gpu")


# ----------------------------------------------------------------------------- helpers
def imbalanced_counts(K: int, N: int | None = None, seed: int = 0, low: int = 10,
                      high: int = 100) -> np.ndarray:
    """Random class counts in ``[low, high)`` (ratio up to 10), rescaled to sum to ``N``."""
    c = np.random.default_rng(seed).integers(low, high, size=K)
    if N is None:
        return c
    c = np.maximum(1, np.round(c / c.sum() * N)).astype(np.int64)
    c[int(np.argmax(c))] += N - int(c.sum())
    return c


def rel(a: float, b: float) -> float:
    """Relative difference ``(a - b) / |b|``."""
    return (a - b) / max(abs(b), 1e-300)


from gufm._util import fit_loglog, limit_threads  # noqa: E402  (one implementation)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``(fn(), seconds)``."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def predicted_seconds(sizes: list[float], seconds: list[float], size: float,
                      default_slope: float, min_slope: float = 1.0,
                      max_slope: float = math.inf) -> float:
    """Extrapolate a log-log line through the last two points (one point: ``default_slope``),
    its slope clipped to ``[min_slope, max_slope]`` (small sizes are dominated by fixed costs;
    a known complexity bounds the growth)."""
    if not sizes:
        return 0.0
    if len(sizes) == 1:
        slope = default_slope
    else:
        slope = math.log(seconds[-1] / seconds[-2]) / math.log(sizes[-1] / sizes[-2])
    slope = min(max(slope, min_slope), max_slope)
    return seconds[-1] * (size / sizes[-1]) ** slope


def gufm_solve(prob: gufm.GUFM) -> tuple[Any, float]:
    """gufm's default certified solve (``method="auto"``), timed."""
    return timed(lambda: gufm.solve(prob, method="auto"))


def _case(prob: gufm.GUFM, extra: str = "") -> str:
    bal = "balanced" if prob.is_balanced else "imbalanced"
    feat = prob.features if prob.features != "sphere" else f"sphere rho={prob.rho:g}"
    return (f"{prob.loss.upper()} {feat} N={prob.N} d={prob.dim} K={prob.K} ({bal})"
            + (f", {extra}" if extra else ""))


# ----------------------------------------------------------------------------- 1. full gradient
def _full_threads(prob: gufm.GUFM) -> int | None:
    """The baseline gets gufm's own thread policy: one thread for small problems."""
    return 1 if prob.N * prob.dim < 1_000_000 else None


def _run_full(prob: gufm.GUFM, optimizer: str, lr: float, maxiter: int, target: float
              ) -> tuple[Any, float]:
    with limit_threads(_full_threads(prob)):
        return timed(lambda: gufm.solve(prob, method="full", optimizer=optimizer, lr=lr,
                                        maxiter=maxiter, target=target))


def seconds_per_evaluation(prob: gufm.GUFM) -> float:
    """Time of one objective-and-gradient evaluation of the full-N baseline (best of 2)."""
    from gufm.solvers.full_n import FullParametrisation

    par = FullParametrisation(prob)
    x = np.random.default_rng(0).standard_normal(par.n)
    best = math.inf
    with limit_threads(_full_threads(prob)):
        for _ in range(2):
            t0 = time.perf_counter()
            par.fun(x)
            best = min(best, time.perf_counter() - t0)
    return best


def full_gradient(quick: bool) -> dict[str, Any]:
    """Adam and GD over all N features against gufm's certified solve (see module docstring)."""
    K = 10
    small_N, small_d = (500, 32) if quick else (1000, 64)
    big_N, big_d = (5000, 64) if quick else (50_000, 512)
    target_iters = 600 if quick else 5000
    budget = 3.0 if quick else 40.0
    grids = {"adam": [0.03, 0.1] if quick else [0.01, 0.03, 0.1, 0.3],
             "gd": [10.0] if quick else [1.0, 10.0, 100.0]}
    names = {"adam": "Adam", "gd": "gradient descent"}
    out: dict[str, Any] = {"small": {}, "headline": {}, "max_iterations": target_iters,
                           "target": "certified value x (1 + 1e-6)",
                           "lr_selection": "every lr of the grid run to the target (same "
                                           "iteration budget); best = fastest to reach it, "
                                           "else lowest value"}
    rows = []
    small = gufm.GUFM(counts=imbalanced_counts(K, small_N, seed=1), dim=small_d, loss="ce",
                      lam_W=5e-3)
    ref, t_ref = gufm_solve(small)
    target = ref.value * (1 + 1e-6)
    out["small"]["gufm"] = {"seconds": t_ref, "value": ref.value, "certified": ref.certified,
                            "gap": ref.gap, "problem": small.describe()}
    best_lr = {}
    for opt, lrs in grids.items():
        grid = []
        for lr in lrs:
            res, sec = _run_full(small, opt, lr, target_iters, target)
            v = res.value if math.isfinite(res.value) else math.inf
            grid.append({"lr": lr, "seconds": sec, "value": v, "reached": bool(v <= target),
                         "rel_error": rel(v, ref.value), "iterations": res.iterations,
                         "stop": res.stop_reason, "lower_bound": res.lower_bound})
        hit = [g for g in grid if g["reached"]]
        best = min(hit, key=lambda g: g["seconds"]) if hit else min(grid, key=lambda g: g["value"])
        best_lr[opt] = best["lr"]
        out["small"][f"{opt}_lr_grid"] = grid
        out["small"][opt] = dict(best, max_iterations=target_iters)
        reached, sec = best["reached"], best["seconds"]
        rows.append(make_row(
            _case(small), f"{names[opt]} on all N features + W (lr={best_lr[opt]:g})", sec, t_ref,
            ratio_is_bound=not reached, baseline_reached=reached, rel_diff=best["rel_error"],
            gufm_certified=ref.certified,
            notes=(f"{best['iterations']} iterations ({best['stop']}); best lr of "
                   f"{{{', '.join(f'{lr:g}' for lr in lrs)}}}")))
        print(f"  full {opt} lr={best_lr[opt]:g} N={small.N}: {sec:.2f} s, rel. error "
              f"{best['rel_error']:.1e}, reached={reached}; gufm {t_ref:.3f} s", flush=True)

    big = gufm.GUFM(counts=imbalanced_counts(K, big_N, seed=1), dim=big_d, loss="ce", lam_W=5e-3)
    ref, t_ref = gufm_solve(big)
    target = ref.value * (1 + 1e-6)
    t_eval = seconds_per_evaluation(big)
    maxiter = max(2, int(budget / t_eval))
    out["headline"]["gufm"] = {"seconds": t_ref, "value": ref.value, "certified": ref.certified,
                               "gap": ref.gap, "problem": big.describe()}
    out["headline"]["seconds_per_evaluation"] = t_eval
    out["headline"]["budget_seconds"] = budget
    for opt in grids:
        res, sec = _run_full(big, opt, best_lr[opt], maxiter, target)
        reached = bool(res.value <= target)
        nit = int(res.iterations or 0)
        small_it = out["small"][opt]["iterations"] if out["small"][opt]["reached"] else None
        out["headline"][opt] = {
            "lr": best_lr[opt], "seconds": sec, "value": res.value,
            "rel_error": rel(res.value, ref.value), "reached": reached, "iterations": nit,
            "max_iterations": maxiter, "stop": res.stop_reason, "lower_bound": res.lower_bound,
            "projected_seconds_if_small_instance_iterations": (
                None if small_it is None else small_it * t_eval),
        }
        rows.append(make_row(
            _case(big), f"{names[opt]} on all N features + W (lr={best_lr[opt]:g})", sec, t_ref,
            ratio_is_bound=not reached, baseline_reached=reached,
            rel_diff=rel(res.value, ref.value), gufm_certified=ref.certified,
            notes=(f"budget {budget:g} s = {maxiter} iterations at {t_eval:.2f} s each; "
                   f"stopped at rel. error {rel(res.value, ref.value):.1e}"
                   + (f"; the {small_it} iterations it needed at N={small.N} would take "
                      f"~{small_it * t_eval:.0f} s here" if small_it else "")
                   if not reached else f"{nit} iterations")))
        print(f"  full {opt} N={big.N} d={big.dim}: {sec:.1f} s ({nit} it.), rel. error "
              f"{rel(res.value, ref.value):.1e}, reached={reached}; gufm {t_ref:.3f} s", flush=True)
    out["comparisons"] = rows
    return out


# ----------------------------------------------------------------------------- 2. cvxpy nuclear
def nuclear_norm_ufm(prob: gufm.GUFM, eps: float = 1e-7, max_iters: int = 100_000
                     ) -> dict[str, Any]:
    """Solve the penalty UFM over all N samples as min_Z loss(Z) + sqrt(lam_W lam_H) ||Z||_*.

    Hong & Ling (2023)'s convex reformulation; ``Z`` is K x N, solved with cvxpy/SCS.
    Returns value, status, timings (build and solve) and the rank of ``Z``.
    """
    import cvxpy as cp

    if prob.features != "penalty" or prob.has_bias:
        raise ValueError("the nuclear-norm form needs features='penalty' and no bias")
    if prob.dim < min(prob.K, prob.N):
        raise ValueError("the nuclear-norm form needs d >= min(K, N)")
    t0 = time.perf_counter()
    K, N = prob.K, prob.N
    Q = prob.groups.targets[:, prob.groups.sample_group]  # (K, N) one-hot / soft targets
    Z = cp.Variable((K, N))
    if prob.loss == "ce":
        loss = (cp.sum(cp.log_sum_exp(Z, axis=0)) - cp.sum(cp.multiply(Q, Z))) / N
    else:
        loss = 0.5 * cp.sum_squares(Z - Q) / N
    mu = math.sqrt(prob.lam_W * prob.lam_H)
    problem = cp.Problem(cp.Minimize(loss + mu * cp.normNuc(Z)))
    t_build = time.perf_counter() - t0
    status, err = None, None
    try:
        problem.solve(solver="SCS", eps_abs=eps, eps_rel=eps, max_iters=max_iters)
        status = problem.status
    except (cp.error.SolverError, MemoryError) as exc:
        err = f"{type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - t0
    out: dict[str, Any] = {"seconds": seconds, "build_seconds": t_build, "status": status,
                           "error": err, "value": None, "rank": None, "scs_eps": eps}
    if Z.value is not None and status in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE):
        Zv = np.asarray(Z.value)
        # recompute the objective from Z (the solver's own number is not trusted)
        from gufm.model.losses import weighted_loss

        lv = float(weighted_loss(prob.loss, Zv, Q, np.full(N, 1.0 / N)))
        s = np.linalg.svd(Zv, compute_uv=False)
        out.update(value=lv + mu * float(s.sum()), solver_value=float(problem.value),
                   rank=int((s > 1e-6 * s[0]).sum()))
    return out


def cvxpy_nuclear(quick: bool) -> dict[str, Any]:
    """Full-N nuclear-norm UFM with cvxpy at growing N, against gufm on the penalty problem."""
    K, d, lam = 10, 32, 5e-3
    Ns = [20, 40] if quick else [50, 100, 200, 400, 800, 1600]
    cap = 20.0 if quick else 150.0
    points, done_N, done_s, rows = [], [], [], []
    for N in Ns:
        pred = predicted_seconds(done_N, done_s, N, default_slope=2.5, min_slope=2.0)
        if pred > cap:
            points.append({"N": N, "skipped": f"predicted {pred:.0f} s > cap {cap:g} s"})
            print(f"  cvxpy nuclear N={N}: skipped (predicted {pred:.0f} s)", flush=True)
            continue
        prob = gufm.GUFM(counts=imbalanced_counts(K, N, seed=2), dim=d, loss="ce",
                         features="penalty", lam_W=lam, lam_H=lam / N)
        ref, t_ref = gufm_solve(prob)
        cvx = nuclear_norm_ufm(prob)
        pt = {"N": N, "problem": prob.describe(), "gufm_seconds": t_ref, "gufm_value": ref.value,
              "gufm_certified": ref.certified, "gufm_gap": ref.gap, "cvxpy": cvx}
        points.append(pt)
        if cvx["value"] is None:
            print(f"  cvxpy nuclear N={N}: failed ({cvx['status']}, {cvx['error']})", flush=True)
            break
        done_N.append(N)
        done_s.append(cvx["seconds"])
        rd = rel(cvx["value"], ref.value)
        pt["rel_diff"] = rd
        pt["agree"] = bool(abs(rd) <= 1e-5)
        rows.append(make_row(
            _case(prob, f"lam_H=lam/N, lam={lam:g}"),
            "cvxpy/SCS nuclear-norm UFM over all N (Hong & Ling 2023)", cvx["seconds"], t_ref,
            baseline_reached=abs(rd) <= 1e-5, rel_diff=rd, gufm_certified=ref.certified,
            notes=f"SCS eps {cvx['scs_eps']:g}, status {cvx['status']}, rank(Z) {cvx['rank']}"))
        print(f"  cvxpy nuclear N={N}: {cvx['seconds']:.2f} s, value {cvx['value']:.10f} vs gufm "
              f"{ref.value:.10f} ({t_ref:.3f} s), rel. diff {rd:.1e}", flush=True)
    out: dict[str, Any] = {"points": points, "cap_seconds": cap,
                           "largest_N": max(done_N) if done_N else None}
    if done_N:  # cvxpy on the reduced relaxation (N-independent), on the largest instance
        N = max(done_N)
        prob = gufm.GUFM(counts=imbalanced_counts(K, N, seed=2), dim=d, loss="ce",
                         features="penalty", lam_W=lam, lam_H=lam / N)
        ref, t_ref = gufm_solve(prob)
        sdp, t_sdp = timed(lambda: gufm.solve(prob, method="sdp"))
        out["reduced_sdp"] = {"N": N, "seconds": t_sdp, "value": sdp.value,
                              "lower_bound": sdp.lower_bound, "certified": sdp.certified,
                              "status": sdp.info.get("status"), "gufm_seconds": t_ref}
        rows.append(make_row(
            _case(prob), "cvxpy/SCS on the reduced relaxation (`method='sdp'`)", t_sdp, t_ref,
            baseline_reached=sdp.value <= ref.value * (1 + 1e-6) + 1e-12,
            rel_diff=rel(sdp.value, ref.value), gufm_certified=ref.certified,
            notes=f"2K x 2K PSD cone; status {sdp.info.get('status')}"))
        if len(done_N) >= 2:
            out["cvxpy_slope"] = fit_loglog(done_N, done_s).slope
    out["comparisons"] = rows
    return out


# ----------------------------------------------------------------------------- 3. pymanopt
def pymanopt_trust_regions(prob: gufm.GUFM, *, seed: int = 0, max_time: float = 120.0,
                           min_gradient_norm: float = 1e-10, max_iterations: int = 1000
                           ) -> dict[str, Any]:
    """Riemannian trust regions on ``Euclidean(K, m) x Oblique(m, K)`` with gufm's objective.

    No bias, ``layernorm``/``sphere`` features only.  Returns the value, the certificate at the
    point found, iterations, the stopping criterion and the time.
    """
    import pymanopt
    from pymanopt.manifolds import Euclidean, Oblique, Product

    from gufm.model.certificate import certify
    from gufm.model.features import feature_basis
    from gufm.model.objective import value_and_grad

    if prob.features not in ("layernorm", "sphere") or prob.has_bias:
        raise ValueError("the pymanopt baseline covers layernorm/sphere features without bias")
    t0 = time.perf_counter()
    K, m, rho = prob.K, prob.m, prob.rho
    manifold = Product([Euclidean(K, m), Oblique(m, K)])

    def grad(W: np.ndarray, U: np.ndarray) -> list[np.ndarray]:
        _, g = value_and_grad(prob, W, None, rho * U, columns="groups")
        return [g.W, rho * g.H]

    @pymanopt.function.numpy(manifold)
    def cost(W: np.ndarray, U: np.ndarray) -> float:
        return float(value_and_grad(prob, W, None, rho * U, columns="groups",
                                    need_grad=False)[0])

    @pymanopt.function.numpy(manifold)
    def euclidean_gradient(W: np.ndarray, U: np.ndarray) -> list[np.ndarray]:
        return grad(W, U)

    @pymanopt.function.numpy(manifold)
    def euclidean_hessian(W: np.ndarray, U: np.ndarray, dW: np.ndarray, dU: np.ndarray
                          ) -> list[np.ndarray]:
        nrm = math.sqrt(float((dW * dW).sum() + (dU * dU).sum()))
        if nrm == 0.0:
            return [np.zeros_like(W), np.zeros_like(U)]
        t = 1e-6 / nrm
        a, b = grad(W + t * dW, U + t * dU), grad(W - t * dW, U - t * dU)
        return [(a[0] - b[0]) / (2 * t), (a[1] - b[1]) / (2 * t)]

    problem = pymanopt.Problem(manifold, cost, euclidean_gradient=euclidean_gradient,
                               euclidean_hessian=euclidean_hessian)
    optimizer = pymanopt.optimizers.TrustRegions(
        min_gradient_norm=min_gradient_norm, max_iterations=max_iterations, max_time=max_time,
        verbosity=0)
    rng = np.random.default_rng(seed)
    U0 = rng.standard_normal((m, K))
    x0 = [rng.standard_normal((K, m)) / math.sqrt(m), U0 / np.linalg.norm(U0, axis=0)]
    res = optimizer.run(problem, initial_point=x0)
    seconds = time.perf_counter() - t0
    Wr, U = res.point
    Hr = rho * U
    E = feature_basis(prob.features, prob.dim, m)
    value = float(gufm.group_objective(prob, Wr @ E.T, None, E @ Hr))  # checked feasible, in R^d
    cert = certify(prob, Wr @ Hr)
    from gufm.solvers.result import ATOL, RTOL

    gap = value - cert.lower_bound
    return {"seconds": seconds, "value": value, "lower_bound": cert.lower_bound, "gap": gap,
            "certified": bool(gap <= ATOL + RTOL * abs(value)), "iterations": res.iterations,
            "gradient_norm": float(res.gradient_norm), "stop": str(res.stopping_criterion),
            "hessian": "central finite differences of gufm's Euclidean gradient",
            "manifold": f"Euclidean({K},{m}) x Oblique({m},{K})"}


def pymanopt_bench(quick: bool) -> dict[str, Any]:
    """pymanopt trust regions against gufm on a few reduced problems."""
    cases = [("ce", "layernorm", 10, 32, None), ("ce", "sphere", 10, 3, 2.0)] if quick else [
        ("ce", "layernorm", 10, 64, None), ("mse", "layernorm", 10, 64, None),
        ("ce", "layernorm", 100, 101, None), ("ce", "sphere", 10, 3, 2.0)]
    max_time = 30.0 if quick else 120.0
    points, rows = [], []
    for loss, feat, K, d, radius in cases:
        prob = gufm.GUFM(counts=imbalanced_counts(K, seed=0), dim=d, loss=loss, features=feat,
                         radius=radius, lam_W=5e-3)
        ref, t_ref = gufm_solve(prob)
        with limit_threads(1):  # the reduced problems are small: one thread, as gufm's solver
            pm = pymanopt_trust_regions(prob, max_time=max_time)
        rd = rel(pm["value"], ref.value)
        reached = bool(pm["value"] <= ref.value * (1 + 1e-6) + 1e-12)
        points.append({"problem": prob.describe(), "gufm_seconds": t_ref, "gufm_value": ref.value,
                       "gufm_lower_bound": ref.lower_bound, "gufm_certified": ref.certified,
                       "gufm_method": ref.method, "pymanopt": pm, "rel_diff": rd})
        stop = pm["stop"].split(" after ")[0].replace("Terminated - ", "")
        notes = (f"{pm['iterations']} TR iterations ({stop}); pymanopt point certified: "
                 f"{'yes' if pm['certified'] else 'no'} (gap {pm['gap']:.1e})")
        if not ref.certified:
            notes += f"; gufm gap {ref.gap:.1e} (K > m + 1: the relaxation is not tight)"
        rows.append(make_row(
            _case(prob), "pymanopt TrustRegions, Euclidean x Oblique (reduced problem)",
            pm["seconds"], t_ref, baseline_reached=reached, rel_diff=rd,
            gufm_certified=ref.certified, ratio_is_bound=not reached and ref.certified,
            notes=notes))
        print(f"  pymanopt {loss}/{feat} K={K} d={d}: {pm['seconds']:.2f} s value "
              f"{pm['value']:.10f} (rel. {rd:.1e}, certified {pm['certified']}); gufm "
              f"{t_ref:.3f} s certified {ref.certified}", flush=True)
    return {"points": points, "max_time": max_time, "comparisons": rows}


# ----------------------------------------------------------------------------- 4. metrics
def make_features(N: int, d: int, K: int, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``H`` (N, d) float32 = class mean (scale 3) + unit noise, labels (N,), classifier (K, d)."""
    rng = np.random.default_rng(seed)
    means = 3.0 * rng.standard_normal((K, d))
    y = rng.integers(0, K, size=N)
    y[:K] = np.arange(K)
    H = rng.standard_normal((N, d), dtype=np.float32)
    H += means[y].astype(np.float32)
    W = means - means.mean(0) + 0.1 * rng.standard_normal((K, d))
    return H, y, W


def numpy_collapse_metrics(H: np.ndarray, y: np.ndarray, W: np.ndarray) -> dict[str, float]:
    """NC1/NC2/NC3 as published validation scripts compute them (plain numpy, all in memory).

    ``H`` is (N, d).  Sigma_W from ``np.cov`` of every class (full d x d covariances), Sigma_B
    of the class means about the global mean; NC1 = tr(Sigma_W Sigma_B^+)/K twice:
    ``nc1_pinv`` with ``np.linalg.pinv`` and its default cut-off (as e.g. Zhu et al.'s script)
    and ``nc1`` with the top K-1 eigenpairs of Sigma_B (as Papyan et al.'s script, which uses
    ``svds(Sigma_B, k=K-1)``); NC2 on the classifier and on the centred means against the
    simplex ETF; NC3 = 1 - mean cos(h_i, w_{y_i}).
    """
    N, d = H.shape
    K = W.shape[0]
    muG = H.mean(0, dtype=np.float64)
    Sw = np.zeros((d, d))
    means = np.zeros((K, d))
    for k in range(K):
        Hk = H[y == k]
        means[k] = Hk.mean(0, dtype=np.float64)
        Sw += np.cov(Hk, rowvar=False, bias=True) * (len(Hk) / N)
    Mc = means - muG
    Sb = Mc.T @ Mc / K
    lam, V = np.linalg.eigh(Sb)
    lam, V = lam[-(K - 1):], V[:, -(K - 1):]
    E = (np.eye(K) - 1.0 / K) / math.sqrt(K - 1)
    Gw, Gm = W @ W.T, Mc @ Mc.T
    Wy = W[y]
    cos = (H * Wy).sum(1) / (np.linalg.norm(H, axis=1) * np.linalg.norm(Wy, axis=1))
    return {"nc1": float(np.trace(Sw @ (V / lam) @ V.T) / K),
            "nc1_pinv": float(np.trace(Sw @ np.linalg.pinv(Sb)) / K),
            "nc2_classifier": float(np.linalg.norm(Gw / np.linalg.norm(Gw) - E)),
            "nc2_means": float(np.linalg.norm(Gm / np.linalg.norm(Gm) - E)),
            "nc3": float(1.0 - cos.mean())}


def _best_of(fn: Callable[[], Any], repeats: int) -> tuple[Any, float]:
    best, out = math.inf, None
    for _ in range(repeats):
        out, s = timed(fn)
        best = min(best, s)
    return out, best


def metrics_numpy(quick: bool) -> dict[str, Any]:
    """Published-script metrics against gufm's in-memory and streamed reports."""
    import torch

    from gufm.collapse.metrics import collapse_report
    from gufm.collapse.streaming import stream_report

    N, d, K = (20_000, 128, 10) if quick else (200_000, 512, 10)
    repeats = 2
    H, y, W = make_features(N, d, K)
    nbytes = H.nbytes
    batch = 65_536
    batches = [(H[i:i + batch], y[i:i + batch]) for i in range(0, N, batch)]
    _, read_np = _best_of(lambda: float(H.sum(dtype=np.float32)), repeats)
    _, read_th = _best_of(lambda: float(torch.from_numpy(H).sum()), repeats)
    read_s = min(read_np, read_th)
    base, t_base = _best_of(lambda: numpy_collapse_metrics(H, y, W), repeats)
    mem, t_mem = _best_of(lambda: collapse_report(H.T, y, W), repeats)
    s2, t_s2 = _best_of(lambda: stream_report(batches, K, W, passes=2), repeats)
    s1, t_s1 = _best_of(lambda: stream_report(batches, K, W, passes=1), repeats)
    keys = ("nc1", "nc2_classifier", "nc2_means", "nc3")

    def diff(rep: dict) -> float:
        return max(abs(rel(float(rep[k]), base[k])) for k in keys)

    pinv_diff = rel(base["nc1_pinv"], float(mem["nc1"]))
    out: dict[str, Any] = {
        "config": {"N": N, "d": d, "K": K, "dtype": "float32", "bytes": nbytes, "batch": batch,
                   "repeats": repeats},
        "nc1_pinv_rel_diff": pinv_diff,
        "read_numpy_seconds": read_np, "read_torch_seconds": read_th, "read_seconds": read_s,
        "bandwidth_GBps": nbytes / read_s / 1e9,
        "baseline_seconds": t_base, "collapse_report_seconds": t_mem,
        "stream_2pass_seconds": t_s2, "stream_1pass_seconds": t_s1,
        "throughput_GBps": {"baseline": nbytes / t_base / 1e9,
                            "collapse_report": nbytes / t_mem / 1e9,
                            "stream_2pass": 2 * nbytes / t_s2 / 1e9,
                            "stream_1pass": nbytes / t_s1 / 1e9},
        "stream_2pass_over_read": t_s2 / read_s,
        "baseline": base, "collapse_report": {k: float(mem[k]) for k in keys},
        "stream_2pass": {k: float(s2[k]) for k in keys},
        "max_rel_diff": {"collapse_report": diff(mem), "stream_2pass": diff(s2),
                         "stream_1pass": diff(s1)},
    }
    case = f"N={N} d={d} K={K} float32 ({nbytes / 1e6:.0f} MB)"
    name = "plain numpy (np.cov per class + pseudo-inverse, all in memory)"
    pinv_note = ("; rel. diff over nc1 (top K-1 eigenpairs, Papyan), nc2, nc3; nc1 with "
                 f"np.linalg.pinv's default cut-off is off by {pinv_diff:.1e}"
                 + (" (it inverts rounding-level directions of Sigma_B)"
                    if abs(pinv_diff) > 1e-3 else ""))
    out["comparisons"] = [
        make_row(case, name, t_base, t_mem, rel_diff=diff(mem),
                 notes="gufm: collapse_report on (d, N) in memory" + pinv_note),
        make_row(case, name, t_base, t_s2, rel_diff=diff(s2),
                 notes="gufm: streamed CollapseAccumulator, 2 passes, memory O(Kd)" + pinv_note),
        make_row(case, "one read of the data (memory-bandwidth limit)", read_s, t_s2,
                 notes=(f"ratio = fraction of the bandwidth limit (2 passes); read at "
                        f"{nbytes / read_s / 1e9:.1f} GB/s")),
    ]
    print(f"  metrics N={N} d={d}: numpy {t_base:.3f} s, collapse_report {t_mem:.3f} s, stream "
          f"2-pass {t_s2:.3f} s ({t_s2 / read_s:.1f}x one read at {nbytes / read_s / 1e9:.1f} "
          f"GB/s), max rel. diff {diff(s2):.1e}; nc1 with np.linalg.pinv off by {pinv_diff:.1e}",
          flush=True)
    return out


# ----------------------------------------------------------------------------- 5. GPU
def gpu(quick: bool, device: str = "cuda") -> dict[str, Any]:
    """CUDA variant of the solver and metrics benchmarks, or ``{"skipped": "no CUDA"}``.

    ``device`` exists for testing the code path on another torch device (``"cpu"``).
    """
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        return {"skipped": "no CUDA", "comparisons": []}
    from gufm.collapse.streaming import stream_report

    dev = device
    name = torch.cuda.get_device_name(0) if dev == "cuda" else dev

    def sync() -> None:
        if dev == "cuda":
            torch.cuda.synchronize()

    rows, solver = [], []
    Ks = [30] if quick else [100, 300, 1000]
    cap = 20.0 if quick else 120.0
    gufm.solve(gufm.GUFM(counts=[3, 4, 5], dim=8), method="gradient", device=dev)  # warm-up
    done_K: list[float] = []
    done_s: list[float] = []
    for K in Ks:
        counts = 100 + np.random.default_rng(K).permutation(K)  # distinct: no symmetry shortcut
        prob = gufm.GUFM(counts=counts, dim=K + 1, loss="ce", lam_W=5e-3)
        sync()
        gres, t_gpu = timed(lambda prob=prob: (gufm.solve(prob, method="gradient", device=dev),
                                               sync())[0])
        pt: dict[str, Any] = {"K": K, "d": K + 1, "gpu_seconds": t_gpu,
                              "gpu_certified": gres.certified, "gpu_value": gres.value}
        pred = predicted_seconds(done_K, done_s, K, default_slope=2.0, min_slope=2.0)
        if pred > cap:
            pt["cpu"] = f"skipped: predicted {pred:.0f} s > cap {cap:g} s"
        else:
            cpu, t_cpu = timed(lambda prob=prob: gufm.solve(prob, method="gradient"))
            done_K.append(K)
            done_s.append(t_cpu)
            rd = rel(gres.value, cpu.value)
            pt.update(cpu_seconds=t_cpu, cpu_certified=cpu.certified, cpu_value=cpu.value,
                      rel_diff=rd)
            rows.append(make_row(
                _case(prob, "distinct counts"), "gufm gradient solve on the CPU (numpy)", t_cpu,
                t_gpu, rel_diff=rd, gufm_certified=gres.certified,
                notes=f"gufm: method='gradient', device='{dev}' ({name})"))
        solver.append(pt)
        print(f"  {dev} solve K={K}: {dev} {t_gpu:.2f} s, cpu {pt.get('cpu_seconds', pt.get('cpu'))}",
              flush=True)
    N, d, K = (50_000, 128, 10) if quick else (1_000_000, 512, 10)
    H, y, W = make_features(N, d, K)
    batch = 65_536
    cpu_batches = [(H[i:i + batch], y[i:i + batch]) for i in range(0, N, batch)]
    dev_batches = [(torch.from_numpy(h).to(dev), torch.from_numpy(t).to(dev))
                   for h, t in cpu_batches]
    rep_c, t_c = _best_of(lambda: stream_report(cpu_batches, K, W, passes=2), 2)

    def on_dev() -> Any:
        r = stream_report(dev_batches, K, W, passes=2)
        sync()
        return r

    on_dev()
    rep_g, t_g = _best_of(on_dev, 3)

    def read_dev() -> float:
        s = sum(h.sum() for h, _ in dev_batches)
        sync()
        return float(s)

    read_dev()
    _, t_read = _best_of(read_dev, 3)
    nbytes = H.nbytes
    rd = max(abs(rel(float(rep_g[k]), float(rep_c[k]))) for k in rep_c)
    case = f"metrics N={N} d={d} K={K} float32"
    rows.append(make_row(case, "streamed report on the CPU (2 passes)", t_c, t_g, rel_diff=rd,
                         notes=f"gufm: the same stream_report with the batches on {name}"))
    rows.append(make_row(case, f"one read of the data on {dev} (bandwidth limit)", t_read, t_g,
                         notes=f"read at {nbytes / t_read / 1e9:.0f} GB/s; ratio = fraction of "
                               "the bandwidth limit (2 passes)"))
    print(f"  {dev} metrics N={N}: cpu {t_c:.3f} s, {dev} {t_g:.4f} s, read {t_read:.4f} s",
          flush=True)
    return {"device": name, "solver": solver,
            "metrics": {"N": N, "d": d, "K": K, "cpu_seconds": t_c, "device_seconds": t_g,
                        "device_read_seconds": t_read,
                        "device_bandwidth_GBps": nbytes / t_read / 1e9, "rel_diff": rd},
            "comparisons": rows}


# ----------------------------------------------------------------------------- entry points
PART_FUNCS: dict[str, Callable[[bool], dict[str, Any]]] = {
    "full_gradient": full_gradient, "cvxpy_nuclear": cvxpy_nuclear, "pymanopt": pymanopt_bench,
    "metrics_numpy": metrics_numpy, "gpu": gpu,
}


def _summary(out: dict[str, Any]) -> list[str]:
    s = []
    fg = out.get("full_gradient", {})
    h = fg.get("headline", {}) if isinstance(fg, dict) else {}
    if h.get("gufm"):
        p = h["gufm"]["problem"]
        for opt, name in (("adam", "Adam"), ("gd", "GD")):
            r = h.get(opt)
            if r:
                s.append(
                    f"{name} over all N={p['N']} features (d={p['dim']}, K={p['K']}): "
                    + (f"reached the certified value in {r['seconds']:.1f} s" if r["reached"] else
                       f"not within 1e-6 after {r['seconds']:.1f} s ({r['iterations']} it.), "
                       f"rel. error {r['rel_error']:.1e}")
                    + f"; gufm certified in {h['gufm']['seconds']:.3f} s.")
    cv = out.get("cvxpy_nuclear", {})
    if isinstance(cv, dict) and cv.get("largest_N"):
        pts = [p for p in cv["points"] if p.get("N") == cv["largest_N"] and "cvxpy" in p]
        skipped = [p for p in cv["points"] if "skipped" in p]
        if pts:
            p = pts[0]
            s.append(f"cvxpy nuclear-norm UFM over all N: largest N run {p['N']} "
                     f"({p['cvxpy']['seconds']:.1f} s, value agrees with gufm's to "
                     f"{abs(p['rel_diff']):.0e}; gufm {p['gufm_seconds']:.3f} s)"
                     + (f"; N={skipped[0]['N']} skipped: {skipped[0]['skipped']}" if skipped
                        else "") + ".")
    mn = out.get("metrics_numpy", {})
    if isinstance(mn, dict) and mn.get("config"):
        c = mn["config"]
        s.append(f"metrics, N={c['N']:,} d={c['d']} float32: streamed 2-pass report "
                 f"{mn['stream_2pass_seconds']:.3f} s = {mn['stream_2pass_over_read']:.1f}x one "
                 f"read of the data ({mn['bandwidth_GBps']:.1f} GB/s); plain numpy "
                 f"{mn['baseline_seconds']:.2f} s.")
    return s


def warm_up() -> float:
    """Solve tiny problems once (imports, caches) so that no timing below includes them."""
    t0 = time.perf_counter()
    for feats in ("layernorm", "penalty"):
        for counts in ([5, 6, 7], [5, 5, 7]):  # distinct, and tied (the symmetry reduction)
            prob = gufm.GUFM(counts=counts, dim=4, loss="ce", features=feats, lam_W=5e-3,
                             lam_H=1e-3 if feats == "penalty" else None)
            gufm.solve(prob)
            gufm.solve(prob, method="full", maxiter=5)
    return time.perf_counter() - t0


def run(quick: bool = False, parts: list[str] | None = None) -> dict[str, Any]:
    """Run the parts (default all) and return the JSON payload with ``comparisons`` rows."""
    parts = list(PARTS) if parts is None else parts
    out: dict[str, Any] = {"benchmark": "baselines", "quick": quick, "machine": machine(),
                           "comparisons": [], "errors": {}, "warm_up_seconds": warm_up()}
    for part in parts:
        print(f"baselines: {part}", flush=True)
        try:
            res = PART_FUNCS[part](quick)
        except Exception as exc:  # noqa: BLE001 - one failed part must not lose the others
            import traceback

            out["errors"][part] = f"{type(exc).__name__}: {exc}"
            print(traceback.format_exc(), flush=True)
            continue
        out["comparisons"] += res.pop("comparisons", [])
        out[part] = res
    out["summary"] = _summary(out)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--part", action="append", choices=PARTS, help="run only these parts")
    ap.add_argument("--out", default=None, help="write the JSON here")
    a = ap.parse_args(argv)
    out = run(a.quick, a.part)
    write_json(out, a.out)
    return out


if __name__ == "__main__":
    main()
