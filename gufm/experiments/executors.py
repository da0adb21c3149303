"""Where the runs of a sweep execute: this process, local worker processes, or a Dask cluster.

* :func:`iter_local`: the tasks run one after another in this process;
* :func:`iter_processes`: a :class:`concurrent.futures.ProcessPoolExecutor` with *spawned*
  worker processes;
* :func:`iter_dask`: every task is submitted to a Dask distributed cluster (``client.submit`` /
  ``distributed.as_completed``; needs the ``[distributed]`` extra); the results travel back and
  the caller writes the table, so workers need no shared file system.

Each yields ``(spec, metrics, exception)`` per run as soon as its task finishes.  A task is one
run, or (:func:`make_tasks` with ``vectorize``) all seeds of one configuration trained as one
vectorised model (:func:`gufm.deep.pipeline.train_and_compare_seeds`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from gufm._util import limit_threads
from gufm.deep.pipeline import chain_sweep_metrics, train_and_compare, train_and_compare_seeds
from gufm.experiments.spec import RunSpec

RunFn = Callable[..., dict[str, Any]]


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
        Torch and BLAS threads during the run (:func:`gufm._util.limit_threads`, restored
        afterwards); ``None``: unchanged.

    Returns
    -------
    dict of str to float

    Examples
    --------
    >>> from gufm.experiments.spec import RunSpec
    >>> from gufm.experiments.testing import toy_run
    >>> m = execute_run(RunSpec("rn1", "digits", depth=4, seed=0).to_dict(), toy_run)
    >>> round(m["gap"], 4), m["converged"]
    (0.0146, 1.0)
    """
    spec = RunSpec.from_dict(spec_dict)
    fn = run_fn if run_fn is not None else train_and_compare
    kw = spec.kwargs()
    if data_root is not None:
        kw["root"] = data_root
    with limit_threads(None if threads is None else int(threads)):
        res = fn(device=device, **kw)
    if not isinstance(res, dict):
        raise TypeError(f"run_fn must return a dict of metrics, got {type(res).__name__}")
    return {str(k): float(v) for k, v in res.items()
            if isinstance(v, int | float) or hasattr(v, "__float__")}


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

    Examples
    --------
    >>> from gufm.experiments.spec import expand_grid
    >>> from gufm.experiments.testing import toy_run
    >>> specs = expand_grid("rn1", [2], [0, 1])
    >>> [round(m["nc1"], 4) for m in execute_task([s.to_dict() for s in specs], toy_run)]
    [0.4139, 0.3431]
    """
    if _is_chain(spec_dicts[0]) and run_fn is None:
        kws = [RunSpec.from_dict(d).kwargs() | ({"root": data_root} if data_root else {})
               for d in spec_dicts]
        with limit_threads(None if threads is None else int(threads)):
            res = chain_sweep_metrics(kws, device=device)
        return [{k: float(v) for k, v in r.items() if k != "stop_reason"} for r in res]
    if not (vectorize and len(spec_dicts) > 1):
        return [execute_run(d, run_fn, device, data_root, threads) for d in spec_dicts]
    specs = [RunSpec.from_dict(d) for d in spec_dicts]
    kw = specs[0].kwargs()
    kw.pop("seed")
    if data_root is not None:
        kw["root"] = data_root
    with limit_threads(None if threads is None else int(threads)):
        res = train_and_compare_seeds(seeds=[sp.seed for sp in specs], device=device, **kw)
    return [{k: float(v) for k, v in r.items()} for r in res]


def _is_chain(spec_dict: dict[str, Any]) -> bool:
    return any(k == "continuation" and bool(v) for k, v in spec_dict.get("options", ()))


def make_tasks(specs: Sequence[RunSpec], vectorize: bool) -> list[list[RunSpec]]:
    """Group runs into tasks: one run each, or (``vectorize``) all seeds of one configuration;
    runs with the ``continuation`` option: all depths of one row and seed (one
    :func:`gufm.deep.pipeline.continuation_chain`).

    Examples
    --------
    >>> from gufm.experiments.spec import expand_grid
    >>> specs = expand_grid("rn1", [2, 4], [0, 1, 2])
    >>> len(make_tasks(specs, vectorize=False)), len(make_tasks(specs, vectorize=True))
    (6, 2)
    """
    groups: dict[str, list[RunSpec]] = {}
    out: list[list[RunSpec]] = []
    for sp in specs:
        chain = _is_chain(sp.to_dict())
        if not (vectorize or chain):
            out.append([sp])
            continue
        drop = ("depth",) if chain else ("seed",)
        key = json.dumps({k: v for k, v in sp.to_dict().items() if k not in drop},
                         sort_keys=True, default=str)
        if key not in groups:
            groups[key] = []
            out.append(groups[key])
        groups[key].append(sp)
    return out


Outcome = tuple[RunSpec, "dict[str, float] | None", "BaseException | None"]


def _split(task: Sequence[RunSpec], result: list[dict[str, float]] | None,
           exc: BaseException | None) -> Iterator[Outcome]:
    for i, sp in enumerate(task):
        yield sp, (None if result is None else result[i]), exc


def _drain(futs: dict[Any, Sequence[RunSpec]], as_completed: Callable[..., Any]
           ) -> Iterator[Outcome]:
    """Yield the outcomes of futures (``concurrent.futures`` or Dask) as they finish; cancel
    the rest when the consumer stops early."""
    try:
        for fut in as_completed(list(futs)):
            try:
                res = fut.result()
            except Exception as exc:  # noqa: BLE001 - recorded, the sweep goes on
                yield from _split(futs[fut], None, exc)
            else:
                yield from _split(futs[fut], res, None)
    finally:
        for f in futs:
            f.cancel()


def iter_local(tasks: Sequence[Sequence[RunSpec]], args: tuple[Any, ...]) -> Iterator[Outcome]:
    """Run the tasks one after another in this process.

    ``args`` are :func:`execute_task`'s arguments after the specs.

    Examples
    --------
    >>> from gufm.experiments.spec import expand_grid
    >>> from gufm.experiments.testing import toy_run
    >>> tasks = make_tasks(expand_grid("rn1", [2, 4], [0]), vectorize=False)
    >>> [(sp.depth, round(m["gap"], 4), e) for sp, m, e in iter_local(tasks, (toy_run,))]
    [(2, 0.0293, None), (4, 0.0146, None)]
    """
    for task in tasks:
        try:
            res = execute_task([sp.to_dict() for sp in task], *args)
        except Exception as exc:  # noqa: BLE001 - recorded, the sweep goes on
            yield from _split(task, None, exc)
        else:
            yield from _split(task, res, None)


def iter_processes(tasks: Sequence[Sequence[RunSpec]], jobs: int, args: tuple[Any, ...]
                   ) -> Iterator[Outcome]:
    """Run the tasks on ``jobs`` spawned worker processes (``run_fn`` must be picklable).

    Examples
    --------
    >>> from gufm.experiments.testing import toy_run
    >>> list(iter_processes([], 2, (toy_run,)))  # no task: no worker is started
    []
    """
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futs = {pool.submit(execute_task, [sp.to_dict() for sp in t], *args): t for t in tasks}
        yield from _drain(futs, as_completed)


def iter_dask(tasks: Sequence[Sequence[RunSpec]], scheduler: Any, args: tuple[Any, ...]
              ) -> Iterator[Outcome]:
    """Run the tasks on a Dask cluster: ``scheduler`` is its address or a
    :class:`distributed.Client` (``[distributed]`` extra).

    Examples
    --------
    An in-process cluster (one worker thread); outcomes arrive as they finish:

    >>> from distributed import Client
    >>> from gufm.experiments.spec import expand_grid
    >>> from gufm.experiments.testing import toy_run
    >>> tasks = make_tasks(expand_grid("rn1", [2, 4], [0]), vectorize=False)
    >>> with Client(processes=False, n_workers=1, threads_per_worker=1,
    ...             dashboard_address=None) as client:
    ...     out = sorted((sp.depth, round(m["gap"], 4), e)
    ...                  for sp, m, e in iter_dask(tasks, client, (toy_run,)))
    >>> out
    [(2, 0.0293, None), (4, 0.0146, None)]
    """
    from distributed import Client, as_completed

    own = not isinstance(scheduler, Client)
    client = Client(scheduler) if own else scheduler
    try:
        futs = {}
        for t in tasks:
            key = f"gufm-run-{t[0].run_id}-{os.getpid()}-{time.time_ns()}"
            futs[client.submit(execute_task, [sp.to_dict() for sp in t], *args, key=key,
                               pure=False)] = t
        yield from _drain(futs, as_completed)
    finally:
        if own:
            client.close()
