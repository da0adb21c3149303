"""How gufm's certified solve scales with N, K and d, against the full-N baseline.

    python -m benchmarks.bench_scaling [--quick] [--out FILE.json] [--plots DIR]

Curves (each point one wall-time measurement in this process, after a warm-up):

``N`` (10^3 to 10^6; CE, layernorm, K = 10, d = 64, random labels)
    gufm end to end: building the GUFM from the N labels (an O(N) count) plus the certified
    solve of the reduced problem (independent of N); the per-sample features ``res.features()``
    (an O(Nd) lift) are timed separately.  Against the baseline over all N features (L-BFGS,
    ``method="full"``, the strongest of the full-N methods), run to gufm's certified value
    x (1 + 1e-6) with an iteration budget of about the per-point cap and that cap as its wall-time
    budget (when it stops on the budget the ratio is a lower bound), at the N whose predicted
    time stays under the cap.
``K`` (10 to 10^4; CE, d = K + 1 so that the simplex ETF fits and the optimum is certifiable)
    Two series, to be honest about the symmetry reduction: counts with ties (three distinct
    counts: equal-count classes are exchangeable and gufm solves a problem over the 3 types)
    and all-distinct counts (no reduction).  Points predicted to take longer than the cap are
    skipped (recorded).
``d`` (16 to 4096; CE, K = 10, imbalanced with all-distinct counts)
    The reduced solve works in dimension min(d - 1, K + 1); only the final lift touches d.

Each curve gets a least-squares slope in log-log (``slopes``) and a PNG under the results
folder (``$GUFM_BENCHMARKS_RESULTS``, set by the runner, else ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

import gufm
from benchmarks._common import machine, write_json
from benchmarks.bench_baselines import (
    limit_threads,
    predicted_seconds,
    rel,
    seconds_per_evaluation,
    timed,
    warm_up,
)
from benchmarks.runner import RESULTS_DIR, RESULTS_ENV, make_row
from gufm._util import fit_loglog


def results_dir(path: str | os.PathLike | None = None) -> Path:
    """Where plots go: ``path``, else ``$GUFM_BENCHMARKS_RESULTS``, else ``benchmarks/results``."""
    p = Path(path) if path is not None else Path(os.environ.get(RESULTS_ENV, RESULTS_DIR))
    p.mkdir(parents=True, exist_ok=True)
    return p


def loglog_slope(x: list[float], y: list[float]) -> float | None:
    """Least-squares slope of ``log y`` against ``log x`` (None with fewer than 2 points)."""
    pts = [(a, b) for a, b in zip(x, y, strict=True) if a > 0 and b is not None and b > 0]
    if len(pts) < 2 or len({a for a, _ in pts}) < 2:
        return None
    return fit_loglog([a for a, _ in pts], [b for _, b in pts]).slope


def _slope_entry(curve: str, x: list[float], y: list[float]) -> dict[str, Any]:
    pts = [(a, b) for a, b in zip(x, y, strict=True) if b is not None]
    rng = f"{min(a for a, _ in pts):,.0f}–{max(a for a, _ in pts):,.0f}" if pts else ""
    return {"curve": curve, "range": rng, "slope": loglog_slope(x, y), "points": len(pts)}


# ----------------------------------------------------------------------------- against N
def scaling_N(quick: bool) -> dict[str, Any]:
    """gufm end to end against the full-N L-BFGS baseline, for growing N."""
    K, d, lam = 10, 64, 5e-3
    Ns = [1_000, 10_000, 100_000] if quick else [1_000, 2_000, 5_000, 10_000, 100_000, 1_000_000]
    cap = 3.0 if quick else 60.0
    series_budget = 3 * cap
    rng = np.random.default_rng(0)
    points, rows = [], []
    base_N: list[float] = []
    base_s: list[float] = []
    for N in Ns:
        y = rng.integers(0, K, size=N)
        y[:K] = np.arange(K)
        prob, t_build = timed(lambda y=y: gufm.GUFM(labels=y, dim=d, loss="ce", lam_W=lam))
        res, t_solve = timed(lambda prob=prob: gufm.solve(prob))
        _, t_lift = timed(lambda res=res: res.features())
        pt: dict[str, Any] = {"N": N, "K": K, "d": d, "build_seconds": t_build,
                              "solve_seconds": t_solve, "gufm_seconds": t_build + t_solve,
                              "lift_seconds": t_lift, "value": res.value,
                              "certified": res.certified, "gap": res.gap, "baseline": None}
        pred = predicted_seconds(base_N, base_s, N, default_slope=1.0)
        if pred > cap or sum(base_s) > series_budget:
            pt["baseline"] = {"skipped": f"predicted {pred:.0f} s > cap {cap:g} s" if pred > cap
                              else f"baseline budget of the series ({series_budget:g} s) spent"}
        else:
            t_eval = seconds_per_evaluation(prob)
            maxiter = max(5, int(cap / t_eval))
            target = res.value * (1 + 1e-6)
            with limit_threads(1 if N * d < 1_000_000 else None):
                full, t_full = timed(lambda prob=prob, maxiter=maxiter, target=target: gufm.solve(
                    prob, method="full", target=target, maxiter=maxiter, max_seconds=cap))
            reached = bool(full.value <= target)
            pt["baseline"] = {"method": "L-BFGS over all N features", "seconds": t_full,
                              "value": full.value, "reached": reached,
                              "rel_error": rel(full.value, res.value),
                              "iterations": full.iterations, "max_iterations": maxiter,
                              "stop": full.stop_reason}
            base_N.append(N)
            base_s.append(t_full)
            rows.append(make_row(
                f"CE layernorm N={N} d={d} K={K} (random labels)",
                "L-BFGS over all N features (`method='full'`)", t_full, t_build + t_solve,
                ratio_is_bound=not reached, baseline_reached=reached,
                rel_diff=rel(full.value, res.value), gufm_certified=res.certified,
                notes="gufm: GUFM(labels=...) + certified solve (end to end)"))
        points.append(pt)
        b = pt["baseline"]
        btxt = (f"baseline {b['seconds']:.2f} s (reached {b['reached']})" if "seconds" in b
                else f"baseline {b['skipped']}")
        print(f"  N={N}: gufm {t_build + t_solve:.3f} s (build {t_build:.4f}, solve {t_solve:.3f},"
              f" lift {t_lift:.3f}), {btxt}", flush=True)
    xs = [p["N"] for p in points]
    slopes = [_slope_entry("gufm end to end vs N", xs, [p["gufm_seconds"] for p in points]),
              _slope_entry("gufm build (O(N) count) vs N", xs, [p["build_seconds"] for p in points]),
              _slope_entry("lift to N features vs N", xs, [p["lift_seconds"] for p in points])]
    if len(base_N) >= 2:
        slopes.append(_slope_entry("full-N L-BFGS vs N", base_N, base_s))
    return {"points": points, "cap_seconds": cap, "slopes": slopes, "comparisons": rows}


# ----------------------------------------------------------------------------- against K
def counts_for(series: str, K: int) -> np.ndarray:
    """``tied``: three distinct counts (50, 60, 70) repeated; ``distinct``: 100 + a permutation
    of 0..K-1 (every count different)."""
    if series == "tied":
        return 50 + 10 * (np.arange(K) % 3)
    return 100 + np.random.default_rng(K).permutation(K)


def predict_K(done_K: list[float], done_s: list[float], K: int, cap: float,
              points: list[dict[str, Any]], label: str) -> float | None:
    """Predicted seconds of the solve at ``K`` from the ones done (log-log slope in [2, 3]), or
    ``None`` after appending a ``skipped`` point to ``points`` when it exceeds ``cap``."""
    pred = predicted_seconds(done_K, done_s, K, default_slope=2.0, min_slope=2.0, max_slope=3.0)
    if pred > cap:
        points.append({"K": K, "skipped": f"predicted {pred:.0f} s > cap {cap:g} s"})
        print(f"  {label} K={K}: skipped (predicted {pred:.0f} s)", flush=True)
        return None
    return pred


def scaling_K(quick: bool) -> dict[str, Any]:
    """Certified solve time against K (d = K + 1), tied and distinct counts."""
    Ks = [10, 30, 100] if quick else [10, 30, 100, 300, 1000, 3000, 10_000]
    cap = 10.0 if quick else 120.0
    series: dict[str, list[dict[str, Any]]] = {}
    slopes = []
    for name in ("tied", "distinct"):
        pts: list[dict[str, Any]] = []
        done_K: list[float] = []
        done_s: list[float] = []
        for K in Ks:
            # d = K + 1 grows with K: at least O(K^2) work per iteration; the dense steps (the
            # certificate's K x K eigenproblem, products of K x K matrices) are O(K^3)
            if predict_K(done_K, done_s, K, cap, pts, name) is None:
                continue
            prob = gufm.GUFM(counts=counts_for(name, K), dim=K + 1, loss="ce", lam_W=5e-3)
            res, sec = timed(lambda prob=prob: gufm.solve(prob))
            pts.append({"K": K, "d": K + 1, "seconds": sec, "certified": res.certified,
                        "gap": res.gap, "value": res.value, "method": res.method,
                        "stop": res.stop_reason,
                        "symmetry_reduced": bool(res.info.get("symmetry_reduced", False))})
            done_K.append(K)
            done_s.append(sec)
            print(f"  {name} K={K}: {sec:.3f} s certified={res.certified} gap={res.gap:.1e} "
                  f"({res.stop_reason})", flush=True)
        series[name] = pts
        slopes.append(_slope_entry(f"certified solve vs K ({name} counts, d = K + 1)",
                                   done_K, done_s))
    largest = {}
    for name, pts in series.items():
        ok = [p["K"] for p in pts if p.get("certified") and p.get("seconds", math.inf) < 60]
        largest[name] = max(ok) if ok else None
    return {"series": series, "cap_seconds": cap, "slopes": slopes,
            "largest_K_certified_under_60s": largest}


# ----------------------------------------------------------------------------- against d
def scaling_d(quick: bool) -> dict[str, Any]:
    """Certified solve time against the feature dimension d (K = 10, distinct counts)."""
    ds = [16, 64, 256] if quick else [16, 64, 256, 1024, 4096]
    K = 10
    pts = []
    for d in ds:
        prob, t_build = timed(lambda d=d: gufm.GUFM(counts=counts_for("distinct", K) * 10,
                                                    dim=d, loss="ce", lam_W=5e-3))
        res, sec = timed(lambda prob=prob: gufm.solve(prob))
        pts.append({"d": d, "K": K, "seconds": t_build + sec, "certified": res.certified,
                    "gap": res.gap, "value": res.value})
        print(f"  d={d}: {t_build + sec:.3f} s certified={res.certified}", flush=True)
    return {"points": pts, "slopes": [_slope_entry("certified solve vs d (K = 10)",
                                                   [p["d"] for p in pts],
                                                   [p["seconds"] for p in pts])]}


# ----------------------------------------------------------------------------- plots
def plot(out: dict[str, Any], folder: Path, suffix: str = "") -> list[str]:
    """Write the three log-log plots; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []

    def save(fig: Any, ax: Any, name: str, xlabel: str, title: str) -> None:
        """Label the seconds axis, legend, grid, write ``name`` and close ``fig``."""
        ax.set(xlabel=xlabel, ylabel="seconds", title=title)
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)
        path = folder / f"{name}{suffix}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        files.append(str(path))

    sN = out.get("N")
    if sN:
        fig, ax = plt.subplots(figsize=(5.5, 4))
        P = sN["points"]
        ax.loglog([p["N"] for p in P], [p["gufm_seconds"] for p in P], "o-",
                  label="gufm: build + certified solve")
        ax.loglog([p["N"] for p in P], [p["lift_seconds"] for p in P], "s:",
                  label="gufm: lift to N features")
        B = [p for p in P if p["baseline"] and "seconds" in p["baseline"]]
        if B:
            ax.loglog([p["N"] for p in B], [p["baseline"]["seconds"] for p in B], "^--",
                      label="L-BFGS over all N features")
        save(fig, ax, "scaling_N", "N (samples)", "time against N (K = 10, d = 64)")
    sK = out.get("K")
    if sK:
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for name, pts in sK["series"].items():
            P = [p for p in pts if "seconds" in p]
            ax.loglog([p["K"] for p in P], [p["seconds"] for p in P], "o-",
                      label=f"{name} counts")
        ax.axhline(60, color="gray", lw=0.8, ls=":", label="60 s")
        save(fig, ax, "scaling_K", "K (classes), d = K + 1", "certified solve against K")
    sd = out.get("d")
    if sd:
        fig, ax = plt.subplots(figsize=(5.5, 4))
        P = sd["points"]
        ax.loglog([p["d"] for p in P], [p["seconds"] for p in P], "o-", label="gufm")
        save(fig, ax, "scaling_d", "d (feature dimension)", "certified solve against d (K = 10)")
    return files


