"""Accuracy of the collapse metrics: agreement with the peers' formulas and the CDNV at scale.

Two tables, written as JSON::

    python -m benchmarks.metrics_accuracy [--out benchmarks/results/metrics_accuracy.json]

- ``agreement``: the largest relative difference between each gufm variant and the formula of
  rhubarbwu/neural-collapse or tding1/Neural-Collapse, written independently in
  ``tests/collapse/test_crosscheck.py`` (loaded from there, not copied), over its data sets.
- ``cdnv``: the relative error of ``nc1_cdnv`` against a pairwise float64 evaluation on the same
  (rounded) features, at feature scales 1 to 1e8, float64 and float32, numpy and torch.
"""

from __future__ import annotations

import argparse
import importlib.util
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks._common import machine, write_json
from gufm.collapse.variants import nc1_cdnv

CROSSCHECK = Path(__file__).resolve().parents[1] / "tests" / "collapse" / "test_crosscheck.py"


def agreement() -> dict[str, float]:
    """The cross-check table of ``tests/collapse/test_crosscheck.py`` (peer formula -> rel. diff)."""
    spec = importlib.util.spec_from_file_location("crosscheck", CROSSCHECK)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return {k: float(v) for k, v in mod.agreement_table().items()}


def _cdnv_reference(H: np.ndarray, y: np.ndarray, K: int) -> float:
    """Mean over class pairs of (var_a + var_b) / (2 ||mu_a - mu_b||^2), in float64, pair by pair."""
    H = H.astype(np.float64)
    stats = []
    for k in range(K):
        Hk = H[:, y == k]
        m = Hk.mean(axis=1)
        stats.append((m, float(((Hk - m[:, None]) ** 2).sum(axis=0).mean())))
    ratios = [(va + vb) / (2.0 * float(((ma - mb) ** 2).sum()))
              for (ma, va), (mb, vb) in combinations(stats, 2)]
    return float(np.mean(ratios))


def cdnv_table(K: int = 5, d: int = 16, N: int = 2000) -> list[dict[str, Any]]:
    """Relative error of ``nc1_cdnv`` at scales 1, 1e4, 1e6, 1e8 (float64/float32, numpy/torch)."""
    rng = np.random.default_rng(0)
    y = np.concatenate([np.arange(K), rng.integers(0, K, N - K)])
    base = rng.standard_normal((d, N)) + 3 * rng.standard_normal((d, K))[:, y]
    rows = []
    for scale in (1.0, 1e4, 1e6, 1e8):
        for dtype in (np.float64, np.float32):
            H = (base * scale).astype(dtype)
            want = _cdnv_reference(H, y, K)
            for name, x in (("numpy", H), ("torch", torch.tensor(H))):
                got = float(nc1_cdnv(x, y))
                rows.append({"scale": scale, "dtype": np.dtype(dtype).name, "backend": name,
                             "relative_error": abs(got - want) / want})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/metrics_accuracy.json")
    args = p.parse_args(argv)
    agree, cdnv = agreement(), cdnv_table()
    for k, v in agree.items():
        print(f"{k:30s} {v:.1e}")
    for r in cdnv:
        print(f"cdnv scale {r['scale']:.0e} {r['dtype']:8s} {r['backend']:6s} {r['relative_error']:.1e}")
    write_json({"machine": machine(), "agreement": agree, "cdnv": cdnv}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
