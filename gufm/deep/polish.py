r"""A float64 full-batch L-BFGS polish that never goes up and says whether it converged.

The polish minimises the reduced objective :math:`\mathcal L^\star` (:mod:`gufm.deep.invariance`:
the penalty of every scale-invariant group left out) with :class:`torch.optim.LBFGS` and its
strong-Wolfe line search, in rounds of ``window`` iterations.  After each round:

* the lowest objective seen and its parameters are kept; the returned parameters are those
  (so the result is **never above the starting objective**, whatever the line search did);
* **converged** when the reduced gradient norm (:func:`gufm.deep.invariance.gradient_norms`'
  ``grad_norm``) is at most ``gtol``;
* a round that lowers the objective by at most ``ftol * max(1, |f|)`` is a stall: the
  quasi-Newton memory is dropped (a stale curvature pair can block the line search), the
  parameters go back to the best seen, the invariant groups to their representative (an exact
  move), and the polish restarts; after ``restarts + 1`` consecutive stalls it stops with
  "no further decrease" and ``converged=False`` (at a large gradient this is typically a
  sample near the LayerNorm singularity, :mod:`gufm.deep.conditioning`, where the curvature
  diverges);
* a non-finite objective restores the best parameters and stops.

Why L-BFGS.  Measured on L-RN1 (digits, width 32, N = 300): once the embedding's scale is
reduced, L-BFGS reaches its plateau within a few hundred iterations at L = 2 and ~1500 at
L = 8; the plateau is a sample near the LayerNorm singularity, with a curvature of 6e6 to 2e8
along a gradient of 1e-3, where the line search finds no decrease (docs/training.md, 3-4).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from gufm.deep.invariance import normalize_groups, reduced_grad_sq, reference_norm
from gufm.deep.objective import full_objective

#: default convergence threshold on the reduced gradient norm
GTOL = 1e-4


@dataclass
class PolishResult:
    """Outcome of :func:`polish`.

    Attributes
    ----------
    iterations : int
        L-BFGS iterations (not function evaluations).
    start_objective, objective : float
        Reduced objective :math:`\\mathcal L^\\star` before and after (``objective <=
        start_objective``).
    grad_norm : float
        Reduced gradient norm at the returned parameters.
    converged : bool
        ``grad_norm <= gtol``.
    stop_reason : str
    restarts : int
        Memory restarts after stalls.

    Examples
    --------
    >>> PolishResult(3, 1.0, 0.5, 1e-5, True, "converged", 0).converged
    True
    """

    iterations: int
    start_objective: float
    objective: float
    grad_norm: float
    converged: bool
    stop_reason: str
    restarts: int


def polish(model: nn.Module, X: Tensor, y: Tensor, *, lam: float, loss: str = "ce",
           groups: list[list[nn.Parameter]] | None = None, max_iter: int = 1000,
           gtol: float = GTOL, ftol: float = 1e-13, window: int = 50, restarts: int = 3,
           history_size: int = 100, chunk_size: int | None = None,
           record: Callable[[dict[str, Any]], None] | None = None,
           progress: bool = False) -> PolishResult:
    r"""Polish ``model`` in place (converted to float64) on :math:`\mathcal L^\star`.

    Parameters
    ----------
    model : nn.Module
    X, y : Tensor
        Full data set.
    lam : float
    loss : {"ce", "mse"}
    groups : list of list of Parameter, optional
        Scale-invariant groups of ``model`` (:func:`gufm.deep.invariance.invariant_groups`);
        their penalty is left out and they start at their representative.
    max_iter : int
        Maximal L-BFGS iterations.
    gtol : float
        Convergence threshold on the reduced gradient norm.
    ftol : float
        Relative decrease per round below which a round stalls.
    window : int
        Iterations per round.
    restarts : int
        Consecutive stalled rounds (each followed by a memory restart) before giving up.
    history_size : int
        L-BFGS memory.
    chunk_size : int, optional
        Evaluate in chunks of this many samples.
    record : callable, optional
        Called with ``{"phase": "lbfgs", "step", "objective", "grad_norm"}`` after each round.
    progress : bool
        tqdm bar on stderr.

    Returns
    -------
    PolishResult

    Examples
    --------
    >>> import torch
    >>> from gufm.deep.nets import make_model
    >>> m = make_model("rn1", 1, 6, (1, 2, 2), 2, seed=0)
    >>> X = torch.randn(6, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    >>> y = torch.tensor([0, 1] * 3)
    >>> r = polish(m, X, y, lam=0.01, max_iter=30)
    >>> r.objective <= r.start_objective, r.iterations <= 30
    (True, True)
    """
    groups = groups or []
    model.double()
    Xd = X.double() if X.is_floating_point() else X
    params = [p for p in model.parameters() if p.requires_grad]
    exclude = frozenset(id(p) for g in groups for p in g)
    ref = reference_norm(model)
    normalize_groups(groups, ref)
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=window, max_eval=int(window * 1.5),
                            history_size=history_size, tolerance_grad=1e-300,
                            tolerance_change=1e-300, line_search_fn="strong_wolfe")
    last: dict[str, float] = {}

    def closure() -> Tensor:
        opt.zero_grad(set_to_none=False)
        out = full_objective(model, Xd, y, lam=lam, loss=loss, backward=True,
                             chunk_size=chunk_size, exclude=exclude)
        last.update(out)
        return torch.tensor(out["objective"], dtype=torch.float64)

    def evaluate() -> tuple[float, float]:
        closure()
        r, i = reduced_grad_sq(model, groups)
        return last["objective"], math.sqrt(r + i)

    def snapshot() -> list[Tensor]:
        return [p.detach().clone() for p in params]

    f0, g = evaluate()
    best_f, best = f0, snapshot()
    if record is not None:
        record({"phase": "lbfgs", "step": 0, "objective": f0, "grad_norm": g})
    it, used, stalls, reason = 0, 0, 0, f"max iterations ({max_iter})"
    bar = None
    if progress and max_iter > 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_iter, desc="polish", leave=False)
    f = f0
    while True:
        if g <= gtol:
            reason = f"converged: grad norm {g:.3g} <= gtol {gtol:.3g}"
            break
        if it >= max_iter:
            break
        chunk = min(window, max_iter - it)
        for grp in opt.param_groups:
            grp["max_iter"] = chunk
            grp["max_eval"] = int(chunk * 1.5) + 1
        before = f
        n0 = int(opt.state[params[0]].get("n_iter", 0))
        try:
            opt.step(closure)
            failed = ""
        except (IndexError, RuntimeError, ValueError) as exc:  # torch's line search on NaN
            failed = f"{type(exc).__name__}: {exc}"
        done = int(opt.state[params[0]].get("n_iter", 0)) - n0
        it += max(done, 0)
        f, g = evaluate()  # at the current point (a step may end inside its line search)
        if failed:
            f = math.nan
        if record is not None:
            record({"phase": "lbfgs", "step": it, "objective": f, "grad_norm": g})
        if bar is not None:
            bar.update(max(done, 0))
            bar.set_postfix(obj=f"{f:.10g}", grad=f"{g:.2g}")
        if not math.isfinite(f):
            reason = ("non-finite objective" + (f" ({failed[:80]})" if failed else "")
                      + "; best parameters restored")
            break
        if f < best_f:
            best_f, best = f, snapshot()
        if done <= 0 or before - f <= ftol * max(1.0, abs(before)):
            if stalls >= restarts:
                reason = (f"no further decrease in {stalls + 1} consecutive rounds "
                          f"(grad norm {g:.3g} > gtol {gtol:.3g})")
                break
            stalls += 1
            used += 1
            opt.state.clear()
            with torch.no_grad():
                for p, b in zip(params, best, strict=True):
                    p.copy_(b)
            normalize_groups(groups, ref)
            f, g = evaluate()
        else:
            stalls = 0
    if bar is not None:
        bar.close()
    if not (math.isfinite(f) and f <= best_f):
        with torch.no_grad():
            for p, b in zip(params, best, strict=True):
                p.copy_(b)
        f, g = evaluate()
    opt.zero_grad(set_to_none=True)
    model.zero_grad(set_to_none=True)
    return PolishResult(iterations=it, start_objective=f0, objective=f, grad_norm=g,
                        converged=g <= gtol, stop_reason=reason, restarts=used)
