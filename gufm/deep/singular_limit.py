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

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from numbers import Integral
from typing import Any

import torch
import torch.nn.utils.parametrize as parametrize
from torch import Tensor, nn

from gufm.deep.conditioning import LN_MARGIN_FLAG, layernorm_ratios
from gufm.deep.invariance import invariant_groups, reference_norm
from gufm.deep.objective import chunks, data_loss, full_objective, param_penalty

__all__ = ["LimitPolishResult", "SingularLimit", "embedding_margins", "limit_network",
           "limit_polish", "singular_limit"]


@dataclass(frozen=True)
class SingularLimit:
    r"""First-order conditions of the limit objective (module docstring) at a set of samples.

    Attributes
    ----------
    samples : tuple of int
        The samples :math:`S` at the embedding's singular set.
    grad_norm : float
        Norm of the gradient of :math:`\mathcal L^\star_{\lim}` on the stratum.
    slope : float
        The smallest of ``slopes`` (:math:`\ge 0` at a minimum).
    rest, embedding, direction : float
        The parts of ``grad_norm``: every parameter but the embedding, the embedding, and the
        directions :math:`v_s` (all of them together).
    centred_norm : float
        :math:`\max_s \lVert c_s\rVert / \lVert E\rVert_F` (how close the network is to the
        limit).
    slopes : tuple of float
        The one-sided derivative along each sample's way out of the stratum, in the order of
        ``samples`` (a negative one: releasing that sample lowers the objective to first
        order).

    Examples
    --------
    >>> SingularLimit((3,), 1e-6, 0.2, 1e-6, 0.0, 0.0, 1e-7).stationary(1e-4)
    True
    >>> SingularLimit((3, 8), 1e-6, -0.2, 1e-6, 0.0, 0.0, 1e-7).stationary(1e-4)
    False
    """

    samples: tuple[int, ...]
    grad_norm: float
    slope: float
    rest: float
    embedding: float
    direction: float
    centred_norm: float
    slopes: tuple[float, ...] = ()

    def stationary(self, tol: float) -> bool:
        """``grad_norm <= tol`` and ``slope >= -tol``."""
        return self.grad_norm <= tol and self.slope >= -tol

    def describe(self, tol: float) -> str:
        """One clause for a stop reason."""
        ok = self.stationary(tol)
        who = (f"sample {self.samples[0]}" if len(self.samples) == 1
               else f"samples {', '.join(map(str, self.samples))}")
        return (f"{'converged' if ok else 'not converged'} to the singular limit of {who}: "
                f"limit gradient {self.grad_norm:.3g} "
                f"{'<=' if self.grad_norm <= tol else '>'} {tol:.3g}, outward slope "
                f"{self.slope:.3g} {'>=' if self.slope >= -tol else '<'} -{tol:.3g}"
                + (f" (sample {self.samples[self.slopes.index(self.slope)]} would leave the "
                   "singular set)" if self.slope < -tol and self.slope in self.slopes else ""))


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


#: smallest eigenvalue of the freed inputs' Gram matrix over its largest, and smallest distance
#: of another input to their span over its norm, for a set of samples to be freed together
SPAN_TOL = 1e-8


def _members(flat: Tensor, Xs: Tensor) -> Tensor:
    """For each row of ``flat`` (n, D), the index of the equal row of ``Xs`` (k, D), else -1
    (equal inputs have equal embeddings: a duplicate of a freed sample is that sample)."""
    out = torch.full((flat.shape[0],), -1, dtype=torch.int64, device=flat.device)
    for j in range(Xs.shape[0] - 1, -1, -1):  # one (n, D) comparison at a time; first match wins
        out[(flat == Xs[j]).all(dim=1)] = j
    return out


