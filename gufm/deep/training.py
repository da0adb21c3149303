r"""Training a network to (near) its regularised optimum: Adam, then a float64 L-BFGS polish.

The trainer minimises the end-to-end objective of :mod:`gufm.deep.objective`,
:math:`\mathcal L(\theta) = \frac1N\sum_i\ell(f_\theta(x_i), y_i) + \frac\lambda2\sum_j
\lVert\theta_j\rVert^2` (penalty on **all** parameters).

Why two phases.  The gap to the GUFM optimum is a difference of two small numbers (~1e-2 ..
1e-4), so the end-to-end objective must be accurate to well below that.  Phase 1 runs Adam
(``epochs`` passes, full batch by default) with a linear warm-up and a cosine decay of the
learning rate; phase 2 (``polish="lbfgs"``) converts the model to float64 and runs
:func:`gufm.deep.polish.polish` (L-BFGS, strong Wolfe, restarts, never above its start).  The
model stays float64 afterwards.

Scale-invariant groups (:mod:`gufm.deep.invariance`; which groups:
:meth:`gufm.deep.nets.GUFMNet.scale_invariant_groups`, e.g. the embedding of every bias-free
ResNet whatever ``ln_eps``).  With ``scale_invariant="reduce"`` (default) both phases minimise
the reduced objective :math:`\mathcal L^\star` (the groups' penalties left out: the objective
has an infimum, not a minimum, along their scale), and training ends with the exact move
:math:`\theta_G \leftarrow c\,\theta_G` that makes every group's penalty at most
``invariant_penalty`` (default 1e-12).  Every reported objective is the exact
:math:`\mathcal L` over all parameters at the returned weights.

Convergence.  ``converged`` is ``grad_norm <= polish_tol`` where ``grad_norm`` is the reduced
gradient norm (invariant directions projected out, groups at their representative; see
:func:`gufm.deep.invariance.gradient_norms`), default ``polish_tol = 1e-4``.  ``stop_reason``
says why training stopped; "no further decrease" at a larger gradient is ``converged=False``.
See docs/training.md, sections 2-4.

Determinism: the only randomness is the mini-batch order, drawn from a generator seeded with
``(seed, epoch)``, so the same seed (and the same initial model) gives identical parameters, and
a run resumed from a checkpoint ends in exactly the state of an uninterrupted run.
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
from torch import nn

from gufm.deep.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from gufm.deep.conditioning import layernorm_margin
from gufm.deep.invariance import (
    SCALE_MODES,
    gradient_norm,
    gradient_norms,
    invariant_groups,
    reference_norm,
    rescale,
    scale_invariant_params,
    shrink_groups,
    shrink_invariant,
)
from gufm.deep.objective import clone_double, data_loss, full_objective, param_penalty
from gufm.deep.polish import GTOL
from gufm.deep.polish import polish as run_polish
from gufm.deep.singular_limit import applies as limit_applies
from gufm.deep.singular_limit import limit_polish
from gufm.model.losses import check_loss

__all__ = [
    "GTOL", "POLISH", "SCALE_MODES", "SCHEDULES", "TrainResult", "clone_double", "data_loss",
    "full_objective", "gradient_norm", "gradient_norms", "lr_factor", "param_penalty",
    "reference_norm", "rescale", "scale_invariant_params", "shrink_invariant", "train",
]

SCHEDULES = ("cosine", "constant", "linear")
POLISH = ("lbfgs", "none", None)
CHECKPOINT_VERSION = 2


def lr_factor(step: int, total: int, schedule: str, warmup: float, final: float) -> float:
    r"""Learning-rate multiplier at (0-based) ``step`` of ``total``.

    Linear warm-up over the first :math:`w = \lceil \text{warmup}\cdot\text{total}\rceil` steps
    (:math:`(s+1)/w`), then ``cosine``: :math:`f + (1-f)\tfrac12(1+\cos(\pi t))`, ``linear``:
    :math:`1 - (1-f)t`, ``constant``: 1, with :math:`t = (s-w)/(\text{total}-w)` and
    :math:`f` = ``final``.

    Examples
    --------
    >>> lr_factor(0, 100, "cosine", 0.1, 0.0), lr_factor(10, 100, "cosine", 0.1, 0.0)
    (0.1, 1.0)
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


