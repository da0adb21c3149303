"""Two runs of one depth study, cell by cell: is the new one lower, and by more than the seeds'
spread?

    python -m benchmarks.compare_studies NEW OLD [--metrics gap split_gap continued_gap]
                                         [--out FILE.json]

``NEW`` and ``OLD`` are sweep folders or ``results.csv`` files (``git:REV:PATH`` reads one
from git, e.g. ``git:0486102:benchmarks/results/study_deep/results.csv``).  For every row,
depth and metric present in both: the seeds they share, both means over those seeds, the
ratio of the means, and the paired per-seed log-ratio :math:`\\log_{10}(\\text{new}/\\text{old})`
with its standard error (``sem``; 0 with one seed).  A cell is ``lower``/``higher`` when the
mean moved by more than 0.1% and ``clearly`` so when the mean log-ratio is beyond two
standard errors.  Prints one table per metric and writes everything as JSON.

The two runs must be read with their machines in mind: an optimiser's outcome on a chaotic
landscape moves with the floating-point path, so unchanged code on another CPU can move a cell
by a few percent (docs/training.md, section 6).
"""

from __future__ import annotations

import argparse
import math
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

KEY = ["row", "depth", "seed"]


def load(source: str) -> Any:
    """The wide table (one row per run) of a sweep folder, a CSV file or ``git:REV:PATH``."""
    from gufm.experiments.table import load_table, wide_table

    if source.startswith("git:"):
        _, rev, path = source.split(":", 2)
        text = subprocess.run(["git", "show", f"{rev}:{path}"], check=True, capture_output=True,
                              text=True).stdout
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "results.csv").write_text(text)
            df = load_table(tmp)
    else:
        df = load_table(source)
    if df.empty:
        raise ValueError(f"no runs in {source!r}")
    return wide_table(df)


def compare_cells(new: Any, old: Any, metrics: list[str]) -> list[dict[str, Any]]:
    """Per (metric, row, depth): the paired comparison described in the module docstring.

    Examples
    --------
    >>> import pandas as pd
    >>> new = pd.DataFrame({"row": "r", "depth": 2, "seed": [0, 1], "gap": [1.0, 2.0]})
    >>> old = pd.DataFrame({"row": "r", "depth": 2, "seed": [0, 1], "gap": [2.0, 4.0]})
    >>> c = compare_cells(new, old, ["gap"])[0]
    >>> c["ratio"], c["direction"], c["clearly"]
    (0.5, 'lower', True)
    """
    out = []
    for m in metrics:
        if m not in new or m not in old:
            continue
        both = new[KEY + [m]].merge(old[KEY + [m]], on=KEY, suffixes=("_new", "_old"))
        both = both[np.isfinite(both[f"{m}_new"]) & np.isfinite(both[f"{m}_old"])]
        for (row, L), g in both.groupby(["row", "depth"], sort=True):
            a, b = g[f"{m}_new"].to_numpy(float), g[f"{m}_old"].to_numpy(float)
            pos = (a > 0) & (b > 0)
            lr = np.log10(a[pos] / b[pos])
            sem = float(lr.std(ddof=1) / math.sqrt(lr.size)) if lr.size > 1 else 0.0
            ratio = float(a.mean() / b.mean()) if b.mean() != 0 else math.nan
            direction = ("lower" if ratio < 0.999 else "higher" if ratio > 1.001 else "equal")
            mean_lr = float(lr.mean()) if lr.size else math.nan
            clearly = bool(lr.size > 1 and abs(mean_lr) > 2 * sem and direction != "equal")
            out.append({"metric": m, "row": row, "depth": int(L), "seeds": int(len(g)),
                        "new": float(a.mean()), "old": float(b.mean()), "ratio": ratio,
                        "log10_ratio": mean_lr, "sem": sem, "direction": direction,
                        "clearly": clearly})
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from benchmarks._common import machine, write_json

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("new")
    ap.add_argument("old")
    ap.add_argument("--metrics", nargs="+", default=["gap", "split_gap", "continued_gap"])
    ap.add_argument("--out", default=None, help="write the JSON here")
    a = ap.parse_args(argv)
    cells = compare_cells(load(a.new), load(a.old), list(a.metrics))
    for m in a.metrics:
        mine = [c for c in cells if c["metric"] == m]
        if not mine:
            continue
        print(f"\n{m}: new / old (mean over shared seeds; * = beyond 2 standard errors)")
        print("| row | L | seeds | new | old | ratio | log10 ratio ± sem |")
        print("|---|---|---|---|---|---|---|")
        for c in mine:
            print(f"| {c['row']} | {c['depth']} | {c['seeds']} | {c['new']:.5g} | "
                  f"{c['old']:.5g} | {c['ratio']:.3f}{' *' if c['clearly'] else ''} | "
                  f"{c['log10_ratio']:+.3f} ± {c['sem']:.3f} |")
        counts = {d: sum(c["direction"] == d for c in mine) for d in ("lower", "equal", "higher")}
        clear = {d: sum(c["direction"] == d and c["clearly"] for c in mine)
                 for d in ("lower", "higher")}
        print(f"{m}: {counts['lower']} lower ({clear['lower']} clearly), {counts['equal']} "
              f"equal, {counts['higher']} higher ({clear['higher']} clearly) of {len(mine)}")
    payload = {"benchmark": "compare-studies", "new": a.new, "old": a.old,
               "machine": machine(), "cells": cells}
    write_json(payload, a.out)
    return payload


if __name__ == "__main__":
    main()
