"""Run every benchmark module, record the machine, write one JSON and a markdown table.

.. code-block:: text

    python -m benchmarks run [--quick] [--out FILE.json] [--only NAMES] [--md FILE.md] [--readme]
                             [--threads T] [--timeout SECONDS] [--isolate] [--update]
    python -m benchmarks render FILE.json [--md FILE.md] [--readme]   (re-derives the rows)

``run`` imports each module ``benchmarks.bench_<name>`` lazily and calls its ``run(quick)``;
a module that is missing, fails to import or raises is recorded as an ``"error"`` entry (with
the traceback) and the suite goes on; so is a module whose result lists failed parts under
``errors`` (e.g. a baseline whose optional dependency is missing), with its other results kept.
With ``--timeout`` (or ``--isolate``) every module runs in a child process, killed with its
process group past the timeout.  The JSON (schema
:data:`SCHEMA`) holds the machine (:func:`benchmarks._common.machine`), the thread pools, the
load average, each module's full result and, per module, the normalised ``comparisons`` rows
every table is generated from:

=================== ==================================================================
key                 meaning
=================== ==================================================================
case                the problem instance (sizes, loss, features)
baseline            the method gufm is compared against
baseline_seconds    wall time of the baseline (same process, same machine)
gufm_seconds        wall time of gufm on the same instance
ratio               ``baseline_seconds / gufm_seconds`` (> 1: gufm is faster)
ratio_is_bound      True when the baseline stopped on its budget before reaching the
                    target: the ratio is then a lower bound
baseline_reached    whether the baseline reached gufm's certified value (``None``: n/a)
rel_diff            relative difference of the two reported values (objective/metric)
gufm_certified      whether gufm's value is certified globally optimal (``None``: n/a)
notes               free text
=================== ==================================================================

A module may return its own ``comparisons`` list (the modules of this suite do); for the
others an adapter (:data:`ADAPTERS`) builds the rows from their result.  Modules may also
return ``summary`` (a list of sentences) and ``slopes`` (log-log fits) that the markdown
shows.  The markdown (``RESULTS.md`` next to the JSON by default) is generated from the JSON
alone and never edited by hand; ``--readme`` also replaces the block between
``<!-- BENCHMARKS:START -->`` and ``<!-- BENCHMARKS:END -->`` in ``README.md`` (nothing is
written when either marker is missing).  Non-finite floats are stored as ``null``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import importlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

#: identifies the layout of the JSON written by :func:`run_suite`
SCHEMA = "gufm-benchmarks/1"
#: the modules the suite expects (``benchmarks/bench_<name>.py``), in running order
EXPECTED = ("solver", "baselines", "scaling", "certified", "metrics", "training", "sweep")
#: markers delimiting the generated block in README.md
README_START = "<!-- BENCHMARKS:START -->"
README_END = "<!-- BENCHMARKS:END -->"
#: the keys every normalised comparison row has
ROW_KEYS = ("case", "baseline", "baseline_seconds", "gufm_seconds", "ratio", "ratio_is_bound",
            "baseline_reached", "rel_diff", "gufm_certified", "notes")

PACKAGE_DIR = Path(__file__).resolve().parent
RESULTS_DIR = PACKAGE_DIR / "results"
#: environment variable through which modules learn where to put their files (plots)
RESULTS_ENV = "GUFM_BENCHMARKS_RESULTS"


# ----------------------------------------------------------------------------- module discovery
def available_modules() -> list[str]:
    """The expected module names followed by any other ``bench_*.py`` found on disk."""
    found = sorted(p.stem[len("bench_"):] for p in PACKAGE_DIR.glob("bench_*.py"))
    return list(EXPECTED) + [n for n in found if n not in EXPECTED]


def resolve_names(only: str | Iterable[str] | None) -> list[str]:
    """Module names to run: all of :func:`available_modules`, or those named in ``only``.

    ``only`` is a comma-separated string (or a list); ``bench_`` prefixes are accepted.
    Unknown names are kept (they are recorded as missing modules, not silently dropped).
    """
    if only is None:
        return available_modules()
    items = only.split(",") if isinstance(only, str) else list(only)
    names = []
    for item in items:
        n = item.strip()
        n = n[len("bench_"):] if n.startswith("bench_") else n
        n = n[:-3] if n.endswith(".py") else n
        if n and n not in names:
            names.append(n)
    return names


# ----------------------------------------------------------------------------- JSON cleaning
def sanitize(obj: Any) -> Any:
    """A JSON-safe copy: numpy/torch scalars and arrays to Python, non-finite floats to None."""
    if obj is None or isinstance(obj, (str, bool)):
        return obj
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): sanitize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [sanitize(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    tolist = getattr(obj, "tolist", None)  # numpy scalars/arrays, torch tensors
    if callable(tolist):
        try:
            return sanitize(tolist())
        except Exception:  # noqa: BLE001 - fall through to str()
            pass
    item = getattr(obj, "item", None)
    if callable(item):
        try:
            return sanitize(item())
        except Exception:  # noqa: BLE001
            pass
    return str(obj)


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


# ----------------------------------------------------------------------------- comparisons
def make_row(case: str, baseline: str, baseline_seconds: Any, gufm_seconds: Any, *,
             ratio: Any = None, ratio_is_bound: bool = False, baseline_reached: Any = None,
             rel_diff: Any = None, gufm_certified: Any = None, notes: str = "") -> dict[str, Any]:
    """One normalised comparison row (see the module docstring); ``ratio`` defaults to
    ``baseline_seconds / gufm_seconds``."""
    b, g = _num(baseline_seconds), _num(gufm_seconds)
    r = _num(ratio)
    if r is None and b is not None and g:
        r = b / g
    return {
        "case": str(case), "baseline": str(baseline), "baseline_seconds": b, "gufm_seconds": g,
        "ratio": r, "ratio_is_bound": bool(ratio_is_bound),
        "baseline_reached": None if baseline_reached is None else bool(baseline_reached),
        "rel_diff": _num(rel_diff),
        "gufm_certified": None if gufm_certified is None else bool(gufm_certified),
        "notes": str(notes or ""),
    }


def _normalise_rows(rows: Any) -> list[dict[str, Any]]:
    out = []
    for r in rows or []:
        if not isinstance(r, dict):
            continue
        out.append(make_row(
            r.get("case", "?"), r.get("baseline", "?"), r.get("baseline_seconds"),
            r.get("gufm_seconds"), ratio=r.get("ratio"),
            ratio_is_bound=bool(r.get("ratio_is_bound", False)),
            baseline_reached=r.get("baseline_reached"), rel_diff=r.get("rel_diff"),
            gufm_certified=r.get("gufm_certified"), notes=r.get("notes", "")))
    return out


def _adapt_solver(res: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    fb = res.get("full_baseline")
    if isinstance(fb, dict):
        reached = fb.get("full_reached_1e-6")
        rows.append(make_row(
            f"CE layernorm N={fb.get('N')} d={fb.get('d')} K={fb.get('K')} (imbalanced)",
            "L-BFGS over all N features (`method='full'`)", fb.get("full_seconds"),
            fb.get("gufm_seconds"), ratio=fb.get("ratio"), ratio_is_bound=reached is False,
            baseline_reached=reached,
            rel_diff=_rel(fb.get("full_value"), fb.get("gufm_value")),
            gufm_certified=fb.get("gufm_certified"),
            notes=f"target: certified value x (1 + 1e-6); {fb.get('full_stop', '')}"))
    li = res.get("lbfgs_implementation")
    if isinstance(li, dict):
        rows.append(make_row(
            f"reduced CE objective K={li.get('K')}, {li.get('iterations')} iterations",
            "scipy L-BFGS-B on the same objective", li.get("scipy_lbfgsb_seconds"),
            li.get("gufm_lbfgs_seconds"), ratio=li.get("ratio"),
            notes="inner optimiser only (same iterations, same objective)"))
    return rows


def _adapt_metrics(res: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    cfg = res.get("config", {}) if isinstance(res.get("config"), dict) else {}
    case = (f"N={cfg.get('N')} d={cfg.get('d')} K={cfg.get('K')} {cfg.get('dtype', '')} "
            f"on {cfg.get('device', 'cpu')}").strip()
    s2 = res.get("stream_2pass_seconds")
    if res.get("baseline_seconds") is not None:
        rows.append(make_row(
            case, "plain numpy (np.cov per class + pseudo-inverse, all in memory)",
            res.get("baseline_seconds"), s2, ratio=res.get("ratio_baseline_vs_stream_2pass"),
            rel_diff=res.get("max_rel_diff_baseline_vs_2pass"),
            notes="gufm: streamed report, 2 passes (CollapseAccumulator)"))
    if res.get("read_seconds") is not None:
        bw = _num(res.get("bandwidth_GBps"))
        rows.append(make_row(
            case, "one read of the data (memory-bandwidth limit)", res.get("read_seconds"), s2,
            notes=("ratio < 1: fraction of the bandwidth limit reached"
                   + (f"; read at {bw:.1f} GB/s" if bw else ""))))
    if res.get("gemm_floor_seconds") is not None:
        fl = _num(res.get("ratio_gemm_floor_vs_two_reads"))
        rows.append(make_row(
            case, "the second pass's matrix product alone (rows x [Q | W^T], 2K-1 columns)",
            res.get("gemm_floor_seconds"), s2,
            notes=("ratio < 1: fraction of the report spent in the product it cannot avoid"
                   + (f"; the product alone = {fl:.2f}x two reads" if fl else ""))))
    return rows


def _rel(a: Any, b: Any) -> float | None:
    a, b = _num(a), _num(b)
    if a is None or b is None:
        return None
    return (a - b) / max(abs(b), 1e-300)


def _adapt_training(res: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for r in res.get("results") or []:
        if not isinstance(r, dict):
            continue
        a, e = _num(r.get("adam_step_ms")), _num(r.get("lbfgs_eval_ms"))
        thr = f", {r.get('threads')} thread(s)" if r.get("threads") is not None else ""
        rows.append(make_row(
            f"{r.get('arch')} L={r.get('depth')} width {r.get('width')}, N={r.get('N')}, "
            f"{r.get('device')}{thr}",
            "float32 Adam step (forward, backward, update)",
            None if a is None else a / 1e3, None if e is None else e / 1e3,
            notes=("per-step cost, not a speed-up: gufm = one float64 objective+gradient "
                   "evaluation (L-BFGS polish)")))
    return rows


def _adapt_sweep(res: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    tp = [t for t in res.get("throughput") or [] if isinstance(t, dict)]
    one = [t for t in tp if t.get("jobs") == 1]
    for t in tp:
        if t.get("jobs") == 1 or not one:
            continue
        rows.append(make_row(
            f"{t.get('runs')} train_and_compare runs (tiny L-RN1, digits)",
            "run_sweep with jobs=1", one[0].get("seconds"), t.get("seconds"),
            notes=f"gufm: run_sweep with jobs={t.get('jobs')} (pool start-up included)"))
    for key in ("vectorized_cpu", "vectorized_cuda"):
        v = res.get(key)
        if not isinstance(v, dict):
            continue
        case = (f"{v.get('seeds')} seeds, L-RN1 L={v.get('depth')} width {v.get('width')}, "
                f"{v.get('epochs')} epochs, N={v.get('N')} on {v.get('device')}")
        rows.append(make_row(case, "one model per seed, in a loop (Adam phase)",
                             v.get("adam_loop_s"), v.get("adam_vectorized_s"),
                             notes="gufm: seeds stacked in one vectorised model"))
        rows.append(make_row(case, "one model per seed, in a loop (train + polish + compare)",
                             v.get("full_loop_s"), v.get("full_vectorized_s"),
                             notes="gufm: train_and_compare_seeds"))
    return rows


#: per-module functions that build comparison rows from a result without ``comparisons``
ADAPTERS: dict[str, Callable[[dict[str, Any]], list[dict[str, Any]]]] = {
    "solver": _adapt_solver,
    "metrics": _adapt_metrics,
    "training": _adapt_training,
    "sweep": _adapt_sweep,
}


def extract_comparisons(name: str, result: Any) -> list[dict[str, Any]]:
    """Normalised comparison rows of one module's result (its own ``comparisons`` first)."""
    if not isinstance(result, dict):
        return []
    if isinstance(result.get("comparisons"), list):
        return _normalise_rows(result["comparisons"])
    adapter = ADAPTERS.get(name)
    if adapter is None:
        return []
    try:
        return adapter(result)
    except Exception:  # noqa: BLE001 - a malformed result must not break the suite
        return []


