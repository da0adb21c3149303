r"""ReLU kinks: where the training objective stops being differentiable, measured.

The paper's networks are piecewise smooth: every relu input :math:`z` (a sample's entry at
one relu call of the forward pass) switches the relu's derivative between 0 and 1 at
:math:`z = 0`.  A minimum of a piecewise-smooth objective may lie on such a kink, and then
no gradient criterion can be met there: on each side the gradient stays of the size of its
jump, and a descent method zig-zags along the valley the kink makes.  Two measurements tell
whether a trained network is near such a point.

* :func:`relu_kinks` counts the relu inputs within :math:`t` of 0 *relative to the largest
  one of their own row* (one sample's, or one token's, entries at one call: every map between
  two LayerNorms is positively homogeneous per sample, so that is the scale a kink is
  measured on).  A density that is flat near 0 gives counts proportional to :math:`t`
  (:attr:`ReluKinks.expected`, scaled from the largest threshold); counts far above that
  mean that the optimisation drives inputs *onto* the kinks.
* :func:`kink_subgradient` asks whether the kinks account for the gradient: the entries within
  ``delta`` of their kink may take any derivative :math:`s_k \in [0, 1]` (the relu's
  subdifferential at 0), and the smallest reduced gradient norm (:mod:`gufm.deep.invariance`)
  over those choices is the distance from 0 to (a linearisation of) the convex hull of the
  gradients of the pieces that meet there,

  .. math::

      \min_{s \in [0, 1]^K} \Big\lVert g_0 + \sum_{k=1}^K (s_k - s^0_k)\, J_k \Big\rVert,
      \qquad J_k = g(s_k = 1) - g(s_k = 0),

  with :math:`g_0` the reduced gradient at the natural derivatives :math:`s^0_k =
  \mathbf 1[z_k > 0]` and :math:`J_k` the change of the reduced gradient when entry
  :math:`k`'s derivative alone switches (exact: the gradient is affine in each
  :math:`s_k`; the linearisation drops the products of switches of one sample at several
  calls, so the norm at the chosen :math:`s` is recomputed with every switch applied at once,
  :attr:`KinkSubgradient.checked_norm`).  A small ``min_norm`` at a small ``delta`` is
  approximate Clarke stationarity: the kinks, not a missing descent, keep the gradient up.
  A ``min_norm`` close to ``grad_norm`` rules the kinks out.  Clarke stationarity is
  necessary for a minimum, not sufficient: a kink whose one side goes downhill also brackets
  0 (``tests/deep/test_kinks.py`` has both cases).

Measured on the singular limit of L-RN1 (digits, width 32, 30 per class, :math:`\lambda =
0.005`, L = 8; ``python -m benchmarks.singular --kinks 8 3000``): docs/training.md, section 3.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from gufm.deep.invariance import reduced_gradient
from gufm.deep.nets.blocks import record_relu_inputs
from gufm.deep.objective import full_objective

__all__ = ["KinkSubgradient", "ReluKinks", "kink_subgradient", "relu_kinks"]

#: default thresholds of :func:`relu_kinks`, largest first
THRESHOLDS = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8)


def _relative(inputs: Sequence[Tensor]) -> list[Tensor]:
    """Each call's relu inputs as rows ``(rows, d)``, divided by their row's largest modulus
    (a row of zeros stays 0: every entry of it is at its kink)."""
    out = []
    for z in inputs:
        a = z.reshape(-1, z.shape[-1]).abs()
        out.append(a / a.amax(dim=1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny))
    return out


@dataclass(frozen=True)
class ReluKinks:
    r"""Relu inputs near their kink, per threshold (:func:`relu_kinks`).

    Attributes
    ----------
    thresholds : tuple of float
        Largest first.
    counts : tuple of int
        Relu inputs with :math:`|z| \le t\,\max_{\text{row}}|z|`, per threshold.
    per_call : tuple of tuple of int
        The same counts per relu call (outer: threshold, inner: call).
    total : int
        Relu inputs in a forward pass.

    Examples
    --------
    >>> k = ReluKinks((1e-2, 1e-3), (400, 90), ((400,), (90,)), 10_000)
    >>> k.expected, k.excess
    ((400.0, 40.0), (1.0, 2.25))
    """

    thresholds: tuple[float, ...]
    counts: tuple[int, ...]
    per_call: tuple[tuple[int, ...], ...]
    total: int

    @property
    def expected(self) -> tuple[float, ...]:
        r"""Counts of a density flat near 0, scaled from the largest threshold:
        :math:`c_0\,t/t_0`."""
        return tuple(self.counts[0] * t / self.thresholds[0] for t in self.thresholds)

    @property
    def excess(self) -> tuple[float, ...]:
        """``counts / expected`` (``nan`` where nothing is expected)."""
        return tuple(c / e if e > 0 else math.nan for c, e in zip(self.counts, self.expected,
                                                                   strict=True))


def relu_kinks(model: nn.Module, X: Tensor,
               thresholds: Sequence[float] = THRESHOLDS) -> ReluKinks:
    r"""Count the relu inputs of a full-batch forward pass near their kink (module docstring).

    Parameters
    ----------
    model : nn.Module
        One of :mod:`gufm.deep.nets` (its relus are :func:`gufm.deep.nets.blocks.relu`).
    X : Tensor
        Inputs, in the model's dtype.
    thresholds : sequence of float
        Relative thresholds in :math:`(0, 1)`, sorted largest first.

    Returns
    -------
    ReluKinks

    Examples
    --------
    >>> import torch
    >>> from gufm.deep.nets import make_model
    >>> m = make_model("rn1", 2, 8, (1, 2, 2), 3, seed=0)
    >>> k = relu_kinks(m, torch.randn(5, 1, 2, 2), thresholds=(0.5, 1e-9))
    >>> k.total, len(k.per_call[0])
    (80, 2)
    """
    t = tuple(float(v) for v in thresholds)
    if not t or any(not (0 < v < 1) for v in t) or list(t) != sorted(t, reverse=True):
        raise ValueError(f"thresholds must be in (0, 1), largest first, got {thresholds!r}")
    with torch.no_grad(), record_relu_inputs() as inputs:
        model(X)
    if not inputs:
        raise ValueError(f"{type(model).__name__} has no relu (gufm.deep.nets.blocks.relu)")
    rel = _relative(inputs)
    per_call = tuple(tuple(int((r <= v).sum()) for r in rel) for v in t)
    return ReluKinks(t, tuple(sum(c) for c in per_call), per_call,
                     sum(int(r.numel()) for r in rel))


@dataclass(frozen=True)
class KinkSubgradient:
    r"""Outcome of :func:`kink_subgradient`.

    Attributes
    ----------
    delta : float
        Relative distance to the kink below which an entry's derivative is free.
    pairs : int
        Those entries (:math:`K`).
    grad_norm : float
        Reduced gradient norm at the natural derivatives, :math:`\lVert g_0\rVert`.
    min_norm : float
        The linearised minimum over :math:`s \in [0, 1]^K` (module docstring).
    checked_norm : float
        The reduced gradient norm with every chosen :math:`s_k` applied at once.
    switched : int
        Entries whose chosen derivative differs from the natural one by more than 0.5.

    Examples
    --------
    >>> KinkSubgradient(1e-4, 12, 2e-3, 1e-3, 1.1e-3, 5).ratio
    0.55
    """

    delta: float
    pairs: int
    grad_norm: float
    min_norm: float
    checked_norm: float
    switched: int

    @property
    def ratio(self) -> float:
        """``checked_norm / grad_norm``: how much of the gradient the kinks account for."""
        return self.checked_norm / self.grad_norm if self.grad_norm > 0 else math.nan


def kink_subgradient(model: nn.Module, X: Tensor, y: Tensor, *, lam: float, loss: str = "ce",
                     groups: list[list[nn.Parameter]] | None = None, delta: float = 1e-4,
                     max_pairs: int = 2000) -> KinkSubgradient:
    r"""The smallest reduced gradient norm over the relu derivatives of the entries near their
    kink (module docstring).

    Parameters
    ----------
    model : nn.Module
        At the point to test (parameters unchanged; ``.grad`` is overwritten).
    X, y : Tensor
        Full data set (one batch: the relu calls are counted in one forward pass).
    lam : float
    loss : {"ce", "mse"}
    groups : list of list of Parameter, optional
        Scale-invariant groups (their penalty left out, their gradient projected and taken at
        the representative: :func:`gufm.deep.invariance.reduced_gradient`).
    delta : float
        Entries with :math:`|z| \le \delta \max_{\text{row}}|z|` get a free derivative.
    max_pairs : int
        Refuse more such entries (each costs one backward pass).

    Returns
    -------
    KinkSubgradient
        With no entry within ``delta``: ``min_norm == checked_norm == grad_norm``.

    Examples
    --------
    >>> import torch
    >>> from gufm.deep.nets import make_model
    >>> m = make_model("rn1", 1, 6, (1, 2, 2), 2, seed=0).double()
    >>> X = torch.randn(6, 1, 2, 2, dtype=torch.float64)
    >>> y = torch.tensor([0, 1] * 3)
    >>> r = kink_subgradient(m, X, y, lam=0.01, delta=1e-12)
    >>> r.pairs, r.min_norm == r.grad_norm
    (0, True)
    """
    from scipy.optimize import lsq_linear

    if not (0 < float(delta) < 1):
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    groups = groups or []
    exclude = frozenset(id(p) for g in groups for p in g)

    def gradient(slopes: dict[int, tuple[Tensor, Tensor]] | None = None
                 ) -> tuple[np.ndarray, list[Tensor]]:
        model.zero_grad(set_to_none=True)
        with record_relu_inputs(slopes) as inputs:
            full_objective(model, X, y, lam=lam, loss=loss, backward=True, exclude=exclude)
        rest, inv = reduced_gradient(model, groups)
        model.zero_grad(set_to_none=True)
        return torch.cat([rest, inv]).double().numpy().copy(), inputs

    g0, inputs = gradient()
    rel = _relative(inputs)
    near = [(c, i) for c, r in enumerate(rel) for i in torch.nonzero(r.reshape(-1) <= delta)
            .flatten().tolist()]
    norm0 = float(np.linalg.norm(g0))
    if not near:
        return KinkSubgradient(float(delta), 0, norm0, norm0, norm0, 0)
    if len(near) > max_pairs:
        raise ValueError(f"{len(near)} relu inputs within delta={delta:g} of their kink, more "
                         f"than max_pairs={max_pairs}; lower delta or raise max_pairs")

    def slopes_of(entries: Sequence[tuple[int, int]], values: Sequence[float]
                  ) -> dict[int, tuple[Tensor, Tensor]]:
        out: dict[int, tuple[Tensor, Tensor]] = {}
        for (c, i), v in zip(entries, values, strict=True):
            z = inputs[c]
            if c not in out:
                out[c] = (torch.zeros(z.numel(), dtype=torch.bool),
                          torch.zeros(z.numel(), dtype=z.dtype))
            out[c][0][i] = True
            out[c][1][i] = v
        return {c: (m.reshape(inputs[c].shape), v.reshape(inputs[c].shape))
                for c, (m, v) in out.items()}

    s0 = np.array([float(inputs[c].reshape(-1)[i] > 0) for c, i in near])
    cols = []
    for k, e in enumerate(near):
        gk, _ = gradient(slopes_of([e], [1.0 - s0[k]]))
        cols.append((gk - g0) if s0[k] == 0 else (g0 - gk))  # J_k = g(s_k=1) - g(s_k=0)
    J = np.stack(cols, axis=1)
    sol = lsq_linear(J, -(g0 - J @ s0), bounds=(0.0, 1.0), method="bvls")
    s = np.clip(sol.x, 0.0, 1.0)
    lin = float(np.linalg.norm(g0 + J @ (s - s0)))
    gs, _ = gradient(slopes_of(near, s.tolist()))
    return KinkSubgradient(float(delta), len(near), norm0, lin, float(np.linalg.norm(gs)),
                           int((np.abs(s - s0) > 0.5).sum()))
