r"""One plotting style for every figure of a sweep (the report's and the demo's).

Every figure is titled with the networks and data sets it shows, every axis is labelled, the
depth axis is logarithmic with the real depths as ticks (labels that would overlap are left
out), quantities that are compared on a log scale are plotted on a log axis (never their
:math:`\log_{10}` on a linear one) with uncrowded tick labels (:func:`log_y`), and runs
whose training did not converge (``converged`` is 0 in the table) are marked with a red cross.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: metrics plotted in the Figure-1 layout (metric, column title)
NC_METRICS = (("nc1", "NC1"), ("nc2", "NC2"), ("nc3", "NC3"))
#: smallest gap between two labelled depth ticks, as a fraction of the axis' log range
MIN_TICK_GAP = 0.07


def pyplot() -> Any:
    """``matplotlib.pyplot`` with the non-interactive Agg backend (files only).

    Examples
    --------
    >>> pyplot().get_backend().lower()
    'agg'
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def depth_tick_labels(depths: Sequence[int], min_gap: float = MIN_TICK_GAP) -> list[str]:
    """Labels for ticks at ``depths`` on a log axis: a depth whose distance (in the axis' log
    range) to the previous labelled one is below ``min_gap`` gets an empty label; the largest
    depth is always labelled.

    Examples
    --------
    >>> depth_tick_labels([1, 2, 3, 5, 8, 13, 21, 34])
    ['1', '2', '3', '5', '8', '13', '21', '34']
    >>> depth_tick_labels([10, 11, 12, 100])
    ['10', '', '12', '100']
    """
    ds = sorted(int(d) for d in depths)
    if len(ds) < 2:
        return [str(d) for d in ds]
    span = math.log10(ds[-1]) - math.log10(ds[0])
    labels, last = [], None
    for i, d in enumerate(ds):
        far = last is None or (math.log10(d) - math.log10(last)) / span >= min_gap
        if i == len(ds) - 1 and not far:  # keep the last one, drop the previous
            for j in range(len(labels) - 1, -1, -1):
                if labels[j]:
                    labels[j] = "" if j > 0 else labels[j]
                    break
            far = True
        labels.append(str(d) if far else "")
        if far:
            last = d
    return labels


def depth_axis(ax: Any, depths: Sequence[int]) -> None:
    """Log x axis labelled "depth L" with the real ``depths`` as ticks (no minor ticks).

    Examples
    --------
    >>> fig, ax = pyplot().subplots()
    >>> depth_axis(ax, [2, 5, 13])
    >>> [t.get_text() for t in ax.get_xticklabels()], ax.get_xlabel()
    (['2', '5', '13'], 'depth L')
    >>> pyplot().close(fig)
    """
    from matplotlib.ticker import NullLocator

    ds = sorted(int(d) for d in depths)
    ax.set_xscale("log")
    ax.set_xticks(ds)
    ax.set_xticklabels(depth_tick_labels(ds))
    ax.xaxis.set_minor_locator(NullLocator())
    if len(ds) > 1:
        ax.set_xlim(ds[0] / 1.25, ds[-1] * 1.25)
    ax.set_xlabel("depth L")


def log_y(ax: Any) -> None:
    """Log y axis whose tick labels never crowd: over less than a decade, three or four ticks
    with two significant digits and no minor labels (call after plotting).

    Examples
    --------
    >>> fig, ax = pyplot().subplots()
    >>> _ = ax.plot([1, 2], [0.53, 0.57])
    >>> log_y(ax)
    >>> ax.get_yscale(), all(len(t.get_text()) <= 5 for t in ax.get_yticklabels())
    ('log', True)
    >>> pyplot().close(fig)
    """
    from matplotlib.ticker import NullFormatter

    ax.set_yscale("log")
    lo, hi = ax.get_ylim()
    if lo > 0 and math.log10(hi / lo) < 1:
        ticks = sorted({float(f"{t:.2g}") for t in np.geomspace(lo, hi, 5)[1:-1]})
        ax.set_yticks(ticks)
        ax.set_yticklabels([f"{t:.2g}" for t in ticks])
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(lo, hi)


