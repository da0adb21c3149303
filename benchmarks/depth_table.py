"""Depth table (issue 4): L-RN1 on the digits trained to its optimum, against the GUFM.

    python -m benchmarks.depth_table closing [FILE.json]
    python -m benchmarks.depth_table [--depths 2 5 13 34] [--n-per-class 50] [--epochs 2000]
        [--polish-steps 1000] [--width 64] [--lam 0.005] [--lr 0.005] [--seed 0] [--jobs 2]
        [--arch rn1] [--dataset digits] [--device cpu] [--out FILE.json]

For every depth: build the network (:func:`gufm.nets.model_for`, seed ``--seed``), train it
(:func:`gufm.training.train`: full-batch Adam with warm-up + cosine decay, then the float64
L-BFGS polish) on ``mean CE + lam/2 sum ||theta||^2`` and compare it with the GUFM optimum
(:func:`gufm.compare.compare`).  Depths run in ``--jobs`` processes with one torch thread each
(deepest first; spawned processes for CUDA).  Prints a markdown table and the log-log slopes of
the gap and of NC1 against L, and writes everything (plus the machine) as JSON.

The depth study is a sweep preset: ``gufm sweep --preset study`` (or ``study-deep``) and
``gufm report`` (README, "Check the reduction on real networks").
"""

from __future__ import annotations

import argparse
import math
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np


