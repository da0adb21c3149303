"""The main job (``gufm demo``): the solver and the reduction check on embedded data.

1. Solve three GUFM instances (balanced: closed form; imbalanced: certified; K > d - 1: an
   honest gap) and print their summaries.
2. Train L-RN1 on scikit-learn's bundled digits at growing depth, compare every network with
   the GUFM optimum (:func:`gufm.deep.pipeline.train_and_compare`), and write a long-format table
   (``results.csv``), a figure (``gap_vs_depth.png``) and ``summary.md`` to ``out``.
   Finished depths are read back from ``results.csv`` on a rerun (the run resumes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gufm._util import limit_threads
from gufm.model.problem import GUFM
from gufm.solvers import solve

CONFIG = {"arch": "rn1", "width": 32, "dataset": "digits", "n_per_class": 30, "lam": 5e-3,
          "lr": 5e-3, "seed": 0}


def _solver_part() -> list[str]:
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


def run_demo(out: str | Path = "gufm-demo", quick: bool = False) -> int:
    """Run the demo and write its outputs to ``out``; returns 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from gufm.deep.pipeline import train_and_compare

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# gufm demo", ""] + _solver_part()
    depths = [1, 3] if quick else [1, 3, 8]
    epochs = 60 if quick else 300
    table = out / "results.csv"
    df = pd.read_csv(table) if table.exists() else pd.DataFrame()
    done = set(df["depth"].unique()) if len(df) else set()
    print("\n## L-RN1 on digits against the GUFM optimum", flush=True)
    for L in depths:
        if L in done:
            print(f"  depth {L}: already in {table}, skipped", flush=True)
            continue
        # tiny models: one thread (two threads on two busy cores can be 100x slower)
        with limit_threads(1):
            row = train_and_compare(depth=L, epochs=epochs, polish_steps=100 if quick else 500,
                                    **CONFIG)
        new = pd.DataFrame([{**CONFIG, "depth": L, "epochs": epochs, "metric": k, "value": v}
                            for k, v in row.items()])
        df = pd.concat([df, new], ignore_index=True)
        tmp = table.with_suffix(".tmp")
        df.to_csv(tmp, index=False)
        tmp.replace(table)  # atomic: a killed demo never leaves a torn table
        print(f"  depth {L:3d}: gap {row['gap']:.4g}  nc1 {row['nc1']:.3g}  "
              f"acc {row['train_accuracy']:.3f}  |grad| {row['grad_norm']:.2e}  "
              f"({row['seconds']:.1f} s)", flush=True)
    wide = df.pivot_table(index="depth", columns="metric", values="value").sort_index()
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    ax[0].loglog(wide.index, wide["gap"], "o-")
    ax[0].set_xlabel("depth L")
    ax[0].set_ylabel("e2e objective - GUFM optimum")
    ax[1].semilogx(wide.index, np.log10(wide["nc1"]), "o-", label="log10 NC1")
    ax[1].semilogx(wide.index, np.log10(wide["nc2"]), "s-", label="log10 NC2")
    ax[1].semilogx(wide.index, np.log10(wide["nc3"]), "^-", label="log10 NC3")
    ax[1].set_xlabel("depth L")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(out / "gap_vs_depth.png", dpi=90)
    cols = ["gap", "e2e_objective", "gufm_optimum", "nc1", "nc2", "nc3", "train_accuracy",
            "grad_norm"]
    lines += ["", "## L-RN1 on digits (width 32, 30 per class, lam 0.005)", "",
              wide[cols].to_markdown(floatfmt=".4g") if _has_tabulate() else wide[cols].to_string(),
              "", "Figure: gap_vs_depth.png"]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print(f"\nwrote {table}, {out / 'gap_vs_depth.png'}, {out / 'summary.md'}")
    return 0


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True
