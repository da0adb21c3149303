r"""The reduction check of docs/networks.md, section 3: a trained network against the GUFM optimum.

For a network whose last features are exact LayerNorm outputs (:mod:`gufm.nets`), the pair
(classifier, features) is feasible for the GUFM with ``features="layernorm"``,
:math:`\rho = \sqrt d`, :math:`\lambda_W = \lambda` (and :math:`\lambda_b = \lambda` with a
classifier bias), so

.. math::

    \underbrace{\frac1N\sum_i\ell + \frac\lambda2\sum_\theta\lVert\theta\rVert^2}_{\text{e2e}}
    \;\ge\; \underbrace{F(W, b, H_\theta)}_{\text{head}} \;\ge\; F^\star_{\text{GUFM}}
    \;\ge\; \text{certified lower bound}

for **any** parameters: the head objective drops the (non-negative) penalty of every
parameter but the classifier's, and the features it sees are GUFM-feasible.  :func:`compare`
evaluates all of them in float64 and raises :class:`ReductionViolation` when an inequality fails
beyond rounding (that is a bug, never a finding).  The paper's claim is that
``gap = e2e - F*`` tends to 0 with depth for trained networks.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from gufm.collapse.metrics import collapse_report
from gufm.deep.data.ties import tied_soft_labels
from gufm.deep.invariance import gradient_norms
from gufm.deep.objective import full_objective
from gufm.deep.polish import GTOL
from gufm.model.objective import feasibility_violation, objective
from gufm.model.problem import GUFM
from gufm.solvers import solve

#: keys of :func:`train_and_compare`'s dictionary (the depth sweeps rely on them)
TRAIN_AND_COMPARE_KEYS = ("e2e_objective", "gufm_optimum", "gap", "head_objective", "head_gap",
                          "body_penalty", "nc1", "nc2", "nc3", "gufm_distance",
                          "train_accuracy", "grad_norm", "converged", "seconds")


class ReductionViolation(RuntimeError):
    """e2e >= head >= GUFM lower bound failed beyond rounding: a bug in the network, the
    objective or the solver.

    Examples
    --------
    >>> issubclass(ReductionViolation, RuntimeError)
    True
    """


@dataclass
class ComparisonResult:
    """Outcome of :func:`compare` (all objectives in float64).

    Attributes
    ----------
    e2e_objective : float
        :math:`\\frac1N\\sum_i\\ell + \\frac\\lambda2\\sum_\\theta\\lVert\\theta\\rVert^2`.
    e2e_loss, e2e_penalty : float
        Its two parts.
    head_objective : float
        ``gufm.objective`` at (classifier, learned features): GUFM-feasible, so >= the optimum.
    gufm_optimum : float
        Optimal GUFM value (``gufm.solve``) for the same data, d, loss, lambda: one feature
        per distinct input, so soft labels (:func:`gufm.data.tied_soft_labels`) when identical
        inputs carry different labels (for MSE plus the constant the soft loss drops), else
        the hard-label GUFM of the class counts.
    gufm_optimum_hard : float
        The hard-label GUFM optimum (one free feature per sample); ``<= gufm_optimum``.
    distinct_inputs, conflicting_inputs : int
        Distinct inputs, and those among them seen with more than one label.
    gufm_lower_bound : float
        The solver's certified lower bound (equal to the optimum up to tolerance when
        ``gufm_certified``).
    gufm_certified : bool
    gap : float
        ``e2e_objective - gufm_optimum``.
    head_gap : float
        ``head_objective - gufm_optimum``.
    body_penalty : float
        ``e2e_objective - head_objective``: the penalty of every parameter but the
        classifier's (the body regularisation; ``gap = head_gap + body_penalty``).
    collapse : dict
        :func:`gufm.metrics.collapse_report` of the learned features and classifier.
    nc1, nc2, nc3, gufm_distance : float
        ``collapse["nc1"]``, ``collapse["nc2_classifier"]``, ``collapse["nc3"]`` and
        ``collapse["gufm_distance"]``.
    train_accuracy : float
    grad_norm, grad_norm_exact : float
        See :func:`gufm.deep.invariance.gradient_norms` (float64): ``grad_norm`` is the
        gradient norm of the reduced objective, the scale-invariant directions excluded.
    grad_norm_rest : float
        The gradient norm over all parameters outside the scale-invariant groups.
    converged : bool
        ``grad_norm <= gtol`` (the criterion of :func:`gufm.deep.training.train`).
    stop_reason : str
        Why training stopped (passed in by the caller; ``"unknown"`` otherwise).
    feature_violation : float
        Largest deviation of the features from the LayerNorm sphere (relative to rho).
    N, K, d : int
    lam : float
    loss : str
    bias : bool
    seconds : float

    Examples
    --------
    >>> import torch
    >>> from gufm.deep.nets import make_model
    >>> X = torch.randn(6, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    >>> res = compare(make_model("rn1", 1, 6, (1, 2, 2), 2, seed=0), (X, torch.tensor([0, 1] * 3)),
    ...               lam=0.01)
    >>> abs(res.gap - (res.head_gap + res.body_penalty)) < 1e-12
    True
    """

    e2e_objective: float
    e2e_loss: float
    e2e_penalty: float
    head_objective: float
    gufm_optimum: float
    gufm_lower_bound: float
    gufm_certified: bool
    gap: float
    head_gap: float
    body_penalty: float
    nc1: float
    nc2: float
    nc3: float
    gufm_distance: float
    train_accuracy: float
    grad_norm: float
    grad_norm_exact: float
    grad_norm_rest: float
    converged: bool
    stop_reason: str
    feature_violation: float
    N: int
    K: int
    d: int
    lam: float
    loss: str
    bias: bool
    seconds: float
    collapse: dict[str, float] = field(default_factory=dict)
    gufm_optimum_hard: float = math.nan
    distinct_inputs: int = 0
    conflicting_inputs: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dictionary (python scalars)."""
        return asdict(self)


def _features_and_logits(model: nn.Module, X: torch.Tensor, chunk: int | None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    N = X.shape[0]
    size = N if chunk is None else int(chunk)
    Hs, Zs = [], []
    with torch.no_grad():
        for i in range(0, N, size):
            h = model.features(X[i:i + size])
            Hs.append(h)
            Zs.append(model.classifier(h))
    return torch.cat(Hs), torch.cat(Zs)


def compare(model: nn.Module, dataset: Any, *, lam: float, loss: str = "ce",
            bias: bool | None = None, chunk_size: int | None = None, atol: float = 1e-9,
            rtol: float = 1e-8, solve_options: dict[str, Any] | None = None,
            gtol: float = GTOL, stop_reason: str = "unknown",
            converged: bool | None = None) -> ComparisonResult:
    r"""Compare a network with the GUFM optimum (module docstring).

    Parameters
    ----------
    model : nn.Module
        With ``.features(x)`` (B, d) on the LayerNorm sphere and ``.classifier``
        (``nn.Linear(d, K)``).  Not modified (a float64 copy is evaluated).
    dataset : gufm.data.Dataset or tuple (X, y)
    lam : float
        The :math:`\lambda` the network was trained with (penalty on every parameter).
    loss : {"ce", "mse"}
    bias : bool, optional
        Whether the GUFM has a bias (``lam_b = lam``); default: whether the classifier has one.
        Must agree with the classifier.
    chunk_size : int, optional
        Evaluate the network in chunks of this many samples.
    atol, rtol : float
        Tolerance of the inequality checks: ``lhs >= rhs - (atol + rtol * |rhs|)``.
    solve_options : dict, optional
        Keyword arguments for :func:`gufm.solve`.
    gtol : float
        ``converged`` is ``grad_norm <= gtol`` (default: the trainer's ``polish_tol``).
    stop_reason : str
        Recorded as is (the trainer's ``stop_reason``).
    converged : bool, optional
        The trainer's verdict (:attr:`gufm.deep.training.TrainResult.converged`, which also
        counts a stationary singular limit, :mod:`gufm.deep.singular_limit`); the result's
        ``converged`` is ``grad_norm <= gtol or converged``.

    Returns
    -------
    ComparisonResult

    Raises
    ------
    ReductionViolation
        ``e2e < head`` or ``head <`` the certified GUFM lower bound beyond tolerance.
    ValueError
        Bad arguments, features off the sphere, classifier/bias mismatch.

    Examples
    --------
    >>> import torch
    >>> from gufm.deep.nets import make_model
    >>> X = torch.randn(6, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    >>> res = compare(make_model("rn1", 1, 6, (1, 2, 2), 2, seed=0), (X, torch.tensor([0, 1] * 3)),
    ...               lam=0.01)
    >>> res.e2e_objective >= res.head_objective >= res.gufm_optimum, res.stop_reason
    (True, 'unknown')
    """
    t0 = time.perf_counter()
    if not (isinstance(lam, int | float) and math.isfinite(lam) and lam > 0):
        raise ValueError(f"lam must be a positive number, got {lam!r}")
    if not hasattr(model, "features") or not isinstance(getattr(model, "classifier", None),
                                                         nn.Linear):
        raise ValueError("model must have .features(x) and an nn.Linear .classifier")
    has_b = model.classifier.bias is not None
    if bias is None:
        bias = has_b
    if bool(bias) != has_b:
        raise ValueError(f"bias={bias!r} but the classifier {'has' if has_b else 'has no'} bias")
    X, y = (dataset.X, dataset.y) if hasattr(dataset, "X") else dataset
    device = next(model.parameters()).device
    m64 = copy.deepcopy(model).double().eval()
    X = X.to(device)
    X = X.double() if X.is_floating_point() else X
    y = y.to(device=device, dtype=torch.long)
    K = int(model.classifier.out_features)
    d = int(model.classifier.in_features)

    e2e = full_objective(m64, X, y, lam=lam, loss=loss, chunk_size=chunk_size)
    Hr, Z = _features_and_logits(m64, X, chunk_size)
    H = Hr.T.contiguous().cpu().numpy()  # (d, N), columns are samples
    W = m64.classifier.weight.detach().cpu().numpy()
    b = m64.classifier.bias.detach().cpu().numpy() if bias else None
    labels = y.cpu().numpy()
    counts = np.bincount(labels, minlength=K)
    lam_b = float(lam) if bias else None
    prob = GUFM(labels=labels, num_classes=K, dim=d, loss=loss, lam_W=float(lam),
                     lam_b=lam_b)
    viol = float(feasibility_violation(prob, H))
    head = float(objective(prob, W, b, H, check_feasible=True))
    hard = solve(GUFM(counts=counts, dim=d, loss=loss, lam_W=float(lam), lam_b=lam_b),
                 **(solve_options or {}))
    # one feature per distinct input: identical inputs with different labels make the labels
    # soft (docs/reduction.md, section 4); the hard-label head is the soft one plus a constant
    tied = tied_soft_labels(X, labels, K)
    sol, offset = hard, 0.0
    if tied.soft_labels is not None:
        soft = GUFM(soft_labels=tied.soft_labels, dim=d, loss=loss, lam_W=float(lam),
                    lam_b=lam_b)
        sol = solve(soft, **(solve_options or {}))
        offset = head - float(objective(soft, W, b, H, check_feasible=True))
    opt, lb = float(sol.value) + offset, float(sol.lower_bound) + offset

    def tol(v: float) -> float:
        return atol + rtol * abs(v)

    if e2e["objective"] < head - tol(head):
        raise ReductionViolation(
            f"e2e objective {e2e['objective']:.12g} < head objective {head:.12g}: the penalty of "
            "the non-classifier parameters is negative?  This is a bug."
        )
    if math.isfinite(lb) and head < lb - tol(lb):
        raise ReductionViolation(
            f"head objective {head:.12g} < certified GUFM lower bound {lb:.12g} at GUFM-feasible "
            f"features (violation {viol:.2g}): the network, the objective or the solver is wrong."
        )
    if head < opt - tol(opt):
        warnings.warn(
            f"the network's head ({head:.12g}) beats the solver's GUFM value ({opt:.12g}) "
            f"(certified={sol.certified}); the solver did not reach the optimum",
            RuntimeWarning, stacklevel=2,
        )
    rep = collapse_report(H, labels, W, b, gufm_reference=hard, loss=loss, lam=float(lam),
                          lam_b=lam_b)
    rep = {k: float(v) for k, v in rep.items()}
    gn = gradient_norms(m64, X, y, lam=lam, loss=loss, chunk_size=chunk_size)
    acc = float((Z.argmax(1) == y).double().mean())
    return ComparisonResult(
        e2e_objective=e2e["objective"], e2e_loss=e2e["loss"], e2e_penalty=e2e["penalty"],
        head_objective=head, gufm_optimum=opt, gufm_lower_bound=lb,
        gufm_certified=bool(sol.certified), gap=e2e["objective"] - opt, head_gap=head - opt,
        body_penalty=e2e["objective"] - head,
        nc1=rep["nc1"], nc2=rep["nc2_classifier"], nc3=rep["nc3"],
        gufm_distance=rep.get("gufm_distance", math.nan), train_accuracy=acc,
        grad_norm=gn["grad_norm"], grad_norm_exact=gn["grad_norm_exact"],
        grad_norm_rest=float(gn["grad_norm_rest"]),
        converged=bool(gn["grad_norm"] <= gtol or bool(converged)),
        stop_reason=str(stop_reason),
        feature_violation=viol,
        N=int(labels.shape[0]), K=K, d=d, lam=float(lam), loss=loss, bias=bool(bias),
        seconds=time.perf_counter() - t0, collapse=rep, gufm_optimum_hard=float(hard.value),
        distinct_inputs=tied.distinct, conflicting_inputs=tied.conflicting,
    )
