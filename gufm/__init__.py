"""gufm: generalized unconstrained features models, certified global optima and neural collapse.

Entry points::

    prob = gufm.GUFM(counts=[50, 30, 20], dim=16, loss="ce", lam_W=5e-3)
    res = gufm.solve(prob)                 # SolveResult: value, lower_bound, certified, W, ...
    gufm.objective(prob, W, b, H)          # F at per-sample features H (d, N), numpy or torch
    gufm.group_objective(prob, W, b, Hg)   # F at one feature per group Hg (d, G)
    gufm.metrics.collapse_report(H, y, W)  # NC1/NC2/NC3 variants
    gufm.compare(model, dataset, lam=...)  # a trained network against the GUFM optimum

The package is layered; each folder imports only from the folders below it::

    cli  ->  experiments  ->  deep  ->  collapse  ->  solvers  ->  model  ->  backend, _util
"""

from importlib import import_module
from typing import Any

from gufm.model.certificate import Certificate, certify
from gufm.model.objective import group_objective, objective
from gufm.model.problem import GUFM
from gufm.solvers import METHODS, solve
from gufm.solvers.result import SolveResult

__version__ = "0.1.0"

_LAZY = {
    "metrics": ("gufm.metrics", None),
    "collapse": ("gufm.collapse", None),
    "nets": ("gufm.nets", None),
    "data": ("gufm.data", None),
    "deep": ("gufm.deep", None),
    "experiments": ("gufm.experiments", None),
    "compare": ("gufm.deep.reduction", "compare"),
    "collapse_report": ("gufm.collapse.metrics", "collapse_report"),
    "CollapseAccumulator": ("gufm.collapse.streaming", "CollapseAccumulator"),
}


def __getattr__(name: str) -> Any:  # lazy: keep `import gufm` light (no torch.nn, no pandas)
    if name in _LAZY:
        mod, attr = _LAZY[name]
        m = import_module(mod)
        return m if attr is None else getattr(m, attr)
    raise AttributeError(f"module 'gufm' has no attribute {name!r}")


__all__ = [
    "GUFM", "Certificate", "SolveResult", "METHODS", "certify", "group_objective", "objective", "solve",
    "__version__", *_LAZY,
]
