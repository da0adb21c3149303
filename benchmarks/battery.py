"""The certificate battery at scale: many random instances, one JSON outcome table.

``python -m benchmarks.battery --n 300 --out benchmarks/results/battery.json``

Runs the checks of ``tests/solvers/test_battery.py`` (same instance builder, same independent
restarted L-BFGS on the reduced problem, same :func:`check`) on ``--n`` instances, cycling
through every loss x features x bias x data stratum (96 of them) with the other parameters
(K up to ``--max-K``, d < K or d >= K, the lambdas, the radius, the counts) drawn at random.
Each instance gets one outcome:

=================== ==========================================================================
certified_correct   certified, and every check holds
uncertified         not certified; the bound is valid and the value is right
false_certificate   certified, but the bound exceeds an independent point (or the value does)
invalid_bound       not certified, and lower_bound > value or > an independent point
wrong_value         the reported value is not the objective at the returned (feasible) point
error               gufm.solve raised
=================== ==========================================================================

The JSON holds the table, the table per stratum and per d < K / d >= K, one row per instance,
every non-clean case in full (to reproduce it), the number of solves that hit ``--max-seconds``,
the slowest solves, and the time spent by gufm and by the independent solver.  Not part of the
benchmark runner (``python -m benchmarks run``): it measures correctness, not speed.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `benchmarks` is a folder of the repository, not installed
    sys.path.insert(0, str(ROOT))

from benchmarks._common import machine, write_json  # noqa: E402

SCHEMA = "gufm-battery/1"
OUTCOMES = ("certified_correct", "uncertified", "false_certificate", "invalid_bound",
            "wrong_value", "error")


def load_battery() -> Any:
    """The test module (its instance builder, independent solver and checks)."""
    path = ROOT / "tests" / "solvers" / "test_battery.py"
    spec = importlib.util.spec_from_file_location("gufm_test_battery", path)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules[spec.name] = mod  # (dataclasses look their module up there)
    spec.loader.exec_module(mod)
    return mod


def run(n: int, seed: int, max_K: int, restarts: int, max_seconds: float | None,
        progress: bool = True) -> dict[str, Any]:
    """Run ``n`` instances; returns the JSON payload (see the module docstring)."""
    import gufm

    bat = load_battery()
    strata = list(itertools.product(bat.LOSSES, bat.FEATURES, bat.BIASES, bat.DATA))
    rng = np.random.default_rng(seed)
    table: Counter[str] = Counter()
    by_stratum: dict[str, Counter[str]] = {}
    by_dim: dict[str, Counter[str]] = {"d<K": Counter(), "d>=K": Counter()}
    rows: list[dict[str, Any]] = []
    time_limits = 0
    cases: list[dict[str, Any]] = []
    t_gufm = t_indep = 0.0
    slowest: list[tuple[float, dict[str, Any]]] = []
    t0 = time.perf_counter()
    for i in range(n):
        loss, features, bias, data = strata[i % len(strata)]
        params = bat.random_params(rng, max_K=max_K)
        params.update(loss=loss, features=features, bias=bias, data=data)
        case = bat.build_case(**params)
        key = f"{loss}/{features}/{bias}/{data}"
        entry: dict[str, Any] = {"index": i, "stratum": key, "params": params}
        ts = time.perf_counter()
        try:
            kw = {} if max_seconds is None else {"max_seconds": max_seconds}
            res = gufm.solve(case.gufm_problem(), **kw)
        except Exception as exc:  # noqa: BLE001 - recorded as an outcome
            outcome, res = "error", None
            entry["error"] = repr(exc)
        dt = time.perf_counter() - ts
        t_gufm += dt
        ts = time.perf_counter()
        indep, _ = bat.independent_solve(case, restarts=restarts, seed=i)
        t_indep += time.perf_counter() - ts
        if res is not None:
            outcome = bat.classify(case, res, indep)
            entry.update(value=res.value, lower_bound=res.lower_bound, certified=res.certified,
                         method=res.method, stop_reason=res.stop_reason,
                         problems=bat.check(case, res, indep))
        entry.update(outcome=outcome, independent=indep, gufm_seconds=dt)
        table[outcome] += 1
        by_stratum.setdefault(key, Counter())[outcome] += 1
        by_dim["d<K" if case.d < case.K else "d>=K"][outcome] += 1
        hit = res is not None and "time limit" in str(res.stop_reason)
        time_limits += hit
        rows.append({"index": i, "stratum": key, "K": case.K, "d": case.d, "outcome": outcome,
                     "gap": None if res is None else res.value - res.lower_bound,
                     "time_limit": hit, "gufm_seconds": round(dt, 4)})
        if outcome not in ("certified_correct", "uncertified"):
            cases.append({**entry, "case": case.describe()})
        slowest = sorted([*slowest, (dt, entry)], key=lambda t: -t[0])[:10]
        if progress and (i + 1) % 25 == 0:
            print(f"[battery] {i + 1}/{n}  {dict(table)}  {time.perf_counter() - t0:.0f} s",
                  file=sys.stderr, flush=True)
    return {
        "schema": SCHEMA,
        "n": n, "seed": seed, "max_K": max_K, "restarts": restarts, "max_seconds": max_seconds,
        "table": {k: table.get(k, 0) for k in OUTCOMES},
        "by_stratum": {k: dict(v) for k, v in sorted(by_stratum.items())},
        "by_dim": {k: dict(v) for k, v in by_dim.items()},
        "time_limit_hits": time_limits,
        "instances": rows,
        "not_clean": cases,
        "slowest": [{"gufm_seconds": dt, "stratum": e["stratum"], "params": e["params"],
                     "outcome": e["outcome"]} for dt, e in slowest],
        "gufm_seconds": t_gufm, "independent_seconds": t_indep,
        "seconds": time.perf_counter() - t0,
        "machine": machine(),
        "command": " ".join(["python -m benchmarks.battery", *sys.argv[1:]]),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.battery", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300, help="number of instances")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-K", type=int, default=10, help="largest number of classes")
    ap.add_argument("--restarts", type=int, default=4, help="restarts of the independent solver")
    ap.add_argument("--max-seconds", type=float, default=60.0,
                    help="budget handed to gufm.solve (0: none)")
    ap.add_argument("--out", default="benchmarks/results/battery.json")
    args = ap.parse_args(argv)
    if args.n < 1 or args.max_K < 2 or args.restarts < 1:
        ap.error("--n and --restarts must be >= 1 and --max-K >= 2")
    from gufm._util import limit_threads

    with limit_threads(1):
        payload = run(args.n, args.seed, args.max_K, args.restarts,
                      args.max_seconds if args.max_seconds > 0 else None)
    write_json(payload, args.out)
    print({"table": payload["table"], "seconds": round(payload["seconds"], 1),
           "out": args.out})
    return 0 if payload["table"]["false_certificate"] == payload["table"]["invalid_bound"] == 0 \
        else 1


if __name__ == "__main__":
    sys.exit(main())
