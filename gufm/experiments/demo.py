"""The main job (``gufm demo``): the solver and the reduction check on embedded data.

1. Solve four GUFM instances (balanced: closed form; imbalanced CE with a bias and MSE:
   certified; K > d - 1 on a sphere: an honest gap) and print their summaries.
2. Train L-RN1 on scikit-learn's bundled digits at growing depth and compare every network with
   the GUFM optimum: a small sweep (:func:`gufm.experiments.sweep.run_sweep`, so a rerun resumes
   and keeps the finished depths) and its report (:func:`gufm.experiments.report.make_report`:
   ``results.csv``, ``gap_vs_depth.png``, ``nc_vs_depth.png``, ``summary.md`` in ``out``).
"""

from __future__ import annotations

import os
from pathlib import Path

from gufm.experiments.report import make_report
from gufm.experiments.spec import RunSpec, expand_grid
from gufm.experiments.sweep import run_sweep
from gufm.experiments.table import finished_runs, load_table, wide_table
from gufm.model.problem import GUFM
from gufm.solvers import solve

#: the network part: L-RN1 on digits (embedded), one seed
NETWORK = {"width": 32, "n_per_class": 30, "lam": 5e-3, "lr": 5e-3}


def demo_specs(quick: bool = False) -> list[RunSpec]:
    """The demo's runs: L-RN1 on digits at depths 1, 3, 8 (``quick``: 1 and 3, fewer steps).

    Examples
    --------
    >>> [(s.arch, s.dataset, s.depth, s.epochs) for s in demo_specs(quick=True)]
    [('rn1', 'digits', 1, 60), ('rn1', 'digits', 3, 60)]
    """
    return expand_grid("rn1", depths=[1, 3] if quick else [1, 3, 8], seeds=[0], dataset="digits",
                       epochs=60 if quick else 300,
                       options={"polish_steps": 100 if quick else 500}, **NETWORK)


def _solver_part() -> list[str]:
    """Solve the four instances, print each summary, return markdown lines."""
    lines = ["## Solver", ""]
    cases = [
        ("balanced CE (closed form)", GUFM(counts=[100] * 10, dim=16, loss="ce", lam_W=5e-3)),
        ("imbalanced CE, bias", GUFM(counts=[500, 300, 120, 60, 20, 5], dim=8, loss="ce",
                                     lam_W=5e-3, lam_b=1e-2)),
        ("imbalanced MSE", GUFM(counts=[40, 30, 20, 10], dim=8, loss="mse", lam_W=1e-2)),
        ("K=10 > d-1 (sphere, d=3): honest gap",
         GUFM(counts=[5] * 10, dim=3, features="sphere", radius=2.0, lam_W=1e-2)),
    ]
    for name, prob in cases:
        res = solve(prob)
        print(f"\n### {name}\n{res.summary()}", flush=True)
        lines.append(f"- **{name}**: value {res.value:.10g}, bound {res.lower_bound:.10g}, "
                     f"gap {res.gap:.2e}, certified {res.certified} ({res.method})")
    return lines


def run_demo(out: str | os.PathLike = "gufm-demo", quick: bool = False,
             progress: bool = True) -> int:
    """Run the demo and write its outputs to ``out``; returns 0.

    Parameters
    ----------
    out : path
        Output folder (created): the sweep table (``runs/``, ``results.csv``), the report's
        figures and ``summary.md``.
    quick : bool
        Depths 1 and 3 with few steps (a smoke test; the networks are not converged).
    progress : bool
        A progress bar over the networks.

    Returns
    -------
    int
        0.

    Examples
    --------
    A full run trains networks (``run_demo("gufm-demo", quick=True)`` takes several seconds);
    its defaults and the runs it trains:

    >>> import inspect
    >>> {k: p.default for k, p in inspect.signature(run_demo).parameters.items()}
    {'out': 'gufm-demo', 'quick': False, 'progress': True}
    >>> [(s.depth, s.width, s.n_per_class) for s in demo_specs()]
    [(1, 32, 30), (3, 32, 30), (8, 32, 30)]
    """
    out = Path(out)
    lines = _solver_part()
    specs = demo_specs(quick)
    done = finished_runs(out)
    print("\n## L-RN1 on digits against the GUFM optimum", flush=True)
    for sp in specs:
        if sp.run_id in done:
            print(f"  depth {sp.depth}: already finished in {out / 'runs'}, skipped", flush=True)
    summary = run_sweep(specs, out, threads=1, progress=progress)
    if summary.failed:
        raise RuntimeError(f"demo runs failed: {summary.failed}")
    wide = wide_table(load_table(out)).sort_values("depth")
    for _, r in wide.iterrows():
        conv = r.get("converged")
        flag = "" if conv is None or conv != conv or bool(conv) else "  NOT CONVERGED"
        print(f"  depth {int(r['depth']):3d}: gap {r['gap']:.4g}  nc1 {r['nc1']:.3g}  "
              f"acc {r['train_accuracy']:.3f}  |grad| {r['grad_norm']:.2e}{flag}", flush=True)
    net = (f"L-RN1 on digits: width {NETWORK['width']}, {NETWORK['n_per_class']} samples per "
           f"class, lam {NETWORK['lam']}, {specs[0].epochs} Adam epochs + L-BFGS polish")
    rep = make_report(out, out=out, title="gufm demo", preamble=[*lines, "", f"## {net}", ""])
    print(f"\nwrote {out / 'results.csv'}, {', '.join(str(f) for f in rep['figures'])}, "
          f"{rep['summary']}")
    return 0
