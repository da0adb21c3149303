"""Depth sweeps: train many networks and compare each with its GUFM optimum.

:func:`run_sweep` takes a list of :class:`~gufm.experiments.spec.RunSpec` (from
:func:`~gufm.experiments.spec.expand_grid` or a :mod:`preset <gufm.experiments.presets>`), runs
every one not yet finished in the sweep folder (:mod:`gufm.experiments.executors`: this process,
local processes or Dask) and records each as soon as it finishes
(:mod:`gufm.experiments.table`).

Resuming: a run whose file exists is skipped, so rerunning the same command finishes a sweep
that was interrupted, even by ``SIGKILL``: a finished run is never lost (its file was renamed
into place before the next run started being recorded) and never duplicated (the file name is
the run id, a hash of the configuration).

Every run limits torch and BLAS to ``threads`` (default 1) while it executes: runs are tiny and
several threads per process only oversubscribe the cores.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gufm._util import atomic_write_text
from gufm.deep.data import load_dataset
from gufm.experiments.executors import RunFn, iter_dask, iter_local, iter_processes, make_tasks
from gufm.experiments.spec import RunSpec, _positive, check_specs
from gufm.experiments.table import clean_stale_tmp, finished_runs, write_manifest, write_results, write_run


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

    Examples
    --------
    >>> from pathlib import Path
    >>> s = SweepSummary(out=Path("x"), total=2, completed=["a"], failed={"b": "ValueError: ..."})
    >>> s.ok
    False
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



def check_data(specs: Sequence[RunSpec], data_root: str | None = None) -> None:
    """Load every data set the runs need once, so that missing files fail before any run.

    Raises
    ------
    FileNotFoundError
        With the loader's message (it names ``gufm data download NAME --dir DIR``).

    Examples
    --------
    >>> from gufm.experiments.spec import expand_grid
    >>> check_data(expand_grid("rn1", [2, 4], [0], "digits"))  # embedded: always there
    """
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

    Examples
    --------
    >>> import tempfile
    >>> from gufm.experiments.spec import expand_grid
    >>> from gufm.experiments.testing import toy_run
    >>> d = tempfile.mkdtemp()
    >>> specs = expand_grid("rn1", [2, 4], [0, 1])
    >>> s = run_sweep(specs, d, run_fn=toy_run, progress=False)
    >>> s.total, len(s.completed), s.ok
    (4, 4, True)
    >>> len(run_sweep(specs, d, run_fn=toy_run, progress=False).skipped)  # a rerun resumes
    4
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
    clean_stale_tmp(out)
    summary = SweepSummary(out=out, total=len(specs),
                           skipped=[sp.run_id for sp in specs if sp.run_id in done])
    backend = ("dask" if scheduler is not None else "processes" if jobs > 1 else "local")
    write_manifest(out, specs, notes or {}, {
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
        it = iter_dask(tasks, scheduler, args)
    elif jobs > 1 and len(tasks) > 1:
        it = iter_processes(tasks, jobs, args)
    else:
        it = iter_local(tasks, args)
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
                atomic_write_text(errors / f"{sp.run_id}.txt", msg)
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