def _dual_basis(flat: Tensor, S: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    r""":math:`B = X_S(X_S^\top X_S)^{-1}` (D, k), the dual basis of the freed inputs
    (:math:`B^\top X_S = I`; the condition's projection is :math:`E \mapsto E - P E X_S
    B^\top`), and :func:`_members` of every input.

    Raises ``ValueError`` when an input is 0, the inputs are linearly dependent, or another
    input lies in their span (the condition would put it on the singular set too)."""
    Xs = flat[list(S)].T  # (D, k)
    norms = Xs.norm(dim=0)
    if bool((norms == 0).any()):
        z = S[int((norms == 0).nonzero()[0])]
        raise ValueError(f"sample {z} has an all-zero input: it is on the singular set for "
                         "every embedding, and its feature is 0")
    gram = Xs.T @ Xs
    ev = torch.linalg.eigvalsh(gram)
    if not float(ev[0]) > SPAN_TOL * float(ev[-1]):
        raise ValueError(f"the inputs of samples {S} are linearly dependent (Gram eigenvalues "
                         f"{float(ev[0]):.3g} to {float(ev[-1]):.3g}): they cannot be freed "
                         "together")
    B = Xs @ torch.linalg.inv(gram)
    member = _members(flat, Xs.T)
    others = member < 0
    rest = flat[others]
    off = rest - (rest @ B) @ Xs.T
    rel = off.norm(dim=1) / rest.norm(dim=1).clamp_min(1e-300)
    inside = (rel <= SPAN_TOL) & (rest.norm(dim=1) > 0)
    if bool(inside.any()):
        i = int(others.nonzero().flatten()[int(inside.nonzero()[0])])
        raise ValueError(f"sample {i}'s input lies in the span of the inputs of samples {S}: "
                         "the condition P E x_s = 0 would put it on the singular set too")
    return B, member


def singular_limit(model: nn.Module, X: Tensor, y: Tensor, *, lam: float,
                   samples: int | Sequence[int], loss: str = "ce",
                   chunk_size: int | None = None) -> SingularLimit:
    r"""The limit objective's gradient norm and outward slope at ``samples`` (module docstring).

    ``samples`` is one index or several (their inputs linearly independent; a duplicate of a
    freed input is the same sample).  ``model`` must be a ResNet on flat input
    (:func:`applies`); it is not changed (its ``.grad`` are cleared).  Computed in ``model``'s
    precision (float64 for trained models).

    Raises
    ------
    ValueError
        If the model is not covered, a sample is out of range or repeated, an input is 0, or
        the inputs are linearly dependent or span another input.

    Examples
    --------
    >>> import torch
    >>> from gufm.deep.nets import make_model
    >>> m = make_model("rn1", 1, 6, (1, 2, 2), 3, seed=0).double()
    >>> X = torch.randn(9, 1, 2, 2, dtype=torch.float64,
    ...                 generator=torch.Generator().manual_seed(0))
    >>> lim = singular_limit(m, X, torch.arange(9) % 3, lam=0.01, samples=4)
    >>> lim.grad_norm >= lim.rest >= 0.0, lim.samples
    (True, (4,))
    >>> singular_limit(m, X, torch.arange(9) % 3, lam=0.01, samples=[4, 7]).samples
    (4, 7)
    """
    if not applies(model):
        raise ValueError("singular_limit covers ResNets on flat input (FlatEmbedding) only, got "
                         f"{type(model).__name__} with family {getattr(model, 'family', None)!r}")
    N = int(X.shape[0])
    S = _check_samples(samples, N)
    E = model.embed.E.weight  # (w, D)
    flat = X.reshape(N, -1).to(E.dtype)
    B, member = _dual_basis(flat, S)
    Xs = flat[list(S)].T  # (D, k)
    exclude = frozenset(id(p) for g in invariant_groups(model) for p in g)
    params = list(model.parameters())
    for p in params:
        p.grad = None
    # one pass over the data, the other samples first: their embedding gradient G from their
    # own backward pass (subtracting g_s x_s^T from the full gradient would cancel: g_s grows
    # like 1/|c_s|, and its rounding with it)
    others = (member < 0).nonzero().flatten()
    for sl in chunks(int(others.numel()), chunk_size):
        idx = others[sl]
        (data_loss(model(X[idx]), y[idx], loss, reduction="sum") / N).backward()
    G = E.grad.detach().clone() if E.grad is not None else torch.zeros_like(E)
    # then the freed samples, keeping g_s: the gradient of l_s / N with respect to E x_s
    captured: dict[str, Tensor] = {}

    def keep(_m: nn.Module, _i: object, out: Tensor) -> None:
        out.retain_grad()
        captured["u"] = out

    rows = (member >= 0).nonzero().flatten()
    handle = model.embed.E.register_forward_hook(keep)
    try:
        (data_loss(model(X[rows]), y[rows], loss, reduction="sum") / N).backward()
    finally:
        handle.remove()
    penalty = param_penalty(model, lam, exclude)
    if isinstance(penalty, Tensor) and penalty.requires_grad:
        penalty.backward()
    rest = sum(float((p.grad**2).sum()) for p in params if p is not E and p.grad is not None)
    for p in params:
        p.grad = None
    k = len(S)
    with torch.no_grad():
        g_rows = captured["u"].grad.detach()
        g = torch.zeros(k, g_rows.shape[1], dtype=g_rows.dtype).index_add_(
            0, member[rows], g_rows)  # (k, w): duplicates share their direction
        En = E.detach()
        Gx, GB = G @ Xs, G @ B  # (w, k) each
        Gc = G - (Gx - Gx.mean(dim=0)) @ B.T  # on the condition P E X_S = 0
        U = En @ Xs
        C = U - U.mean(dim=0)  # (w, k): the centred embeddings c_s
        E_lim = En - C @ B.T
        ref = reference_norm(model)
        scale = float(E_lim.norm()) / ref  # gradients at the representative: times |E| / ref
        G_tan = Gc - ((Gc * E_lim).sum() / (E_lim * E_lim).sum()) * E_lim
        emb = float(G_tan.norm()) * scale
        cn = C.norm(dim=0)
        direction_sq, slopes = 0.0, []
        for j in range(k):
            if float(cn[j]) == 0.0:
                slopes.append(math.nan)
                continue
            vhat = C[:, j] / cn[j]
            gv = (cn[j] / ref) * (g[j] - g[j].mean())
            gv = gv - (gv @ vhat) * vhat
            direction_sq += float(gv @ gv)
            slopes.append(float(vhat @ GB[:, j]) / float(B[:, j].norm()) * scale)
    slope = math.nan if any(math.isnan(t) for t in slopes) else min(slopes)
    return SingularLimit(samples=S, grad_norm=math.sqrt(rest + emb**2 + direction_sq),
                         slope=slope, rest=math.sqrt(rest), embedding=emb,
                         direction=math.sqrt(direction_sq),
                         centred_norm=float(cn.max()) / max(float(En.norm()), 1e-300),
                         slopes=tuple(slopes))


def _check_samples(samples: int | Sequence[int], N: int) -> tuple[int, ...]:
    raw = [samples] if isinstance(samples, Integral) else list(samples)
    if not raw:
        raise ValueError("samples must name at least one sample")
    for s in raw:
        if isinstance(s, bool) or not isinstance(s, Integral) or not 0 <= int(s) < N:
            raise ValueError(f"samples must be indices in [0, {N}), got {s!r}")
    S = tuple(int(s) for s in raw)
    if len(set(S)) != len(S):
        raise ValueError(f"samples must not repeat, got {S}")
    return S


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
    r"""Parametrisation :math:`E \mapsto E - P E X_S B^\top` (:func:`_dual_basis`): the orthogonal
    projection onto the condition :math:`P E X_S = 0`."""

    def __init__(self, Xs: Tensor, B: Tensor) -> None:
        super().__init__()
        self.register_buffer("Xs", Xs)
        self.register_buffer("B", B)

    def forward(self, W: Tensor) -> Tensor:
        WX = W @ self.Xs
        return W - (WX - WX.mean(dim=0)) @ self.B.T


class _LimitNet(nn.Module):
    r"""The network with each freed sample's embedding output replaced by ``mean * 1 + v_s``:
    the limit objective's function of :math:`(\theta, v)` (every input equal to a freed input
    is that sample: equal inputs have equal embeddings).  Each :math:`v_s` is its own
    parameter (its own scale-invariant group)."""

    def __init__(self, net: nn.Module, Xs: Tensor, V: list[Tensor]) -> None:
        super().__init__()
        self.net = net
        self.width = net.width
        self.register_buffer("Xs", Xs)  # (k, D)
        self.v = nn.ParameterList([nn.Parameter(v) for v in V])

    def forward(self, X: Tensor) -> Tensor:
        idx = _members(X.reshape(X.shape[0], -1), self.Xs)
        hit = (idx >= 0)[:, None]
        V = torch.stack(list(self.v))

        def replace(_m: nn.Module, _i: object, out: Tensor) -> Tensor:
            return torch.where(hit, out.mean(dim=-1, keepdim=True) + V[idx.clamp_min(0)], out)

        handle = self.net.embed.E.register_forward_hook(replace)
        try:
            return self.net(X)
        finally:
            handle.remove()


@contextlib.contextmanager
def limit_network(model: nn.Module, X: Tensor, samples: Sequence[int],
                  directions: Sequence[Tensor] | None = None
                  ) -> Iterator[tuple[nn.Module, list[list[nn.Parameter]]]]:
    r"""The limit objective's network at ``samples`` (module docstring), for a ResNet on flat
    input near that limit.

    On entry the embedding moves onto the condition :math:`PEX_S = 0` (its orthogonal
    projection) and is parametrised on it (:func:`torch.nn.utils.parametrize.
    register_parametrization`); each freed sample's embedding output is replaced by a free
    direction :math:`v_s`, by default its current centred embedding scaled to the reference
    norm (so a network close to the limit keeps its objective up to :math:`O(\lVert c_s\rVert)`).
    Yields ``(net, groups)``: the limit network (its parameters those of ``model`` plus the
    :math:`v_s`) and its scale-invariant groups (the embedding, each :math:`v_s`), what
    :func:`gufm.deep.polish.polish` and :func:`gufm.deep.kinks.kink_subgradient` take.  On exit
    the parametrisation is removed, ``model``'s embedding left on the condition (exactly on the
    singular set: :func:`limit_polish` realises it as a network afterwards).

    Parameters
    ----------
    model : nn.Module
        A ResNet on flat input (:func:`applies`), float64; changed in place.
    X : Tensor
        All inputs (freed inputs are recognised among them).
    samples : sequence of int
        The freed samples :math:`S` (inputs linearly independent).
    directions : sequence of Tensor, optional
        :math:`v_s` for each sample, shape ``(width,)``; required for a sample whose
        centred embedding is 0 to rounding (:math:`\le 10^{-12}\lVert E\rVert\lVert
        x_s\rVert`).

    Examples
    --------
    >>> import torch
    >>> from gufm.deep.nets import make_model
    >>> m = make_model("rn1", 1, 6, (1, 2, 2), 2, seed=0).double()
    >>> X = torch.randn(5, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> with limit_network(m, X, [3]) as (net, groups):
    ...     len(groups), tuple(net(X).shape)
    (2, (5, 2))
    >>> float(embedding_margins(m, X)[3]) < 1e-12  # sample 3 is now on the singular set
    True
    """
    if not applies(model):
        raise ValueError("limit_network covers ResNets on flat input (FlatEmbedding) only")
    S = _check_samples(list(samples), X.shape[0])
    flat = X.reshape(X.shape[0], -1).to(model.embed.E.weight.dtype)
    layer = model.embed.E
    if directions is None:
        with torch.no_grad():
            C = layer.weight @ flat[list(S)].T
            C = C - C.mean(dim=0)
            norms = C.norm(dim=0)
            scale = float(layer.weight.norm()) * flat[list(S)].norm(dim=1)
            if bool((norms <= 1e-12 * scale).any()):  # rounding: no direction to read
                raise ValueError("a sample's centred embedding is 0 to rounding: pass its "
                                 "direction in directions")
            directions = list((C * (reference_norm(model) / norms)).T)
    if len(directions) != len(S):
        raise ValueError(f"directions: {len(directions)} for {len(S)} samples")
    B, _ = _dual_basis(flat, S)
    on_condition = _OnCondition(flat[list(S)].T, B)
    with torch.no_grad():
        layer.weight.copy_(on_condition(layer.weight))
    parametrize.register_parametrization(layer, "weight", on_condition)
    try:
        net = _LimitNet(model, flat[list(S)], [d.detach().clone() for d in directions])
        yield net, [[layer.parametrizations.weight.original], *[[v] for v in net.v]]
    finally:
        parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)


