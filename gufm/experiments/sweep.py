r"""Depth sweeps: train many networks and compare each with its GUFM optimum (issue 5).

A sweep is a list of :class:`RunSpec` (one network: architecture, data set, depth, seed and the
training hyper-parameters).  Each run calls :func:`gufm.deep.pipeline.train_and_compare` (or an
injected ``run_fn`` with the same signature) and yields a dictionary of metrics.

The run table
-------------
Results live in a folder ``DIR``:

``DIR/runs/<run_id>.csv``
    One file per finished run, in **long format**: one row per (run, metric) with the
    configuration columns :data:`CONFIG_COLUMNS` followed by ``metric`` and ``value``.  A file
    is written under a temporary name, flushed, ``fsync``-ed and moved into place with
    :func:`os.replace`, so it either exists complete or not at all.  These files are the
    authoritative table.
``DIR/results.csv``
    All run files concatenated (rebuilt atomically while the sweep runs and at its end;
    :func:`load_table` rebuilds it from ``runs/`` whenever asked).
``DIR/errors/<run_id>.txt``
    The traceback of a run that raised (the run is retried by the next invocation).
``DIR/sweep.json``
    The latest invocation: its runs, their grouping rows and notes (read by
    :mod:`gufm.report`).

Resuming: a run whose file exists is skipped, so rerunning the same command finishes a sweep
that was interrupted, even by ``SIGKILL``: a finished run is never lost (its file was renamed
into place before the next run started being recorded) and never duplicated (the file name is
the run id, a hash of the configuration).

Execution backends
------------------
* ``jobs=1`` (default): the runs execute one after another in this process;
* ``jobs=N``: a :class:`concurrent.futures.ProcessPoolExecutor` with ``N`` *spawned* worker
  processes;
* ``scheduler=ADDRESS`` (or a :class:`distributed.Client`): every run is submitted to a Dask
  distributed cluster (``client.submit`` / ``distributed.as_completed``); the results travel
  back and this process writes the table, so workers need no shared file system.

``vectorize`` (default: on with a CUDA device) groups the runs that differ only in the seed into
one task that trains all seeds as one vectorised model (:mod:`gufm.vectorized`).

Every run sets ``torch.set_num_threads(threads)`` (default 1) while it executes: runs are tiny
and several threads per process only oversubscribe the cores (and, with one thread, the values
do not depend on the backend).

:math:`\lambda` rules: ``const`` trains every depth with ``lam``; ``inverse-depth`` with
``lam / L`` (the paper's choice for two-layer blocks).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

LAM_RULES = ("const", "inverse-depth")
LOSSES = ("ce", "mse")

#: configuration columns of the long-format table, in order (then ``metric``, ``value``)
CONFIG_COLUMNS = ("run_id", "arch", "dataset", "depth", "seed", "lam", "lam_base", "lam_rule",
                  "width", "n_per_class", "epochs", "lr", "loss", "options", "row", "device")
TABLE_COLUMNS = (*CONFIG_COLUMNS, "metric", "value")

#: options of :func:`gufm.deep.pipeline.train_and_compare` that change a run's result (part of the
#: run id); ``device``, ``root``/``data_root`` and ``threads`` do not.
RESULT_OPTIONS = ("polish_steps", "batch_size", "data_seed", "normalize", "ln_eps", "bias",
                  "patch_size", "mlp_hidden", "vocab_size", "seq_len", "num_classes", "schedule",
                  "warmup", "final_lr", "polish", "polish_tol", "scale_invariant")

RunFn = Callable[..., dict[str, Any]]


def _arch_names() -> tuple[str, ...]:
    from gufm.deep.nets.models import ARCHS

    return tuple(ARCHS)


def _dataset_names() -> tuple[str, ...]:
    from gufm.deep.data.loaders import DATASETS

    return tuple(DATASETS)


# ----------------------------------------------------------------------------- runs
@dataclass(frozen=True)
class RunSpec:
    """One network of a sweep.

    Attributes
    ----------
    arch : str
        One of :data:`gufm.nets.ARCHS`.
    dataset : str
        One of :data:`gufm.data.DATASETS`.
    depth : int
        Number of blocks ``L >= 1``.
    seed : int
        Initialisation and batch-order seed.
    lam_base : float
        The ``--lam`` of the sweep.
    lam_rule : {"const", "inverse-depth"}
        ``lam = lam_base`` or ``lam_base / depth``.
    width : int
    n_per_class : int or None
        Class-balanced subset size (``None``: the whole split).
    epochs : int
        Adam epochs.
    lr : float
    loss : {"ce", "mse"}
    options : tuple of (str, value)
        Further keyword arguments of :func:`gufm.deep.pipeline.train_and_compare` that change the
        result (sorted; see :data:`RESULT_OPTIONS`).
    row : str
        Name of the figure row (architecture/data set group) this run belongs to.
    """

    arch: str
    dataset: str
    depth: int
    seed: int
    lam_base: float
    lam_rule: str = "const"
    width: int = 64
    n_per_class: int | None = 50
    epochs: int = 500
    lr: float = 5e-3
    loss: str = "ce"
    options: tuple[tuple[str, Any], ...] = ()
    row: str = ""

    @property
    def lam(self) -> float:
        """The :math:`\\lambda` the network is trained with."""
        return self.lam_base / self.depth if self.lam_rule == "inverse-depth" else self.lam_base

    @property
    def run_id(self) -> str:
        """Stable id: readable prefix plus a hash of every result-relevant field."""
        ident = {k: v for k, v in asdict(self).items() if k != "row"}
        ident["options"] = [list(o) for o in self.options]
        digest = hashlib.sha1(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()
        return f"{self.arch}-{self.dataset}-L{self.depth}-s{self.seed}-{digest[:10]}"

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`gufm.deep.pipeline.train_and_compare` (without ``device``)."""
        return dict(arch=self.arch, depth=self.depth, width=self.width, dataset=self.dataset,
                    n_per_class=self.n_per_class, epochs=self.epochs, lam=self.lam, lr=self.lr,
                    seed=self.seed, loss=self.loss, **dict(self.options))

    def config(self, device: str = "cpu") -> dict[str, Any]:
        """The configuration columns of this run's rows."""
        return {"run_id": self.run_id, "arch": self.arch, "dataset": self.dataset,
                "depth": self.depth, "seed": self.seed, "lam": self.lam,
                "lam_base": self.lam_base, "lam_rule": self.lam_rule, "width": self.width,
                "n_per_class": "" if self.n_per_class is None else self.n_per_class,
                "epochs": self.epochs, "lr": self.lr, "loss": self.loss,
                "options": json.dumps(dict(self.options), sort_keys=True),
                "row": self.row or default_row_name(self.arch, self.dataset, self.lam_rule),
                "device": device}

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dictionary (inverse of :meth:`from_dict`)."""
        d = asdict(self)
        d["options"] = [list(o) for o in self.options]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSpec:
        """Rebuild a spec from :meth:`to_dict`."""
        d = dict(d)
        d["options"] = tuple((str(k), v) for k, v in d.get("options", ()))
        return cls(**d)


def default_row_name(arch: str, dataset: str, lam_rule: str) -> str:
    """Figure-row label of an (architecture, data set, lambda rule) group, e.g.
    ``"L-RN1 / digits"`` or ``"L-RN2 / digits (lam/L)"``."""
    pretty = {"rn1": "L-RN1", "rn2": "L-RN2", "t11": "L-T11", "t12": "L-T12",
              "preln-t11": "pre-LN L-T11", "preln-t12": "pre-LN L-T12"}.get(arch, arch)
    suffix = " (lam/L)" if lam_rule == "inverse-depth" else ""
    return f"{pretty} / {dataset}{suffix}"


# ----------------------------------------------------------------------------- validation
def _as_int_list(name: str, values: Any, minimum: int) -> list[int]:
    if isinstance(values, int | str) and not isinstance(values, bool):
        values = [values]
    try:
        items = list(values)
    except TypeError:
        raise ValueError(f"{name} must be a list of integers, got {values!r}") from None
    if not items:
        raise ValueError(f"{name} must not be empty")
    out = []
    for v in items:
        ok = not isinstance(v, bool)
        try:
            f = float(v)
            ok = ok and math.isfinite(f) and f.is_integer()
        except (TypeError, ValueError):
            ok = False
        if not ok or int(float(v)) < minimum:
            raise ValueError(f"{name} must contain integers >= {minimum}, got {v!r}")
        out.append(int(float(v)))
    if len(set(out)) != len(out):
        raise ValueError(f"{name} has repeated entries: {out}")
    return out


def _as_names(name: str, values: Any, allowed: Sequence[str]) -> list[str]:
    if isinstance(values, str):
        values = [v for v in values.split(",") if v.strip()]
    items = [str(v).strip().lower() for v in values]
    if not items:
        raise ValueError(f"{name} must not be empty")
    bad = [v for v in items if v not in allowed]
    if bad:
        raise ValueError(f"{name} contains unknown entries {bad}; choose from {tuple(allowed)}")
    return list(dict.fromkeys(items))


def _positive(name: str, value: Any, *, integer: bool = False, allow_zero: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    ok = ok and math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if ok and integer:
        ok = float(value).is_integer()
    if not ok:
        kind = "integer" if integer else "number"
        adj = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{name} must be a {adj} {kind}, got {value!r}")


def validate_spec(spec: RunSpec) -> None:
    """Raise :class:`ValueError` naming the offending field when ``spec`` cannot run."""
    if spec.arch not in _arch_names():
        raise ValueError(f"arch must be one of {_arch_names()}, got {spec.arch!r}")
    if spec.dataset not in _dataset_names():
        raise ValueError(f"dataset must be one of {_dataset_names()}, got {spec.dataset!r}")
    _positive("depth", spec.depth, integer=True)
    _positive("seed", spec.seed, integer=True, allow_zero=True)
    _positive("lam", spec.lam_base)
    if spec.lam_rule not in LAM_RULES:
        raise ValueError(f"lam_rule must be one of {LAM_RULES}, got {spec.lam_rule!r}")
    _positive("width", spec.width, integer=True)
    if spec.width < 2:
        raise ValueError(f"width must be an integer >= 2, got {spec.width!r}")
    if spec.n_per_class is not None:
        _positive("n_per_class", spec.n_per_class, integer=True)
    _positive("epochs", spec.epochs, integer=True, allow_zero=True)
    _positive("lr", spec.lr)
    if spec.loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {spec.loss!r}")


def expand_grid(archs: str | Sequence[str], depths: Iterable[int], seeds: Iterable[int],
                dataset: str | Sequence[str] = "digits", *, lam: float = 0.005,
                lam_rule: str = "const", width: int = 64, n_per_class: int | None = 50,
                epochs: int = 500, lr: float = 5e-3, loss: str = "ce",
                options: dict[str, Any] | None = None, row: str = "") -> list[RunSpec]:
    """All runs of the product archs x datasets x depths x seeds, validated.

    Parameters
    ----------
    archs : str or sequence of str
        Comma-separated or a list, e.g. ``"rn1,rn2"``.
    depths, seeds : iterable of int
        Depths ``>= 1`` and seeds ``>= 0``; neither may be empty.
    dataset : str or sequence of str
    lam : float
        Base :math:`\\lambda` (``> 0``).
    lam_rule : {"const", "inverse-depth"}
    width, n_per_class, epochs, lr, loss
        Training settings shared by every run.
    options : dict, optional
        Further result-relevant options of :func:`gufm.deep.pipeline.train_and_compare` (e.g.
        ``polish_steps``).
    row : str
        Figure row name (default: one row per architecture/data set).

    Returns
    -------
    list of RunSpec

    Raises
    ------
    ValueError
        Unknown arch/dataset/lam_rule/loss, an empty list, a depth ``< 1``, a negative seed or a
        non-positive ``lam``/``lr``/``width`` (raised before anything runs).
    """
    archs_l = _as_names("arch", archs, _arch_names())
    datasets_l = _as_names("dataset", dataset, _dataset_names())
    depths_l = _as_int_list("depths", depths, 1)
    seeds_l = _as_int_list("seeds", seeds, 0)
    if lam_rule not in LAM_RULES:
        raise ValueError(f"lam_rule must be one of {LAM_RULES}, got {lam_rule!r}")
    opts = tuple(sorted((options or {}).items()))
    unknown = [k for k, _ in opts if k not in RESULT_OPTIONS]
    if unknown:
        raise ValueError(f"options {unknown} are not result options; known: {RESULT_OPTIONS}")
    specs = [RunSpec(arch=a, dataset=ds, depth=L, seed=s, lam_base=float(lam),
                     lam_rule=lam_rule, width=width, n_per_class=n_per_class, epochs=epochs,
                     lr=float(lr), loss=loss, options=opts,
                     row=row or default_row_name(a, ds, lam_rule))
             for a in archs_l for ds in datasets_l for L in depths_l for s in seeds_l]
    for sp in specs:
        validate_spec(sp)
    return specs


# ----------------------------------------------------------------------------- presets
@dataclass(frozen=True)
class PresetRow:
    """One figure row of a preset: an architecture on a data set with its own settings."""

    arch: str
    dataset: str
    lam_rule: str = "const"
    lr: float = 5e-3
    depths: tuple[int, ...] | None = None
    options: tuple[tuple[str, Any], ...] = ()
    note: str = ""


@dataclass(frozen=True)
class Preset:
    """A named sweep: rows plus shared settings (each overridable on the command line)."""

    name: str
    description: str
    rows: tuple[PresetRow, ...]
    depths: tuple[int, ...]
    seeds: tuple[int, ...]
    width: int = 64
    n_per_class: int | None = 100
    epochs: int = 5000
    lam: float = 0.005
    loss: str = "ce"
    options: tuple[tuple[str, Any], ...] = ()
    jobs: int = 1

    def specs(self, *, depths: Sequence[int] | None = None, seeds: Sequence[int] | None = None,
              width: int | None = None, n_per_class: int | None = None,
              epochs: int | None = None, lam: float | None = None, lr: float | None = None,
              loss: str | None = None, options: dict[str, Any] | None = None) -> list[RunSpec]:
        """The preset's runs; every argument given overrides the preset's value for all rows."""
        out: list[RunSpec] = []
        for r in self.rows:
            opts = dict(self.options) | dict(r.options) | dict(options or {})
            out += expand_grid(
                r.arch, depths if depths is not None else (r.depths or self.depths),
                seeds if seeds is not None else self.seeds, r.dataset,
                lam=self.lam if lam is None else lam, lam_rule=r.lam_rule,
                width=self.width if width is None else width,
                n_per_class=self.n_per_class if n_per_class is None else n_per_class,
                epochs=self.epochs if epochs is None else epochs,
                lr=r.lr if lr is None else lr, loss=self.loss if loss is None else loss,
                options=opts, row=default_row_name(r.arch, r.dataset, r.lam_rule))
        return out

    def notes(self) -> dict[str, str]:
        """Row name -> note (only rows with a note)."""
        return {default_row_name(r.arch, r.dataset, r.lam_rule): r.note
                for r in self.rows if r.note}


SYNTHETIC_NOTE = ("language row: synthetic-tokens stands in for IMDB (offline). Random token "
                  "sequences (vocabulary 16, length 8) labelled y = sum(tokens) mod 4, so every "
                  "context determines its label.")

PAPER_DEPTHS = (2, 3, 5, 8, 13, 21, 34)

PRESETS: dict[str, Preset] = {
    "paper-fig1": Preset(
        name="paper-fig1",
        description="The paper's Figure 1 protocol: L-RN1 and L-T11 on CIFAR10, pre-LN L-T11 on "
                    "IMDB, L-RN2 on MNIST with lam/L; depths 2..34, width 64, lam 0.005, 5000 "
                    "epochs, 5 seeds, CE (100 samples per class: our choice).",
        rows=(PresetRow("rn1", "cifar10"), PresetRow("t11", "cifar10"),
              PresetRow("preln-t11", "imdb", lr=1e-3),
              PresetRow("rn2", "mnist", lam_rule="inverse-depth")),
        depths=PAPER_DEPTHS, seeds=(0, 1, 2, 3, 4)),
    "paper-fig2": Preset(
        name="paper-fig2",
        description="The MNIST runs: L-RN1, L-T11 (lam) and L-RN2, L-T12 (lam/L) on MNIST; "
                    "depths 2..34, width 64, lam 0.005, 5000 epochs, 5 seeds, CE.",
        rows=(PresetRow("rn1", "mnist"), PresetRow("rn2", "mnist", lam_rule="inverse-depth"),
              PresetRow("t11", "mnist"), PresetRow("t12", "mnist", lam_rule="inverse-depth")),
        depths=PAPER_DEPTHS, seeds=(0, 1, 2, 3, 4)),
    "quick": Preset(
        name="quick",
        description="Embedded data only, minutes on a laptop CPU: L-RN1 on digits, L-T11 on "
                    "Fashion-MNIST (four 14x14 patches), pre-LN L-T11 on synthetic-tokens (language "
                    "stand-in), L-RN2 on digits with lam/L; width 16, 10 samples per class.",
        rows=(PresetRow("rn1", "digits"),
              PresetRow("t11", "fashion-mnist", depths=(2, 5, 13),
                        options=(("patch_size", 14),)),
              PresetRow("preln-t11", "synthetic-tokens", lr=1e-3 * 5, depths=(2, 5, 13),
                        note=SYNTHETIC_NOTE),
              PresetRow("rn2", "digits", lam_rule="inverse-depth")),
        depths=(2, 5, 13, 34), seeds=(0, 1), width=16, n_per_class=10, epochs=300,
        options=(("polish_steps", 300),), jobs=2),
}


# ----------------------------------------------------------------------------- table I/O
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return repr(v)  # round-trips exactly
    return str(v)


def run_rows(spec: RunSpec, metrics: dict[str, Any], device: str = "cpu") -> list[dict[str, Any]]:
    """Long-format rows (one per metric) of a finished run."""
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
    :func:`os.replace`)."""
    runs = Path(out) / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(TABLE_COLUMNS)
    for r in run_rows(spec, metrics, device):
        w.writerow([_fmt(r[c]) for c in TABLE_COLUMNS])
    path = runs / f"{spec.run_id}.csv"
    _atomic_write_text(path, buf.getvalue())
    return path


