"""The instances that used to hang, lose their certificate or certify too loosely, timed now.

Each instance ran past 90 s (or gave a negative or invalid bound) before the solver's stall
detection, relative gradient tolerance, capped SDP in ``auto`` and normalised-scale solve. This
script solves each once with ``gufm.solve`` (method ``auto`` unless noted) and writes JSON::

    python -m benchmarks.former_hangs [--out benchmarks/results/former_hangs.json] [--threads 1]

No baseline: the "before" side is the old code, which did not finish; the figures are the time,
value, bound and certificate of each solve.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

import gufm
from benchmarks._common import machine, write_json
from gufm._util import limit_threads


def instances() -> dict[str, tuple[gufm.GUFM, dict[str, Any]]]:
    """The former hangs (random ones rebuilt with ``default_rng(0)``) and the large-radius cases."""
    rng = np.random.default_rng(0)
    a = rng.integers(5, 15, size=36)
    b = [int(c) for c in rng.integers(1, 5, size=28)] + [1000]
    return {
        "ce_sphere_K36_d30": (gufm.GUFM(counts=a, dim=30, loss="ce", features="sphere", lam_W=.35,
                                        lam_b=.40, radius=.57), {}),
        "ce_layernorm_K29_d21_one_class_1000": (gufm.GUFM(counts=b, dim=21, loss="ce",
                                                          features="layernorm", lam_W=.83), {}),
        "counts_5_3_2_radius_1e6": (gufm.GUFM(counts=[5, 3, 2], dim=5, radius=1e6), {}),
        "balanced_ce_sphere_radius_1e4": (gufm.GUFM(counts=[5] * 10, dim=11, features="sphere",
                                                    radius=1e4), {}),
        "mse_sphere_radius_1e6": (gufm.GUFM(counts=[5, 3, 2], dim=5, loss="mse", features="sphere",
                                            radius=1e6), {}),
        "mse_sphere_radius_1e6_sdp": (gufm.GUFM(counts=[5, 3, 2], dim=5, loss="mse",
                                                features="sphere", radius=1e6), {"method": "sdp"}),
        # tiny optima, where an absolute tolerance used to certify points 4e-6 above the optimum
        "tiny_lam_W_1e-10_K5": (gufm.GUFM(counts=range(1, 16, 3), dim=6, lam_W=1e-10), {}),
        "tiny_lam_W_1e-10_K10": (gufm.GUFM(counts=range(1, 31, 3), dim=11, lam_W=1e-10), {}),
        "tiny_counts_5_3_lam_W_1e-9_auto": (gufm.GUFM(counts=[5, 3], dim=4, lam_W=1e-9), {}),
        "tiny_counts_5_3_lam_W_1e-9_sdp": (gufm.GUFM(counts=[5, 3], dim=4, lam_W=1e-9),
                                           {"method": "sdp"}),
    }


def run(threads: int | None = 1) -> dict[str, Any]:
    """Solve every instance once; returns ``{"machine": ..., "rows": [...]}``."""
    rows = []
    with limit_threads(threads):
        for name, (prob, kw) in instances().items():
            t0 = time.perf_counter()
            res = gufm.solve(prob, **kw)
            sec = time.perf_counter() - t0
            rows.append({"instance": name, "method": res.method, "seconds": sec,
                         "value": res.value, "lower_bound": res.lower_bound,
                         "relative_gap": res.gap / max(abs(res.value), 1e-300),
                         "certified": res.certified, "stop_reason": res.stop_reason})
            print(f"{name:40s} {sec:7.2f} s  value {res.value:.6g}  bound {res.lower_bound:.6g}  "
                  f"certified {res.certified}  ({res.method}: {res.stop_reason})", flush=True)
    return {"machine": machine(), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/former_hangs.json")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    write_json(run(args.threads), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