@dataclass(frozen=True)
class LimitPolishResult:
    r"""Outcome of :func:`limit_polish`.

    Attributes
    ----------
    samples : tuple of int
        The samples freed, in the order they were freed (empty: none was flagged, nothing
        done).
    start_objective, objective : float
        Reduced objective before and after (``objective <= start_objective``).
    iterations : int
        L-BFGS iterations on the limit objective, all rounds together.
    limit : SingularLimit or None
        The limit's first-order conditions at the returned network.
    step : float
        The realised step :math:`\tau` off the singular set (:func:`limit_polish`, step 3).
    accepted : bool
        False when the limit did not lower the objective (the network is left unchanged).
    stop_reason : str
    rounds : int
        Rounds of :func:`limit_polish` (one per set of newly flagged samples).

    Examples
    --------
    >>> LimitPolishResult((), 1.0, 1.0, 0, None, 0.0, False, "no flagged sample").accepted
    False
    """

    samples: tuple[int, ...]
    start_objective: float
    objective: float
    iterations: int
    limit: SingularLimit | None
    step: float
    accepted: bool
    stop_reason: str
    rounds: int = 0

    def converged(self, tol: float) -> bool:
        r"""The returned network is a first-order stationary limit (:meth:`SingularLimit.
        stationary`)."""
        return self.accepted and self.limit is not None and self.limit.stationary(tol)

    def describe(self, tol: float) -> str:
        """One clause for a stop reason."""
        if not self.accepted:
            return f"the singular-limit polish changed nothing: {self.stop_reason}"
        assert self.limit is not None
        return (f"the singular-limit polish ({self.rounds} round{'s' * (self.rounds != 1)}, "
                f"{self.iterations} iterations, {self.stop_reason}) lowered the objective by "
                f"{self.start_objective - self.objective:.3g}; {self.limit.describe(tol)}")

    def to_state(self, tol: float) -> dict[str, Any]:
        """What a training result keeps (JSON-friendly; empty when not accepted)."""
        if not self.accepted or self.limit is None:
            return {}
        return {"samples": list(self.samples), "grad_norm": self.limit.grad_norm,
                "slope": self.limit.slope, "converged": self.converged(tol),
                "decrease": self.start_objective - self.objective, "step": self.step}


