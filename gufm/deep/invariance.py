r"""Scale-invariant parameter groups: the reduced objective and its gradient norm.

A group :math:`\theta_G` is *scale invariant* when the network function does not change under
:math:`\theta_G \to c\,\theta_G` for every :math:`c > 0` (which groups each architecture has,
with the proof: :meth:`gufm.deep.nets.GUFMNet.scale_invariant_groups`).  Its penalty
:math:`\tfrac\lambda2 c^2\lVert\theta_G\rVert^2` then falls to 0 with :math:`c`: the
objective :math:`\mathcal L` has an **infimum, not a minimum**, along the scale, and

.. math::

    \inf_\theta \mathcal L = \inf_\theta \mathcal L^\star, \qquad
    \mathcal L^\star(\theta) = \frac1N\sum_i \ell + \frac\lambda2 \sum_{j \notin G}
    \lVert\theta_j\rVert^2 ,

the *reduced objective*, which is itself invariant along every group's scale.  Mode
``"reduce"`` optimises :math:`\mathcal L^\star` and ends with the exact move
:math:`\theta_G \leftarrow c\,\theta_G` that makes the group's penalty negligible
(:func:`shrink_groups`); ``"penalize"`` treats the groups like any other parameter.

Gradient norm of the reduced objective.  By invariance,
:math:`\langle\nabla_G \mathcal L^\star, \theta_G\rangle = 0` (Euler) and
:math:`\nabla_G\mathcal L^\star(c\theta) = \nabla_G\mathcal L^\star(\theta)/c`.  The reported
``grad_norm`` is therefore taken at the *representative* :math:`\lVert\theta_G\rVert = r`
(:func:`reference_norm`, :math:`r = \sqrt d`) with the invariant direction projected out
exactly:

.. math::

    g_G = \frac{\lVert\theta_G\rVert}{r}\Big(\nabla_G\mathcal L^\star
          - \frac{\langle\nabla_G\mathcal L^\star,\theta_G\rangle}{\lVert\theta_G\rVert^2}
          \theta_G\Big), \qquad
    \texttt{grad\_norm} = \big(\lVert\nabla_{\text{rest}}\mathcal L\rVert^2
          + \textstyle\sum_G \lVert g_G\rVert^2\big)^{1/2} ,

which does not depend on the scale the group happens to have.  See docs/training.md,
section 2.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from gufm.deep.objective import full_objective

SCALE_MODES = ("reduce", "penalize")


def invariant_groups(model: nn.Module, mode: str = "reduce") -> list[list[nn.Parameter]]:
    """The model's scale-invariant groups (``model.scale_invariant_groups()``, or
    ``model.scale_invariant_parameters()`` as one group) for ``mode="reduce"``; ``[]`` for
    ``"penalize"`` or models without either method.

    Examples
    --------
    >>> from gufm.deep.nets import make_model
    >>> m = make_model("rn1", 2, 8, (1, 4, 4), 3)
    >>> [len(g) for g in invariant_groups(m)], invariant_groups(m, "penalize")
    ([1], [])
    """
    if mode not in SCALE_MODES:
        raise ValueError(f"scale_invariant must be one of {SCALE_MODES}, got {mode!r}")
    if mode == "penalize":
        return []
    f = getattr(model, "scale_invariant_groups", None)
    if f is not None:
        return [list(g) for g in f().values() if len(g)]
    f = getattr(model, "scale_invariant_parameters", None)
    ps = list(f()) if f is not None else []
    return [ps] if ps else []


def scale_invariant_params(model: nn.Module, mode: str = "reduce") -> list[nn.Parameter]:
    """Every parameter of :func:`invariant_groups`, in one list.

    Examples
    --------
    >>> from gufm.deep.nets import make_model
    >>> len(scale_invariant_params(make_model("t11", 2, 8, (1, 4, 4), 3, patch_size=2)))
    0
    """
    return [p for g in invariant_groups(model, mode) for p in g]


def reference_norm(model: nn.Module) -> float:
    r"""Norm :math:`r = \sqrt d` (``d = model.width``, else 1) of a group's representative.

    Examples
    --------
    >>> from gufm.deep.nets import make_model
    >>> reference_norm(make_model("rn1", 1, 16, (1, 4, 4), 3))
    4.0
    """
    return math.sqrt(float(getattr(model, "width", 1)))


def group_norm(params: list[nn.Parameter]) -> float:
    r""":math:`\lVert\theta_G\rVert_2` of a group (all its tensors together).

    Examples
    --------
    >>> import torch
    >>> group_norm([torch.nn.Parameter(torch.tensor([3.0])), torch.nn.Parameter(torch.tensor([4.0]))])
    5.0
    """
    return math.sqrt(sum(float((p.detach() ** 2).sum()) for p in params))


@torch.no_grad()
def rescale(params: list[nn.Parameter], factor: float) -> None:
    """Multiply every parameter of a group by ``factor`` in place.

    Examples
    --------
    >>> import torch
    >>> p = torch.nn.Parameter(torch.tensor([1.0, 2.0])); rescale([p], 2.0); p.tolist()
    [2.0, 4.0]
    """
    for p in params:
        p.mul_(factor)


def normalize_groups(groups: list[list[nn.Parameter]], norm: float) -> list[float]:
    """Rescale every group to the representative of norm ``norm`` (an exact move for a
    scale-invariant group); returns the factors used.

    Examples
    --------
    >>> import torch
    >>> p = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    >>> normalize_groups([[p]], 1.0), p.tolist()
    ([0.2], [0.6000000238418579, 0.800000011920929])
    """
    out = []
    for g in groups:
        n = group_norm(g)
        c = norm / n if n > 0 else 1.0
        rescale(g, c)
        out.append(c)
    return out


@torch.no_grad()
def shrink_invariant(params: list[nn.Parameter], lam: float, target: float) -> float:
    r"""Scale one scale-invariant group so that :math:`\tfrac\lambda2\lVert\theta_G\rVert^2
    \le` ``target``; returns the factor :math:`c \le 1` used.

    Examples
    --------
    >>> import torch
    >>> p = torch.nn.Parameter(torch.tensor([1.0]))
    >>> shrink_invariant([p], 2.0, 0.25), p.tolist()
    (0.5, [0.5])
    """
    n2 = group_norm(params) ** 2
    if not params or 0.5 * lam * n2 <= target or n2 == 0:
        return 1.0
    c = math.sqrt(2 * target / (lam * n2))
    rescale(params, c)
    return c


def shrink_groups(groups: list[list[nn.Parameter]], lam: float, target: float) -> float:
    """:func:`shrink_invariant` on every group; returns the smallest factor (1: none).

    Examples
    --------
    >>> import torch
    >>> p = torch.nn.Parameter(torch.tensor([1.0]))
    >>> shrink_groups([[p]], 2.0, 0.25)
    0.5
    """
    return min([shrink_invariant(g, lam, target) for g in groups], default=1.0)


def reduced_gradient(model: nn.Module, groups: list[list[nn.Parameter]]
                     ) -> tuple[Tensor, Tensor]:
    r"""From the ``.grad`` of :math:`\mathcal L^\star` (groups' penalties excluded): the
    reduced gradient (module docstring) as two flat vectors, the rest's gradient (every
    parameter outside the groups, in ``model.parameters()`` order) and the groups' projected
    gradients :math:`g_G` at the representative (the groups in order).

    Examples
    --------
    >>> import torch
    >>> m = torch.nn.Linear(2, 1, bias=False); m.width = 4
    >>> m.weight.grad = torch.tensor([[1.0, 1.0]])
    >>> with torch.no_grad():
    ...     _ = m.weight.copy_(torch.tensor([[2.0, 0.0]]))
    >>> rest, inv = reduced_gradient(m, [[m.weight]])  # projected: (0, 1), times |theta| / 2
    >>> rest.numel(), inv.tolist()
    (0, [0.0, 1.0])
    """
    ids = {id(p) for g in groups for p in g}
    params = list(model.parameters())
    dtype = params[0].dtype if params else torch.float64
    rest = [p.grad.reshape(-1) for p in params if p.grad is not None and id(p) not in ids]
    ref = reference_norm(model)
    inv: list[Tensor] = []
    for g in groups:
        n2 = group_norm(g) ** 2
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in g]
        if n2 == 0:
            inv += [torch.zeros_like(gr).reshape(-1) for gr in grads]
            continue
        dot = sum(float((gr * p.detach()).sum()) for gr, p in zip(grads, g, strict=True))
        inv += [((gr - (dot / n2) * p.detach()) * (math.sqrt(n2) / ref)).reshape(-1)
                for gr, p in zip(grads, g, strict=True)]

    def cat(parts: list[Tensor]) -> Tensor:
        return torch.cat(parts) if parts else torch.zeros(0, dtype=dtype)

    return cat(rest), cat(inv)


def reduced_grad_sq(model: nn.Module, groups: list[list[nn.Parameter]]) -> tuple[float, float]:
    r"""The squared norms of :func:`reduced_gradient`'s two parts: the rest's gradient and
    :math:`\sum_G\lVert g_G\rVert^2` at the representative (module docstring).

    Examples
    --------
    >>> import torch
    >>> m = torch.nn.Linear(1, 1)  # no group: everything is the rest
    >>> m.weight.grad, m.bias.grad = torch.tensor([[3.0]]), torch.tensor([4.0])
    >>> reduced_grad_sq(m, [])
    (25.0, 0.0)
    """
    rest, inv = reduced_gradient(model, groups)
    return float((rest.double() ** 2).sum()), float((inv.double() ** 2).sum())


def gradient_norms(model: nn.Module, X: Tensor, y: Tensor, *, lam: float, loss: str = "ce",
                   chunk_size: int | None = None, scale_invariant: str = "reduce"
                   ) -> dict[str, float | dict[str, float]]:
    r"""Full-batch gradient norms over all parameters (the model's dtype).

    Returns
    -------
    dict
        ``grad_norm``: the reduced gradient norm of the module docstring (the convergence
        criterion of the polish; equal to the exact one without invariant groups or with
        ``scale_invariant="penalize"``); ``grad_norm_exact``:
        :math:`\lVert\nabla\mathcal L\rVert_2` at the given weights (inflated along a shrunk
        group by :math:`1/c`); ``grad_norm_rest``: the norm over the parameters outside the
        invariant groups; ``by_param``: ``{name: norm}`` of the exact gradient of every
        parameter.  Leaves ``.grad`` unset.

    Examples
    --------
    >>> import torch
    >>> from gufm.deep.nets import make_model
    >>> m = make_model("rn1", 1, 6, (1, 2, 2), 2, seed=0, dtype=torch.float64)
    >>> X, y = torch.randn(4, 1, 2, 2, dtype=torch.float64), torch.tensor([0, 1, 0, 1])
    >>> g = gradient_norms(m, X, y, lam=0.01)
    >>> g["grad_norm_rest"] <= g["grad_norm"]
    True
    """
    groups = invariant_groups(model, scale_invariant)
    ids = frozenset(id(p) for g in groups for p in g)
    model.zero_grad(set_to_none=True)
    full_objective(model, X, y, lam=lam, loss=loss, backward=True, chunk_size=chunk_size,
                   exclude=ids)
    rest, red = reduced_grad_sq(model, groups)
    exact = sum(float(((p.grad + lam * p.detach()) ** 2).sum()) for g in groups for p in g
                if p.grad is not None)
    by_param = {}
    for name, p in model.named_parameters():
        if p.grad is not None:
            gr = p.grad + lam * p.detach() if id(p) in ids else p.grad
            by_param[name] = math.sqrt(float((gr**2).sum()))
    model.zero_grad(set_to_none=True)
    return {"grad_norm": math.sqrt(rest + red), "grad_norm_exact": math.sqrt(rest + exact),
            "grad_norm_rest": math.sqrt(rest), "by_param": by_param}


def gradient_norm(model: nn.Module, X: Tensor, y: Tensor, *, lam: float, loss: str = "ce",
                  chunk_size: int | None = None) -> float:
    r""":math:`\lVert\nabla_\theta\mathcal L\rVert_2` of the exact objective over all parameters.

    Examples
    --------
    >>> import torch
    >>> m = torch.nn.Linear(2, 2, bias=False)
    >>> with torch.no_grad():
    ...     _ = m.weight.zero_()
    >>> gradient_norm(m, torch.zeros(2, 2), torch.tensor([0, 1]), lam=0.1)
    0.0
    """
    return float(gradient_norms(model, X, y, lam=lam, loss=loss, chunk_size=chunk_size,
                                scale_invariant="penalize")["grad_norm_exact"])
