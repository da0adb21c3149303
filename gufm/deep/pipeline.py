"""Train a network and compare it with the GUFM in one call (the unit of a depth sweep)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from gufm.deep.data import load_dataset
from gufm.deep.nets import model_for
from gufm.deep.reduction import TRAIN_AND_COMPARE_KEYS, compare
from gufm.deep.training import train
from gufm.deep.vectorized import stacked_adam

DATA_OPTIONS = ("root", "data_root", "normalize", "split", "data_seed", "vocab_size", "seq_len",
            "num_classes")
MODEL_OPTIONS = ("ln_eps", "bias", "patch_size", "mlp_hidden")


def train_and_compare(arch: str, depth: int, width: int, dataset: Any, n_per_class: int | None,
                      epochs: int, lam: float, lr: float, seed: int, loss: str = "ce",
                      device: str = "cpu", **kw: Any) -> dict[str, Any]:
    r"""Build, train (:func:`gufm.training.train`) and :func:`compare` one network.

    Parameters
    ----------
    arch, depth, width
        See :func:`gufm.nets.make_model`.
    dataset : str or gufm.data.Dataset
        A name for :func:`gufm.data.load_dataset` (class-balanced subset of ``n_per_class``
        per class, selected with ``data_seed``, default 0) or a loaded data set (then
        ``n_per_class`` is ignored).
    n_per_class : int or None
    epochs, lam, lr : training hyper-parameters (:math:`\lambda` on every parameter).
    seed : int
        Seeds the initialisation and the mini-batch order.
    loss : {"ce", "mse"}
    device : str
    **kw
        Data options (``root``/``data_root``, ``normalize``, ``data_seed``, ``vocab_size``,
        ``seq_len``, ``num_classes``), model options (``ln_eps``, ``bias``, ``patch_size``,
        ``mlp_hidden``) and any :func:`gufm.training.train` option (``polish_steps``,
        ``batch_size``, ``checkpoint``, ``progress`` (default False), ...).

    Returns
    -------
    dict
        Exactly the keys :data:`TRAIN_AND_COMPARE_KEYS`: ``e2e_objective, gufm_optimum, gap,
        head_objective, nc1, nc2, nc3, gufm_distance, train_accuracy, grad_norm, seconds``
        (``nc2`` is ``nc2_classifier``; ``seconds`` covers loading, training and comparing).
    """
    t0 = time.perf_counter()
    data_kw = {k: kw.pop(k) for k in DATA_OPTIONS if k in kw}
    model_kw = {k: kw.pop(k) for k in MODEL_OPTIONS if k in kw}
    if isinstance(dataset, str):
        root = data_kw.pop("root", None) or data_kw.pop("data_root", None)
        data_kw.pop("data_root", None)
        ds = load_dataset(dataset, root=root, n_per_class=n_per_class,
                          seed=int(data_kw.pop("data_seed", 0)), **data_kw)
    else:
        if data_kw:
            raise ValueError(f"data options {sorted(data_kw)} need a dataset name, not a Dataset")
        ds = dataset
    model = model_for(ds, arch, depth, width, seed=int(seed), **model_kw)
    kw.setdefault("progress", False)
    train(model, ds, lam=lam, loss=loss, lr=lr, epochs=epochs, seed=int(seed), device=device,
          **kw)
    res = compare(model, ds, lam=lam, loss=loss)
    out = {k: getattr(res, k) for k in TRAIN_AND_COMPARE_KEYS if k != "seconds"}
    out["seconds"] = time.perf_counter() - t0
    return {k: out[k] for k in TRAIN_AND_COMPARE_KEYS}


def train_and_compare_seeds(arch: str, depth: int, width: int, dataset: Any,
                            n_per_class: int | None, epochs: int, lam: float, lr: float,
                            seeds: Sequence[int], loss: str = "ce", device: str = "cpu",
                            **kw: Any) -> list[dict[str, Any]]:
    """:func:`gufm.deep.pipeline.train_and_compare` for several seeds, the Adam phase vectorised.

    Parameters
    ----------
    arch, depth, width, dataset, n_per_class, epochs, lam, lr, loss, device
        As :func:`gufm.deep.pipeline.train_and_compare`.
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
        :data:`gufm.deep.reduction.TRAIN_AND_COMPARE_KEYS` (``seconds``: this call's wall time
        divided by the number of seeds).
    """
    t0 = time.perf_counter()
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds must not be empty")
    if kw.get("batch_size") is not None:
        raise ValueError("batch_size must be None (the vectorised trainer is full batch)")
    kw.pop("batch_size", None)
    data_kw = {k: kw.pop(k) for k in DATA_OPTIONS if k in kw}
    model_kw = {k: kw.pop(k) for k in MODEL_OPTIONS if k in kw}
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