def mark_unconverged(ax: Any, runs: Any, column: str, labelled: bool) -> bool:
    """Red crosses at the runs of ``runs`` (a wide table) whose ``converged`` is 0.

    Returns whether a cross was drawn (``labelled``: the legend entry exists already).
    Tables without a ``converged`` column mark nothing.

    Examples
    --------
    >>> import pandas as pd
    >>> fig, ax = pyplot().subplots()
    >>> mark_unconverged(ax, pd.DataFrame({"depth": [1, 2], "gap": [0.1, 0.2],
    ...                                    "converged": [0.0, 1.0]}), "gap", False)
    True
    >>> pyplot().close(fig)
    """
    if "converged" not in runs or column not in runs:
        return False
    bad = runs[(runs["converged"] == 0) & (runs[column] > 0)]
    if bad.empty:
        return False
    ax.scatter(bad["depth"], bad[column], marker="x", s=60, color="red", zorder=5,
               label=None if labelled else "not converged")
    return True


def rows_title(rows: Sequence[str]) -> str:
    """The networks and data sets of a figure, for its title.

    Examples
    --------
    >>> rows_title(["L-RN1 / digits"])
    'L-RN1 / digits'
    >>> rows_title(["a", "b", "c", "d"])
    'a, b, c, d'
    """
    return ", ".join(rows)


def suptitle(fig: Any, text: str, width_in: float) -> int:
    """A figure title wrapped to the figure's width (``width_in`` inches at 11 pt); returns its
    number of lines.

    Examples
    --------
    >>> fig = pyplot().figure(figsize=(4, 3))
    >>> suptitle(fig, "a long title " * 10, 4) == len(fig._suptitle.get_text().splitlines()) > 1
    True
    >>> pyplot().close(fig)
    """
    import textwrap

    wrapped = textwrap.fill(text, max(40, int(width_in * 11)))
    fig.suptitle(wrapped, fontsize=11)
    return len(wrapped.splitlines())


def format_slope(f: dict[str, Any] | None) -> str:
    """``"slope b ± se"`` of a row of the slope table (``"slope n/a"`` without a fit).

    Examples
    --------
    >>> format_slope({"slope": -1.0, "stderr": 0.05})
    'slope -1.00 ± 0.05'
    """
    if not f or not math.isfinite(f["slope"]):
        return "slope n/a"
    se = f"{f['stderr']:.2f}" if math.isfinite(f["stderr"]) else "n/a"
    return f"slope {f['slope']:.2f} ± {se}"


def _fit(slopes: Any, row: str, metric: str) -> dict[str, Any] | None:
    s = slopes[(slopes["row"] == row) & (slopes["metric"] == metric)]
    return s.iloc[0].to_dict() if len(s) else None