def refresh_comparisons(payload: dict[str, Any]) -> bool:
    """Re-derive every ok entry's ``comparisons`` from its stored ``result`` (they are derived
    data: an adapter fixed later applies to old results).  Returns True when any row changed."""
    changed = False
    for name, entry in (payload.get("benchmarks") or {}).items():
        if not isinstance(entry, dict) or entry.get("status") != "ok":
            continue
        rows = sanitize(extract_comparisons(name, entry.get("result")))
        if rows != entry.get("comparisons"):
            entry["comparisons"] = rows
            changed = True
    return changed


# ----------------------------------------------------------------------------- running
def run_module(name: str, quick: bool) -> dict[str, Any]:
    """Import ``benchmarks.bench_<name>`` and call ``run(quick)``; never raises."""
    entry: dict[str, Any] = {"name": name, "module": f"benchmarks.bench_{name}",
                             "status": "error", "seconds": 0.0, "error": None,
                             "traceback": None, "result": None, "comparisons": []}
    t0 = time.perf_counter()
    threads = _torch_threads()
    try:
        try:
            mod = importlib.import_module(entry["module"])
        except ModuleNotFoundError as exc:
            if exc.name in (entry["module"], "benchmarks"):
                entry["error"] = f"module {entry['module']} not found"
                return entry
            raise
        fn = getattr(mod, "run", None)
        if not callable(fn):
            entry["error"] = f"{entry['module']} has no run(quick) function"
            return entry
        result = fn(quick)
        if not isinstance(result, dict):
            raise TypeError(f"run(quick) returned {type(result).__name__}, expected dict")
        entry["result"] = sanitize(result)
        entry["comparisons"] = extract_comparisons(name, entry["result"])
        entry["status"] = "ok"
        errors = result.get("errors")
        if errors:  # a part that failed (e.g. a missing optional baseline) is not ok
            entry["status"] = "error"
            entry["error"] = "failed parts: " + "; ".join(
                f"{k}: {v}" for k, v in (errors.items() if isinstance(errors, dict)
                                         else enumerate(errors)))
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - recorded, the suite goes on (SystemExit too)
        entry["error"] = f"{type(exc).__name__}: {exc}"
        entry["traceback"] = traceback.format_exc()
    finally:
        entry["seconds"] = time.perf_counter() - t0
        _set_torch_threads(threads)
    return entry


