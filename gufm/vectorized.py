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
:func:`gufm.compare.train_and_compare`.

Differences from S calls of :func:`~gufm.compare.train_and_compare`: rounding only (batched
matrix products), full-batch training only, and the scale-invariant embedding of a model with
``ln_eps=0`` is handled as in ``train(scale_invariant="reduce")`` (left out of the Adam
penalty).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


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
    """
    from torch.func import functional_call, stack_module_state, vmap

    from .training import data_loss, lr_factor, scale_invariant_params

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


def train_and_compare_seeds(arch: str, depth: int, width: int, dataset: Any,
                            n_per_class: int | None, epochs: int, lam: float, lr: float,
                            seeds: Sequence[int], loss: str = "ce", device: str = "cpu",
                            **kw: Any) -> list[dict[str, Any]]:
    """:func:`gufm.compare.train_and_compare` for several seeds, the Adam phase vectorised.

    Parameters
    ----------
    arch, depth, width, dataset, n_per_class, epochs, lam, lr, loss, device
        As :func:`gufm.compare.train_and_compare`.
    seeds : sequence of int
        One run per seed (initialisation seeds).
    **kw
        Data options (``root``/``data_root``, ``normalize``, ``data_seed``, ``vocab_size``,
        ``seq_len``, ``num_classes``), model options (``ln_eps``, ``bias``, ``patch_size``,
        ``mlp_hidden``) and the polish options of :func:`gufm.training.train`
        (``polish_steps``, ``polish_tol``, ...).  ``batch_size`` must be ``None``.

    Returns
    -------
    list of dict
        One dictionary per seed with the keys of
        :data:`gufm.compare.TRAIN_AND_COMPARE_KEYS` (``seconds``: this call's wall time
        divided by the number of seeds).
    """
    from .compare import _DATA_KW, _MODEL_KW, TRAIN_AND_COMPARE_KEYS, compare
    from .data import load_dataset
    from .nets import model_for
    from .training import train

    t0 = time.perf_counter()
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds must not be empty")
    if kw.get("batch_size") is not None:
        raise ValueError("batch_size must be None (the vectorised trainer is full batch)")
    kw.pop("batch_size", None)
    data_kw = {k: kw.pop(k) for k in _DATA_KW if k in kw}
    model_kw = {k: kw.pop(k) for k in _MODEL_KW if k in kw}
    if isinstance(dataset, str):
        root = data_kw.pop("root", None) or data_kw.pop("data_root", None)
        data_kw.pop("data_root", None)
        ds = load_dataset(dataset, root=root, n_per_class=n_per_class,
                          seed=int(data_kw.pop("data_seed", 0)), **data_kw)
    else:
        ds = dataset
    dev = torch.device(device)
    models = [model_for(ds, arch, depth, width, seed=s, **model_kw).to(dev) for s in seeds]
    X = ds.X.to(dev)
    y = ds.y.to(device=dev, dtype=torch.long)
    if X.is_floating_point():
        X = X.to(next(models[0].parameters()).dtype)
    stacked_adam(models, X, y, lam=lam, loss=loss, lr=lr, epochs=int(epochs))
    kw.setdefault("progress", False)
    out = []
    for s, m in zip(seeds, models, strict=True):
        train(m, ds, lam=lam, loss=loss, lr=lr, epochs=0, seed=s, device=device, **kw)
        res = compare(m, ds, lam=lam, loss=loss)
        out.append({k: getattr(res, k) for k in TRAIN_AND_COMPARE_KEYS if k != "seconds"})
    sec = (time.perf_counter() - t0) / len(seeds)
    return [{k: (d[k] if k != "seconds" else sec) for k in TRAIN_AND_COMPARE_KEYS} for d in out]