def finished_runs(out: str | os.PathLike) -> set[str]:
    """Run ids with a complete file in ``out/runs``."""
    runs = Path(out) / "runs"
    if not runs.is_dir():
        return set()
    return {p.stem for p in runs.glob("*.csv") if not p.name.startswith(".")}


def _clean_stale_tmp(out: Path) -> None:
    """Remove temporary files left by a killed writer (whose process no longer exists)."""
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
    """Rebuild ``out/results.csv`` from the per-run files (atomic replace)."""
    out = Path(out)
    df = load_table(out)
    path = out / "results.csv"
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    _atomic_write_text(path, buf.getvalue())
    return path


def wide_table(df: Any) -> Any:
    """One row per run, one column per metric (from the long table)."""
    cfg = [c for c in CONFIG_COLUMNS if c in df.columns]
    return df.pivot_table(index=cfg, columns="metric", values="value",
                          aggfunc="first").reset_index()


# ----------------------------------------------------------------------------- toy runs
#: exponents of :func:`toy_run`'s power laws ``metric = c * L**p`` (known slopes)
TOY_SLOPES = {"gap": -1.0, "nc1": -0.5, "nc2": -0.3, "nc3": -0.4, "gufm_distance": -0.3}


def toy_run(arch: str, depth: int, width: int, dataset: Any, n_per_class: int | None,
            epochs: int, lam: float, lr: float, seed: int, loss: str = "ce",
            device: str = "cpu", noise: float = 0.1, **kw: Any) -> dict[str, float]:
    """A stand-in for :func:`gufm.deep.pipeline.train_and_compare` with known depth slopes.

    No training: returns the keys of ``train_and_compare`` with ``metric = c * L**p *
    f_seed`` (``p`` from :data:`TOY_SLOPES`, ``f_seed = exp(noise * z)`` with ``z`` a
    standard normal drawn from the seed, the same at every depth), ``gufm_optimum = 0.06``,
    ``e2e_objective = gufm_optimum + gap`` and ``head_objective = gufm_optimum + gap / 2``.
    For testing the sweep machinery and the report quickly; deterministic and picklable.

    Parameters
    ----------
    arch, depth, width, dataset, n_per_class, epochs, lam, lr, seed, loss, device, **kw
        As :func:`gufm.deep.pipeline.train_and_compare` (only ``depth`` and ``seed`` matter).
    noise : float
        Standard deviation of the per-seed log-factor.

    Returns
    -------
    dict of str to float
    """
    import numpy as np

    z = float(np.random.default_rng([int(seed), 12345]).standard_normal())
    f = math.exp(noise * z)
    scale = {"gap": 0.05, "nc1": 0.5, "nc2": 0.3, "nc3": 0.1, "gufm_distance": 0.2}
    out = {k: scale[k] * float(depth) ** p * f for k, p in TOY_SLOPES.items()}
    opt = 0.06
    return {"e2e_objective": opt + out["gap"], "gufm_optimum": opt, "gap": out["gap"],
            "head_objective": opt + out["gap"] / 2, "nc1": out["nc1"], "nc2": out["nc2"],
            "nc3": out["nc3"], "gufm_distance": out["gufm_distance"], "train_accuracy": 1.0,
            "grad_norm": 1e-6, "seconds": 0.0}


