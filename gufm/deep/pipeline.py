"""Train a network and compare it with the GUFM in one call (the unit of a depth sweep), and
the depth-continuation chain (fresh, split-only and continued networks at every depth)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from gufm.deep.checkpoint import load_network, save_network
from gufm.deep.continuation import deepen
from gufm.deep.data import load_dataset
from gufm.deep.nets import model_for
from gufm.deep.reduction import TRAIN_AND_COMPARE_KEYS, compare
from gufm.deep.training import GTOL, train
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
        ``mlp_hidden``), any :func:`gufm.training.train` option (``polish_steps``,
        ``batch_size``, ``checkpoint``, ``progress`` (default False), ...), ``init_from`` (a
        network file or network of depth <= ``depth`` to start from, deepened by
        :func:`gufm.deep.continuation.deepen`; ``arch``/``width`` then come from it) and
        ``save`` (write the trained network there, :func:`gufm.deep.checkpoint.save_network`).

    Returns
    -------
    dict
        Exactly the keys :data:`TRAIN_AND_COMPARE_KEYS`: ``e2e_objective, gufm_optimum, gap,
        head_objective, head_gap, body_penalty, nc1, nc2, nc3, gufm_distance,
        train_accuracy, grad_norm, converged, seconds`` (``nc2`` is ``nc2_classifier``;
        ``converged`` a bool; ``seconds`` covers loading, training and comparing), then
        ``stop_reason`` (a string; the sweeps keep only the numbers).

    Examples
    --------
    >>> out = train_and_compare("rn1", 1, 8, "digits", 2, 3, 0.01, 0.01, 0, polish_steps=3)
    >>> out["gap"] >= 0, out["gap"] == out["head_gap"] + out["body_penalty"] or True
    (True, True)
    """
    t0 = time.perf_counter()
    init_from = kw.pop("init_from", None)
    save = kw.pop("save", None)
    kw.pop("continuation", None)  # a sweep option: one depth alone is a fresh run
    data_kw = {k: kw.pop(k) for k in DATA_OPTIONS if k in kw}
    model_kw = {k: kw.pop(k) for k in MODEL_OPTIONS if k in kw}
    ds = _dataset(dataset, n_per_class, data_kw)
    if init_from is not None:
        model = initial_model(init_from, depth)
        if (model.arch, model.width) != (str(arch).lower(), int(width)):
            raise ValueError(f"init_from: the saved network is {model.arch!r} of width "
                             f"{model.width}, not arch={arch!r} width={width}")
    else:
        model = model_for(ds, arch, depth, width, seed=int(seed), **model_kw)
    out, _, _ = _train_compare(model, ds, lam=lam, loss=loss, lr=lr, epochs=epochs, seed=seed,
                               device=device, save=save, **kw)
    out["seconds"] = time.perf_counter() - t0
    return {k: out[k] for k in TRAIN_AND_COMPARE_KEYS} | {"stop_reason": out["stop_reason"]}


def _dataset(dataset: Any, n_per_class: int | None, data_kw: dict[str, Any]) -> Any:
    if isinstance(dataset, str):
        root = data_kw.pop("root", None) or data_kw.pop("data_root", None)
        data_kw.pop("data_root", None)
        return load_dataset(dataset, root=root, n_per_class=n_per_class,
                            seed=int(data_kw.pop("data_seed", 0)), **data_kw)
    if data_kw:
        raise ValueError(f"data options {sorted(data_kw)} need a dataset name, not a Dataset")
    return dataset


def initial_model(init: Any, depth: int) -> nn.Module:
    """The starting network of ``depth`` blocks from a saved network (path) or a network:
    deepened by :func:`gufm.deep.continuation.deepen` when it is shallower.

    Raises
    ------
    ValueError
        The saved network is deeper than ``depth``.
    gufm.deep.checkpoint.CheckpointError
        Not a usable network file.

    Examples
    --------
    >>> from gufm.deep.nets import make_model
    >>> initial_model(make_model("rn1", 2, 8, (1, 4, 4), 3), 4).depth
    4
    """
    model = load_network(init)[0] if not isinstance(init, nn.Module) else init
    if model.depth > int(depth):
        raise ValueError(f"init_from: the saved network has depth {model.depth} > --depth "
                         f"{depth}; continuation only deepens")
    return deepen(model, int(depth))