def run_depth(cfg: dict[str, Any]) -> dict[str, Any]:
    """Train and compare one network (runs in a worker process, one torch thread)."""
    import torch

    from gufm.deep.data import load_dataset
    from gufm.deep.nets import model_for
    from gufm.deep.reduction import compare
    from gufm.deep.training import train

    torch.set_num_threads(int(cfg.get("threads", 1)))
    t0 = time.perf_counter()
    ds = load_dataset(cfg["dataset"], n_per_class=cfg["n_per_class"], seed=0)
    model = model_for(ds, cfg["arch"], cfg["depth"], cfg["width"], seed=cfg["seed"])
    tr = train(model, ds, lam=cfg["lam"], loss=cfg["loss"], lr=cfg["lr"], epochs=cfg["epochs"],
               seed=cfg["seed"], polish_steps=cfg["polish_steps"], device=cfg["device"],
               progress=False)
    adam_end = [h["objective"] for h in tr.history if h["phase"] == "adam"]
    cmp = compare(model, ds, lam=cfg["lam"], loss=cfg["loss"])
    out = cmp.to_dict()
    out.update(depth=cfg["depth"], adam_end_objective=adam_end[-1] if adam_end else math.nan,
               polish_iters=tr.polish_iters, stop_reason=tr.stop_reason,
               train_seconds=tr.seconds, seconds=time.perf_counter() - t0)
    return out


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log10(y) against log10(x) (NaN with < 2 positive points)."""
    pts = [(math.log10(x), math.log10(y)) for x, y in zip(xs, ys, strict=True) if y > 0]
    if len(pts) < 2:
        return math.nan
    a = np.array(pts)
    return float(np.polyfit(a[:, 0], a[:, 1], 1)[0])


def markdown(rows: list[dict[str, Any]]) -> str:
    head = ("| L | e2e objective | GUFM optimum | gap | head - opt | NC1 | NC2 | NC3 | "
            "GUFM dist. | train acc. | grad norm | grad norm w/o embed. | L-BFGS its | "
            "time (s) |")
    lines = [head, "|" + "---|" * 14]
    for r in rows:
        lines.append(
            f"| {r['depth']} | {r['e2e_objective']:.6f} | {r['gufm_optimum']:.6f} | "
            f"{r['gap']:.5f} | {r['head_gap']:.5f} | {r['nc1']:.4f} | {r['nc2']:.4f} | "
            f"{r['nc3']:.4f} | {r['gufm_distance']:.4f} | {r['train_accuracy']:.3f} | "
            f"{r['grad_norm']:.2e} | {r['grad_norm_rest']:.2e} | {r['polish_iters']} | "
            f"{r['seconds']:.0f} |")
    return "\n".join(lines)


def run(depths: list[int], *, arch: str = "rn1", dataset: str = "digits", n_per_class: int = 50,
        epochs: int = 2000, polish_steps: int = 1000, width: int = 64, lam: float = 0.005,
        lr: float = 0.005, seed: int = 0, loss: str = "ce", jobs: int = 2,
        device: str = "cpu") -> dict[str, Any]:
    """Train and compare every depth; returns the rows, slopes, settings and machine."""
    from benchmarks._common import machine

    base = dict(arch=arch, dataset=dataset, n_per_class=n_per_class, epochs=epochs,
                polish_steps=polish_steps, width=width, lam=lam, lr=lr, seed=seed, loss=loss,
                device=device, threads=1)
    cfgs = [dict(base, depth=L) for L in sorted(depths, reverse=True)]
    t0 = time.perf_counter()
    if jobs <= 1:
        rows = [run_depth(c) for c in cfgs]
    else:
        import multiprocessing as mp

        ctx = mp.get_context("spawn" if device.startswith("cuda") else "fork")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            rows = list(pool.map(run_depth, cfgs))
    rows.sort(key=lambda r: r["depth"])
    Ls = [r["depth"] for r in rows]
    return {
        "settings": base, "rows": rows, "wall_seconds": time.perf_counter() - t0,
        "slope_gap": slope(Ls, [r["gap"] for r in rows]),
        "slope_nc1": slope(Ls, [r["nc1"] for r in rows]),
        "gap_decreasing": all(a["gap"] > b["gap"] for a, b in zip(rows, rows[1:], strict=False)),
        "machine": machine(),
    }


def closing_note(out: str) -> dict[str, Any]:
    """Issue 13's closing-note measurement: L-RN1 on digits, width 32, 30 per class,
    lam = 0.005, seed 0, all defaults; fresh runs at L = 2, 4, 8, 16, 32 and the continuation
    chain from L = 2 (``fresh=False``); written to ``out`` as JSON."""
    import json

    import torch

    from gufm.deep.data import load_dataset
    from gufm.deep.pipeline import continuation_chain, train_and_compare

    torch.set_num_threads(1)
    ds = load_dataset("digits", n_per_class=30, seed=0)
    res: dict[str, Any] = {"fresh": [], "chain": []}
    for L in (2, 4, 8, 16, 32):
        res["fresh"].append(dict(train_and_compare("rn1", L, 32, ds, None, 1000, 0.005, 0.005,
                                                   0), depth=L))
    res["chain"] = continuation_chain("rn1", [2, 4, 8, 16, 32], 32, ds, None, 1000, 0.005,
                                      0.005, 0, fresh=False)
    Path(out).write_text(json.dumps(res, indent=1) + "\n")
    return res


def main(argv: list[str] | None = None) -> int:
    import sys

    from benchmarks._common import write_json

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "closing":
        res = closing_note(argv[1] if len(argv) > 1 else "closing_note.json")
        for r in res["fresh"] + res["chain"]:
            print(r["depth"], r.get("kind", "fresh"), f"gap {r['gap']:.5f}",
                  f"converged {r['converged']}", r["stop_reason"])
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depths", type=int, nargs="+", default=[2, 5, 13, 34])
    p.add_argument("--arch", default="rn1")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--n-per-class", type=int, default=50)
    p.add_argument("--epochs", type=int, default=2000)
    p.add_argument("--polish-steps", type=int, default=1000)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--lam", type=float, default=0.005)
    p.add_argument("--lr", type=float, default=0.005)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--loss", default="ce")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    res = run(a.depths, arch=a.arch, dataset=a.dataset, n_per_class=a.n_per_class,
              epochs=a.epochs, polish_steps=a.polish_steps, width=a.width, lam=a.lam, lr=a.lr,
              seed=a.seed, loss=a.loss, jobs=a.jobs, device=a.device)
    print(markdown(res["rows"]))
    print(f"\nlog-log slope vs L: gap {res['slope_gap']:.3f}, NC1 {res['slope_nc1']:.3f}; "
          f"gap decreasing: {res['gap_decreasing']}; wall {res['wall_seconds']:.0f} s")
    write_json(res, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