def _torch_threads() -> int | None:
    try:
        import torch

        return int(torch.get_num_threads())
    except Exception:  # noqa: BLE001
        return None


def _set_torch_threads(n: int | None) -> None:
    if n is None:
        return
    try:
        import torch

        torch.set_num_threads(n)
    except Exception:  # noqa: BLE001
        pass


def _thread_info() -> dict[str, Any]:
    """torch's intra-op threads and the BLAS/OpenMP thread pools in use."""
    info: dict[str, Any] = {"torch": _torch_threads()}
    try:
        from threadpoolctl import threadpool_info

        info["pools"] = [{"api": p.get("user_api"), "library": p.get("internal_api"),
                          "threads": p.get("num_threads")} for p in threadpool_info()]
    except Exception:  # noqa: BLE001
        pass
    return info


def _machine() -> dict[str, Any]:
    try:
        from benchmarks._common import machine

        return machine()
    except Exception as exc:  # noqa: BLE001
        return {"error": f"{type(exc).__name__}: {exc}"}


def default_paths(quick: bool, out: str | os.PathLike | None,
                  md: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """The JSON path and the markdown path (``RESULTS.md`` / ``RESULTS_quick.md`` next to it)."""
    json_path = Path(out) if out is not None else RESULTS_DIR / (
        "benchmarks_quick.json" if quick else "benchmarks.json")
    md_path = Path(md) if md is not None else json_path.parent / (
        "RESULTS_quick.md" if quick else "RESULTS.md")
    return json_path, md_path


def write_payload(payload: dict[str, Any], path: Path) -> None:
    """Write the (sanitised) payload as strict JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(sanitize(payload), indent=2, allow_nan=False) + "\n")
    tmp.replace(path)


def run_module_isolated(name: str, quick: bool, *, timeout: float | None = None,
                        threads: int | None = None) -> dict[str, Any]:
    """:func:`run_module` in a child process (``python -m benchmarks _child``), killed with its
    process group after ``timeout`` seconds (recorded as an error entry); never raises."""
    t0 = time.perf_counter()
    base = {"name": name, "module": f"benchmarks.bench_{name}", "status": "error",
            "seconds": 0.0, "error": None, "traceback": None, "result": None, "comparisons": []}
    env = os.environ.copy()
    cmd = [sys.executable, "-m", "benchmarks", "_child", name]
    if quick:
        cmd.append("--quick")
    if threads is not None:
        cmd += ["--threads", str(int(threads))]
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(int(threads))
    root = str(PACKAGE_DIR.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "entry.json"
        proc = subprocess.Popen(cmd + [str(path)], env=env, cwd=root, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            base["error"] = f"timed out after {timeout:g} s (process group killed)"
            base["seconds"] = time.perf_counter() - t0
            return base
        except BaseException:
            _kill_group(proc)
            raise
        if path.is_file():
            try:
                entry = json.loads(path.read_text())
                entry["seconds"] = time.perf_counter() - t0
                return entry
            except ValueError as exc:
                base["error"] = f"unreadable result from the child process: {exc}"
        else:
            base["error"] = f"child process exited with status {rc} without a result"
    base["seconds"] = time.perf_counter() - t0
    return base


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the child's process group (it was started in a new session), then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()


def _child(name: str, quick: bool, out: str, threads: int | None) -> None:
    """Body of ``python -m benchmarks _child``: run one module, write its entry as JSON."""
    ctx: Any = contextlib.nullcontext()
    if threads is not None:
        from threadpoolctl import threadpool_limits

        _set_torch_threads(int(threads))
        ctx = threadpool_limits(limits=int(threads))
    with ctx:
        entry = run_module(name, quick)
    Path(out).write_text(json.dumps(sanitize(entry), allow_nan=False))


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not on every platform
        return None


def run_suite(quick: bool = False, *, out: str | os.PathLike | None = None,
              only: str | Iterable[str] | None = None, md: str | os.PathLike | None = None,
              readme: str | os.PathLike | None = None, threads: int | None = None,
              timeout: float | None = None, isolate: bool | None = None,
              update: bool = False, argv: list[str] | None = None) -> dict[str, Any]:
    """Run the modules, write the JSON (after every module) and the markdown; return the payload.

    Parameters
    ----------
    quick : bool
        Passed to every ``run(quick)``.
    out, md : path, optional
        JSON and markdown destinations (:func:`default_paths`).
    only : str or list of str, optional
        Module names (``"solver,baselines"``); default all.
    readme : path, optional
        Also replace the marked block of this README (nothing happens without the markers).
    threads : int, optional
        Limit BLAS (threadpoolctl) and torch threads for the whole run (recorded); modules may
        still set their own.  Useful on a loaded machine, where oversubscribed BLAS threads can
        slow dense linear algebra down by 10x or more.
    timeout : float, optional
        Seconds per module; implies ``isolate``.  A module past it is killed and recorded as an
        error entry.
    isolate : bool, optional
        Run each module in its own child process (default: only with ``timeout``); otherwise
        modules run in this process, one after the other.
    update : bool
        Keep the other modules' entries of an existing ``out`` JSON (same schema and mode) and
        replace only those run now (:func:`_merge_previous`).
    """
    isolate = (timeout is not None) if isolate is None else bool(isolate)
    if threads is not None:
        from threadpoolctl import threadpool_limits

        old = _torch_threads()
        _set_torch_threads(int(threads))
        try:
            with threadpool_limits(limits=int(threads)):
                return _run_suite(quick, out, only, md, readme, threads, timeout, isolate, argv,
                                  update)
        finally:
            _set_torch_threads(old)
    return _run_suite(quick, out, only, md, readme, threads, timeout, isolate, argv, update)


def _run_suite(quick: bool, out: Any, only: Any, md: Any, readme: Any, threads: int | None,
               timeout: float | None, isolate: bool, argv: list[str] | None,
               update: bool = False) -> dict[str, Any]:
    json_path, md_path = default_paths(quick, out, md)
    names = resolve_names(only)
    old_env = os.environ.get(RESULTS_ENV)
    os.environ[RESULTS_ENV] = str(json_path.parent.resolve())
    try:
        return _run_modules(quick, json_path, md_path, names, readme, threads, timeout, isolate,
                            argv, update)
    finally:
        if old_env is None:
            os.environ.pop(RESULTS_ENV, None)
        else:
            os.environ[RESULTS_ENV] = old_env


def _merge_previous(payload: dict[str, Any], json_path: Path) -> None:
    """Start from the entries of an earlier run in ``json_path`` (same schema and mode).

    The earlier run's header is kept under ``previous_runs``; entries re-run now replace theirs
    in place, the others stay (each entry's ``run_started`` tells which run produced it).
    """
    if not json_path.is_file():
        return
    try:
        prev = json.loads(json_path.read_text())
    except ValueError:
        return
    if prev.get("schema") != SCHEMA or bool(prev.get("quick")) != payload["quick"]:
        return
    for name, entry in (prev.get("benchmarks") or {}).items():
        if isinstance(entry, dict):
            entry.setdefault("run_started", prev.get("started"))
            payload["benchmarks"][name] = entry
    header = {k: prev.get(k) for k in ("started", "command", "seconds", "modules",
                                         "load_average", "threads", "machine")}
    payload["previous_runs"] = list(prev.get("previous_runs") or []) + [header]
    payload["modules"] = [n for n in payload["benchmarks"]] + [
        n for n in payload["modules"] if n not in payload["benchmarks"]]


def _run_modules(quick: bool, json_path: Path, md_path: Path, names: list[str], readme: Any,
                 threads: int | None, timeout: float | None, isolate: bool,
                 argv: list[str] | None, update: bool = False) -> dict[str, Any]:
    started = _dt.datetime.now(_dt.timezone.utc)
    t0 = time.perf_counter()
    payload: dict[str, Any] = {
        "schema": SCHEMA,
        "command": "python -m benchmarks " + " ".join(argv if argv is not None else
                                                       (["run"] + (["--quick"] if quick else []))),
        "quick": bool(quick),
        "started": started.isoformat(timespec="seconds"),
        "seconds": 0.0,
        "modules": list(names),
        "isolated": isolate,
        "timeout_seconds": timeout,
        "machine": _machine(),
        "threads": _thread_info(),
        "load_average": {"start": _load(), "end": None},
        "benchmarks": {},
    }
    if update:
        _merge_previous(payload, json_path)
    for name in names:
        print(f"=== benchmark {name} ({'quick' if quick else 'full'}) ===", flush=True)
        if isolate:
            entry = run_module_isolated(name, quick, timeout=timeout, threads=threads)
        else:
            entry = run_module(name, quick)
        entry["run_started"] = payload["started"]
        payload["benchmarks"][name] = entry
        if name not in payload["modules"]:
            payload["modules"].append(name)
        payload["seconds"] = time.perf_counter() - t0
        status = "ok" if entry["status"] == "ok" else f"ERROR {entry['error']}"
        print(f"=== {name}: {status} in {entry['seconds']:.1f} s ===", flush=True)
        write_payload(payload, json_path)
    payload["seconds"] = time.perf_counter() - t0
    payload["load_average"]["end"] = _load()
    write_payload(payload, json_path)
    payload = json.loads(json_path.read_text())
    md_text = render_markdown(payload, source=json_path.name)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(md_text)
    print(f"wrote {json_path} and {md_path} ({payload['seconds']:.1f} s)", flush=True)
    if readme is not None:
        changed = update_readme(payload, readme, source=json_path.name)
        print(f"{readme}: {'block replaced' if changed else 'no markers, left unchanged'}")
    return payload


# ----------------------------------------------------------------------------- markdown
def _fmt_s(x: Any) -> str:
    v = _num(x)
    if v is None:
        return "—"
    if v >= 100:
        return f"{v:.0f} s"
    if v >= 1:
        return f"{v:.2f} s"
    if v >= 1e-3:
        return f"{v * 1e3:.1f} ms"
    return f"{v * 1e6:.0f} µs"


def _fmt_ratio(x: Any, bound: bool) -> str:
    v = _num(x)
    if v is None:
        return "—"
    txt = f"{v:.0f}×" if v >= 10 else f"{v:.2f}×" if v >= 0.1 else f"{v:.2g}×"
    return ("≥ " + txt) if bound else txt


def _fmt_g(x: Any) -> str:
    v = _num(x)
    return "—" if v is None else f"{v:.1e}"


def _fmt_bool(x: Any) -> str:
    return "—" if x is None else ("yes" if x else "**no**")


def _cell(s: Any) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _machine_line(m: dict[str, Any]) -> str:
    if not isinstance(m, dict):
        return "unknown machine"
    bits = [m.get("cpu_model") or m.get("processor") or "CPU"]
    if m.get("cpu_count") is not None:
        bits.append(f"{m['cpu_count']} logical CPUs")
    if m.get("torch_threads") is not None:
        bits.append(f"torch threads {m['torch_threads']}")
    bits.append(f"GPU: {m['cuda']}" if m.get("cuda") else "no GPU")
    vers = ", ".join(f"{k} {m[k]}" for k in ("python", "numpy", "scipy", "torch", "cvxpy")
                     if m.get(k))
    return "; ".join(bits) + (f" ({vers})" if vers else "")


def _load_line(payload: dict[str, Any]) -> str:
    bits = []
    la = payload.get("load_average") or {}
    if isinstance(la, dict) and la.get("start"):
        bits.append(f"load average at start {la['start'][0]:g}"
                    + (f", at end {la['end'][0]:g}" if la.get("end") else ""))
    th = payload.get("threads") or {}
    pools = th.get("pools") if isinstance(th, dict) else None
    if pools:
        bits.append("BLAS threads " + ", ".join(str(p.get("threads")) for p in pools))
    return ("; " + "; ".join(bits)) if bits else ""


def render_markdown(payload: dict[str, Any], *, source: str = "the JSON",
                    readme: bool = False) -> str:
    """The results as markdown, generated from the payload only (see the module docstring)."""
    benches: dict[str, Any] = payload.get("benchmarks", {}) or {}
    lines: list[str] = []
    mode = "quick" if payload.get("quick") else "full"
    if not readme:
        lines += ["# gufm benchmark results", "",
                  "<!-- generated by `python -m benchmarks` from the JSON; do not edit -->", ""]
    lines += [
        f"Generated from `{source}` ({mode} run, {payload.get('started', '?')}, "
        f"{_fmt_s(payload.get('seconds'))} in all) by `{payload.get('command', '?')}`.",
        f"Machine: {_machine_line(payload.get('machine', {}))}{_load_line(payload)}.",
        *(["Entries from earlier runs kept by `--update`: "
           + "; ".join(f"{r.get('started')} (`{r.get('command')}`)"
                       for r in payload["previous_runs"] if isinstance(r, dict))
           + " (each entry's `run_started` in the JSON tells which)."]
          if payload.get("previous_runs") else []),
        "Ratios are baseline time / gufm time in the same process (> 1: gufm is faster); "
        "≥ marks a baseline stopped by its budget before reaching gufm's certified value.",
        "",
        "| benchmark | case | baseline | baseline | gufm | ratio | baseline reached | "
        "rel. diff | gufm certified | notes |",
        "| --- | --- | --- | ---: | ---: | ---: | :---: | ---: | :---: | --- |",
    ]
    n_rows = 0
    for name, entry in benches.items():
        for r in (entry or {}).get("comparisons", []) or []:
            n_rows += 1
            lines.append("| " + " | ".join(_cell(c) for c in (
                name, r.get("case"), r.get("baseline"), _fmt_s(r.get("baseline_seconds")),
                _fmt_s(r.get("gufm_seconds")), _fmt_ratio(r.get("ratio"), r.get("ratio_is_bound")),
                _fmt_bool(r.get("baseline_reached")), _fmt_g(r.get("rel_diff")),
                _fmt_bool(r.get("gufm_certified")), r.get("notes", ""))) + " |")
    if n_rows == 0:
        lines.append("| — | no comparison rows | | | | | | | | |")
    slopes = [(name, s) for name, e in benches.items()
              for s in (((e or {}).get("result") or {}).get("slopes") or [])
              if isinstance(s, dict)]
    if slopes:
        lines += ["", "Scaling (least-squares slope of log time against log size):", "",
                  "| benchmark | curve | sizes | slope | points |", "| --- | --- | --- | ---: | ---: |"]
        for name, s in slopes:
            v = _num(s.get("slope"))
            lines.append("| " + " | ".join(_cell(c) for c in (
                name, s.get("curve", "?"), s.get("range", ""),
                "—" if v is None else f"{v:.2f}", s.get("points", ""))) + " |")
    summaries = [(name, t) for name, e in benches.items()
                 for t in (((e or {}).get("result") or {}).get("summary") or [])]
    if summaries:
        lines += [""] + [f"- {name}: {_cell(t)}" for name, t in summaries]
    status = [f"`{name}` {e.get('status')} ({_fmt_s(e.get('seconds'))})"
              for name, e in benches.items() if isinstance(e, dict)]
    lines += ["", "Modules: " + ", ".join(status) + "."]
    errors = [(n, e) for n, e in benches.items() if isinstance(e, dict) and e.get("status") != "ok"]
    if errors and not readme:
        lines += ["", "Errors:", ""] + [f"- `{n}`: {_cell(e.get('error'))}" for n, e in errors]
    return "\n".join(lines) + "\n"


def replace_block(text: str, block: str) -> str | None:
    """``text`` with the part between the README markers replaced by ``block``; ``None`` when
    a marker is missing (or the end marker precedes the start)."""
    i = text.find(README_START)
    if i < 0:
        return None
    j = text.find(README_END, i + len(README_START))
    if j < 0:
        return None
    return text[: i + len(README_START)] + "\n" + block.rstrip("\n") + "\n" + text[j:]


def update_readme(payload: dict[str, Any], readme: str | os.PathLike = "README.md", *,
                  source: str = "benchmarks/results/benchmarks.json") -> bool:
    """Replace the marked block of ``readme`` with the generated table.

    Returns True when the file was rewritten; False (file untouched) when it or a marker is
    missing.
    """
    path = Path(readme)
    if not path.is_file():
        return False
    text = path.read_text()
    new = replace_block(text, render_markdown(payload, source=source, readme=True))
    if new is None:
        return False
    if new != text:
        path.write_text(new)
    return True


# ----------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m benchmarks``; returns the exit status (0 even when a module
    failed: failures are recorded in the JSON)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="{run,render}")
    r = sub.add_parser("run", help="run the benchmark modules")
    r.add_argument("--quick", action="store_true", help="small sizes (< 2 minutes in all)")
    r.add_argument("--out", default=None, help="JSON path (default benchmarks/results/"
                                               "benchmarks.json, or benchmarks_quick.json)")
    r.add_argument("--only", default=None, help="comma-separated module names, e.g. solver,metrics")
    r.add_argument("--md", default=None, help="markdown path (default RESULTS.md next to the JSON)")
    r.add_argument("--readme", nargs="?", const="README.md", default=None,
                   help="also replace the marked block of README.md (or the given file)")
    r.add_argument("--threads", type=int, default=None,
                   help="limit BLAS and torch threads for the whole run (recorded)")
    r.add_argument("--timeout", type=float, default=None,
                   help="seconds per module: each module runs in a child process, killed "
                        "(and recorded as an error) past this")
    r.add_argument("--isolate", action="store_true",
                   help="run each module in a child process (implied by --timeout)")
    r.add_argument("--update", action="store_true",
                   help="keep the other modules' entries of an existing --out JSON, replace "
                        "those run now")
    c = sub.add_parser("_child")  # internal: no help, so it is not listed
    c.add_argument("name")
    c.add_argument("out")
    c.add_argument("--quick", action="store_true")
    c.add_argument("--threads", type=int, default=None)
    g = sub.add_parser("render", help="regenerate the markdown from a JSON")
    g.add_argument("json")
    g.add_argument("--md", default=None)
    g.add_argument("--readme", nargs="?", const="README.md", default=None)
    a = ap.parse_args(argv)
    if a.cmd == "run":
        run_suite(a.quick, out=a.out, only=a.only, md=a.md, readme=a.readme, threads=a.threads,
                  timeout=a.timeout, isolate=a.isolate or None, update=a.update, argv=argv)
        return 0
    if a.cmd == "_child":
        _child(a.name, a.quick, a.out, a.threads)
        return 0
    path = Path(a.json)
    payload = json.loads(path.read_text())
    if refresh_comparisons(payload):
        write_payload(payload, path)
        print(f"{path}: comparison rows re-derived from the stored results")
    md_path = Path(a.md) if a.md else default_paths(bool(payload.get("quick")), path)[1]
    md_path.write_text(render_markdown(payload, source=path.name))
    print(f"wrote {md_path}")
    if a.readme is not None:
        changed = update_readme(payload, a.readme, source=path.name)
        print(f"{a.readme}: {'block replaced' if changed else 'no markers, left unchanged'}")
    return 0