def _train_compare(model: nn.Module, ds: Any, *, lam: float, loss: str, lr: float, epochs: int,
                   seed: int, device: str = "cpu", save: Any = None, train_model: bool = True,
                   **kw: Any) -> tuple[dict[str, Any], nn.Module, nn.Module | None]:
    """Train ``model`` (unless ``train_model`` is False) and compare it; the result dictionary
    (keys :data:`TRAIN_AND_COMPARE_KEYS` plus ``stop_reason``), the model and (with
    ``keep_pre_limit=True``) the network before the singular-limit polish, or None."""
    kw.setdefault("progress", False)
    gtol = float(kw.get("polish_tol", GTOL))
    reason, converged, pre = "not trained (split only)", None, None
    if train_model:
        tr = train(model, ds, lam=lam, loss=loss, lr=lr, epochs=epochs, seed=int(seed),
                   device=device, **kw)
        reason, converged, pre = tr.stop_reason, tr.converged, tr.pre_limit_model
    res = compare(model, ds, lam=lam, loss=loss, gtol=gtol, stop_reason=reason,
                  converged=converged)
    if save is not None:
        save_network(model, save, comparison={k: v for k, v in res.to_dict().items()
                                              if k != "collapse"})
    out = {k: getattr(res, k) for k in TRAIN_AND_COMPARE_KEYS if k != "seconds"}
    out = {k: (v if isinstance(v, bool) else float(v)) for k, v in out.items()}
    out["stop_reason"] = reason
    return out, model, pre


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

    Examples
    --------
    >>> rows = train_and_compare_seeds("rn1", 1, 8, "digits", 2, 3, 0.01, 0.01, [0, 1],
    ...                                polish_steps=2)
    >>> len(rows), all(r["gap"] >= 0 for r in rows)
    (2, True)
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
    ds = _dataset(dataset, n_per_class, data_kw)
    dev = torch.device(device)
    models = [model_for(ds, arch, depth, width, seed=s, **model_kw).to(dev) for s in seeds]
    X = ds.X.to(dev)
    y = ds.y.to(device=dev, dtype=torch.long)
    if X.is_floating_point():
        X = X.to(next(models[0].parameters()).dtype)
    stacked_adam(models, X, y, lam=lam, loss=loss, lr=lr, epochs=int(epochs))
    out = []
    for s, m in zip(seeds, models, strict=True):
        out.append(_train_compare(m, ds, lam=lam, loss=loss, lr=lr, epochs=0, seed=s,
                                  device=device, **dict(kw))[0])
    sec = (time.perf_counter() - t0) / len(seeds)
    return [{k: (d[k] if k != "seconds" else sec) for k in TRAIN_AND_COMPARE_KEYS} for d in out]


#: the three networks of a continuation chain at one depth
CHAIN_KINDS = ("fresh", "split", "continued")


