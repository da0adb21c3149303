"""Training throughput of the paper's networks (issue 4).

    python -m benchmarks.bench_training [--quick] [--threads T] [--devices cpu cuda]
                                        [--out FILE.json]

Every architecture (L-RN1, L-RN2, L-T11, L-T12, pre-LN L-T11) at depth L = 8, width 64 on the
embedded 8x8 digits (50 per class, N = 500; transformers use 2x2 patches, 16 tokens) is timed in
the two phases of :func:`gufm.training.train`:

* ``adam``: a full-batch float32 Adam step on ``mean loss + lam/2 sum ||theta||^2``
  (forward, backward, update);
* ``lbfgs_eval``: one float64 full-batch objective-and-gradient evaluation (what each L-BFGS
  iteration of the polish costs, about 1.1 evaluations per iteration).

Throughput is samples per second (``N * steps / seconds``), best of ``repeats`` timed blocks
of ``steps`` steps after two warm-up steps (CPU: 10 steps, best of 2; CUDA: 50, best of 3;
``--quick``: 5, best of 1).  On CPU with ``torch.get_num_threads()`` threads (and also 1 thread when
that differs: small matrices often run faster single-threaded on a busy machine), and on CUDA
when available.  The JSON records the machine.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from benchmarks._common import machine, write_json
from gufm.deep.data import load_dataset
from gufm.deep.nets import model_for
from gufm.deep.training import data_loss, full_objective, param_penalty

ARCHS = ("rn1", "rn2", "t11", "t12", "preln-t11")
DEPTH, WIDTH, LAM = 8, 64, 0.005


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time_block(fn: Any, steps: int, repeats: int, device: torch.device) -> float:
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def bench_arch(arch: str, ds: Any, device: torch.device, steps: int, repeats: int
               ) -> dict[str, Any]:
    """Samples/s of one Adam step (float32) and one float64 objective+gradient evaluation."""
    N = ds.N
    model = model_for(ds, arch, DEPTH, WIDTH, seed=0).to(device)
    X, y = ds.X.to(device), ds.y.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def adam_step() -> None:
        opt.zero_grad(set_to_none=True)
        obj = data_loss(model(X), y, "ce") + param_penalty(model, LAM)
        obj.backward()
        opt.step()

    for _ in range(2):
        adam_step()
    t_adam = _time_block(adam_step, steps, repeats, device)

    m64 = model.double()
    X64 = X.double()

    def lbfgs_eval() -> None:
        m64.zero_grad(set_to_none=False)
        full_objective(m64, X64, y, lam=LAM, backward=True)

    for _ in range(2):
        lbfgs_eval()
    t_eval = _time_block(lbfgs_eval, steps, repeats, device)
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "arch": arch, "depth": DEPTH, "width": WIDTH, "N": N, "params": n_params,
        "adam_step_ms": 1e3 * t_adam / steps, "adam_samples_per_s": N * steps / t_adam,
        "lbfgs_eval_ms": 1e3 * t_eval / steps, "lbfgs_eval_samples_per_s": N * steps / t_eval,
    }


def run(quick: bool = False, threads: int | None = None,
        devices: tuple[str, ...] = ("cpu", "cuda")) -> dict[str, Any]:
    """Throughput of every architecture on every available device (see the module docstring).

    Parameters
    ----------
    quick : bool
        5 timed steps, best of 1.
    threads : int, optional
        CPU threads (default: torch's current setting; 1 thread is measured too).
    devices : tuple of str
        Any of ``"cpu"`` and ``"cuda"`` (CUDA is skipped when unavailable).
    """
    ds = load_dataset("digits", n_per_class=50, seed=0)
    n0 = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    configs: list[tuple[str, int | None]] = []
    if "cpu" in devices:
        configs.append(("cpu", torch.get_num_threads()))
        if torch.get_num_threads() != 1:
            configs.append(("cpu", 1))
    if "cuda" in devices and torch.cuda.is_available():
        configs.append(("cuda", None))
    rows = []
    try:
        for dev, nt in configs:
            if nt is not None:
                torch.set_num_threads(nt)
            steps, repeats = (5, 1) if quick else ((10, 2) if dev == "cpu" else (50, 3))
            for arch in ARCHS:
                r = bench_arch(arch, ds, torch.device(dev), steps, repeats)
                r.update(device=dev, threads=nt, steps=steps, repeats=repeats)
                rows.append(r)
                print(f"{dev:4s} threads={nt} {arch:10s} adam {r['adam_samples_per_s']:10.0f} "
                      f"samples/s ({r['adam_step_ms']:.1f} ms/step)   float64 eval "
                      f"{r['lbfgs_eval_samples_per_s']:10.0f} samples/s", flush=True)
    finally:
        torch.set_num_threads(n0)
    return {"benchmark": "training_throughput", "quick": quick,
            "dataset": "digits (50/class, N=500)", "lam": LAM, "machine": machine(),
            "results": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--devices", nargs="+", default=["cpu", "cuda"], choices=["cpu", "cuda"])
    p.add_argument("--out", default=None, help="write the JSON here")
    a = p.parse_args(argv)
    write_json(run(quick=a.quick, threads=a.threads, devices=tuple(a.devices)), a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
