"""The cells of ``depth_sweep.ipynb``; ``python notebooks/build_notebooks.py`` builds, executes
and stores it (a tiny sweep, well under a minute)."""

from __future__ import annotations

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook


def depth_sweep() -> nbformat.NotebookNode:
    """The depth-sweep walkthrough notebook."""
    cells = [
        new_markdown_cell(
            "# Depth sweeps: does the gap to the GUFM close with depth?\n\n"
            "The paper claims that deep regularised ResNets and transformers reduce to a GUFM: "
            "the end-to-end objective approaches the GUFM optimum and the features collapse as "
            "the depth $L$ grows. `gufm.experiments.sweep` trains one network per (architecture, data set, "
            "depth, seed), compares each with the GUFM optimum "
            "(`gufm.deep.pipeline.train_and_compare`) and records the results in a resumable "
            "long-format table; `gufm.experiments.report` plots NC1-3 and the gap against $L$ and fits "
            "log-log slopes.\n\n"
            "This notebook runs a **tiny** sweep (L-RN1 on 8x8 digits, width 8, 5 images per "
            "class, a few dozen optimiser steps) so that it executes in seconds; the numbers are "
            "a demonstration of the machinery, not of the claim. For that use "
            "`gufm sweep --preset quick` (minutes) or `--preset paper-fig1` (a GPU cluster)."
        ),
        new_code_cell(
            "from IPython.display import Image, display\n\n"
            "from gufm.experiments.report import make_report\n"
            "from gufm.experiments.spec import expand_grid\n"
            "from gufm.experiments.sweep import run_sweep\n"
            "from gufm.experiments.table import load_table, wide_table"
        ),
        new_markdown_cell(
            "## 1. A grid of runs\n\n`expand_grid` validates everything before any run starts "
            "(unknown architecture, depth 0, empty seed list: `ValueError`). Each run has a "
            "stable id, a hash of its configuration."
        ),
        new_code_cell(
            "specs = expand_grid('rn1', depths=[1, 2, 4], seeds=[0, 1], dataset='digits',\n"
            "                    lam=0.005, width=8, n_per_class=5, epochs=30,\n"
            "                    options={'polish_steps': 30})\n"
            "for s in specs[:3]:\n    print(s.run_id, 'lam =', s.lam)\n"
            "try:\n    expand_grid('rn1', depths=[0, 2], seeds=[0])\n"
            "except ValueError as e:\n    print('rejected:', e)"
        ),
        new_markdown_cell(
            "## 2. Run, then run again\n\nEvery finished run is written atomically to "
            "`OUT/runs/<run_id>.csv`; the second call finds them all and skips them (this is "
            "also how a killed sweep resumes). `jobs=N` uses N local processes and "
            "`scheduler='tcp://...'` a Dask cluster; the command line is "
            "`gufm sweep --arch rn1 --depths 1,2,4 --seeds 0,1 ... --out OUT`."
        ),
        new_code_cell(
            "summary = run_sweep(specs, 'depth_sweep_demo', progress=False)\n"
            "print(f'{len(summary.completed)} runs finished in {summary.seconds:.1f} s')\n"
            "again = run_sweep(specs, 'depth_sweep_demo', progress=False)\n"
            "print(f'second call: {len(again.skipped)} skipped, {len(again.completed)} run')\n"
            "assert len(again.skipped) == len(specs) and not again.completed"
        ),
        new_code_cell(
            "table = load_table('depth_sweep_demo')   # long format: one row per (run, metric)\n"
            "print(table[['run_id', 'depth', 'seed', 'metric', 'value']].head(4))\n"
            "wide = wide_table(table)                   # one row per run\n"
            "wide[['depth', 'seed', 'e2e_objective', 'gufm_optimum', 'gap', 'nc1', "
            "'train_accuracy']]"
        ),
        new_markdown_cell(
            "## 3. The report\n\n`make_report` (or `gufm report OUT`) writes the Figure-1 "
            "layout (NC1, NC2, NC3 against $L$ on log-log axes, mean ± std of log10 over "
            "seeds), the gap against $L$ on log-log axes with the least-squares slope and its "
            "standard error, the "
            "regularisation against $L$, and `summary.md` with a table of slopes."
        ),
        new_code_cell(
            "rep = make_report('depth_sweep_demo')\n"
            "for line in rep['headline']:\n    print(line)\n"
            "print(rep['slopes'][['row', 'metric', 'slope', 'stderr', 'n']].to_string(index=False))\n"
            "display(Image(filename=str(rep['figures'][0])))\n"
            "display(Image(filename=str(rep['figures'][1])))"
        ),
    ]
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    return nb