# ----------------------------------------------------------------------------- entry points
def run(quick: bool = False, plots: str | os.PathLike | None = None) -> dict[str, Any]:
    """Run the three curves, fit slopes, write the plots; return the JSON payload."""
    out: dict[str, Any] = {"benchmark": "scaling", "quick": quick, "machine": machine(),
                           "warm_up_seconds": warm_up()}
    for key, fn in (("N", scaling_N), ("K", scaling_K), ("d", scaling_d)):
        print(f"scaling against {key}:", flush=True)
        out[key] = fn(quick)
    out["comparisons"] = out["N"].pop("comparisons")
    out["slopes"] = [s for key in ("N", "K", "d") for s in out[key].pop("slopes")]
    try:
        out["plots"] = plot(out, results_dir(plots), "_quick" if quick else "")
    except Exception as exc:  # noqa: BLE001 - a plotting failure must not lose the numbers
        out["plots"] = []
        out["plot_error"] = f"{type(exc).__name__}: {exc}"
    largest = out["K"]["largest_K_certified_under_60s"]
    N_pts = out["N"]["points"]
    out["summary"] = [
        "largest K certified in < 60 s (d = K + 1): "
        + ", ".join(f"{k} counts K = {v}" for k, v in largest.items()) + ".",
        f"gufm end to end at N = {N_pts[-1]['N']:,}: {N_pts[-1]['gufm_seconds']:.3f} s "
        f"(build {N_pts[-1]['build_seconds']:.4f} s).",
    ]
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None, help="write the JSON here")
    ap.add_argument("--plots", default=None, help="folder for the PNGs")
    a = ap.parse_args(argv)
    out = run(a.quick, a.plots)
    write_json(out, a.out)
    return out


if __name__ == "__main__":
    main()