def _flagged(model: nn.Module, X: Tensor, flat: Tensor, S: list[int], flag: float,
             room: int) -> list[int]:
    """Samples below ``flag`` at the embedding's LayerNorm, most singular first, that can join
    ``S`` (not a duplicate of a freed input, inputs independent, no other input in the span),
    at most ``room``."""
    r = embedding_margins(model, X)
    # an all-zero input is on the singular set for every embedding (feature 0, no limit)
    r[flat.abs().amax(dim=1) == 0] = math.inf
    if S:
        r[_members(flat, flat[S]) >= 0] = math.inf
    out: list[int] = []
    for i in r.argsort().tolist():
        if len(out) >= room or not float(r[i]) < flag:
            break
        if i in out or (out and bool((_members(flat[i:i + 1], flat[out]) >= 0).any())):
            continue
        try:
            _dual_basis(flat, tuple(S + out + [i]))
        except ValueError:
            continue
        out.append(i)
    return out


def limit_polish(model: nn.Module, X: Tensor, y: Tensor, *, lam: float, loss: str = "ce",
                 max_iter: int = 1000, gtol: float = 1e-4, history_size: int = 100,
                 chunk_size: int | None = None, flag: float = LN_MARGIN_FLAG,
                 max_free: int = 8,
                 steps: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4, 1e-6, 1e-9),
                 record: Callable[[dict[str, Any]], None] | None = None) -> LimitPolishResult:
    r"""Minimise the limit objective at the singular samples, then realise it as a network.

    For a ResNet on flat input (:func:`applies`), in rounds:

    1. the samples whose :func:`embedding_margins` ratio is below ``flag`` (and not yet freed;
       most singular first, at most ``max_free`` in all, inputs linearly independent and
       spanning no other input) join the freed set :math:`S`; none: stop;
    2. the embedding moves onto the condition :math:`PEX_S = 0` (an exact move for the
       objective: each new :math:`s`'s feature is kept as its free direction
       :math:`v_s = \rho\,c_s/\lVert c_s\rVert`; the earlier ones are already on it), and the
       float64 L-BFGS :func:`gufm.deep.polish.polish` runs for ``max_iter`` iterations on
       :math:`\mathcal L^\star_{\lim}(\theta, v)` (module docstring), the embedding
       parametrised on the condition (:func:`torch.nn.utils.parametrize.
       register_parametrization`) and each :math:`v_s` a scale-invariant group: no curvature
       of order :math:`1/\lVert c_s\rVert^2` is left.  A round can drive another sample towards
       the singular set (on L-RN1 at L = 8, ``python -m benchmarks.depth_table closing``: sample
       136 below the flag once sample 263 was freed); the next round frees it;
    3. realises the limit as a network, :math:`E = E_{\lim} + \tau\lVert E_{\lim}\rVert
       \sum_{s\in S}\lVert x_s\rVert\hat v_s b_s^\top` (:math:`b_s` the dual basis,
       :math:`b_s^\top x_t = \delta_{st}`, so :math:`PEx_s = \tau\lVert E_{\lim}\rVert
       \lVert x_s\rVert\hat v_s`) with :math:`\tau` the best of ``steps`` (every
       :math:`\tau > 0` gives each freed sample the feature of :math:`\hat v_s`; only the other
       samples move, to first order by the outward slopes :math:`\cdot\,\tau`; measured on
       L-RN1 at L = 8, steps of at least ``1e-4`` all ended above the starting objective,
       ``1e-9`` below it).  A network held within ``1e-6`` of the singular set loses the freed
       samples' features if its weights are cast to float32 (below float32's resolution of
       the centred embedding);
    4. keeps the network only if its reduced objective is below the starting one (else
       restores it): the result is never above its start.

    ``model`` (float64, trained) is changed in place.  Returns :class:`LimitPolishResult`.
    """
    from gufm.deep.invariance import normalize_groups
    from gufm.deep.polish import polish

    if not applies(model):
        raise ValueError("limit_polish covers ResNets on flat input (FlatEmbedding) only")
    if isinstance(max_free, bool) or not isinstance(max_free, int) or max_free < 1:
        raise ValueError(f"max_free must be a positive integer, got {max_free!r}")
    model.double()
    X = X.double() if X.is_floating_point() else X
    flat = X.reshape(X.shape[0], -1).double()
    groups = invariant_groups(model)
    exclude = frozenset(id(p) for g in groups for p in g)

    def objective() -> float:
        return full_objective(model, X, y, lam=lam, loss=loss, chunk_size=chunk_size,
                              exclude=exclude)["objective"]

    f0 = objective()
    S: list[int] = []
    V: list[Tensor] = []
    layer = model.embed.E
    ref = reference_norm(model)
    backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
    iterations, rounds, reasons = 0, 0, []
    while True:
        new = _flagged(model, X, flat, S, flag, max_free - len(S))
        if not new:
            break
        with torch.no_grad():
            C = layer.weight @ flat[new].T
            C = C - C.mean(dim=0)
            V += [C[:, j] * (ref / C[:, j].norm()) for j in range(len(new))]
        S += new
        with limit_network(model, X, S, V) as (net, lim_groups):
            pr = polish(net, X, y, lam=lam, loss=loss, groups=lim_groups, max_iter=max_iter,
                        gtol=gtol, history_size=history_size, chunk_size=chunk_size,
                        record=None if record is None else
                        (lambda rec: record({**rec, "phase": "limit"})))
            V = [v.detach().clone() for v in net.v]
        iterations += pr.iterations
        rounds += 1
        reasons.append(f"sample{'s' * (len(new) > 1)} {', '.join(map(str, new))} freed: "
                       f"{pr.stop_reason}")
    if not S:
        return LimitPolishResult((), f0, f0, 0, None, 0.0, False,
                                 f"no sample within {flag:g} of the singular set at the embedding")
    B, _ = _dual_basis(flat, tuple(S))
    with torch.no_grad():
        E_lim = layer.weight.detach().clone()
        Vhat = torch.stack([v / v.norm() for v in V], dim=1)  # (w, k)
        direction = (Vhat * flat[S].norm(dim=1)) @ B.T * float(E_lim.norm())

    def realise(tau: float) -> None:
        with torch.no_grad():
            layer.weight.copy_(E_lim + tau * direction)
        normalize_groups(groups, ref)  # the representative, as every returned network

    best_f, best_tau = math.inf, steps[-1]
    for tau in steps:
        realise(tau)
        f = objective()
        if f < best_f:
            best_f, best_tau = f, tau
    reason = "; ".join(reasons)
    if not best_f < f0:
        model.load_state_dict(backup)
        return LimitPolishResult(tuple(S), f0, f0, iterations, None, 0.0, False,
                                 f"the limit did not lower the objective ({best_f:.12g} >= "
                                 f"{f0:.12g}; {reason}); network restored", rounds)
    realise(best_tau)
    lim = singular_limit(model, X, y, lam=lam, samples=S, loss=loss, chunk_size=chunk_size)
    return LimitPolishResult(tuple(S), f0, best_f, iterations, lim, best_tau, True, reason,
                             rounds)
