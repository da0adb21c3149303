r"""Figures and a markdown summary of a depth sweep (:mod:`gufm.sweep`).

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: metrics plotted in the Figure-1 layout (column titles)
NC_METRICS = (("nc1", "NC1"), ("nc2", "NC2"), ("nc3", "NC3"))
#: metrics whose depth slope goes into the slope table
SLOPE_METRICS = ("gap", "head_gap", "nc1", "nc2", "nc3", "gufm_distance", "body_regularization",
                 "total_regularization")


@dataclass(frozen=True)
class SlopeFit:
    """Least-squares line :math:`\\log_{10}y = a + b\\log_{10}L`.

    Attributes
    ----------
    slope, intercept : float
        ``b`` and ``a`` (NaN when fewer than two distinct depths).
    stderr : float
        Standard error of the slope (NaN when ``n <= 2``; 0 for an exact fit).
    r2 : float
        Coefficient of determination.
    n : int
        Points used (``y > 0``).
    dropped : int
        Points left out because ``y <= 0`` or not finite.
    """

    slope: float
    intercept: float
    stderr: float
    r2: float
    n: int
    dropped: int = 0


def fit_loglog(x: Sequence[float], y: Sequence[float]) -> SlopeFit:
    """Fit :math:`\\log_{10}y = a + b\\log_{10}x` by least squares (module docstring).

    Parameters
    ----------
    x : sequence of float
        Depths (``> 0``).
    y : sequence of float
        Values; non-positive or non-finite ones are dropped (counted in ``dropped``).

    Returns
    -------
    SlopeFit

    Raises
    ------
    ValueError
        ``x`` and ``y`` differ in length or ``x`` has non-positive entries.
    """
    xa = np.asarray(x, dtype=float).ravel()
    ya = np.asarray(y, dtype=float).ravel()
    if xa.shape != ya.shape:
        raise ValueError(f"x and y must have the same length, got {xa.size} and {ya.size}")
    if np.any(~np.isfinite(xa)) or np.any(xa <= 0):
        raise ValueError("x must contain positive finite depths")
    keep = np.isfinite(ya) & (ya > 0)
    lx, ly = np.log10(xa[keep]), np.log10(ya[keep])
    n = int(keep.sum())
    dropped = int(xa.size - n)
    nan = math.nan
    if n < 2 or np.unique(lx).size < 2:
        return SlopeFit(nan, nan, nan, nan, n, dropped)
    xm, ym = lx.mean(), ly.mean()
    sxx = float(((lx - xm) ** 2).sum())
    b = float(((lx - xm) * (ly - ym)).sum() / sxx)
    a = float(ym - b * xm)
    resid = ly - (a + b * lx)
    rss = float((resid**2).sum())
    tss = float(((ly - ym) ** 2).sum())
    se = math.sqrt(rss / (n - 2) / sxx) if n > 2 else nan
    r2 = 1.0 - rss / tss if tss > 0 else 1.0
    return SlopeFit(b, a, se, r2, n, dropped)


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
    to a wide table; return it with notes on what was derived and how."""
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
    """Per (row, depth): count of seeds, mean/std of each metric and of its log10."""
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
    """Depth slope of every metric in every row (:func:`fit_loglog` over all seeds)."""
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


# ----------------------------------------------------------------------------- figures
def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _depth_axis(ax: Any, depths: Sequence[int]) -> None:
    ax.set_xscale("log")
    ax.set_xticks(list(depths))
    ax.set_xticklabels([str(int(d)) for d in depths])
    from matplotlib.ticker import NullLocator

    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("depth L")


def _fmt_slope(f: dict[str, Any] | None) -> str:
    if not f or not math.isfinite(f["slope"]):
        return "slope n/a"
    se = f"{f['stderr']:.2f}" if math.isfinite(f["stderr"]) else "n/a"
    return f"slope {f['slope']:.2f} ± {se}"