@dataclass
class TrainResult:
    """Outcome of :func:`train`.

    Attributes
    ----------
    model : nn.Module
        The trained model (float64 after an L-BFGS polish).
    objective, loss, penalty, accuracy : float
        Final full-batch end-to-end objective :math:`\\mathcal L`, mean data loss, penalty and
        training accuracy (in the model's final dtype).
    grad_norm : float
        Reduced gradient norm (:func:`gufm.deep.invariance.gradient_norms`).
    grad_norm_exact : float
        :math:`\\lVert\\nabla\\mathcal L\\rVert_2` at the returned weights.
    converged : bool
        ``grad_norm <= polish_tol``, or a stationary singular limit (module docstring).
    stop_reason : str
    shrink : float
        Smallest factor a scale-invariant group was multiplied by at the end (1: none).
    adam_steps, polish_iters : int
    epochs_done : int
    completed : bool
        False when stopped by ``stop_after`` (resume from the checkpoint to continue).
    seconds : float
    history : list of dict
        Adam: ``{"phase": "adam", "step", "epoch", "objective", "lr"}`` every ``log_every``
        epochs; polish: ``{"phase": "lbfgs", "step", "objective", "grad_norm"}`` per round
        (reduced objective).
    config : dict
        The hyper-parameters (what a checkpoint checks on resume).
    ln_margin, ln_margin_sample : float, int
        The smallest relative centred input norm of a sample at a LayerNorm and that sample
        (:func:`gufm.deep.conditioning.layernorm_margin`); below
        :data:`~gufm.deep.conditioning.LN_MARGIN_FLAG` a non-converged run says so in
        ``stop_reason``.
    limit_grad_norm, limit_slope, limit_samples : float, float, tuple of int or None
        When the singular-limit polish was kept (``polish_limit``): the limit objective's
        gradient norm and smallest outward slope at the returned network and the samples it
        freed
        (:class:`gufm.deep.singular_limit.SingularLimit`); ``converged`` is then also true
        when ``limit_grad_norm <= polish_tol`` and ``limit_slope >= -polish_tol``.
    pre_limit_model : nn.Module or None
        With ``keep_pre_limit``: a copy of the network as the L-BFGS polish left it, before
        the singular-limit polish changed it (``None`` when that polish was not run or not
        kept, or the run resumed after it).  A network that is not held next to the
        singular set is the better one to deepen (docs/training.md, section 6).

    Examples
    --------
    >>> import torch
    >>> from gufm.deep.nets import make_model
    >>> X = torch.randn(6, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    >>> r = train(make_model("rn1", 1, 6, (1, 2, 2), 2, seed=0), (X, torch.tensor([0, 1] * 3)),
    ...           lam=0.01, epochs=5, polish_steps=5, progress=False)
    >>> sorted(r.to_dict())[:4]
    ['accuracy', 'adam_steps', 'completed', 'config']
    """

    model: nn.Module
    objective: float
    loss: float
    penalty: float
    accuracy: float
    grad_norm: float
    grad_norm_exact: float
    converged: bool
    stop_reason: str
    shrink: float
    adam_steps: int
    polish_iters: int
    epochs_done: int
    completed: bool
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    ln_margin: float = float("inf")
    ln_margin_sample: int = -1
    limit_grad_norm: float | None = None
    limit_slope: float | None = None
    limit_samples: tuple[int, ...] | None = None
    pre_limit_model: nn.Module | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (no model, no history)."""
        keys = ("objective", "loss", "penalty", "accuracy", "grad_norm", "grad_norm_exact",
                "converged", "stop_reason", "shrink", "adam_steps", "polish_iters",
                "epochs_done", "completed", "seconds", "ln_margin", "ln_margin_sample",
                "limit_grad_norm", "limit_slope", "limit_samples")
        return {k: getattr(self, k) for k in keys} | {"config": self.config}


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


def _validate(lam: float, loss: str, lr: float, epochs: int, polish_steps: int,
              polish_tol: float, batch_size: int | None, schedule: str, polish: str | None,
              warmup: float, final_lr: float, stop_after: int | None,
              invariant_penalty: float, scale_invariant: str) -> None:
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
    if scale_invariant not in SCALE_MODES:
        raise ValueError(f"scale_invariant must be one of {SCALE_MODES}, got {scale_invariant!r}")


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
    polish_steps: int = 1000,
    polish_tol: float = GTOL,
    polish_history: int = 100,
    polish_limit: bool = True,
    keep_pre_limit: bool = False,
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
        :func:`gufm.deep.polish.polish` after Adam.
    polish_steps : int
        Maximal L-BFGS iterations (default 1000).
    polish_tol : float
        Convergence threshold on the reduced gradient norm (default 1e-4); also what
        ``converged`` means.
    polish_history : int
        L-BFGS memory.
    polish_limit : bool
        When the polish ends unconverged with a sample near the embedding's LayerNorm
        singular set (ResNets on flat input), run :func:`gufm.deep.singular_limit.limit_polish`
        (``polish_steps`` more iterations on the limit objective, kept only if it lowers the
        objective); such a run counts as converged when the limit is first-order stationary
        (docs/training.md, section 4).
    keep_pre_limit : bool
        Keep a copy of the network before the singular-limit polish in
        ``TrainResult.pre_limit_model`` (what :func:`gufm.deep.pipeline.continuation_chain`
        also deepens).
    chunk_size : int, optional
        Evaluate full-batch objectives in chunks of this many samples (memory).
    scale_invariant : {"reduce", "penalize"}
        How to treat scale-invariant groups (module docstring).
    invariant_penalty : float
        ``"reduce"``: the final shrink makes each group's penalty at most this.
    checkpoint : path, optional
        Save the state there every ``checkpoint_every`` epochs (default ``epochs // 20``), at
        the end of Adam and after the polish (atomic replace; safe format,
        :mod:`gufm.deep.checkpoint`).
    resume : bool
        Continue from ``checkpoint`` when it exists (its hyper-parameters must match).
    stop_after : int, optional
        Run at most this many Adam epochs in this call, checkpoint and return with
        ``completed=False``.
    progress : bool
        tqdm progress bars (stderr).
    log_every : int, optional
        Record the objective in ``history`` every this many epochs (default
        ``max(1, epochs // 50)``).
    callback : callable, optional
        Called with each history record.

    Returns
    -------
    TrainResult

    Raises
    ------
    ValueError
        A bad argument (named), or a checkpoint of other hyper-parameters.
    gufm.deep.checkpoint.CheckpointError
        ``checkpoint`` exists but is not a usable checkpoint file.

    Examples
    --------
    >>> import torch
    >>> from gufm.deep.nets import make_model
    >>> m = make_model("rn1", 1, 6, (1, 2, 2), 2, seed=0)
    >>> X = torch.randn(6, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    >>> r = train(m, (X, torch.tensor([0, 1] * 3)), lam=0.01, epochs=20, polish_steps=20,
    ...           progress=False)
    >>> r.completed, r.converged == (r.grad_norm <= r.config["polish_tol"])
    (True, True)
    """
    t0 = time.perf_counter()
    loss = check_loss(loss)
    _validate(lam, loss, lr, epochs, polish_steps, polish_tol, batch_size, schedule, polish,
              warmup, final_lr, stop_after, invariant_penalty, scale_invariant)
    polish = None if polish == "none" else polish
    groups = invariant_groups(model, scale_invariant)
    inv_ids = frozenset(id(p) for g in groups for p in g)

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
                  polish_tol=float(polish_tol), polish_history=int(polish_history),
                  polish_limit=bool(polish_limit), N=N,
                  scale_invariant=scale_invariant if groups else "none",
                  invariant_penalty=float(invariant_penalty))
    key = _config_key(config)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history: list[dict[str, Any]] = []
    epoch0, phase, polish_iters = 0, "adam", 0
    polish_reason = "not run"
    limit_state: dict[str, Any] = {}
    pre_limit: nn.Module | None = None
    shrink_c = 1.0
    ckpt = Path(checkpoint) if checkpoint is not None else None

    if ckpt is not None and resume and ckpt.exists():
        state = load_checkpoint(ckpt, map_location=device)
        if state.get("config_key") != key:
            raise ValueError(
                f"checkpoint {ckpt} was written with other hyper-parameters "
                f"({state.get('config')}); delete it or pass resume=False")
        if state["phase"] == "polished":
            model.double()
        try:
            model.load_state_dict(state["model"])
            if state["phase"] == "adam":
                opt.load_state_dict(state["optimizer"])
        except (RuntimeError, KeyError, ValueError) as exc:
            first = (str(exc).splitlines() or [""])[0][:160]
            raise CheckpointError(f"{ckpt}: does not fit this model ({first})") from None
        epoch0, phase = int(state["epoch"]), state["phase"]
        history = list(state["history"])
        polish_iters = int(state.get("polish_iters", 0))
        polish_reason = str(state.get("polish_reason", polish_reason))
        limit_state = dict(state.get("limit", {}))
        if "sample" in limit_state:  # a checkpoint written before several samples were freed
            limit_state["samples"] = [limit_state.pop("sample")]
        shrink_c = float(state.get("shrink", 1.0))

    def save(ph: str, ep: int) -> None:
        if ckpt is None:
            return
        save_checkpoint(ckpt, {"checkpoint_version": CHECKPOINT_VERSION, "config": config,
                               "config_key": key, "phase": ph, "epoch": ep,
                               "model": model.state_dict(),
                               "optimizer": opt.state_dict() if ph == "adam" else {},
                               "history": history, "polish_iters": polish_iters,
                               "polish_reason": polish_reason, "shrink": shrink_c,
                               "limit": limit_state})

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
            order = None
            if batch < N:
                gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + epoch)
                order = torch.randperm(N, generator=gen).to(device)
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
        else:
            phase = "adam-done"
        save("adam", end)

    # ------------------------------------------------------------------ phase 2: polish
    if not stopped and phase != "polished":
        if polish == "lbfgs" and polish_steps > 0:
            pr = run_polish(model, X, y, lam=lam, loss=loss, groups=groups,
                            max_iter=int(polish_steps), gtol=polish_tol,
                            history_size=int(polish_history), chunk_size=chunk_size,
                            record=record, progress=progress)
            polish_iters, polish_reason = pr.iterations, pr.stop_reason
            if polish_limit and not pr.converged and limit_applies(model):
                before = copy.deepcopy(model) if keep_pre_limit else None
                lp = limit_polish(model, X, y, lam=lam, loss=loss, max_iter=int(polish_steps),
                                  gtol=polish_tol, history_size=int(polish_history),
                                  chunk_size=chunk_size, record=record)
                polish_iters += lp.iterations
                if lp.samples:
                    polish_reason = (f"{polish_reason}; then {lp.describe(polish_tol)}")
                    limit_state = lp.to_state(polish_tol)
                if lp.accepted:
                    pre_limit = before
        else:
            polish_reason = "no polish"
        shrink_c = shrink_groups(groups, lam, invariant_penalty)
        if pre_limit is not None:
            shrink_groups(invariant_groups(pre_limit, scale_invariant), lam, invariant_penalty)
        phase = "polished"
        save("polished", epochs)

    # ------------------------------------------------------------------ final numbers
    Xf = X.to(next(model.parameters()).dtype) if X.is_floating_point() else X
    model.eval()
    with torch.no_grad():
        fin = full_objective(model, Xf, y, lam=lam, loss=loss, chunk_size=chunk_size)
    gn = gradient_norms(model, Xf, y, lam=lam, loss=loss, chunk_size=chunk_size,
                        scale_invariant=scale_invariant)
    converged = bool(gn["grad_norm"] <= polish_tol) or bool(limit_state.get("converged"))
    margin = layernorm_margin(model, Xf, chunk_size)
    if stopped:
        reason = "stopped by stop_after"
    elif polish_reason == "no polish":
        reason = (f"no polish (grad norm {gn['grad_norm']:.3g} "
                  f"{'<=' if converged else '>'} polish_tol {polish_tol:.3g})")
    else:
        reason = polish_reason
    if margin.flagged and margin.sample in limit_state.get("samples", ()):
        reason = (f"{reason}; sample {margin.sample} is held a step {limit_state['step']:.0e} "
                  "off the LayerNorm singular set by the singular-limit polish")
    elif margin.flagged and not converged:
        reason = f"{reason}; {margin.describe()}"
    return TrainResult(model=model, objective=fin["objective"], loss=fin["loss"],
                       penalty=fin["penalty"], accuracy=fin["accuracy"],
                       grad_norm=float(gn["grad_norm"]),
                       grad_norm_exact=float(gn["grad_norm_exact"]), converged=converged,
                       stop_reason=reason, shrink=shrink_c,
                       adam_steps=epoch0 * steps_per_epoch, polish_iters=polish_iters,
                       epochs_done=epoch0, completed=not stopped,
                       seconds=time.perf_counter() - t0, history=history, config=config,
                       ln_margin=margin.ratio, ln_margin_sample=margin.sample,
                       limit_grad_norm=limit_state.get("grad_norm"),
                       limit_slope=limit_state.get("slope"),
                       limit_samples=(None if "samples" not in limit_state
                                      else tuple(limit_state["samples"])),
                       pre_limit_model=pre_limit)
