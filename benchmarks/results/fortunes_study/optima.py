"""K, N, distinct contexts and the soft- against the hard-label GUFM optimum of the fortunes data.

Run from the repository root (one thread, a minute or two):

    OMP_NUM_THREADS=1 python benchmarks/results/fortunes_study/optima.py

It writes ``optima.json`` and ``optima.md`` next to this file.  The GUFM is the one
:func:`gufm.compare` solves for the study's networks: LayerNorm features, d = 32 (the width),
lambda = 0.005, CE, no classifier bias.  The soft-label GUFM has one feature per distinct input
(:func:`gufm.data.tied_soft_labels`); the hard-label one a free feature per sample.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import gufm
from gufm.data import load_dataset, tied_soft_labels

HERE = Path(__file__).resolve().parent
D, LAM = 32, 0.005
CASES = [("fortunes", 10), ("fortunes", 100), ("fortunes-next", 10), ("fortunes-next", 20),
         ("fortunes-next", 100)]


def main() -> None:
    rows = []
    for name, npc in CASES:
        ds = load_dataset(name, n_per_class=npc, seed=0)
        t = tied_soft_labels(ds.X, ds.y, ds.num_classes)
        t0 = time.perf_counter()
        hard = gufm.solve(gufm.GUFM(labels=ds.y.numpy(), dim=D, lam_W=LAM))
        soft = hard if t.soft_labels is None else gufm.solve(
            gufm.GUFM(soft_labels=t.soft_labels, dim=D, lam_W=LAM))
        row = {"dataset": name, "n_per_class": npc, "K": ds.num_classes, "N": ds.N,
               "distinct_inputs": t.distinct, "conflicting_inputs": t.conflicting,
               "hard_optimum": hard.value, "hard_certified": bool(hard.certified),
               "soft_optimum": soft.value, "soft_lower_bound": soft.lower_bound,
               "soft_certified": bool(soft.certified),
               "seconds": round(time.perf_counter() - t0, 2)}
        rows.append(row)
        print(row, flush=True)
    (HERE / "optima.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["| data set | n_per_class | K | N | distinct inputs | conflicting | hard-label "
             "GUFM optimum | soft-label GUFM optimum (certified lower bound) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['n_per_class']} | {r['K']} | {r['N']} | "
            f"{r['distinct_inputs']} | {r['conflicting_inputs']} | {r['hard_optimum']:.6f}"
            f"{'' if r['hard_certified'] else ' (uncertified)'} | {r['soft_optimum']:.6f} "
            f"({r['soft_lower_bound']:.6f}){'' if r['soft_certified'] else ' uncertified'} |")
    (HERE / "optima.md").write_text(
        f"GUFM optima at d = {D}, lambda = {LAM}, CE, no bias (seed 0 subsets); written by "
        "optima.py.\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