def plot_nc(agg: Any, slopes: Any, rows: Sequence[str], path: Path) -> Path:
    """Figure-1 layout: rows x (NC1, NC2, NC3), log10 value against depth."""
    plt = _plt()
    n = len(rows)
    fig, axes = plt.subplots(n, 3, figsize=(11, 2.8 * n + 0.4), squeeze=False)
    for i, row in enumerate(rows):
        a = agg[agg["row"] == row]
        for j, (m, title) in enumerate(NC_METRICS):
            ax = axes[i][j]
            col = f"log10_{m}_mean"
            if col in a and np.isfinite(a[col]).any():
                ax.errorbar(a["depth"], a[col], yerr=a[f"log10_{m}_std"], marker="o", ms=4,
                            capsize=3, color=f"C{i}")
                s = slopes[(slopes["row"] == row) & (slopes["metric"] == m)]
                fit = s.iloc[0].to_dict() if len(s) else None
                if fit and math.isfinite(fit["slope"]):
                    xs = np.array(sorted(a["depth"]), dtype=float)
                    ax.plot(xs, fit["intercept"] + fit["slope"] * np.log10(xs), "--",
                            color="0.4", lw=1)
                ax.set_title(f"{title}: {_fmt_slope(fit)}", fontsize=9)
            else:
                ax.set_title(f"{title}: no data", fontsize=9)
            _depth_axis(ax, sorted(a["depth"].unique()))
            if j == 0:
                ax.set_ylabel(f"{row}\nlog10 value", fontsize=9)
            ax.grid(alpha=0.3)
    fig.suptitle("Neural collapse against depth (mean ± std over seeds)", fontsize=11)
    h = 2.8 * n + 0.4
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.55 / h, top=1 - 0.8 / h, wspace=0.3,
                        hspace=0.55)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_loglog(wide: Any, agg: Any, slopes: Any, rows: Sequence[str], metrics: Sequence[str],
                labels: Sequence[str], path: Path, title: str) -> Path:
    """One panel per metric: every row's runs and mean ± std against depth, log-log, with the
    fitted lines and slopes in the legend."""
    plt = _plt()
    metrics = [m for m in metrics if m in wide]
    fig, axes = plt.subplots(1, max(1, len(metrics)), figsize=(5.5 * max(1, len(metrics)), 4.2),
                             squeeze=False)
    for j, m in enumerate(metrics):
        ax = axes[0][j]
        for i, row in enumerate(rows):
            g = wide[wide["row"] == row]
            v = g[m].to_numpy(float)
            pos = v > 0
            ax.scatter(g["depth"][pos], v[pos], s=10, alpha=0.35, color=f"C{i}")
            a = agg[agg["row"] == row]
            s = slopes[(slopes["row"] == row) & (slopes["metric"] == m)]
            fit = s.iloc[0].to_dict() if len(s) else None
            ax.errorbar(a["depth"], a[f"{m}_mean"], yerr=a[f"{m}_std"], marker="o", ms=4,
                        capsize=3, color=f"C{i}", lw=0, elinewidth=1,
                        label=f"{row}: {_fmt_slope(fit)}")
            if fit and math.isfinite(fit["slope"]):
                xs = np.array(sorted(a["depth"]), dtype=float)
                ax.plot(xs, 10 ** (fit["intercept"] + fit["slope"] * np.log10(xs)), "--",
                        color=f"C{i}", lw=1)
        ax.set_yscale("log")
        _depth_axis(ax, sorted(wide["depth"].unique()))
        ax.set_ylabel(labels[j] if j < len(labels) else m)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=11)
    fig.subplots_adjust(left=0.17 if len(metrics) < 2 else 0.1, right=0.98, bottom=0.13,
                        top=0.88, wspace=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- markdown
def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "n/a" if not math.isfinite(v) else f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def make_report(folder: str | os.PathLike, out: str | os.PathLike | None = None) -> dict[str, Any]:
    """Write the figures, CSVs and ``summary.md`` of a sweep folder (module docstring).

    Parameters
    ----------
    folder : path
        The sweep folder (``gufm sweep --out``), or a ``results.csv``.
    out : path, optional
        Output folder (default ``folder/report``).

    Returns
    -------
    dict
        ``summary`` (path of summary.md), ``figures`` (paths), ``slopes`` (DataFrame),
        ``by_depth`` (DataFrame), ``headline`` (list of one-line findings per row).

    Raises
    ------
    ValueError
        ``folder`` holds no finished runs.
    """
    from gufm.experiments.sweep import load_table, wide_table

    folder = Path(folder)
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
            from gufm.experiments.sweep import SYNTHETIC_NOTE

            notes[r] = SYNTHETIC_NOTE

    metrics = [m for m in ("gap", "head_gap", "nc1", "nc2", "nc3", "gufm_distance",
                           "body_regularization", "total_regularization", "train_accuracy",
                           "grad_norm", "e2e_objective", "gufm_optimum") if m in wide]
    agg = by_depth(wide, metrics)
    slopes = slopes_table(wide)
    slopes.to_csv(out_dir / "slopes.csv", index=False)
    agg.to_csv(out_dir / "by_depth.csv", index=False)

    figs = [plot_nc(agg, slopes, rows, out_dir / "nc_vs_depth.png")]
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
        parts = [f"{m} {_fmt_slope(slope_of(r, m))}" for m in ("gap", "nc1")
                 if slope_of(r, m) is not None]
        headline.append(f"{r}: " + "; ".join(parts))

    n_runs = int(wide["run_id"].nunique())
    lines = [f"# Depth sweep report: `{base}`", "",
             f"{n_runs} finished runs in {len(rows)} row(s). Each run trains a network and "
             "compares it with the GUFM optimum (`gufm.deep.pipeline.train_and_compare`): "
             "gap = e2e objective - GUFM optimum (>= 0 for every network, spec section 6); "
             "the paper predicts that the gap and the NC metrics fall with the depth L.", ""]
    if "gap" in wide:
        neg = wide[wide["gap"] < -1e-9]
        lines += ["- Reduction inequality e2e >= GUFM optimum: "
                  + ("holds in every run." if neg.empty else
                     f"**VIOLATED in {len(neg)} run(s)** ({', '.join(neg['run_id'][:5])}): a bug."),
                  ""]
    if notes:
        lines += ["## Notes", ""] + [f"- **{r}**: {t}" for r, t in notes.items()] + [""]
    lines += ["## Headline", ""] + [f"- {h}" for h in headline] + [""]
    lines += ["## Slopes against depth", "",
              "Least squares of log10(metric) on log10(L) over every run (all seeds); "
              "stderr = standard error of the slope; runs with a value <= 0 are dropped.", ""]
    lines.append(_md_table(
        ["row", "metric", "slope", "stderr", "r2", "n", "dropped", "depths"],
        [[s.row, s.metric, s.slope, s.stderr, s.r2, s.n, s.dropped, s.depths]
         for s in slopes.itertuples()]))
    lines += ["", "## Mean over seeds by depth", ""]
    show = [m for m in ("gap", "nc1", "nc2", "nc3", "body_regularization",
                        "total_regularization", "train_accuracy") if f"{m}_mean" in agg]
    lines.append(_md_table(["row", "L", "seeds", *show],
                           [[a["row"], int(a["depth"]), int(a["seeds"]),
                             *[a[f"{m}_mean"] for m in show]] for _, a in agg.iterrows()]))
    lines += ["", "## Definitions", ""] + [f"- {t}" for t in derive_notes]
    lines += ["- NC1 = tr(Sigma_W Sigma_B^+)/K, NC2 = NC2 on the classifier, NC3 = 1 - mean "
              "cos(h_i, w_{y_i}) (`gufm.metrics`); plotted as log10, mean ± std over seeds.", ""]
    lines += ["## Figures", ""] + [f"![{f.stem}]({f.name})" for f in figs] + [""]
    summary = out_dir / "summary.md"
    summary.write_text("\n".join(lines))
    return {"summary": summary, "figures": figs, "slopes": slopes, "by_depth": agg,
            "headline": headline, "notes": notes}