def plot_nc(wide: Any, agg: Any, slopes: Any, rows: Sequence[str], path: Path) -> Path:
    """Figure-1 layout: one row per network/data set, columns NC1, NC2, NC3 against depth.

    Log-log axes: the geometric mean over seeds with the band mean :math:`\\pm` std of
    :math:`\\log_{10}` (a multiplicative spread), the fitted line and its slope in the title,
    non-converged runs marked.

    Examples
    --------
    >>> import tempfile, pandas as pd
    >>> from gufm.experiments.report import by_depth, slopes_table
    >>> w = pd.DataFrame({"row": "r", "depth": [2, 4, 8], "nc1": [1.0, .5, .25],
    ...                   "nc2": [1.0, .5, .25], "nc3": [1.0, .5, .25]})
    >>> p = plot_nc(w, by_depth(w, ["nc1", "nc2", "nc3"]), slopes_table(w), ["r"],
    ...             Path(tempfile.mkdtemp()) / "nc.png")
    >>> p.is_file()
    True
    """
    plt = pyplot()
    n = len(rows)
    h = 3.1 * n + 0.8
    fig, axes = plt.subplots(n, 3, figsize=(11, h), squeeze=False)
    for i, row in enumerate(rows):
        a = agg[agg["row"] == row]
        runs = wide[wide["row"] == row]
        for j, (m, title) in enumerate(NC_METRICS):
            ax = axes[i][j]
            col = f"log10_{m}_mean"
            if col in a and np.isfinite(a[col]).any():
                lm, ls = a[col].to_numpy(float), a[f"log10_{m}_std"].to_numpy(float)
                y = 10**lm
                ax.errorbar(a["depth"], y, yerr=[y - 10 ** (lm - ls), 10 ** (lm + ls) - y],
                            marker="o", ms=4, capsize=3, color=f"C{i}", label="mean over seeds")
                fit = _fit(slopes, row, m)
                if fit and math.isfinite(fit["slope"]):
                    xs = np.array(sorted(a["depth"]), dtype=float)
                    ax.plot(xs, 10 ** (fit["intercept"] + fit["slope"] * np.log10(xs)), "--",
                            color="0.4", lw=1, label="log-log fit")
                if mark_unconverged(ax, runs, m, False):
                    ax.legend(fontsize=7)
                log_y(ax)
                ax.set_title(f"{row}\n{title}: {format_slope(fit)}", fontsize=9)
            else:
                ax.set_title(f"{row}\n{title}: no data", fontsize=9)
            depth_axis(ax, sorted(a["depth"].unique()))
            ax.set_ylabel(f"{title} (log scale)", fontsize=9)
            ax.grid(alpha=0.3, which="both")
    lines = suptitle(fig, f"Neural collapse against depth: {rows_title(rows)} "
                     "(mean ± std of log10 over seeds)", 11)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.6 / h, top=1 - (0.65 + 0.2 * lines) / h,
                        wspace=0.36, hspace=0.75)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_loglog(wide: Any, agg: Any, slopes: Any, rows: Sequence[str], metrics: Sequence[str],
                labels: Sequence[str], path: Path, title: str) -> Path:
    """One panel per metric: every run and the mean :math:`\\pm` std per depth, log-log, the
    fitted line per row with its slope in the legend, non-converged runs marked.

    Examples
    --------
    >>> import tempfile, pandas as pd
    >>> from gufm.experiments.report import by_depth, slopes_table
    >>> w = pd.DataFrame({"row": "r", "depth": [2, 4, 8], "gap": [1.0, .5, .25],
    ...                   "converged": [0.0, 1.0, 1.0]})
    >>> p = plot_loglog(w, by_depth(w, ["gap"]), slopes_table(w), ["r"], ["gap"], ["gap"],
    ...                 Path(tempfile.mkdtemp()) / "gap.png", "Gap")
    >>> p.is_file()
    True
    """
    plt = pyplot()
    metrics = [m for m in metrics if m in wide]
    k = max(1, len(metrics))
    fig, axes = plt.subplots(1, k, figsize=(max(7.0, 5.6 * k), 4.8), squeeze=False)
    for j, m in enumerate(metrics):
        ax = axes[0][j]
        marked = False
        for i, row in enumerate(rows):
            g = wide[wide["row"] == row]
            v = g[m].to_numpy(float)
            pos = v > 0
            ax.scatter(g["depth"][pos], v[pos], s=10, alpha=0.35, color=f"C{i}")
            a = agg[agg["row"] == row]
            fit = _fit(slopes, row, m)
            ax.errorbar(a["depth"], a[f"{m}_mean"], yerr=a[f"{m}_std"], marker="o", ms=4,
                        capsize=3, color=f"C{i}", lw=0, elinewidth=1,
                        label=f"{row}: {format_slope(fit)}")
            if fit and math.isfinite(fit["slope"]):
                xs = np.array(sorted(a["depth"]), dtype=float)
                ax.plot(xs, 10 ** (fit["intercept"] + fit["slope"] * np.log10(xs)), "--",
                        color=f"C{i}", lw=1)
            marked = mark_unconverged(ax, g, m, marked) or marked
        log_y(ax)
        depth_axis(ax, sorted(wide["depth"].unique()))
        ax.set_ylabel(f"{labels[j] if j < len(labels) else m} (log scale)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    lines = suptitle(fig, f"{title}: {rows_title(rows)}", max(7.0, 5.6 * k))
    fig.subplots_adjust(left=0.14 if k < 2 else 0.1, right=0.98, bottom=0.12,
                        top=1 - (0.3 + 0.2 * lines) / 4.8, wspace=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
