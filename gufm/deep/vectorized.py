r"""Several seeds of one network shape trained as one vectorised model (``torch.func``).

Runs of a sweep that differ only in the seed have parameters of identical shapes.  On a GPU a
single small network leaves the device mostly idle, so :func:`train_and_compare_seeds` stacks
the S models' parameters (:func:`torch.func.stack_module_state`), evaluates all of them with
one :func:`torch.func.vmap` of :func:`torch.func.functional_call`, and runs the **Adam phase**
of :func:`gufm.training.train` on the stacked tensors: the objective is the sum of the S
per-seed objectives, so every seed's gradient is its own, and Adam is element-wise, so one Adam
on the stacks is S independent Adams (same learning-rate schedule,
:func:`gufm.training.lr_factor`).  The models are then unstacked, and each gets the library's
float64 L-BFGS polish (:func:`gufm.training.train` with ``epochs=0``) and
:func:`gufm.compare.compare`: the returned dictionaries have the keys of
:func:`gufm.deep.pipeline.train_and_compare`.

Differences from S calls of :func:`~gufm.deep.pipeline.train_and_compare`: rounding only (batched
matrix products), full-batch training only, and the scale-invariant embedding of a model with
scale-invariant groups (:meth:`gufm.deep.nets.GUFMNet.scale_invariant_groups`) are handled as in
``train(scale_invariant="reduce")`` (left out of the Adam penalty).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from gufm.deep.invariance import scale_invariant_params
from gufm.deep.objective import data_loss
from gufm.deep.training import lr_factor


def stacked_adam(models: Sequence[nn.Module], X: torch.Tensor, y: torch.Tensor, *, lam: float,
                 loss: str = "ce", lr: float = 5e-3, epochs: int = 1000,
                 schedule: str = "cosine", warmup: float = 0.05, final_lr: float = 0.0
                 ) -> list[float]:
    r"""Full-batch Adam on S models of one shape at once, in place.

    Minimises :math:`\sum_s \big[\frac1N\sum_i\ell(f_{\theta_s}(x_i), y_i)
    + \frac\lambda2\sum_j\lVert\theta_{s,j}\rVert^2\big]` (scale-invariant parameters of
    each model excluded from the penalty, as :func:`gufm.training.train` does), which is S
    independent copies of the Adam phase of :func:`gufm.training.train`.

    Parameters
    ----------
    models : sequence of nn.Module
        Same architecture and parameter shapes; updated in place.
    X, y : Tensor
        The data (on the models' device).
    lam, loss, lr, epochs, schedule, warmup, final_lr
        As :func:`gufm.training.train`.

    Returns
    -------
    list of float
        Each seed's last full-batch objective (before the final step).

    Examples
    --------
    >>> import torch
    >>> from gufm.deep.nets import make_model
    >>> X = torch.randn(6, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    >>> ms = [make_model("rn1", 1, 6, (1, 2, 2), 2, seed=s) for s in (0, 1)]
    >>> len(stacked_adam(ms, X, torch.tensor([0, 1] * 3), lam=0.01, epochs=3))
    2
    """
    if not models:
        raise ValueError("models must not be empty")
    if epochs < 0:
        raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
    params, buffers = stack_module_state(list(models))
    params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    inv_ids = {id(p) for p in scale_invariant_params(models[0], "reduce")}
    penalised = [k for k, p in models[0].named_parameters() if id(p) not in inv_ids]
    base = copy.deepcopy(models[0]).to("meta")

    def objective(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = functional_call(base, (p, b), (X,))
        pen = 0.5 * lam * sum((p[k] * p[k]).sum() for k in penalised)
        return data_loss(logits, y, loss) + pen

    per_seed = vmap(objective, in_dims=(0, 0))
    opt = torch.optim.Adam(list(params.values()), lr=lr)
    last = torch.zeros(len(models))
    for step in range(int(epochs)):
        cur = lr * lr_factor(step, int(epochs), schedule, warmup, final_lr)
        for g in opt.param_groups:
            g["lr"] = cur
        opt.zero_grad(set_to_none=True)
        objs = per_seed(params, buffers)
        objs.sum().backward()
        opt.step()
        last = objs.detach()
    with torch.no_grad():
        for s, m in enumerate(models):
            for k, p in m.named_parameters():
                p.copy_(params[k][s])
    return [float(v) for v in last.cpu()]
