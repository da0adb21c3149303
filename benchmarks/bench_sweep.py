"""Sweep throughput (issue 5): runs per minute with ``jobs=1`` against ``jobs=2``, and seeds
trained as one vectorised model (``gufm.vectorized``) against one at a time.

    python -m benchmarks.bench_sweep [--quick] [--out benchmarks/results/sweep.json]

Every run is a real :func:`gufm.deep.pipeline.train_and_compare` (tiny L-RN1 on digits).  The process
pool's start-up (spawned workers import torch) is part of the ``jobs=2`` time: that is what a
user waits for.  The vectorised comparison times the Adam phase (what is vectorised) and the
whole train + polish + compare, on CUDA when available ("skipped: no CUDA" otherwise) and on the
CPU (the CPU ratio, cheap at this size).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from typing import Any

from benchmarks._common import machine, write_json


def sweep_throughput(jobs: int, depths: list[int], seeds: list[int], epochs: int,
                     width: int) -> dict[str, Any]:
    """Time one fresh sweep with ``jobs`` local processes; runs/minute."""
    from gufm.experiments.spec import expand_grid
    from gufm.experiments.sweep import run_sweep

    specs = expand_grid("rn1", depths, seeds, "digits", width=width, n_per_class=10,
                        epochs=epochs, options={"polish_steps": epochs})
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        s = run_sweep(specs, tmp, jobs=jobs, progress=False)
        sec = time.perf_counter() - t0
    assert s.ok, s.failed
    return {"jobs": jobs, "runs": len(specs), "seconds": sec, "runs_per_minute": 60 * len(specs) / sec}


def pool_startup(jobs: int = 2) -> float:
    """Seconds for a spawned pool of ``jobs`` workers to return one trivial (toy) task each:
    the fixed cost that ``--jobs`` pays before its first run (workers import torch)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from gufm.experiments.executors import execute_task
    from gufm.experiments.spec import expand_grid
    from gufm.experiments.testing import toy_run

    specs = expand_grid("rn1", list(range(1, jobs + 1)), [0])
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        list(pool.map(execute_task, [[sp.to_dict()] for sp in specs], [toy_run] * jobs))
    return time.perf_counter() - t0


def vectorized_vs_loop(device: str, seeds: int, depth: int, width: int, epochs: int
                       ) -> dict[str, Any]:
    """Adam phase and full train+compare: S seeds vectorised against S separate runs."""
    import torch

    from gufm.deep.data import load_dataset
    from gufm.deep.nets import model_for
    from gufm.deep.pipeline import train_and_compare, train_and_compare_seeds
    from gufm.deep.training import train
    from gufm.deep.vectorized import stacked_adam

    ds = load_dataset("digits", n_per_class=20)
    dev = torch.device(device)
    if dev.type == "cpu":
        torch.set_num_threads(1)  # as in a sweep (one thread per run); fair to both sides
    X, y = ds.X.to(dev), ds.y.to(dev)
    seed_list = list(range(seeds))

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    warm = [model_for(ds, "rn1", depth, width, seed=s).to(dev) for s in seed_list]
    stacked_adam(warm, X, y, lam=0.005, epochs=2)  # one-off torch.func warm-up
    train(model_for(ds, "rn1", depth, width, seed=0), ds, lam=0.005, epochs=2, polish=None,
          progress=False, device=device)
    sync()
    t0 = time.perf_counter()
    for s in seed_list:
        train(model_for(ds, "rn1", depth, width, seed=s), ds, lam=0.005, epochs=epochs,
              polish=None, progress=False, device=device, seed=s)
    sync()
    loop_adam = time.perf_counter() - t0
    ms = [model_for(ds, "rn1", depth, width, seed=s).to(dev) for s in seed_list]
    sync()
    t0 = time.perf_counter()
    stacked_adam(ms, X, y, lam=0.005, epochs=epochs)
    sync()
    vec_adam = time.perf_counter() - t0

    kw = dict(polish_steps=100)
    t0 = time.perf_counter()
    loop = [train_and_compare("rn1", depth, width, ds, None, epochs, 0.005, 5e-3, s,
                              device=device, **kw) for s in seed_list]
    sync()
    loop_full = time.perf_counter() - t0
    t0 = time.perf_counter()
    vec = train_and_compare_seeds("rn1", depth, width, ds, None, epochs, 0.005, 5e-3, seed_list,
                                  device=device, **kw)
    sync()
    vec_full = time.perf_counter() - t0
    max_gap_diff = max(abs(a["gap"] - b["gap"]) for a, b in zip(loop, vec, strict=True))
    return {"device": device, "seeds": seeds, "depth": depth, "width": width, "epochs": epochs,
            "N": ds.N, "adam_loop_s": loop_adam, "adam_vectorized_s": vec_adam,
            "adam_speedup": loop_adam / vec_adam, "full_loop_s": loop_full,
            "full_vectorized_s": vec_full, "full_speedup": loop_full / vec_full,
            "max_abs_gap_difference": max_gap_diff}


def run(quick: bool = False) -> dict[str, Any]:
    """All measurements; ``quick`` uses fewer and smaller runs."""
    import torch

    depths, seeds = ([2, 4], [0, 1, 2]) if quick else ([2, 4, 8], [0, 1, 2, 3])
    epochs, width = (40, 8) if quick else (200, 16)
    out: dict[str, Any] = {"machine": machine(), "quick": quick, "throughput": []}
    for jobs in (1, 2):
        r = sweep_throughput(jobs, depths, seeds, epochs, width)
        print(f"  jobs={jobs}: {r['runs']} runs in {r['seconds']:.1f} s = "
              f"{r['runs_per_minute']:.1f} runs/min", flush=True)
        out["throughput"].append(r)
    t = out["throughput"]
    out["jobs2_over_jobs1"] = t[1]["runs_per_minute"] / t[0]["runs_per_minute"]
    out["pool_startup_s"] = pool_startup(2)
    print(f"  spawned pool of 2 workers, start-up: {out['pool_startup_s']:.1f} s", flush=True)
    vs, vd, ve = (4, 4, 50) if quick else (8, 8, 300)
    cpu = vectorized_vs_loop("cpu", vs, vd, width, ve)
    print(f"  vectorised seeds, cpu: Adam x{cpu['adam_speedup']:.2f}, "
          f"full x{cpu['full_speedup']:.2f}", flush=True)
    out["vectorized_cpu"] = cpu
    if torch.cuda.is_available():
        gpu = vectorized_vs_loop("cuda", 16 if not quick else 8, vd, 64, ve)
        print(f"  vectorised seeds, cuda: Adam x{gpu['adam_speedup']:.2f}, "
              f"full x{gpu['full_speedup']:.2f}", flush=True)
        out["vectorized_cuda"] = gpu
    else:
        out["vectorized_cuda"] = "skipped: no CUDA"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None, help="JSON file for the results")
    args = ap.parse_args()
    res = run(quick=args.quick)
    write_json(res, args.out)
    print(json.dumps({k: v for k, v in res.items() if k != "machine"}, indent=1, default=str))


if __name__ == "__main__":
    main()
