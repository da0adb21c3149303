r"""Stationarity at the LayerNorm singular set: the limit a trained ResNet converges to.

Why a limit.  In a bias-free ResNet on flat input (:class:`gufm.deep.nets.models.FlatEmbedding`)
the feature of sample :math:`s` depends on the embedding only through the *direction* of its
centred embedding :math:`c_s = P(E x_s)`, :math:`P = I - \tfrac1w\mathbf 1\mathbf 1^\top`
(every map after it is positively homogeneous per sample and the last LayerNorm is exact: the
proof in :meth:`gufm.deep.nets.GUFMNet.scale_invariant_groups`).  Training drives some samples
towards :math:`c_s = 0` (:mod:`gufm.deep.conditioning`): there the objective is not
differentiable, its curvature grows like :math:`1/\lVert c_s\rVert^2`, and a trust-region Newton
method started nearby lowers the objective only by moving closer while the gradient grows
(``python -m benchmarks.singular``).  The objective has no stationary point there; its infimum
is approached on the singular set.

The limit objective.  Write :math:`E x_s = a\mathbf 1 + t v` with :math:`Pv = v`,
:math:`\lVert v\rVert = \rho = \sqrt w` and :math:`t \ge 0`.  The feature of :math:`s` is
:math:`F_\theta(v)`, whatever :math:`t > 0` and :math:`a`, so as :math:`t \to 0` the objective
extends continuously to the *stratum*

.. math::

    \mathcal S = \{(\theta, v) : P E x_s = 0,\ Pv = v\},\qquad
    \mathcal L^\star_{\lim}(\theta, v) = \frac1N\Big(\sum_{i\ne s}\ell_i(\theta)
      + \ell\big(F_\theta(v), y_s\big)\Big) + \frac\lambda2\sum_{j\notin G}\lVert\theta_j\rVert^2,

where sample :math:`s`'s feature is a free direction :math:`v` and the embedding obeys one
linear condition.  A network at :math:`t > 0` is a point :math:`(\theta, v = \rho\,
c_s/\lVert c_s\rVert)` at distance :math:`O(t)` from :math:`\mathcal S`, with the same
objective.  A *stationary point of the limit* has

* a zero gradient of :math:`\mathcal L^\star_{\lim}` on :math:`\mathcal S`
  (:attr:`SingularLimit.grad_norm`), with its parts:

  - every parameter but :math:`E`: the ordinary gradient (sample :math:`s`'s term is the same
    function of them at every :math:`t > 0`);
  - :math:`E`: the other samples' gradient :math:`G = \nabla_E \frac1N\sum_{i\ne s}\ell_i`
    (from their own backward pass: subtracting sample :math:`s`'s part, which grows like
    :math:`1/\lVert c_s\rVert`, from the full gradient would cancel), projected on
    the condition, :math:`G - P G x_s x_s^\top/\lVert x_s\rVert^2`, then on the tangent of the
    embedding's scale and taken at its representative (:mod:`gufm.deep.invariance`);
  - :math:`v`: :math:`\nabla_v = (\lVert c_s\rVert/\rho)\,P g_s`, tangent to the sphere, with
    :math:`g_s` the gradient of :math:`\ell_s/N` with respect to :math:`E x_s` (by homogeneity
    :math:`g_s \perp c_s`);

* and a non-negative one-sided derivative along the way out of :math:`\mathcal S`,
  :math:`E \to E + \tau\,\hat v x_s^\top/\lVert x_s\rVert` (:math:`\hat v = v/\rho`,
  :math:`\tau \downarrow 0`): :attr:`SingularLimit.slope`
  :math:`= \hat v^\top G x_s/\lVert x_s\rVert` (at the representative), the first-order
  change of every other sample's loss; :math:`\ell_s` does not change.

Both are invariant under the embedding's scale.  :func:`gufm.deep.training.train` reports a
run whose sample at the embedding's LayerNorm is flagged and whose limit meets both conditions
(``grad_norm <= polish_tol`` and ``slope >= -polish_tol``) as converged *to the singular limit*
(docs/training.md, section 4): its objective is that of a first-order stationary point of the
objective extended to the closure of the parameter space.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.utils.parametrize as parametrize
from torch import Tensor, nn

from gufm.deep.conditioning import LN_MARGIN_FLAG, layernorm_ratios
from gufm.deep.invariance import invariant_groups, reference_norm
from gufm.deep.objective import chunks, data_loss, full_objective, param_penalty

__all__ = ["LimitPolishResult", "SingularLimit", "embedding_margins", "limit_polish",
           "singular_limit"]


@dataclass(frozen=True)
class SingularLimit:
    r"""First-order conditions of the limit objective (module docstring) at one sample.

    Attributes
    ----------
    sample : int
        The sample :math:`s` at the embedding's singular set.
    grad_norm : float
        Norm of the gradient of :math:`\mathcal L^\star_{\lim}` on the stratum.
    slope : float
        One-sided derivative along the way out of the stratum (:math:`\ge 0` at a minimum).
    rest, embedding, direction : float
        The parts of ``grad_norm``: every parameter but the embedding, the embedding, and
        :math:`v`.
    centred_norm : float
        :math:`\lVert c_s\rVert / \lVert E\rVert_F` (how close the network is to the limit).

    Examples
    --------
    >>> SingularLimit(3, 1e-6, 0.2, 1e-6, 0.0, 0.0, 1e-7).stationary(1e-4)
    True
    >>> SingularLimit(3, 1e-6, -0.2, 1e-6, 0.0, 0.0, 1e-7).stationary(1e-4)
    False
    """

    sample: int
    grad_norm: float
    slope: float
    rest: float
    embedding: float
    direction: float
    centred_norm: float

    def stationary(self, tol: float) -> bool:
        """``grad_norm <= tol`` and ``slope >= -tol``."""
        return self.grad_norm <= tol and self.slope >= -tol

    def describe(self, tol: float) -> str:
        """One clause for a stop reason."""
        ok = self.stationary(tol)
        return (f"{'converged' if ok else 'not converged'} to the singular limit of sample "
                f"{self.sample}: limit gradient {self.grad_norm:.3g} "
                f"{'<=' if self.grad_norm <= tol else '>'} {tol:.3g}, outward slope "
                f"{self.slope:.3g} {'>=' if self.slope >= -tol else '<'} -{tol:.3g}")


def applies(model: nn.Module) -> bool:
    """Whether :func:`singular_limit` covers ``model``: a ResNet on flat input.

    Examples
    --------
    >>> from gufm.deep.nets import make_model
    >>> applies(make_model("rn2", 2, 8, (1, 4, 4), 3)), applies(
    ...     make_model("t11", 2, 8, (1, 4, 4), 3, patch_size=2))
    (True, False)
    """
    from gufm.deep.nets.models import FlatEmbedding

    return getattr(model, "family", None) == "resnet" and isinstance(
        getattr(model, "embed", None), FlatEmbedding)


def singular_limit(model: nn.Module, X: Tensor, y: Tensor, *, lam: float, sample: int,
                   loss: str = "ce", chunk_size: int | None = None) -> SingularLimit:
    r"""The limit objective's gradient norm and outward slope at ``sample`` (module docstring).

    ``model`` must be a ResNet on flat input (:func:`applies`); it is not changed (its
    ``.grad`` are cleared).  Computed in ``model``'s precision (float64 for trained models).

    Raises
    ------
    ValueError
        If the model is not covered, ``sample`` is out of range, or the sample's input is 0.

    Examples
    --------
    >>> import torch
    >>> from gufm.deep.nets import make_model
    >>> m = make_model("rn1", 1, 6, (1, 2, 2), 3, seed=0).double()
    >>> X = torch.randn(9, 1, 2, 2, dtype=torch.float64,
    ...                 generator=torch.Generator().manual_seed(0))
    >>> lim = singular_limit(m, X, torch.arange(9) % 3, lam=0.01, sample=4)
    >>> lim.grad_norm >= lim.rest >= 0.0
    True
    """
    if not applies(model):
        raise ValueError("singular_limit covers ResNets on flat input (FlatEmbedding) only, got "
                         f"{type(model).__name__} with family {getattr(model, 'family', None)!r}")
    N = int(X.shape[0])
    if not 0 <= int(sample) < N:
        raise ValueError(f"sample must be in [0, {N}), got {sample!r}")
    s = int(sample)
    E = model.embed.E.weight  # (w, D)
    x = X[s].reshape(-1).to(E.dtype)
    if float(x @ x) == 0.0:
        raise ValueError(f"sample {s} has an all-zero input: it is on the singular set for "
                         "every embedding, and its feature is 0")
    exclude = frozenset(id(p) for g in invariant_groups(model) for p in g)
    params = list(model.parameters())
    for p in params:
        p.grad = None
    # one pass over the data, the other samples first: their embedding gradient G from their
    # own backward pass (subtracting g_s x_s^T from the full gradient would cancel: g_s grows
    # like 1/|c_s|, and its rounding with it)
    others = torch.cat([torch.arange(s), torch.arange(s + 1, N)])
    for sl in chunks(N - 1, chunk_size):
        idx = others[sl]
        (data_loss(model(X[idx]), y[idx], loss, reduction="sum") / N).backward()
    G = E.grad.detach().clone()
    # then sample s, keeping g_s: the gradient of l_s / N with respect to its embedding E x_s
    captured: dict[str, Tensor] = {}

    def keep(_m: nn.Module, _i: object, out: Tensor) -> None:
        out.retain_grad()
        captured["u"] = out

    handle = model.embed.E.register_forward_hook(keep)
    try:
        (data_loss(model(X[s:s + 1]), y[s:s + 1], loss, reduction="sum") / N).backward()
    finally:
        handle.remove()
    penalty = param_penalty(model, lam, exclude)
    if isinstance(penalty, Tensor) and penalty.requires_grad:
        penalty.backward()
    rest = sum(float((p.grad**2).sum()) for p in params if p is not E and p.grad is not None)
    for p in params:
        p.grad = None
    g_s = captured["u"].grad.detach()[0]
    with torch.no_grad():
        En = E.detach()
        xx = x @ x
        Gx = G @ x
        Gc = G - torch.outer(Gx - Gx.mean(), x) / xx  # on the condition P E x_s = 0
        u = En @ x
        c = u - u.mean()
        E_lim = En - torch.outer(c, x) / xx
        ref = reference_norm(model)
        scale = float(E_lim.norm()) / ref  # gradients at the representative: times |E| / ref
        G_tan = Gc - ((Gc * E_lim).sum() / (E_lim * E_lim).sum()) * E_lim
        emb = float(G_tan.norm()) * scale
        cn = float(c.norm())
        if cn == 0.0:
            direction, slope = 0.0, math.nan
        else:
            vhat = c / cn
            gv = (cn / ref) * (g_s - g_s.mean())
            gv = gv - (gv @ vhat) * vhat
            direction = float(gv.norm())
            slope = float(vhat @ Gx) / math.sqrt(float(xx)) * scale
    return SingularLimit(sample=s, grad_norm=math.sqrt(rest + emb**2 + direction**2),
                         slope=slope, rest=math.sqrt(rest), embedding=emb, direction=direction,
                         centred_norm=cn / max(float(En.norm()), 1e-300))


def embedding_margins(model: nn.Module, X: Tensor) -> Tensor:
    r"""Every sample's centred embedding norm :math:`\lVert P E x_i\rVert` over the median of
    them: :func:`gufm.deep.conditioning.layernorm_ratios` at the embedding's LayerNorm (call
    0), shape ``(N,)``; ``model`` as in :func:`singular_limit`.

    Examples
    --------
    >>> import torch
    >>> from gufm.deep.nets import make_model
    >>> m = make_model("rn1", 1, 6, (1, 2, 2), 3, seed=0)
    >>> X = torch.randn(5, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    >>> X[3] = 0.0
    >>> embedding_margins(m, X).argmin().item()
    3
    """
    if not applies(model):
        raise ValueError("embedding_margins covers ResNets on flat input (FlatEmbedding) only")
    return layernorm_ratios(model, X)[0]


class _OnCondition(nn.Module):
    r"""Parametrisation :math:`E \mapsto E - P E x x^\top/\lVert x\rVert^2` (an orthogonal
    projection onto the condition :math:`P E x = 0`)."""

    def __init__(self, x: Tensor) -> None:
        super().__init__()
        self.register_buffer("x", x)

    def forward(self, W: Tensor) -> Tensor:
        Wx = W @ self.x
        return W - torch.outer(Wx - Wx.mean(), self.x) / (self.x @ self.x)


class _LimitNet(nn.Module):
    r"""The network with sample ``x``'s embedding output replaced by ``mean * 1 + v``: the
    limit objective's function of :math:`(\theta, v)` (every input equal to ``x`` is that
    sample: equal inputs have equal embeddings)."""

    def __init__(self, net: nn.Module, x: Tensor, v: Tensor) -> None:
        super().__init__()
        self.net = net
        self.width = net.width
        self.register_buffer("x", x)
        self.v = nn.Parameter(v)

    def forward(self, X: Tensor) -> Tensor:
        mask = (X.reshape(X.shape[0], -1) == self.x).all(dim=1)[:, None]

        def replace(_m: nn.Module, _i: object, out: Tensor) -> Tensor:
            return torch.where(mask, out.mean(dim=-1, keepdim=True) + self.v, out)

        handle = self.net.embed.E.register_forward_hook(replace)
        try:
            return self.net(X)
        finally:
            handle.remove()


@dataclass(frozen=True)
class LimitPolishResult:
    r"""Outcome of :func:`limit_polish`.

    Attributes
    ----------
    sample : int
        The sample freed (-1: none was flagged, nothing done).
    start_objective, objective : float
        Reduced objective before and after (``objective <= start_objective``).
    iterations : int
        L-BFGS iterations on the limit objective.
    limit : SingularLimit or None
        The limit's first-order conditions at the returned network.
    step : float
        The realised step :math:`\tau` off the singular set (:func:`limit_polish`, step 2).
    accepted : bool
        False when the limit did not lower the objective (the network is left unchanged).
    stop_reason : str

    Examples
    --------
    >>> LimitPolishResult(-1, 1.0, 1.0, 0, None, 0.0, False, "no flagged sample").accepted
    False
    """

    sample: int
    start_objective: float
    objective: float
    iterations: int
    limit: SingularLimit | None
    step: float
    accepted: bool
    stop_reason: str

    def converged(self, tol: float) -> bool:
        r"""The returned network is a first-order stationary limit (:meth:`SingularLimit.
        stationary`)."""
        return self.accepted and self.limit is not None and self.limit.stationary(tol)

    def describe(self, tol: float) -> str:
        """One clause for a stop reason."""
        if not self.accepted:
            return f"the singular-limit polish changed nothing: {self.stop_reason}"
        assert self.limit is not None
        return (f"the singular-limit polish ({self.iterations} iterations, {self.stop_reason}) "
                f"lowered the objective by {self.start_objective - self.objective:.3g}; "
                f"{self.limit.describe(tol)}")

    def to_state(self, tol: float) -> dict[str, Any]:
        """What a training result keeps (JSON-friendly; empty when not accepted)."""
        if not self.accepted or self.limit is None:
            return {}
        return {"sample": self.sample, "grad_norm": self.limit.grad_norm,
                "slope": self.limit.slope, "converged": self.converged(tol),
                "decrease": self.start_objective - self.objective, "step": self.step}


def limit_polish(model: nn.Module, X: Tensor, y: Tensor, *, lam: float, loss: str = "ce",
                 max_iter: int = 1000, gtol: float = 1e-4, history_size: int = 100,
                 chunk_size: int | None = None, flag: float = LN_MARGIN_FLAG,
                 steps: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4, 1e-6, 1e-9),
                 record: Callable[[dict[str, Any]], None] | None = None) -> LimitPolishResult:
    r"""Minimise the limit objective at the most singular sample, then realise it as a network.

    For a ResNet on flat input (:func:`applies`) whose smallest :func:`embedding_margins` ratio
    is below ``flag``, sample :math:`s`:

    1. moves the embedding onto the condition :math:`PEx_s = 0` (an exact move for the
       objective: :math:`s`'s feature is kept as the free direction
       :math:`v = \rho\,c_s/\lVert c_s\rVert`), and runs the float64 L-BFGS
       :func:`gufm.deep.polish.polish` on :math:`\mathcal L^\star_{\lim}(\theta, v)` (module
       docstring), the embedding parametrised on the condition
       (:func:`torch.nn.utils.parametrize.register_parametrization`) and :math:`v` a
       scale-invariant group: no curvature of order :math:`1/\lVert c_s\rVert^2` is left;
    2. realises the limit as a network, :math:`E = E_{\lim} + \tau\lVert E_{\lim}\rVert
       \hat v x_s^\top/\lVert x_s\rVert` with :math:`\tau` the best of ``steps`` (every
       :math:`\tau > 0` gives sample :math:`s` the feature of :math:`\hat v`; only the other
       samples move, to first order by ``slope`` :math:`\cdot\,\tau`; measured on L-RN1 at
       L = 8, steps of at least ``1e-4`` all ended above the starting objective, ``1e-9``
       below it).  A network held
       within ``1e-6`` of the singular set loses sample :math:`s`'s feature if its weights
       are cast to float32 (below float32's resolution of the centred embedding);
    3. keeps the network only if its reduced objective is below the starting one (else
       restores it): the result is never above its start.

    ``model`` (float64, trained) is changed in place.  Returns :class:`LimitPolishResult`.
    """
    from gufm.deep.invariance import normalize_groups
    from gufm.deep.polish import polish

    if not applies(model):
        raise ValueError("limit_polish covers ResNets on flat input (FlatEmbedding) only")
    model.double()
    X = X.double() if X.is_floating_point() else X
    groups = invariant_groups(model)
    exclude = frozenset(id(p) for g in groups for p in g)

    def objective() -> float:
        return full_objective(model, X, y, lam=lam, loss=loss, chunk_size=chunk_size,
                              exclude=exclude)["objective"]

    f0 = objective()
    r = embedding_margins(model, X)
    # an all-zero input is on the singular set for every embedding (feature 0, no limit)
    r[X.reshape(X.shape[0], -1).abs().amax(dim=1) == 0] = math.inf
    s = int(r.argmin())
    if not float(r[s]) < flag:
        return LimitPolishResult(-1, f0, f0, 0, None, 0.0, False,
                                 f"no sample within {flag:g} of the singular set at the embedding")
    backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
    layer = model.embed.E
    x = X[s].reshape(-1)
    ref = reference_norm(model)
    with torch.no_grad():
        u = layer.weight @ x
        c = u - u.mean()
        v = c * (ref / c.norm())
        layer.weight.sub_(torch.outer(c, x) / (x @ x))
    parametrize.register_parametrization(layer, "weight", _OnCondition(x))
    net = _LimitNet(model, x, v)
    try:
        lim_groups = [[layer.parametrizations.weight.original], [net.v]]
        pr = polish(net, X, y, lam=lam, loss=loss, groups=lim_groups, max_iter=max_iter,
                    gtol=gtol, history_size=history_size, chunk_size=chunk_size,
                    record=None if record is None else
                    (lambda rec: record({**rec, "phase": "limit"})))
    finally:
        parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
    with torch.no_grad():
        E_lim = layer.weight.detach().clone()
        vhat = net.v.detach() / net.v.detach().norm()
        direction = torch.outer(vhat, x) * (float(E_lim.norm()) / float(x.norm()))
    best_f, best_tau = math.inf, steps[-1]
    for tau in steps:
        with torch.no_grad():
            layer.weight.copy_(E_lim + tau * direction)
        f = objective()
        if f < best_f:
            best_f, best_tau = f, tau
    if not best_f < f0:
        model.load_state_dict(backup)
        return LimitPolishResult(s, f0, f0, pr.iterations, None, 0.0, False,
                                 f"the limit did not lower the objective ({best_f:.12g} >= "
                                 f"{f0:.12g}); network restored")
    with torch.no_grad():
        layer.weight.copy_(E_lim + best_tau * direction)
    normalize_groups(groups, ref)
    lim = singular_limit(model, X, y, lam=lam, sample=s, loss=loss, chunk_size=chunk_size)
    return LimitPolishResult(s, f0, best_f, pr.iterations, lim, best_tau, True,
                             f"sample {s} freed: {pr.stop_reason}")
