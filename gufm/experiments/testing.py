"""Test doubles for the sweep machinery (not used by any real run).

:func:`toy_run` has the signature of :func:`gufm.deep.pipeline.train_and_compare` and returns
metrics that follow known power laws in the depth, instantly; it lives in the package (not in
``tests/``) because worker processes (``jobs > 1``, Dask) must be able to import it by name.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: exponents of :func:`toy_run`'s power laws ``metric = c * L**p`` (known slopes)
TOY_SLOPES = {"gap": -1.0, "nc1": -0.5, "nc2": -0.3, "nc3": -0.4, "gufm_distance": -0.3}


def toy_run(arch: str, depth: int, width: int, dataset: Any, n_per_class: int | None,
            epochs: int, lam: float, lr: float, seed: int, loss: str = "ce",
            device: str = "cpu", noise: float = 0.1, **kw: Any) -> dict[str, float]:
    """A stand-in for :func:`gufm.deep.pipeline.train_and_compare` with known depth slopes.

    No training: returns the keys of ``train_and_compare`` with ``metric = c * L**p *
    f_seed`` (``p`` from :data:`TOY_SLOPES`, ``f_seed = exp(noise * z)`` with ``z`` a
    standard normal drawn from the seed, the same at every depth), ``gufm_optimum = 0.06``,
    ``e2e_objective = gufm_optimum + gap``, ``head_objective = gufm_optimum + gap / 2`` (so
    ``head_gap = body_penalty = gap / 2``) and ``converged = True``.
    For testing the sweep machinery and the report quickly; deterministic and picklable.

    Parameters
    ----------
    arch, depth, width, dataset, n_per_class, epochs, lam, lr, seed, loss, device, **kw
        As :func:`gufm.deep.pipeline.train_and_compare` (only ``depth`` and ``seed`` matter).
    noise : float
        Standard deviation of the per-seed log-factor.

    Returns
    -------
    dict of str to float

    Examples
    --------
    >>> r = toy_run("rn1", 4, 8, "digits", 10, 1, 0.005, 0.005, seed=0, noise=0.0)
    >>> r["gap"], r["nc1"], round(r["e2e_objective"] - r["gufm_optimum"], 12)
    (0.0125, 0.25, 0.0125)
    """
    z = float(np.random.default_rng([int(seed), 12345]).standard_normal())
    f = math.exp(noise * z)
    scale = {"gap": 0.05, "nc1": 0.5, "nc2": 0.3, "nc3": 0.1, "gufm_distance": 0.2}
    out = {k: scale[k] * float(depth) ** p * f for k, p in TOY_SLOPES.items()}
    opt = 0.06
    return {"e2e_objective": opt + out["gap"], "gufm_optimum": opt, "gap": out["gap"],
            "head_objective": opt + out["gap"] / 2, "head_gap": out["gap"] / 2,
            "body_penalty": out["gap"] / 2, "nc1": out["nc1"], "nc2": out["nc2"],
            "nc3": out["nc3"], "gufm_distance": out["gufm_distance"], "train_accuracy": 1.0,
            "grad_norm": 1e-6, "converged": True, "seconds": 0.0}