# ----------------------------------------------------------------------------- execution
def _default_run_fn() -> RunFn:
    from gufm.deep.pipeline import train_and_compare

    return train_and_compare


def execute_run(spec_dict: dict[str, Any], run_fn: RunFn | None = None, device: str = "cpu",
                data_root: str | None = None, threads: int | None = 1) -> dict[str, float]:
    """Run one spec (this is what the workers execute) and return its metrics.

    Parameters
    ----------
    spec_dict : dict
        :meth:`RunSpec.to_dict` (plain data, cheap to send to a worker).
    run_fn : callable, optional
        Default :func:`gufm.deep.pipeline.train_and_compare`; called with the spec's
        :meth:`RunSpec.kwargs`, ``device=`` and (when given) ``root=data_root``.
    device : str
    data_root : str, optional
    threads : int, optional
        ``torch.set_num_threads`` during the run (restored afterwards); ``None``: unchanged.

    Returns
    -------
    dict of str to float
    """
    import torch

    spec = RunSpec.from_dict(spec_dict)
    fn = run_fn if run_fn is not None else _default_run_fn()
    kw = spec.kwargs()
    if data_root is not None:
        kw["root"] = data_root
    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        res = fn(device=device, **kw)
    finally:
        if threads is not None:
            torch.set_num_threads(old)
    if not isinstance(res, dict):
        raise TypeError(f"run_fn must return a dict of metrics, got {type(res).__name__}")
    return {str(k): float(v) for k, v in res.items()
            if isinstance(v, int | float) or hasattr(v, "__float__")}