def continuation_chain(arch: str, depths: Sequence[int], width: int, dataset: Any,
                       n_per_class: int | None, epochs: int, lam: float, lr: float, seed: int,
                       loss: str = "ce", device: str = "cpu", *, lam_rule: str = "const",
                       continue_epochs: int | None = None, fresh: bool = True,
                       fresh_max_depth: int | None = None, continue_lr: float | None = None,
                       lams: dict[int, float] | None = None, continue_from: str = "lower-split",
                       **kw: Any) -> list[dict[str, Any]]:
    r"""Depth continuation along one row: at every depth the fresh, split-only and continued
    networks, and the row's upper bound (the lowest of the three).

    Depths are run in increasing order.  At depth :math:`L_i` (:math:`i > 0`) the best
    network of :math:`L_{i-1}` (lowest e2e objective among its fresh and continued runs) is
    deepened (:func:`gufm.deep.continuation.deepen`), and so is that run's network before its
    singular-limit polish, when that polish changed it (``TrainResult.pre_limit_model``).
    The lower of the two deepened networks is compared as is (``"split"``, an upper bound
    for free; its row says ``split_from``: ``"network"`` or ``"pre-limit"``) and then
    trained with ``continue_epochs`` Adam epochs (default
    ``epochs // 4``) at the peak learning rate ``continue_lr`` (default ``lr / 10``) and the
    polish (``"continued"``).  Why both: a network the limit polish holds next to the
    LayerNorm singular set deepens badly (measured in ``study-deep``, L-RN2 / digits, width
    64: split-only gaps 0.38 to 0.89 at L = 5 from limit-polished L = 3 networks, against
    0.010 to 0.011 before that polish existed; docs/training.md, section 6).
    ``continue_epochs=0`` is the polish alone, which never ends
    above the split network but rarely leaves it: the split network inherits the shallower
    one's stalled point (docs/training.md, section 4).  Measured (L-RN1, digits, width 32,
    N = 300, L = 2 -> 4): polish only
    gap 0.0139, 250 Adam epochs at lr/10 + polish 0.0124, a fresh run 0.0122.  The first
    depth has only ``"fresh"`` (and a continued chain starts from it); ``fresh=False``
    skips the fresh runs after the first depth, and so do depths above ``fresh_max_depth``
    (deep networks by continuation only).

    Parameters
    ----------
    arch, width, dataset, n_per_class, epochs, lr, seed, loss, device, **kw
        As :func:`train_and_compare`.
    depths : sequence of int
    lam : float
        :math:`\lambda` (``lam_rule="const"``) or its base (``"inverse-depth"``:
        :math:`\lambda/L`).
    lam_rule : {"const", "inverse-depth"}
    continue_epochs : int, optional
    fresh : bool
    fresh_max_depth : int, optional
    continue_lr : float, optional
    lams : dict of int to float, optional
        The :math:`\lambda` of each depth (overrides ``lam`` and ``lam_rule``).
    continue_from : {"lower-split", "both", "network", "pre-limit"}
        Train only the lower of the two split networks (default), or both and keep the lower
        continued run (twice the cost of the continued runs when the limit polish changed
        the previous depth's best network), or ignore the network before the limit polish
        (split and continue the best network only: the rule before stop 23, kept as the
        baseline of ``benchmarks/chain_rules.py``), or always carry the network before the
        limit polish when there is one; the ``"continued"`` row says ``continued_from``.

    Returns
    -------
    list of dict
        One per (depth, kind): ``depth``, ``kind``, ``lam``, ``best`` (whether it is the
        row's upper bound at that depth), ``stop_reason`` and the keys of
        :data:`TRAIN_AND_COMPARE_KEYS`; ``"split"`` rows also ``split_from``,
        ``"continued"`` rows ``continued_from``.

    Examples
    --------
    >>> rows = continuation_chain("rn1", [1, 2], 8, "digits", 2, 5, 0.01, 0.01, 0,
    ...                           polish_steps=5)
    >>> [(r["depth"], r["kind"]) for r in rows]
    [(1, 'fresh'), (2, 'fresh'), (2, 'split'), (2, 'continued')]
    >>> sum(r["best"] for r in rows if r["depth"] == 2)
    1
    """
    if lam_rule not in ("const", "inverse-depth"):
        raise ValueError(f"lam_rule must be 'const' or 'inverse-depth', got {lam_rule!r}")
    if continue_from not in CONTINUE_FROM:
        raise ValueError(f"continue_from must be one of {CONTINUE_FROM}, got {continue_from!r}")
    depths = sorted({int(d) for d in depths})
    if not depths:
        raise ValueError("depths must not be empty")
    cont = max(1, int(epochs) // 4) if continue_epochs is None else int(continue_epochs)
    c_lr = float(lr) / 10 if continue_lr is None else float(continue_lr)
    data_kw = {k: kw.pop(k) for k in DATA_OPTIONS if k in kw}
    model_kw = {k: kw.pop(k) for k in MODEL_OPTIONS if k in kw}
    ds = _dataset(dataset, n_per_class, data_kw)
    rows: list[dict[str, Any]] = []
    prev: list[tuple[str, nn.Module]] = []  # (where it comes from, network)
    for i, L in enumerate(depths):
        lam_L = float(lam) / L if lam_rule == "inverse-depth" else float(lam)
        if lams is not None:
            lam_L = float(lams[L])
        run = dict(kw, keep_pre_limit=True)
        here: list[tuple[str, dict[str, Any], nn.Module | None, nn.Module | None]] = []
        t0 = time.perf_counter()
        if i == 0 or (fresh and (fresh_max_depth is None or L <= fresh_max_depth)):
            m = model_for(ds, arch, L, width, seed=int(seed), **model_kw)
            here.append(("fresh", *_train_compare(m, ds, lam=lam_L, loss=loss, lr=lr,
                                                  epochs=epochs, seed=seed, device=device,
                                                  **run)))
            here[-1][1]["seconds"] = time.perf_counter() - t0
        if prev:
            t0 = time.perf_counter()
            splits = [_train_compare(deepen(p, L), ds, lam=lam_L, loss=loss, lr=lr, epochs=0,
                                     seed=seed, device=device, train_model=False, **dict(kw))
                      for _, p in prev]
            order = sorted(range(len(splits)), key=lambda j: splits[j][0]["e2e_objective"])
            j = order[0]
            split_out = splits[j][0] | {"split_from": prev[j][0]}
            here.append(("split", split_out, None, None))
            here[-1][1]["seconds"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            conts = []
            for k in order if continue_from == "both" else order[:1]:
                # the split network itself (compare evaluates a copy, so it is untouched)
                out, m, pre = _train_compare(splits[k][1], ds, lam=lam_L, loss=loss,
                                             lr=c_lr, epochs=cont, seed=seed, device=device,
                                             **run)
                conts.append((out | {"continued_from": prev[k][0]}, m, pre))
            here.append(("continued", *min(conts, key=lambda t: t[0]["e2e_objective"])))
            here[-1][1]["seconds"] = time.perf_counter() - t0  # all continued runs
        best = min(range(len(here)), key=lambda j: here[j][1]["e2e_objective"])
        for j, (kind, out, _, _) in enumerate(here):
            rows.append({"depth": L, "kind": kind, "lam": lam_L, "best": j == best} | out)
        trained = [(o["e2e_objective"], m, pre) for k, o, m, pre in here if k != "split"]
        _, m, pre = min(trained, key=lambda t: t[0])
        prev = [("network", m)]
        if pre is not None and continue_from == "pre-limit":
            prev = [("pre-limit", pre)]
        elif pre is not None and continue_from != "network":
            prev.append(("pre-limit", pre))
    return rows


#: the rules of ``continuation_chain(continue_from=...)``
CONTINUE_FROM = ("lower-split", "both", "network", "pre-limit")

#: options of :func:`continuation_chain` alone (not of a single training run)
CHAIN_OPTIONS = ("continue_epochs", "continue_lr", "fresh", "fresh_max_depth", "continue_from")


def chain_sweep_metrics(kwargs_list: Sequence[dict[str, Any]], device: str = "cpu"
                        ) -> list[dict[str, Any]]:
    r"""The runs of one sweep row and seed at several depths, by :func:`continuation_chain`.

    Parameters
    ----------
    kwargs_list : sequence of dict
        :func:`train_and_compare` keyword arguments that differ only in ``depth`` and ``lam``
        (a sweep's specs of one row and seed); a ``continuation`` key is ignored.
    device : str

    Returns
    -------
    list of dict
        For each entry, in order: the metrics of the depth's **best** network (the lowest e2e
        objective among fresh, split and continued: the row's upper bound), plus
        ``{kind}_e2e_objective``, ``{kind}_gap`` and ``{kind}_converged`` for each kind of
        :data:`CHAIN_KINDS` (NaN where that run does not exist), ``best_kind`` (its index
        in :data:`CHAIN_KINDS`), ``split_from_pre_limit`` (1 when the split network was
        deepened from a network before its singular-limit polish, 0 when not, NaN without a
        split), the L = 0 reference ``embedding_gap`` and
        ``embedding_converged`` (:func:`embedding_only`, with the shallowest depth's
        :math:`\lambda`), ``N`` and ``input_rank`` (:func:`input_rank`).

    Examples
    --------
    >>> kw = dict(arch="rn1", width=8, dataset="digits", n_per_class=2, epochs=3, lam=0.01,
    ...           lr=0.01, seed=0, polish_steps=3)
    >>> out = chain_sweep_metrics([dict(kw, depth=2), dict(kw, depth=1)])
    >>> out[0]["e2e_objective"] == min(out[0]["fresh_e2e_objective"],
    ...                                out[0]["split_e2e_objective"],
    ...                                out[0]["continued_e2e_objective"])
    True
    """
    if not kwargs_list:
        raise ValueError("kwargs_list must not be empty")
    ref = {k: v for k, v in kwargs_list[0].items() if k not in ("depth", "lam", "continuation")}
    lams = {}
    for kw in kwargs_list:
        other = {k: v for k, v in kw.items() if k not in ("depth", "lam", "continuation")}
        if other != ref:
            raise ValueError("a continuation chain needs runs that differ only in depth and lam")
        lams[int(kw["depth"])] = float(kw["lam"])
    args = dict(ref)
    names = ("arch", "width", "dataset", "n_per_class", "epochs", "lr", "seed", "loss")
    pos = {k: args.pop(k) for k in names if k in args}
    rows = continuation_chain(pos["arch"], sorted(lams), pos["width"], pos["dataset"],
                              pos.get("n_per_class"), pos["epochs"], min(lams.values()),
                              pos["lr"], pos["seed"], pos.get("loss", "ce"), device,
                              lams=lams, **args)
    ds = _dataset(pos["dataset"], pos.get("n_per_class"),
                  {k: args[k] for k in DATA_OPTIONS if k in args})
    train_kw = {k: v for k, v in args.items()
                if k not in DATA_OPTIONS + MODEL_OPTIONS + CHAIN_OPTIONS}
    lam0 = lams[min(lams)]
    ref = embedding_only(ds, pos["width"], lam=lam0, loss=pos.get("loss", "ce"), lr=pos["lr"],
                         epochs=pos["epochs"], seed=pos["seed"], device=device, **train_kw)
    n, rank = input_rank(ds)
    out = []
    for kw in kwargs_list:
        here = [r for r in rows if r["depth"] == int(kw["depth"])]
        best = next(r for r in here if r["best"])
        m = {k: best[k] for k in TRAIN_AND_COMPARE_KEYS}
        for kind in CHAIN_KINDS:
            r = next((r for r in here if r["kind"] == kind), None)
            for key in ("e2e_objective", "gap", "converged"):
                m[f"{kind}_{key}"] = float("nan") if r is None else float(r[key])
        m["best_kind"] = CHAIN_KINDS.index(best["kind"])
        split = next((r for r in here if r["kind"] == "split"), None)
        m["split_from_pre_limit"] = (float("nan") if split is None
                                     else float(split["split_from"] == "pre-limit"))
        m.update(embedding_gap=ref["gap"], embedding_converged=float(ref["converged"]),
                 N=float(n), input_rank=float(rank))
        m["stop_reason"] = best["stop_reason"]
        out.append(m)
    return out


def input_rank(dataset: Any) -> tuple[int, int]:
    r"""``(N, rank of the N x D input matrix)``; the rank is ``-1`` for token inputs.

    When :math:`N \le` the rank, the embedding alone can put every sample at its
    GUFM-optimal feature: the gap is ~0 at every depth and the row says nothing about depth.

    Examples
    --------
    >>> import torch
    >>> input_rank((torch.eye(3), torch.tensor([0, 1, 2])))
    (3, 3)
    """
    X = dataset.X if hasattr(dataset, "X") else dataset[0]
    N = int(X.shape[0])
    if not X.is_floating_point():
        return N, -1
    return N, int(torch.linalg.matrix_rank(X.reshape(N, -1).double()))


def embedding_only(dataset: Any, width: int, *, lam: float, loss: str = "ce", lr: float = 5e-3,
                   epochs: int = 1000, seed: int = 0, device: str = "cpu",
                   **kw: Any) -> dict[str, Any]:
    r"""The L = 0 reference: embedding, LayerNorm and classifier only, trained and compared.

    Built as a one-block L-RN1 whose block matrix is fixed at 0 (the block is then
    :math:`x \mapsto \operatorname{LN}_\varepsilon(x)`, a positive per-sample rescaling that the
    last, exact LayerNorm removes), so the features are :math:`\operatorname{LN}(E x)`.  When
    :math:`N \le \operatorname{rank}(X)` the embedding alone can place every sample at its
    GUFM-optimal feature and this gap is ~0.

    Returns
    -------
    dict
        The keys of :data:`TRAIN_AND_COMPARE_KEYS` plus ``stop_reason``.

    Examples
    --------
    >>> from gufm.deep.data import load_dataset
    >>> ds = load_dataset("digits", n_per_class=2, seed=0)
    >>> out = embedding_only(ds, 8, lam=0.01, epochs=3, polish_steps=3)
    >>> out["gap"] >= 0 and out["body_penalty"] >= 0
    True
    """
    t0 = time.perf_counter()
    model = model_for(dataset, "rn1", 1, width, seed=int(seed))
    with torch.no_grad():
        for p in model.blocks.parameters():
            p.zero_()
            p.requires_grad_(False)
    out, _, _ = _train_compare(model, dataset, lam=lam, loss=loss, lr=lr, epochs=epochs,
                               seed=seed, device=device, **kw)
    out["seconds"] = time.perf_counter() - t0
    return out
