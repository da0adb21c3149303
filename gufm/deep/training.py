r"""Training a network to (near) its regularised optimum: Adam, then a float64 L-BFGS polish.

The trainer minimises exactly the end-to-end objective of spec section 6,

.. math::

    \mathcal L(\theta) = \frac1N\sum_{i=1}^N \ell\big(f_\theta(x_i), y_i\big)
                         + \frac{\lambda}{2}\sum_{\theta_j \in \theta}\lVert\theta_j\rVert^2 ,

with :math:`\ell` the GUFM losses (``ce``: :math:`\operatorname{logsumexp}(z) - z_y`; ``mse``:
:math:`\tfrac12\lVert z - e_y\rVert^2`) and the penalty over **all** parameters, written into the
loss (not the optimiser's ``weight_decay``).

Why two phases.  A trainer that stops early measures its own optimisation error: the gap to the
GUFM optimum is a difference of two small numbers (~1e-2 .. 1e-4), so the end-to-end objective must
be accurate to well below that.  Phase 1 runs Adam (``epochs`` passes, full batch by default) with
a linear warm-up and a cosine decay of the learning rate; phase 2 (``polish="lbfgs"``) converts the
model to float64 and runs full-batch :class:`torch.optim.LBFGS` with a strong-Wolfe line search
until the gradient norm :math:`\lVert\nabla\mathcal L\rVert_2` (over all parameters) is below
``polish_tol`` or ``polish_steps`` iterations are spent.  The model stays float64 afterwards.

Scale-invariant parameters.  The input embedding feeds a LayerNorm and is linear in its
parameters :math:`\theta_E` (``E`` and the positional embeddings), so the network function is
unchanged by :math:`\theta_E \to c\,\theta_E` while the penalty
:math:`\tfrac\lambda2 c^2\lVert\theta_E\rVert^2` falls to 0: the objective has **no minimiser**
along this scale, and plain optimisers crawl towards :math:`c = 0` with a gradient that grows
like :math:`1/c` (an L-BFGS polish then stalls with a large gradient norm).  The infimum is

.. math::

    \inf_\theta \mathcal L = \inf_{\theta_E,\,\theta_{\text{rest}}} \mathcal L^\star, \qquad
    \mathcal L^\star = \frac1N\sum_i \ell + \frac\lambda2\lVert\theta_{\text{rest}}\rVert^2 ,

so with ``scale_invariant="reduce"`` (default, for models with ``scale_invariant_parameters()``)
both phases minimise :math:`\mathcal L^\star` (the L-BFGS polish after rescaling
:math:`\theta_E` to the reference norm :math:`\sqrt d`), and training ends with the exact move
:math:`\theta_E \leftarrow c\,\theta_E` that makes
:math:`\tfrac\lambda2\lVert\theta_E\rVert^2 \le` ``invariant_penalty`` (default 1e-12).
Every reported objective is the exact :math:`\mathcal L` over all parameters at the returned
weights.  ``grad_norm`` is :math:`\lVert\nabla\mathcal L^\star\rVert_2` at the representative
with :math:`\lVert\theta_E\rVert = \sqrt d` (the quantity the polish drives to 0);
``grad_norm_exact`` is :math:`\lVert\nabla\mathcal L\rVert_2` at the returned weights (its
embedding part is inflated by :math:`1/c`).  ``scale_invariant="penalize"`` optimises
:math:`\mathcal L` as is.

Determinism: the only randomness is the mini-batch order, drawn from a generator seeded with
``(seed, epoch)``, so the same seed (and the same initial model) gives identical parameters, and a
run resumed from a checkpoint ends in exactly the state of an uninterrupted run.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gufm.model.losses import check_loss

SCHEDULES = ("cosine", "constant", "linear")
POLISH = ("lbfgs", "none", None)
SCALE_MODES = ("reduce", "penalize")
CHECKPOINT_VERSION = 1


# ----------------------------------------------------------------------------- objective
def data_loss(logits: Tensor, y: Tensor, loss: str, reduction: str = "mean") -> Tensor:
    r"""Per-sample GUFM loss: CE :math:`\operatorname{logsumexp}(z)-z_y`, MSE
    :math:`\tfrac12\lVert z-e_y\rVert^2`; averaged (``"mean"``) or summed (``"sum"``)."""
    if loss == "ce":
        return F.cross_entropy(logits, y, reduction=reduction)
    if loss == "mse":
        target = F.one_hot(y, logits.shape[1]).to(logits.dtype)
        per = 0.5 * ((logits - target) ** 2).sum(dim=1)
        return per.mean() if reduction == "mean" else per.sum()
    raise ValueError(f"loss must be one of ('ce', 'mse'), got {loss!r}")


def param_penalty(model: nn.Module, lam: float, exclude: frozenset[int] = frozenset()) -> Tensor:
    r""":math:`\tfrac{\lambda}{2}\sum_j\lVert\theta_j\rVert^2` over all parameters (except those
    whose ``id`` is in ``exclude``)."""
    return 0.5 * lam * sum((p * p).sum() for p in model.parameters() if id(p) not in exclude)


def scale_invariant_params(model: nn.Module, mode: str = "reduce") -> list[nn.Parameter]:
    """The model's scale-invariant parameters (``model.scale_invariant_parameters()``) when
    ``mode="reduce"``; ``[]`` for ``"penalize"`` or models without that method."""
    if mode not in SCALE_MODES:
        raise ValueError(f"scale_invariant must be one of {SCALE_MODES}, got {mode!r}")
    f = getattr(model, "scale_invariant_parameters", None)
    return list(f()) if (mode == "reduce" and f is not None) else []


def reference_norm(model: nn.Module) -> float:
    r"""Norm :math:`\sqrt d` (``d = model.width``, else 1) of the scale-invariant group's
    representative."""
    return math.sqrt(float(getattr(model, "width", 1)))


def _group_norm(params: list[nn.Parameter]) -> float:
    return math.sqrt(sum(float((p.detach() ** 2).sum()) for p in params))


@torch.no_grad()
def rescale(params: list[nn.Parameter], factor: float) -> None:
    """Multiply every parameter of a group by ``factor`` in place."""
    for p in params:
        p.mul_(factor)


@torch.no_grad()
def shrink_invariant(params: list[nn.Parameter], lam: float, target: float) -> float:
    r"""Scale a scale-invariant group so that :math:`\tfrac\lambda2\lVert\theta_E\rVert^2 \le`
    ``target``; returns the factor :math:`c \le 1` used."""
    n2 = _group_norm(params) ** 2
    if not params or 0.5 * lam * n2 <= target or n2 == 0:
        return 1.0
    c = math.sqrt(2 * target / (lam * n2))
    rescale(params, c)
    return c


def _chunks(n: int, size: int | None) -> list[slice]:
    size = n if size is None or size >= n else int(size)
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def full_objective(model: nn.Module, X: Tensor, y: Tensor, *, lam: float, loss: str = "ce",
                   backward: bool = False, chunk_size: int | None = None,
                   exclude: frozenset[int] = frozenset()) -> dict[str, float]:
    r"""The end-to-end objective over the whole data set, optionally accumulating its gradient.

    Evaluated in chunks of ``chunk_size`` samples (default: all at once); with
    ``backward=True`` the gradients of :math:`\mathcal L` are *accumulated* into ``.grad``
    (zero them first).  Parameters whose ``id`` is in ``exclude`` are not penalised.

    Returns
    -------
    dict with ``objective``, ``loss`` (mean data loss), ``penalty`` and ``accuracy``.
    """
    N = X.shape[0]
    total_loss = 0.0
    correct = 0
    for sl in _chunks(N, chunk_size):
        with torch.set_grad_enabled(backward):
            logits = model(X[sl])
            part = data_loss(logits, y[sl], loss, reduction="sum") / N
            if backward:
                part.backward()
        total_loss += float(part.detach())
        correct += int((logits.detach().argmax(1) == y[sl]).sum())
    with torch.set_grad_enabled(backward):
        pen = param_penalty(model, lam, exclude)
        if backward:
            pen.backward()
    pen_v = float(pen.detach())
    return {"objective": total_loss + pen_v, "loss": total_loss, "penalty": pen_v,
            "accuracy": correct / N}


def gradient_norms(model: nn.Module, X: Tensor, y: Tensor, *, lam: float, loss: str = "ce",
                   chunk_size: int | None = None, scale_invariant: str = "reduce"
                   ) -> dict[str, float]:
    r"""Full-batch gradient norms over all parameters (the model's dtype).

    Returns
    -------
    dict with ``grad_norm_exact`` (:math:`\lVert\nabla\mathcal L\rVert_2`), ``grad_norm``
    (:math:`\lVert\nabla\mathcal L^\star\rVert_2` with the scale-invariant group at its reference
    norm; equal to the exact one when the model has no such group or with
    ``scale_invariant="penalize"``; see the module docstring) and ``by_param``
    (``{name: norm}`` of the exact gradient of every parameter, a diagnostic: at the end of
    training the remainder typically sits in the embedding).  Leaves ``.grad`` unset.
    """
    inv = scale_invariant_params(model, scale_invariant)
    ids = frozenset(id(p) for p in inv)
    model.zero_grad(set_to_none=True)
    full_objective(model, X, y, lam=lam, loss=loss, backward=True, chunk_size=chunk_size,
                   exclude=ids)
    rest = sum(float((p.grad**2).sum()) for p in model.parameters()
               if p.grad is not None and id(p) not in ids)
    n = _group_norm(inv)
    scale = n / reference_norm(model) if inv else 1.0
    red = sum(float((p.grad**2).sum()) for p in inv if p.grad is not None) * scale**2
    exact = sum(float(((p.grad + lam * p.detach()) ** 2).sum()) for p in inv
                if p.grad is not None)
    by_param = {}
    for name, p in model.named_parameters():
        if p.grad is not None:
            g = p.grad + lam * p.detach() if id(p) in ids else p.grad
            by_param[name] = math.sqrt(float((g**2).sum()))
    model.zero_grad(set_to_none=True)
    return {"grad_norm": math.sqrt(rest + red), "grad_norm_exact": math.sqrt(rest + exact),
            "by_param": by_param}


def gradient_norm(model: nn.Module, X: Tensor, y: Tensor, *, lam: float, loss: str = "ce",
                  chunk_size: int | None = None) -> float:
    r""":math:`\lVert\nabla_\theta\mathcal L\rVert_2` of the exact objective over all parameters."""
    return gradient_norms(model, X, y, lam=lam, loss=loss, chunk_size=chunk_size,
                          scale_invariant="penalize")["grad_norm_exact"]


# ----------------------------------------------------------------------------- schedule
def lr_factor(step: int, total: int, schedule: str, warmup: float, final: float) -> float:
    r"""Learning-rate multiplier at (0-based) ``step`` of ``total``.

    Linear warm-up over the first :math:`w = \lceil \text{warmup}\cdot\text{total}\rceil` steps
    (:math:`(s+1)/w`), then ``cosine``: :math:`f + (1-f)\tfrac12(1+\cos(\pi t))`, ``linear``:
    :math:`1 - (1-f)t`, ``constant``: 1, with :math:`t = (s-w)/(\text{total}-w)` and
    :math:`f` = ``final``.
    """
    w = math.ceil(warmup * total)
    if step < w:
        return (step + 1) / w
    if schedule == "constant":
        return 1.0
    t = (step - w) / max(1, total - w)
    if schedule == "cosine":
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * t))
    return 1 - (1 - final) * t


# ----------------------------------------------------------------------------- result
@dataclass
class TrainResult:
    """Outcome of :func:`train`.

    Attributes
    ----------
    model : nn.Module
        The trained model (float64 after an L-BFGS polish).
    objective, loss, penalty, accuracy : float
        Final full-batch end-to-end objective, mean data loss, :math:`\\tfrac\\lambda2\\sum\\lVert
        \\theta\\rVert^2` and training accuracy (in the model's final dtype).
    grad_norm : float
        :math:`\\lVert\\nabla\\mathcal L^\\star\\rVert_2` over all parameters at the end (the
        scale-invariant group at its reference norm; see the module docstring).
    grad_norm_exact : float
        :math:`\\lVert\\nabla\\mathcal L\\rVert_2` at the returned weights.
    shrink : float
        Factor the scale-invariant group was multiplied by at the end (1: none).
    adam_steps, polish_iters : int
        Optimiser steps of each phase (L-BFGS iterations, not function evaluations).
    epochs_done : int
    completed : bool
        False when stopped by ``stop_after`` (resume from the checkpoint to continue).
    stop_reason : str
    seconds : float
        Wall time of this call.
    history : list of dict
        Adam: ``{"phase": "adam", "step", "epoch", "objective", "lr"}`` every ``log_every``
        epochs, where ``objective`` is that of the epoch's last (mini-)batch (the full objective
        for full-batch training); L-BFGS: ``{"phase": "lbfgs", "step", "objective",
        "grad_norm"}`` every 50 iterations (full batch, float64, without the penalty of a
        reduced scale-invariant group).
    config : dict
        The hyper-parameters (what the checkpoint checks on resume).
    """

    model: nn.Module
    objective: float
    loss: float
    penalty: float
    accuracy: float
    grad_norm: float
    grad_norm_exact: float
    shrink: float
    adam_steps: int
    polish_iters: int
    epochs_done: int
    completed: bool
    stop_reason: str
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (no model, no history)."""
        keys = ("objective", "loss", "penalty", "accuracy", "grad_norm", "grad_norm_exact",
                "shrink", "adam_steps",
                "polish_iters", "epochs_done", "completed", "stop_reason", "seconds")
        return {k: getattr(self, k) for k in keys} | {"config": self.config}


# ----------------------------------------------------------------------------- checkpoints
def _save(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _config_key(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def _check_positive(name: str, value: Any, *, integer: bool = False, allow_zero: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok and integer:
        ok = float(value).is_integer()
    if ok:
        ok = value >= 0 if allow_zero else value > 0
    if not ok:
        kind = "integer" if integer else "number"
        raise ValueError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} "
                         f"{kind}, got {value!r}")


# ----------------------------------------------------------------------------- train
def train(
    model: nn.Module,
    dataset: Any,
    *,
    lam: float,
    loss: str = "ce",
    lr: float = 5e-3,
    epochs: int = 1000,
    batch_size: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    schedule: str = "cosine",
    warmup: float = 0.05,
    final_lr: float = 0.0,
    polish: str | None = "lbfgs",
    polish_steps: int = 3000,
    polish_tol: float = 1e-9,
    polish_history: int = 100,
    chunk_size: int | None = None,
    scale_invariant: str = "reduce",
    invariant_penalty: float = 1e-12,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = True,
    stop_after: int | None = None,
    progress: bool = True,
    log_every: int | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    r"""Minimise :math:`\mathcal L(\theta)` (module docstring): Adam, then an L-BFGS polish.

    Parameters
    ----------
    model : nn.Module
        Maps ``dataset.X`` to logits ``(B, K)`` (e.g. :func:`gufm.nets.make_model`).  Trained in
        place; moved to ``device``.
    dataset : gufm.data.Dataset or tuple (X, y)
    lam : float
        :math:`\lambda > 0`, the penalty on every parameter.
    loss : {"ce", "mse"}
    lr : float
        Peak Adam learning rate.
    epochs : int
        Adam passes over the data (``0``: polish only).  Full batch: one step per epoch.
    batch_size : int, optional
        Mini-batch size (``None``: full batch).
    seed : int
        Seeds the mini-batch order (the model's initialisation is the caller's).
    device : str or torch.device
    schedule : {"cosine", "constant", "linear"}
        Learning-rate decay after the warm-up (see :func:`lr_factor`).
    warmup : float
        Fraction of the Adam steps spent in linear warm-up.
    final_lr : float
        Final learning rate as a fraction of ``lr``.
    polish : {"lbfgs", "none"}
        Full-batch float64 L-BFGS (strong Wolfe) after Adam.
    polish_steps : int
        Maximal L-BFGS iterations.
    polish_tol : float
        Stop the polish when the gradient norm is below this.
    polish_history : int
        L-BFGS memory.
    chunk_size : int, optional
        Evaluate full-batch objectives in chunks of this many samples (memory).
    scale_invariant : {"reduce", "penalize"}
        How to treat the scale-invariant embedding (module docstring): ``"reduce"`` optimises
        its direction and shrinks it at the end (default), ``"penalize"`` treats it like any
        other parameter.
    invariant_penalty : float
        ``"reduce"``: the final shrink makes the group's penalty at most this.
    checkpoint : path, optional
        Save the state there every ``checkpoint_every`` epochs (default ``epochs // 20``), at the
        end of Adam and after the polish (atomic replace).
    resume : bool
        Continue from ``checkpoint`` when it exists (its hyper-parameters must match).
    stop_after : int, optional
        Run at most this many Adam epochs in this call, checkpoint and return with
        ``completed=False`` (for time-sliced jobs; also how the tests interrupt a run).
    progress : bool
        tqdm progress bar.
    log_every : int, optional
        Record the full-batch objective in ``history`` every this many epochs
        (default ``max(1, epochs // 50)``).
    callback : callable, optional
        Called with each history record.

    Returns
    -------
    TrainResult
    """
    t0 = time.perf_counter()
    loss = check_loss(loss)
    _check_positive("lam", lam)
    _check_positive("lr", lr)
    _check_positive("epochs", epochs, integer=True, allow_zero=True)
    _check_positive("polish_steps", polish_steps, integer=True, allow_zero=True)
    _check_positive("polish_tol", polish_tol, allow_zero=True)
    if batch_size is not None:
        _check_positive("batch_size", batch_size, integer=True)
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if polish not in POLISH:
        raise ValueError(f"polish must be 'lbfgs' or 'none', got {polish!r}")
    if not 0 <= warmup < 1:
        raise ValueError(f"warmup must lie in [0, 1), got {warmup!r}")
    if not 0 <= final_lr <= 1:
        raise ValueError(f"final_lr must lie in [0, 1], got {final_lr!r}")
    if stop_after is not None:
        _check_positive("stop_after", stop_after, integer=True, allow_zero=True)
    _check_positive("invariant_penalty", invariant_penalty)
    polish = None if polish == "none" else polish
    inv = scale_invariant_params(model, scale_invariant)
    inv_ids = frozenset(id(p) for p in inv)

    X, y = (dataset.X, dataset.y) if hasattr(dataset, "X") else dataset
    if X.shape[0] != y.shape[0] or X.shape[0] == 0:
        raise ValueError(f"dataset: X has {X.shape[0]} samples and y has {y.shape[0]}")
    device = torch.device(device)
    model.to(device)
    dtype0 = next(model.parameters()).dtype
    X = X.to(device)
    y = y.to(device=device, dtype=torch.long)
    if X.is_floating_point():
        X = X.to(dtype0)
    N = X.shape[0]
    epochs = int(epochs)
    batch = N if batch_size is None else min(int(batch_size), N)
    steps_per_epoch = math.ceil(N / batch)
    total_steps = epochs * steps_per_epoch
    log_every = max(1, epochs // 50) if log_every is None else int(log_every)
    ckpt_every = max(1, epochs // 20) if checkpoint_every is None else int(checkpoint_every)

    config = dict(lam=float(lam), loss=loss, lr=float(lr), epochs=epochs, batch_size=batch,
                  seed=int(seed), schedule=schedule, warmup=float(warmup),
                  final_lr=float(final_lr), polish=polish, polish_steps=int(polish_steps),
                  polish_tol=float(polish_tol), polish_history=int(polish_history), N=N,
                  scale_invariant=scale_invariant if inv else "none",
                  invariant_penalty=float(invariant_penalty))
    key = _config_key(config)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history: list[dict[str, Any]] = []
    epoch0, phase, polish_iters = 0, "adam", 0
    polish_reason = "not run"
    shrink_c = 1.0
    ckpt = Path(checkpoint) if checkpoint is not None else None

    if ckpt is not None and resume and ckpt.is_file():
        state = torch.load(ckpt, map_location=device, weights_only=False)
        if state.get("version") != CHECKPOINT_VERSION or state.get("config_key") != key:
            raise ValueError(
                f"checkpoint {ckpt} was written with other hyper-parameters "
                f"({state.get('config')}); delete it or pass resume=False"
            )
        if state["phase"] == "polished":
            model.double()
        model.load_state_dict(state["model"])
        if state["phase"] == "adam":
            opt.load_state_dict(state["optimizer"])
        epoch0, phase = int(state["epoch"]), state["phase"]
        history = list(state["history"])
        polish_iters = int(state.get("polish_iters", 0))
        polish_reason = state.get("polish_reason", polish_reason)
        shrink_c = float(state.get("shrink", 1.0))

    def save(ph: str, ep: int) -> None:
        if ckpt is None:
            return
        _save(ckpt, {"version": CHECKPOINT_VERSION, "config": config, "config_key": key,
                     "phase": ph, "epoch": ep, "model": model.state_dict(),
                     "optimizer": opt.state_dict() if ph == "adam" else None,
                     "history": history, "polish_iters": polish_iters,
                     "polish_reason": polish_reason, "shrink": shrink_c})

    def record(rec: dict[str, Any]) -> None:
        history.append(rec)
        if callback is not None:
            callback(rec)

    # ------------------------------------------------------------------ phase 1: Adam
    stopped = False
    if phase == "adam":
        end = epochs if stop_after is None else min(epochs, epoch0 + int(stop_after))
        bar = None
        if progress and end > epoch0:
            from tqdm.auto import tqdm

            bar = tqdm(total=end - epoch0, desc=f"adam {getattr(model, 'arch', '')}".strip(),
                       leave=False)
        model.train()
        for epoch in range(epoch0, end):
            if batch < N:
                gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + epoch)
                order = torch.randperm(N, generator=gen).to(device)
            else:
                order = None
            for b in range(steps_per_epoch):
                step = epoch * steps_per_epoch + b
                cur = lr * lr_factor(step, total_steps, schedule, warmup, final_lr)
                for g in opt.param_groups:
                    g["lr"] = cur
                if order is None:
                    xb, yb = X, y
                else:
                    idx = order[b * batch:(b + 1) * batch]
                    xb, yb = X[idx], y[idx]
                opt.zero_grad(set_to_none=True)
                obj = data_loss(model(xb), yb, loss) + param_penalty(model, lam, inv_ids)
                obj.backward()
                opt.step()
            done = epoch + 1
            if done % log_every == 0 or done == epochs:
                rec = {"phase": "adam", "step": done * steps_per_epoch, "epoch": done,
                       "objective": float(obj.detach()), "lr": cur}
                record(rec)
                if bar is not None:
                    bar.set_postfix(obj=f"{rec['objective']:.5g}")
            if bar is not None:
                bar.update(1)
            if done % ckpt_every == 0 and done < end:
                save("adam", done)
        if bar is not None:
            bar.close()
        epoch0 = end
        if end < epochs:
            stopped = True
            save("adam", end)
        else:
            phase = "adam-done"
            save("adam", end)

    # ------------------------------------------------------------------ phase 2: polish
    if not stopped and phase != "polished":
        if polish == "lbfgs" and polish_steps > 0:
            if inv:  # canonical representative of the scale-invariant group (exact move)
                rescale(inv, reference_norm(model) / max(_group_norm(inv), 1e-300))
            polish_iters, polish_reason = _polish(
                model, X, y, lam=lam, loss=loss, max_iter=int(polish_steps), tol=polish_tol,
                history_size=int(polish_history), chunk_size=chunk_size, record=record,
                progress=progress, exclude=inv_ids)
        else:
            polish_reason = "no polish"
        shrink_c = shrink_invariant(inv, lam, invariant_penalty)
        phase = "polished"
        save("polished", epochs)

    # ------------------------------------------------------------------ final numbers
    Xf = X.to(next(model.parameters()).dtype) if X.is_floating_point() else X
    model.eval()
    with torch.no_grad():
        fin = full_objective(model, Xf, y, lam=lam, loss=loss, chunk_size=chunk_size)
    gn = gradient_norms(model, Xf, y, lam=lam, loss=loss, chunk_size=chunk_size,
                        scale_invariant=scale_invariant)
    reason = "stopped by stop_after" if stopped else polish_reason
    return TrainResult(model=model, objective=fin["objective"], loss=fin["loss"],
                       penalty=fin["penalty"], accuracy=fin["accuracy"],
                       grad_norm=gn["grad_norm"], grad_norm_exact=gn["grad_norm_exact"],
                       shrink=shrink_c,
                       adam_steps=epoch0 * steps_per_epoch, polish_iters=polish_iters,
                       epochs_done=epoch0, completed=not stopped, stop_reason=reason,
                       seconds=time.perf_counter() - t0, history=history, config=config)


def _polish(model: nn.Module, X: Tensor, y: Tensor, *, lam: float, loss: str, max_iter: int,
            tol: float, history_size: int, chunk_size: int | None,
            record: Callable[[dict[str, Any]], None], progress: bool,
            exclude: frozenset[int] = frozenset()) -> tuple[int, str]:
    """Full-batch float64 L-BFGS (strong Wolfe) on the objective without the ``exclude``d
    penalties until ``||grad|| <= tol`` (the norm of :func:`gradient_norms`' ``grad_norm``) or
    ``max_iter``."""
    model.double()
    Xd = X.double() if X.is_floating_point() else X
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=50, max_eval=75,
                            history_size=history_size, tolerance_grad=1e-300,
                            tolerance_change=1e-300, line_search_fn="strong_wolfe")
    last: dict[str, float] = {}

    def closure() -> Tensor:
        opt.zero_grad(set_to_none=False)
        out = full_objective(model, Xd, y, lam=lam, loss=loss, backward=True,
                             chunk_size=chunk_size, exclude=exclude)
        last.update(out)
        return torch.tensor(out["objective"], dtype=torch.float64)

    def gnorm() -> float:
        return math.sqrt(sum(float((p.grad**2).sum()) for p in params if p.grad is not None))

    closure()
    g = gnorm()
    record({"phase": "lbfgs", "step": 0, "objective": last["objective"], "grad_norm": g})
    it, reason = 0, f"max iterations ({max_iter})"
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_iter, desc="lbfgs", leave=False)
    stall = 0
    while it < max_iter:
        if g <= tol:
            reason = f"gradient norm {g:.3g} <= polish_tol"
            break
        chunk = min(50, max_iter - it)
        for grp in opt.param_groups:
            grp["max_iter"] = chunk
            grp["max_eval"] = int(chunk * 1.5)
        before = last["objective"]
        n_before = int(opt.state[params[0]].get("n_iter", 0))
        opt.step(closure)
        done_now = int(opt.state[params[0]].get("n_iter", 0)) - n_before
        it += done_now
        closure()  # gradient at the current point (the L-BFGS step may end mid line search)
        g = gnorm()
        record({"phase": "lbfgs", "step": it, "objective": last["objective"], "grad_norm": g})
        if bar is not None:
            bar.update(max(done_now, 0))
            bar.set_postfix(obj=f"{last['objective']:.10g}", grad=f"{g:.2g}")
        if done_now <= 0 or before - last["objective"] <= 1e-15 * max(1.0, abs(before)):
            stall += 1
            if stall >= 3:
                reason = f"no further decrease (grad norm {g:.3g})"
                break
            # restart the quasi-Newton memory (a stale curvature pair can stall the search)
            opt.state.clear()
        else:
            stall = 0
    if bar is not None:
        bar.close()
    opt.zero_grad(set_to_none=True)
    return it, reason


def clone_double(model: nn.Module) -> nn.Module:
    """A float64 deep copy of ``model`` (for exact evaluation)."""
    return copy.deepcopy(model).double()
