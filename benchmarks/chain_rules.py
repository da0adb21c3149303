"""Which network a continuation chain deepens: the rules of
:func:`gufm.deep.pipeline.continuation_chain` (``continue_from``) on one row of ``study-deep``,
in the same run.

    python -m benchmarks.chain_rules [--rules network lower-split both] [--seeds 0 1 2]
                                     [--jobs 2] [--out FILE.json]

The row is L-RN2 / digits (lam/L) of the ``study-deep`` preset: width 64, 50 per class,
depths 2 to 34, lam = 0.005 / L, 300 Adam epochs + 300 L-BFGS iterations per network, the
continued runs the polish alone.  ``network`` (the baseline: deepen the best network only,
the rule before stop 23), ``lower-split`` (also deepen that run's network before its
singular-limit polish and continue the lower split: the default), ``both`` (continue both
splits, keep the lower) and, with ``--rules``, ``pre-limit`` (always carry the network before
the limit polish when there is one).  The first rule given is the baseline of the ratios.
For each rule and depth: the mean best gap (the lowest of fresh,
split and continued), the mean split-only gap, and the seconds; then each rule's best gap
over the baseline's.  One torch thread per process; chains run in ``--jobs`` processes.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

ROW = dict(arch="rn2", depths=[2, 3, 5, 8, 13, 21, 34], width=64, dataset="digits",
           n_per_class=50, epochs=300, lam=0.005, lr=0.005, lam_rule="inverse-depth",
           polish_steps=300, continue_epochs=0)


def one_chain(rule: str, seed: int, row: dict[str, Any] | None = None) -> dict[str, Any]:
    """One seed's chain under ``rule``: per depth the best, split and continued gaps."""
    import torch

    from gufm.deep.pipeline import continuation_chain

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    kw = dict(row or ROW)
    depths = list(kw["depths"])
    rows = continuation_chain(kw.pop("arch"), kw.pop("depths"), kw.pop("width"),
                              kw.pop("dataset"), kw.pop("n_per_class"), kw.pop("epochs"),
                              kw.pop("lam"), kw.pop("lr"), seed, continue_from=rule, **kw)
    out: dict[str, Any] = {"rule": rule, "seed": seed, "seconds": time.perf_counter() - t0,
                           "depths": {}}
    for L in depths:
        here = {r["kind"]: r for r in rows if r["depth"] == L}
        best = next(r for r in here.values() if r["best"])  # the chain's own upper bound
        out["depths"][str(L)] = {
            "best_gap": best["gap"], "converged": best["converged"],
            **{f"{k}_gap": here[k]["gap"] for k in here},
            "split_from": here.get("split", {}).get("split_from"),
            "continued_from": here.get("continued", {}).get("continued_from")}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from benchmarks._common import machine, write_json

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rules", nargs="+", default=["network", "lower-split", "both"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--small", action="store_true",
                    help="a tiny row (depths 1, 2, width 8, 2 per class, 3 + 3 iterations): "
                         "what the tests run")
    ap.add_argument("--out", default=None, help="write the JSON here")
    a = ap.parse_args(argv)
    row = dict(ROW, depths=[1, 2], width=8, n_per_class=2, epochs=3, polish_steps=3) \
        if a.small else dict(ROW)
    depths = row["depths"]
    jobs = [(r, s, row) for r in a.rules for s in a.seeds]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=a.jobs) as ex:
        chains = list(ex.map(one_chain, *zip(*jobs, strict=True)))
    summary: dict[str, Any] = {}
    for rule in a.rules:
        mine = [c for c in chains if c["rule"] == rule]
        summary[rule] = {
            "seconds": sum(c["seconds"] for c in mine),
            "best_gap": {L: float(np.mean([c["depths"][str(L)]["best_gap"] for c in mine]))
                         for L in depths},
            "split_gap": {L: float(np.mean([c["depths"][str(L)].get("split_gap", np.nan)
                                            for c in mine])) for L in depths[1:]}}
    base = a.rules[0]
    print(f"L-RN2 / digits (lam/L), seeds {a.seeds}: mean best gap (ratio to '{base}')")
    print("| rule | seconds | " + " | ".join(f"L={L}" for L in depths) + " |")
    print("|---|---|" + "---|" * len(depths))
    for rule in a.rules:
        b = summary[rule]["best_gap"]
        summary[rule]["ratio"] = {L: b[L] / summary[base]["best_gap"][L] for L in depths}
        print(f"| {rule} | {summary[rule]['seconds']:.0f} | " + " | ".join(
            f"{b[L]:.5f} ({summary[rule]['ratio'][L]:.2f})" for L in depths) + " |")
    print("mean split-only gap:")
    for rule in a.rules:
        print(f"  {rule}: " + ", ".join(f"L={L} {v:.4f}"
                                        for L, v in summary[rule]["split_gap"].items()))
    payload = {"benchmark": "chain-rules", "row": row, "seeds": a.seeds, "machine": machine(),
               "wall_seconds": time.perf_counter() - t0, "summary": summary, "chains": chains}
    write_json(payload, a.out)
    return payload


if __name__ == "__main__":
    main()