@dataclass
class SweepSummary:
    """Outcome of :func:`run_sweep`.

    Attributes
    ----------
    out : Path
    total : int
        Runs in the sweep.
    skipped : list of str
        Run ids already finished before this call.
    completed : list of str
        Run ids finished by this call.
    failed : dict of str to str
        Run id -> error message of runs that raised.
    seconds : float
    """

    out: Path
    total: int
    skipped: list[str] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when no run failed."""
        return not self.failed


def check_specs(specs: Sequence[RunSpec]) -> list[RunSpec]:
    """Validate a list of runs (non-empty, each valid, no duplicate run ids)."""
    specs = list(specs)
    if not specs:
        raise ValueError("specs must not be empty: the sweep has no runs")
    for sp in specs:
        if not isinstance(sp, RunSpec):
            raise ValueError(f"specs must contain RunSpec objects, got {type(sp).__name__}")
        validate_spec(sp)
    ids = [sp.run_id for sp in specs]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"specs contain duplicate runs: {dup[:5]}")
    return specs


def check_data(specs: Sequence[RunSpec], data_root: str | None = None) -> None:
    """Load every data set the runs need once, so that missing files fail before any run.

    Raises
    ------
    FileNotFoundError
        With the loader's message (it names ``gufm data download NAME --dir DIR``).
    """
    from gufm.deep.data import load_dataset

    seen = set()
    data_keys = ("normalize", "data_seed", "vocab_size", "seq_len", "num_classes")
    for sp in specs:
        opts = {k: v for k, v in sp.options if k in data_keys}
        key = (sp.dataset, sp.n_per_class, json.dumps(opts, sort_keys=True))
        if key in seen:
            continue
        seen.add(key)
        seed = int(opts.pop("data_seed", 0))
        load_dataset(sp.dataset, root=data_root, n_per_class=sp.n_per_class, seed=seed, **opts)


def _write_manifest(out: Path, specs: Sequence[RunSpec], notes: dict[str, str],
                    meta: dict[str, Any]) -> None:
    rows: dict[str, dict[str, Any]] = {}
    for sp in specs:
        r = rows.setdefault(sp.row, {"arch": sp.arch, "dataset": sp.dataset,
                                     "lam_rule": sp.lam_rule, "note": notes.get(sp.row, "")})
        r.setdefault("run_ids", []).append(sp.run_id)
    payload = {"version": 1, "meta": meta, "rows": rows,
               "runs": [sp.to_dict() | {"run_id": sp.run_id} for sp in specs]}
    _atomic_write_text(out / "sweep.json", json.dumps(payload, indent=1, default=str))


def execute_task(spec_dicts: Sequence[dict[str, Any]], run_fn: RunFn | None = None,
                 device: str = "cpu", data_root: str | None = None, threads: int | None = 1,
                 vectorize: bool = False) -> list[dict[str, float]]:
    """Run a task (one spec, or several specs differing only in the seed) on a worker.

    With ``vectorize`` and several specs, the seeds train as one vectorised model
    (:func:`gufm.deep.vectorized.train_and_compare_seeds`); otherwise each spec goes through
    :func:`execute_run`.

    Returns
    -------
    list of dict
        The metrics of each spec, in order.
    """
    if not (vectorize and len(spec_dicts) > 1):
        return [execute_run(d, run_fn, device, data_root, threads) for d in spec_dicts]
    import torch

    from gufm.deep.pipeline import train_and_compare_seeds

    specs = [RunSpec.from_dict(d) for d in spec_dicts]
    kw = specs[0].kwargs()
    kw.pop("seed")
    if data_root is not None:
        kw["root"] = data_root
    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        res = train_and_compare_seeds(seeds=[sp.seed for sp in specs], device=device, **kw)
    finally:
        if threads is not None:
            torch.set_num_threads(old)
    return [{k: float(v) for k, v in r.items()} for r in res]


def make_tasks(specs: Sequence[RunSpec], vectorize: bool) -> list[list[RunSpec]]:
    """Group runs into tasks: one run each, or (``vectorize``) all seeds of one configuration."""
    if not vectorize:
        return [[sp] for sp in specs]
    groups: dict[str, list[RunSpec]] = {}
    for sp in specs:
        key = json.dumps({k: v for k, v in sp.to_dict().items() if k != "seed"},
                         sort_keys=True, default=str)
        groups.setdefault(key, []).append(sp)
    return list(groups.values())


Outcome = tuple[RunSpec, "dict[str, float] | None", "BaseException | None"]


def _split(task: Sequence[RunSpec], result: list[dict[str, float]] | None,
           exc: BaseException | None) -> Iterator[Outcome]:
    for i, sp in enumerate(task):
        yield sp, (None if result is None else result[i]), exc


def _iter_local(tasks: Sequence[Sequence[RunSpec]], args: tuple[Any, ...]) -> Iterator[Outcome]:
    for task in tasks:
        try:
            res = execute_task([sp.to_dict() for sp in task], *args)
        except Exception as exc:  # noqa: BLE001 - recorded, the sweep goes on
            yield from _split(task, None, exc)
        else:
            yield from _split(task, res, None)


def _iter_processes(tasks: Sequence[Sequence[RunSpec]], jobs: int, args: tuple[Any, ...]
                    ) -> Iterator[Outcome]:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futs = {pool.submit(execute_task, [sp.to_dict() for sp in t], *args): t for t in tasks}
        try:
            for fut in as_completed(futs):
                try:
                    res = fut.result()
                except Exception as exc:  # noqa: BLE001
                    yield from _split(futs[fut], None, exc)
                else:
                    yield from _split(futs[fut], res, None)
        finally:
            for f in futs:
                f.cancel()


def _iter_dask(tasks: Sequence[Sequence[RunSpec]], scheduler: Any, args: tuple[Any, ...]
               ) -> Iterator[Outcome]:
    from distributed import Client, as_completed

    own = not isinstance(scheduler, Client)
    client = Client(scheduler) if own else scheduler
    try:
        futs = {}
        for t in tasks:
            key = f"gufm-run-{t[0].run_id}-{os.getpid()}-{time.time_ns()}"
            futs[client.submit(execute_task, [sp.to_dict() for sp in t], *args, key=key,
                               pure=False)] = t
        try:
            for fut in as_completed(list(futs)):
                try:
                    res = fut.result()
                except Exception as exc:  # noqa: BLE001
                    yield from _split(futs[fut], None, exc)
                else:
                    yield from _split(futs[fut], res, None)
        finally:
            for f in futs:
                f.cancel()
    finally:
        if own:
            client.close()


def run_sweep(specs: Sequence[RunSpec], out: str | os.PathLike, *, jobs: int = 1,
              scheduler: Any = None, device: str = "cpu", data_root: str | None = None,
              run_fn: RunFn | None = None, threads: int | None = 1, progress: bool = True,
              validate_data: bool = True, notes: dict[str, str] | None = None,
              results_every: float = 10.0, vectorize: bool | None = None) -> SweepSummary:
    """Run every spec not yet finished in ``out`` and record it (module docstring).

    Parameters
    ----------
    specs : sequence of RunSpec
        E.g. from :func:`expand_grid` or :meth:`Preset.specs`.
    out : path
        The sweep folder (created).
    jobs : int
        Local worker processes (``1``: run in this process).
    scheduler : str or distributed.Client, optional
        Address of a Dask scheduler (or a client): the runs go to that cluster and ``jobs`` is
        ignored.
    device : str
        Passed to the run function (``"cuda"`` for a GPU).
    data_root : str, optional
        Folder holding the data files (``root=`` of :func:`gufm.data.load_dataset`).
    run_fn : callable, optional
        Replaces :func:`gufm.deep.pipeline.train_and_compare` (same signature; must be picklable for
        ``jobs > 1`` or a scheduler).
    threads : int, optional
        Torch threads per run (default 1).
    progress : bool
        A tqdm bar over the whole sweep (finished runs count as done).
    validate_data : bool
        Load every needed data set once before starting (missing files fail early).
    notes : dict, optional
        Row name -> note, stored in ``sweep.json`` and shown by the report.
    results_every : float
        Rebuild ``results.csv`` at most this often (seconds) while running.
    vectorize : bool, optional
        Train the seeds of one configuration as one vectorised model
        (:mod:`gufm.vectorized`; the default run function only).  Default: on when
        ``device`` is a CUDA device.

    Returns
    -------
    SweepSummary

    Raises
    ------
    ValueError
        Empty or invalid specs, ``jobs < 1`` (before any run starts).
    FileNotFoundError
        A data set's files are missing (with ``validate_data``).
    """
    t0 = time.perf_counter()
    specs = check_specs(specs)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
    if threads is not None:
        _positive("threads", threads, integer=True)
    if vectorize is None:
        vectorize = str(device).startswith("cuda") and run_fn is None
    if vectorize and run_fn is not None:
        raise ValueError("vectorize=True needs the default run function (run_fn=None)")
    out = Path(out)
    done = finished_runs(out)
    todo = [sp for sp in specs if sp.run_id not in done]
    if validate_data and todo:
        check_data(todo, data_root)
    out.mkdir(parents=True, exist_ok=True)
    (out / "runs").mkdir(exist_ok=True)
    _clean_stale_tmp(out)
    summary = SweepSummary(out=out, total=len(specs),
                           skipped=[sp.run_id for sp in specs if sp.run_id in done])
    backend = ("dask" if scheduler is not None else "processes" if jobs > 1 else "local")
    _write_manifest(out, specs, notes or {}, {
        "argv": sys.argv, "device": device, "jobs": jobs, "backend": backend,
        "vectorize": bool(vectorize),
        "scheduler": str(scheduler) if scheduler is not None else None,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    })
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(specs), initial=len(specs) - len(todo), desc="sweep",
                   unit="run", dynamic_ncols=True)
    tasks = make_tasks(todo, bool(vectorize))
    args = (run_fn, device, data_root, threads, bool(vectorize))
    if scheduler is not None:
        it = _iter_dask(tasks, scheduler, args)
    elif jobs > 1 and len(tasks) > 1:
        it = _iter_processes(tasks, jobs, args)
    else:
        it = _iter_local(tasks, args)
    errors = out / "errors"
    last = time.monotonic()
    try:
        for sp, metrics, exc in it:
            if exc is None and metrics is not None:
                write_run(out, sp, metrics, device)
                (errors / f"{sp.run_id}.txt").unlink(missing_ok=True)
                summary.completed.append(sp.run_id)
            else:
                errors.mkdir(exist_ok=True)
                msg = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
                _atomic_write_text(errors / f"{sp.run_id}.txt", msg)
                summary.failed[sp.run_id] = f"{type(exc).__name__}: {exc}"
            if bar is not None:
                bar.update(1)
                bar.set_postfix(failed=len(summary.failed), refresh=False)
            if time.monotonic() - last >= results_every:
                write_results(out)
                last = time.monotonic()
    finally:
        if bar is not None:
            bar.close()
        write_results(out)
    summary.seconds = time.perf_counter() - t0
    return summary
