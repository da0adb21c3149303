r"""Figures and a markdown summary of a depth sweep (:mod:`gufm.experiments.sweep`).

:func:`make_report` reads a sweep folder's long-format table and writes, into ``DIR/report``:

``nc_vs_depth.png``
    :math:`\log_{10}` NC1, NC2, NC3 against the depth :math:`L` (log axis), mean :math:`\pm`
    standard deviation of :math:`\log_{10}` over seeds, laid out like the paper's Figure 1:
    one row per architecture/data set, one column per metric.
``gap_vs_depth.png``
    The gap :math:`\text{e2e objective} - F^\star_{\text{GUFM}}` against :math:`L` on
    log-log axes (every seed, and the mean :math:`\pm` std), with the least-squares line of
    :math:`\log_{10}\text{gap}` on :math:`\log_{10}L` and its slope :math:`\pm` standard error.
``regularization_vs_depth.png``
    The regularisation against :math:`L` (log-log, fitted slopes).  ``train_and_compare``
    reports ``e2e_objective`` and ``head_objective``; both contain the same data loss (the
    head is the GUFM objective at the network's own classifier and features), so
    :math:`\text{e2e} - \text{head} = \tfrac\lambda2\sum_{\theta\ne W}\lVert\theta\rVert^2`
    is exactly the penalty of every parameter but the classifier (``body_regularization``:
    the cost of building the collapsed features, which the paper says vanishes with depth).
    When the table also has ``e2e_penalty`` (or ``e2e_loss``), ``total_regularization`` (all
    parameters) is plotted too.
``slopes.csv``, ``by_depth.csv``
    The fitted slopes and the per-depth means/standard deviations.
``summary.md``
    Slope table, per-depth table, notes (e.g. the synthetic language task), figure links.

Slopes are ordinary least squares of :math:`\log_{10}y` on :math:`\log_{10}L` over every run
with :math:`y > 0` (runs with :math:`y \le 0` are counted and left out); the standard error is
:math:`\sqrt{\hat\sigma^2/\sum_i(x_i-\bar x)^2}` with :math:`\hat\sigma^2 = \text{RSS}/(n-2)`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gufm._util import SlopeFit, fit_loglog
from gufm.experiments.figures import format_slope, plot_loglog, plot_nc
from gufm.experiments.presets import SYNTHETIC_NOTE
from gufm.experiments.table import load_table, wide_table

__all__ = ["SlopeFit", "add_derived", "by_depth", "fit_loglog", "make_report",
           "sandwich_section", "slopes_table"]

#: metrics whose depth slope goes into the slope table
SLOPE_METRICS = ("gap", "head_gap", "nc1", "nc2", "nc3", "gufm_distance", "body_regularization",
                 "total_regularization")


# ----------------------------------------------------------------------------- data
def _manifest(folder: Path) -> dict[str, Any]:
    p = folder / "sweep.json"
    if p.is_file():
        try:
            return json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            return {}
    return {}


def add_derived(wide: Any) -> tuple[Any, list[str]]:
    """Add ``body_regularization``, ``total_regularization`` (when possible) and ``head_gap``
    to a wide table; return it with notes on what was derived and how.

    Examples
    --------
    >>> import pandas as pd
    >>> w, notes = add_derived(pd.DataFrame({"e2e_objective": [0.5], "head_objective": [0.4],
    ...                                      "gufm_optimum": [0.3]}))
    >>> float(round(w["body_regularization"][0], 12)), float(round(w["head_gap"][0], 12))
    (0.1, 0.1)
    """
    notes: list[str] = []
    cols = set(wide.columns)
    if {"e2e_objective", "head_objective"} <= cols:
        wide["body_regularization"] = wide["e2e_objective"] - wide["head_objective"]
        notes.append("body_regularization = e2e_objective - head_objective = lam/2 * sum of "
                     "||theta||^2 over every parameter except the classifier (exact: both "
                     "objectives contain the same data loss).")
    if {"head_objective", "gufm_optimum"} <= cols and "head_gap" not in cols:
        wide["head_gap"] = wide["head_objective"] - wide["gufm_optimum"]
    for key in ("total_regularization", "e2e_penalty"):
        if key in cols:
            wide["total_regularization"] = wide[key]
            if key != "total_regularization":
                notes.append(f"total_regularization = {key} (all parameters).")
            break
    else:
        for lk in ("e2e_loss", "train_loss"):
            if lk in cols and "e2e_objective" in cols:
                wide["total_regularization"] = wide["e2e_objective"] - wide[lk]
                notes.append(f"total_regularization = e2e_objective - {lk}.")
                break
        else:
            notes.append("total regularisation (all parameters) is not in the table: "
                         "train_and_compare reports neither e2e_penalty nor the training loss; "
                         "the body regularisation above is everything but the classifier's "
                         "lam/2 ||W||^2.")
    return wide, notes


def by_depth(wide: Any, metrics: Sequence[str]) -> Any:
    """Per (row, depth): count of seeds, mean/std of each metric and of its log10.

    Examples
    --------
    >>> import pandas as pd
    >>> w = pd.DataFrame({"row": "r", "depth": [2, 2], "gap": [1.0, 100.0]})
    >>> a = by_depth(w, ["gap"])
    >>> a[["depth", "seeds", "gap_mean", "log10_gap_mean"]].values.tolist()
    [[2.0, 2.0, 50.5, 1.0]]
    """
    import pandas as pd

    recs = []
    for (row, L), g in wide.groupby(["row", "depth"], sort=False):
        rec: dict[str, Any] = {"row": row, "depth": int(L), "seeds": int(len(g))}
        for m in metrics:
            if m not in g:
                continue
            v = g[m].to_numpy(dtype=float)
            rec[f"{m}_mean"] = float(np.nanmean(v)) if np.isfinite(v).any() else math.nan
            rec[f"{m}_std"] = float(np.nanstd(v, ddof=1)) if np.isfinite(v).sum() > 1 else 0.0
            pos = v[np.isfinite(v) & (v > 0)]
            lv = np.log10(pos) if pos.size else np.array([])
            rec[f"log10_{m}_mean"] = float(lv.mean()) if lv.size else math.nan
            rec[f"log10_{m}_std"] = float(lv.std(ddof=1)) if lv.size > 1 else 0.0
        recs.append(rec)
    return pd.DataFrame(recs).sort_values(["row", "depth"], kind="stable").reset_index(drop=True)


def slopes_table(wide: Any, metrics: Sequence[str] = SLOPE_METRICS) -> Any:
    """Depth slope of every metric in every row (:func:`fit_loglog` over all seeds).

    Examples
    --------
    >>> import pandas as pd
    >>> w = pd.DataFrame({"row": "r", "depth": [1, 2, 4], "gap": [1.0, 0.5, 0.25]})
    >>> slopes_table(w, ["gap"])[["metric", "slope", "n"]].values.tolist()
    [['gap', -1.0, 3]]
    """
    import pandas as pd

    recs = []
    for row, g in wide.groupby("row", sort=False):
        for m in metrics:
            if m not in g:
                continue
            f = fit_loglog(g["depth"].to_numpy(float), g[m].to_numpy(float))
            recs.append({"row": row, "metric": m, "slope": f.slope, "stderr": f.stderr,
                         "intercept": f.intercept, "r2": f.r2, "n": f.n, "dropped": f.dropped,
                         "depths": ",".join(str(int(d)) for d in sorted(g["depth"].unique()))})
    return pd.DataFrame(recs)


# ----------------------------------------------------------------------------- markdown
def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "n/a" if not math.isfinite(v) else f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


#: a row whose body regularisation stays below this share of the gap at every depth is flagged
#: as "blocks switched off"
BLOCKS_OFF_SHARE = 0.01


def sandwich_section(wide: Any, rows: Sequence[str]) -> list[str]:
    r"""Markdown of the sandwich :math:`F^\star_{\text{GUFM}} \le` best e2e network, per row
    and depth, with the flags of docs/training.md (section 6).

    Columns: seeds, certified GUFM optimum, best e2e objective (the lowest run; with
    ``--continuation`` the lowest of fresh, split-only and continued), gap, head gap, body
    regularisation and body regularisation :math:`\times L`, the local log-log slope of the
    mean gap between consecutive depths, converged runs, and (continuation sweeps) the mean
    gap of each kind.  Above each table the L = 0 reference (embedding only; measured by
    continuation sweeps) and three flags: a row whose gap grows with depth (a positive local
    slope at the deepest depths), a row where the embedding alone reaches the GUFM
    (:math:`N \le` the rank of the inputs, or an embedding-only gap below 1e-6), and a row
    whose blocks are switched off (body regularisation below :data:`BLOCKS_OFF_SHARE` of the
    gap at every depth: its trend does not come from depth).

    Examples
    --------
    >>> import pandas as pd
    >>> w = pd.DataFrame({"row": ["r"] * 2, "depth": [2, 4], "gap": [0.1, 0.2],
    ...                   "gufm_optimum": [0.05] * 2, "e2e_objective": [0.15, 0.25]})
    >>> any("FLAG" in line and "grows" in line for line in sandwich_section(w, ["r"]))
    True
    >>> w["body_regularization"] = [1e-5, 1e-5]
    >>> any("switched off" in line for line in sandwich_section(w, ["r"]))
    True
    """
    out = ["## The sandwich: certified GUFM optimum <= best network", ""]
    kinds = [k for k in ("fresh", "split", "continued") if f"{k}_gap" in wide]
    for r in rows:
        g = wide[wide["row"] == r]
        depths = sorted(int(d) for d in g["depth"].unique())

        def mean(col: str, L: int, g: Any = g) -> float:
            if col not in g:
                return math.nan
            v = g.loc[g["depth"] == L, col].to_numpy(dtype=float)
            return float(np.nanmean(v)) if np.isfinite(v).any() else math.nan

        gaps = [mean("gap", L) for L in depths]
        local = [math.log(b / a) / math.log(L2 / L1) if a > 0 and b > 0 else math.nan
                 for (L1, a), (L2, b) in zip(zip(depths, gaps, strict=True),
                                             list(zip(depths, gaps, strict=True))[1:],
                                             strict=False)]
        out += [f"### {r}", ""]
        emb = mean("embedding_gap", depths[0]) if "embedding_gap" in g else math.nan
        out.append("- L = 0 reference (embedding only): " + (
            f"gap {emb:.4g}" if math.isfinite(emb)
            else "not measured in this sweep (`gufm sweep --continuation` measures it)"))
        n = mean("N", depths[0]) if "N" in g else math.nan
        rank = mean("input_rank", depths[0]) if "input_rank" in g else math.nan
        if (math.isfinite(n) and rank >= 0 and n <= rank) or (math.isfinite(emb) and emb < 1e-6):
            out.append(f"- **FLAG: the embedding alone reaches the GUFM optimum** (N = {n:.0f}, "
                       f"input rank {rank:.0f}, embedding-only gap {emb:.3g}): this row says "
                       "nothing about depth.")
        share = [mean("body_regularization", L) / gap for L, gap in zip(depths, gaps,
                                                                          strict=True)
                 if gap > 0 and math.isfinite(mean("body_regularization", L))]
        if share and max(share) < BLOCKS_OFF_SHARE:
            out.append("- **FLAG: the blocks are switched off** (body regularisation below "
                       f"{BLOCKS_OFF_SHARE:.0%} of the gap at every depth, at most "
                       f"{max(share):.2g}): the networks are about the embedding alone, and the "
                       "row's trend comes from the GUFM optimum (lam/L) and the head, not "
                       "from building features with depth.")
        if "split_from_pre_limit" in g:
            sp = g["split_from_pre_limit"].to_numpy(dtype=float)
            sp = sp[np.isfinite(sp)]
            if sp.size:
                out.append(f"- split networks deepened from a network before its singular-limit "
                           f"polish: {int(sp.sum())} of {sp.size}")
        tail = [v for v in local[-2:] if math.isfinite(v)]
        if tail and max(tail) > 0:
            out.append("- **FLAG: the gap grows with depth** (local slopes at the deepest "
                       "depths: " + ", ".join(f"{v:+.2f}" for v in tail) + "); not what the "
                       "paper predicts: check `converged` before reading it as a finding.")
        out.append("")
        header = ["L", "seeds", "GUFM optimum", "best e2e", "gap", "head gap", "body reg",
                  "body reg x L", "local slope", "converged"] + [f"{k} gap" for k in kinds]
        table = []
        for i, L in enumerate(depths):
            gl = g[g["depth"] == L]
            conv = (f"{int((gl['converged'] > 0).sum())}/{len(gl)}" if "converged" in gl
                    else "n/a")
            body = mean("body_regularization", L)
            table.append([L, len(gl), mean("gufm_optimum", L), mean("e2e_objective", L),
                          gaps[i], mean("head_gap", L), body, body * L,
                          local[i - 1] if i else math.nan, conv]
                         + [mean(f"{k}_gap", L) for k in kinds])
        out += [_md_table(header, table), ""]
    return out


def make_report(folder: str | os.PathLike, out: str | os.PathLike | None = None, *,
                title: str | None = None, preamble: Sequence[str] = ()) -> dict[str, Any]:
    """Write the figures, CSVs and ``summary.md`` of a sweep folder (module docstring).

    Parameters
    ----------
    folder : path
        The sweep folder (``gufm sweep --out``), or a ``results.csv``.
    out : path, optional
        Output folder (default ``folder/report``).
    title : str, optional
        First heading of ``summary.md`` (default ``Depth sweep report: <folder>``).
    preamble : sequence of str
        Markdown lines placed after the title (the demo puts its solver results there).

    Returns
    -------
    dict
        ``summary`` (path of summary.md), ``figures`` (paths), ``slopes`` (DataFrame),
        ``by_depth`` (DataFrame), ``headline`` (list of one-line findings per row).

    Raises
    ------
    FileNotFoundError
        ``folder`` does not exist.
    ValueError
        ``folder`` holds no finished runs.

    Examples
    --------
    >>> import tempfile
    >>> from gufm.experiments.spec import expand_grid
    >>> from gufm.experiments.sweep import run_sweep
    >>> from gufm.experiments.testing import toy_run
    >>> d = tempfile.mkdtemp()
    >>> s = run_sweep(expand_grid("rn1", [2, 4, 8], [0, 1]), d, run_fn=toy_run, progress=False,
    ...               validate_data=False)
    >>> rep = make_report(d)
    >>> sorted(f.name for f in rep["figures"])
    ['gap_vs_depth.png', 'nc_vs_depth.png', 'regularization_vs_depth.png']
    >>> rep["headline"]  # doctest: +ELLIPSIS
    ['L-RN1 / digits: gap slope -1.00 ± ...; nc1 slope -0.50 ± ...']
    """
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"folder {str(folder)!r} does not exist")
    df = load_table(folder)
    if df.empty:
        raise ValueError(f"folder {str(folder)!r} holds no finished runs (no runs/*.csv or "
                         "results.csv)")
    base = folder if folder.is_dir() else folder.parent
    out_dir = Path(out) if out is not None else base / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = _manifest(base)
    wide, derive_notes = add_derived(wide_table(df))
    order = list(manifest.get("rows", {}))
    rows = [r for r in order if r in set(wide["row"])]
    rows += [r for r in dict.fromkeys(wide["row"]) if r not in rows]
    wide["row"] = wide["row"].astype(str)
    notes = {r: v.get("note", "") for r, v in manifest.get("rows", {}).items() if v.get("note")}
    for r in rows:
        if r not in notes and (wide.loc[wide["row"] == r, "dataset"] == "synthetic-tokens").any():
            notes[r] = SYNTHETIC_NOTE

    metrics = [m for m in ("gap", "head_gap", "nc1", "nc2", "nc3", "gufm_distance",
                           "body_regularization", "total_regularization", "train_accuracy",
                           "grad_norm", "converged", "e2e_objective", "gufm_optimum") if m in wide]
    agg = by_depth(wide, metrics)
    slopes = slopes_table(wide)
    slopes.to_csv(out_dir / "slopes.csv", index=False)
    agg.to_csv(out_dir / "by_depth.csv", index=False)

    figs = [plot_nc(wide, agg, slopes, rows, out_dir / "nc_vs_depth.png")]
    figs.append(plot_loglog(wide, agg, slopes, rows, ["gap"],
                            ["gap = e2e objective - GUFM optimum"], out_dir / "gap_vs_depth.png",
                            "Gap to the GUFM optimum against depth (log-log)"))
    reg = [m for m in ("body_regularization", "total_regularization") if m in wide]
    if reg:
        labels = {"body_regularization": "lam/2 sum ||theta||^2, all but the classifier",
                  "total_regularization": "lam/2 sum ||theta||^2, all parameters"}
        figs.append(plot_loglog(wide, agg, slopes, rows, reg, [labels[m] for m in reg],
                                out_dir / "regularization_vs_depth.png",
                                "Regularisation against depth (log-log)"))

    def slope_of(row: str, m: str) -> dict[str, Any] | None:
        s = slopes[(slopes["row"] == row) & (slopes["metric"] == m)]
        return s.iloc[0].to_dict() if len(s) else None

    headline = []
    for r in rows:
        parts = [f"{m} {format_slope(slope_of(r, m))}" for m in ("gap", "nc1")
                 if slope_of(r, m) is not None]
        headline.append(f"{r}: " + "; ".join(parts))

    n_runs = int(wide["run_id"].nunique())
    lines = [f"# {title or f'Depth sweep report: `{base}`'}", "", *preamble,
             f"{n_runs} finished runs in {len(rows)} row(s). Each run trains a network and "
             "compares it with the GUFM optimum (`gufm.deep.pipeline.train_and_compare`): "
             "gap = e2e objective - GUFM optimum (>= 0 for every network, docs/reduction.md); "
             "the paper predicts that the gap and the NC metrics fall with the depth L.", ""]
    if "gap" in wide:
        neg = wide[wide["gap"] < -1e-9]
        lines += ["- Reduction inequality e2e >= GUFM optimum: "
                  + ("holds in every run." if neg.empty else
                     f"**VIOLATED in {len(neg)} run(s)** ({', '.join(neg['run_id'][:5])}): a bug."),
                  ""]
    if "converged" in wide:
        bad = wide[wide["converged"] == 0]
        lines += ["- Training converged: " + ("every run." if bad.empty else
                  f"**not in {len(bad)} run(s)** (red crosses in the figures): "
                  + ", ".join(f"{r.row} L={int(r.depth)} seed {int(r.seed)}"
                              for r in bad.head(8).itertuples())), ""]
    if notes:
        lines += ["## Notes", ""] + [f"- **{r}**: {t}" for r, t in notes.items()] + [""]
    lines += ["## Headline", ""] + [f"- {h}" for h in headline] + [""]
    lines += sandwich_section(wide, rows)
    lines += ["## Slopes against depth", "",
              "Least squares of log10(metric) on log10(L) over every run (all seeds); "
              "stderr = standard error of the slope; runs with a value <= 0 are dropped.", ""]
    lines.append(_md_table(
        ["row", "metric", "slope", "stderr", "r2", "n", "dropped", "depths"],
        [[s.row, s.metric, s.slope, s.stderr, s.r2, s.n, s.dropped, s.depths]
         for s in slopes.itertuples()]))
    lines += ["", "## Mean over seeds by depth", ""]
    show = [m for m in ("gap", "nc1", "nc2", "nc3", "body_regularization",
                        "total_regularization", "train_accuracy", "grad_norm", "converged")
            if f"{m}_mean" in agg]
    lines.append(_md_table(["row", "L", "seeds", *show],
                           [[a["row"], int(a["depth"]), int(a["seeds"]),
                             *[a[f"{m}_mean"] for m in show]] for _, a in agg.iterrows()]))
    lines += ["", "## Definitions", ""] + [f"- {t}" for t in derive_notes]
    lines += ["- NC1 = tr(Sigma_W Sigma_B^+)/K, NC2 = NC2 on the classifier, NC3 = 1 - mean "
              "cos(h_i, w_{y_i}) (`gufm.metrics`, docs/metrics.md); plotted on log axes: the "
              "geometric mean over seeds, bars mean ± std of log10.", ""]
    lines += ["## Figures", ""] + [f"![{f.stem}]({f.name})" for f in figs] + [""]
    summary = out_dir / "summary.md"
    summary.write_text("\n".join(lines))
    return {"summary": summary, "figures": figs, "slopes": slopes, "by_depth": agg,
            "headline": headline, "notes": notes}
