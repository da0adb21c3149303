"""The run table of a sweep folder: one file per finished run, written atomically.

Results live in a folder ``DIR``:

``DIR/runs/<run_id>.csv``
    One file per finished run, in **long format**: one row per (run, metric) with the
    configuration columns :data:`~gufm.experiments.spec.CONFIG_COLUMNS` followed by ``metric``
    and ``value``.  A file is written with :func:`gufm._util.atomic_write_text` (temporary name,
    flush, ``fsync``, :func:`os.replace`), so it either exists complete or not at all.  These
    files are the authoritative table.
``DIR/results.csv``
    All run files concatenated (rebuilt atomically; :func:`load_table` rebuilds it from
    ``runs/`` whenever asked).
``DIR/errors/<run_id>.txt``
    The traceback of a run that raised (the run is retried by the next invocation).
``DIR/sweep.json``
    The latest invocation: its runs, their figure rows and notes (read by the report).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gufm._util import atomic_write_text
from gufm.experiments.spec import CONFIG_COLUMNS, TABLE_COLUMNS, RunSpec, default_row_name


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return repr(v)  # round-trips exactly
    return str(v)


def run_rows(spec: RunSpec, metrics: dict[str, Any], device: str = "cpu") -> list[dict[str, Any]]:
    """Long-format rows (one per metric) of a finished run.

    Examples
    --------
    >>> from gufm.experiments.spec import RunSpec
    >>> rows = run_rows(RunSpec("rn1", "digits", depth=2, seed=0), {"gap": 0.1, "note": "x"})
    >>> [(r["depth"], r["metric"], r["value"]) for r in rows]  # non-numeric values are left out
    [(2, 'gap', 0.1)]
    """
    cfg = spec.config(device)
    rows = []
    for k, v in metrics.items():
        try:
            val = float(v)
        except (TypeError, ValueError):
            continue  # non-numeric extras are not part of the table
        rows.append({**cfg, "metric": k, "value": val})
    return rows


def write_run(out: str | os.PathLike, spec: RunSpec, metrics: dict[str, Any],
              device: str = "cpu") -> Path:
    """Write one run's rows to ``out/runs/<run_id>.csv`` atomically (temp file, fsync,
    :func:`os.replace`).

    Examples
    --------
    >>> import tempfile
    >>> from gufm.experiments.spec import RunSpec
    >>> d = tempfile.mkdtemp()
    >>> sp = RunSpec("rn1", "digits", depth=2, seed=0)
    >>> write_run(d, sp, {"gap": 0.1}).name == f"{sp.run_id}.csv"
    True
    >>> finished_runs(d) == {sp.run_id}
    True
    >>> load_table(d)[["depth", "metric", "value"]].values.tolist()
    [[2, 'gap', 0.1]]
    """
    runs = Path(out) / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(TABLE_COLUMNS)
    for r in run_rows(spec, metrics, device):
        w.writerow([_fmt(r[c]) for c in TABLE_COLUMNS])
    path = runs / f"{spec.run_id}.csv"
    atomic_write_text(path, buf.getvalue())
    return path


def finished_runs(out: str | os.PathLike) -> set[str]:
    """Run ids with a complete file in ``out/runs``.

    Examples
    --------
    >>> finished_runs("/nonexistent/folder")
    set()
    """
    runs = Path(out) / "runs"
    if not runs.is_dir():
        return set()
    return {p.stem for p in runs.glob("*.csv") if not p.name.startswith(".")}


def clean_stale_tmp(out: Path) -> None:
    """Remove temporary files left by a killed writer (whose process no longer exists).

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / ".results.csv.999999999.tmp").write_text("partial")  # its writer is gone
    >>> clean_stale_tmp(d)
    >>> list(d.iterdir())
    []
    """
    for folder in (out, out / "runs"):
        if not folder.is_dir():
            continue
        for p in folder.glob(".*.tmp"):
            try:
                pid = int(p.name.rsplit(".", 2)[-2])
            except (ValueError, IndexError):
                continue
            if pid == os.getpid() or not _pid_alive(pid):
                p.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover
        return True
    return True


def load_table(out: str | os.PathLike) -> Any:
    """The long-format table of a sweep folder as a :class:`pandas.DataFrame`.

    Reads the per-run files ``out/runs/*.csv`` (falls back to ``out/results.csv`` when there is
    no ``runs`` folder, e.g. a table copied on its own).  Columns: :data:`TABLE_COLUMNS`.

    Examples
    --------
    >>> load_table("/nonexistent/folder").empty
    True
    """
    import pandas as pd

    out = Path(out)
    runs = out / "runs"
    files = sorted(p for p in runs.glob("*.csv") if not p.name.startswith(".")) \
        if runs.is_dir() else []
    if files:
        df = pd.concat([pd.read_csv(p, keep_default_na=False) for p in files], ignore_index=True)
    elif (out / "results.csv").is_file():
        df = pd.read_csv(out / "results.csv", keep_default_na=False)
    elif out.is_file():
        df = pd.read_csv(out, keep_default_na=False)
    else:
        return pd.DataFrame(columns=list(TABLE_COLUMNS))
    df["value"] = pd.to_numeric(df["value"], errors="coerce")
    for c in ("depth", "seed", "width", "epochs"):
        if c in df:
            df[c] = pd.to_numeric(df[c], errors="coerce").astype("int64")
    for c in ("lam", "lam_base", "lr"):
        if c in df:
            df[c] = pd.to_numeric(df[c], errors="coerce")
    return df.sort_values(["row", "arch", "dataset", "depth", "seed", "run_id", "metric"],
                          kind="stable").reset_index(drop=True)


def write_results(out: str | os.PathLike) -> Path:
    """Rebuild ``out/results.csv`` from the per-run files (atomic replace).

    Examples
    --------
    >>> import tempfile
    >>> write_results(tempfile.mkdtemp()).read_text().startswith("run_id,arch,dataset")
    True
    """
    out = Path(out)
    df = load_table(out)
    path = out / "results.csv"
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    atomic_write_text(path, buf.getvalue())
    return path


def wide_table(df: Any) -> Any:
    """One row per run, one column per metric (from the long table).

    Examples
    --------
    >>> import tempfile
    >>> from gufm.experiments.spec import RunSpec
    >>> d = tempfile.mkdtemp()
    >>> _ = write_run(d, RunSpec("rn1", "digits", depth=3, seed=0), {"gap": 0.2, "nc1": 0.5})
    >>> wide_table(load_table(d))[["depth", "gap", "nc1"]].values.tolist()
    [[3.0, 0.2, 0.5]]
    """
    cfg = [c for c in CONFIG_COLUMNS if c in df.columns]
    return df.pivot_table(index=cfg, columns="metric", values="value",
                          aggfunc="first").reset_index()


def write_manifest(out: Path, specs: Sequence[RunSpec], notes: dict[str, str],
                   meta: dict[str, Any]) -> None:
    """Write ``out/sweep.json``: the invocation's runs, their figure rows and notes (atomic).

    Examples
    --------
    >>> import json, tempfile
    >>> from pathlib import Path
    >>> from gufm.experiments.spec import RunSpec
    >>> d = Path(tempfile.mkdtemp())
    >>> write_manifest(d, [RunSpec("rn1", "digits", depth=2, seed=0)], {}, {"jobs": 1})
    >>> list(json.loads((d / "sweep.json").read_text())["rows"])
    ['L-RN1 / digits']
    """
    rows: dict[str, dict[str, Any]] = {}
    for sp in specs:
        row = sp.row or default_row_name(sp.arch, sp.dataset, sp.lam_rule)  # as in its rows
        r = rows.setdefault(row, {"arch": sp.arch, "dataset": sp.dataset,
                                     "lam_rule": sp.lam_rule, "note": notes.get(row, "")})
        r.setdefault("run_ids", []).append(sp.run_id)
    payload = {"version": 1, "meta": meta, "rows": rows,
               "runs": [sp.to_dict() | {"run_id": sp.run_id} for sp in specs]}
    atomic_write_text(out / "sweep.json", json.dumps(payload, indent=1, default=str))
