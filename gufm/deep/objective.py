r"""The end-to-end objective of a network and its full-batch evaluation.

.. math::

    \mathcal L(\theta) = \frac1N\sum_{i=1}^N \ell\big(f_\theta(x_i), y_i\big)
                         + \frac{\lambda}{2}\sum_{\theta_j \in \theta}\lVert\theta_j\rVert^2 ,

with :math:`\ell` the GUFM losses (``ce``: :math:`\operatorname{logsumexp}(z) - z_y`; ``mse``:
:math:`\tfrac12\lVert z - e_y\rVert^2`) and the penalty over **all** parameters, written into
the loss (not an optimiser's ``weight_decay``).  See docs/training.md, section 1.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LOSSES = ("ce", "mse")


def data_loss(logits: Tensor, y: Tensor, loss: str, reduction: str = "mean") -> Tensor:
    r"""Per-sample GUFM loss: CE :math:`\operatorname{logsumexp}(z)-z_y`, MSE
    :math:`\tfrac12\lVert z-e_y\rVert^2`; averaged (``"mean"``) or summed (``"sum"``).

    Examples
    --------
    >>> import torch
    >>> z = torch.tensor([[0.0, 0.0]]); y = torch.tensor([0])
    >>> round(float(data_loss(z, y, "ce")), 6), float(data_loss(z, y, "mse"))
    (0.693147, 0.5)
    """
    if loss == "ce":
        return F.cross_entropy(logits, y, reduction=reduction)
    if loss == "mse":
        target = F.one_hot(y, logits.shape[1]).to(logits.dtype)
        per = 0.5 * ((logits - target) ** 2).sum(dim=1)
        return per.mean() if reduction == "mean" else per.sum()
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


def param_penalty(model: nn.Module, lam: float, exclude: frozenset[int] = frozenset()) -> Tensor:
    r""":math:`\tfrac{\lambda}{2}\sum_j\lVert\theta_j\rVert^2` over all parameters (except those
    whose ``id`` is in ``exclude``).

    Examples
    --------
    >>> import torch
    >>> m = torch.nn.Linear(2, 1, bias=False)
    >>> with torch.no_grad():
    ...     _ = m.weight.copy_(torch.tensor([[3.0, 4.0]]))
    >>> float(param_penalty(m, 0.1).detach())
    1.25
    """
    return 0.5 * lam * sum((p * p).sum() for p in model.parameters() if id(p) not in exclude)


def chunks(n: int, size: int | None) -> list[slice]:
    """Slices of ``range(n)`` of at most ``size`` (``None``: one slice).

    Examples
    --------
    >>> chunks(5, 2)
    [slice(0, 2, None), slice(2, 4, None), slice(4, 5, None)]
    """
    size = n if size is None or size >= n else int(size)
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def full_objective(model: nn.Module, X: Tensor, y: Tensor, *, lam: float, loss: str = "ce",
                   backward: bool = False, chunk_size: int | None = None,
                   exclude: frozenset[int] = frozenset()) -> dict[str, float]:
    r"""The end-to-end objective :math:`\mathcal L` over the whole data set, optionally
    accumulating its gradient.

    Evaluated in chunks of ``chunk_size`` samples (default: all at once); with
    ``backward=True`` the gradients of :math:`\mathcal L` are *accumulated* into ``.grad``
    (zero them first).  Parameters whose ``id`` is in ``exclude`` are not penalised.

    Returns
    -------
    dict with ``objective``, ``loss`` (mean data loss), ``penalty`` and ``accuracy``.

    Examples
    --------
    >>> import torch
    >>> m = torch.nn.Linear(2, 2, bias=False)
    >>> with torch.no_grad():
    ...     _ = m.weight.zero_()
    >>> X, y = torch.ones(3, 2), torch.tensor([0, 1, 1])
    >>> out = full_objective(m, X, y, lam=0.1)
    >>> round(out["objective"], 6), out["penalty"]
    (0.693147, 0.0)
    """
    N = X.shape[0]
    total_loss = 0.0
    correct = 0
    for sl in chunks(N, chunk_size):
        with torch.set_grad_enabled(backward):
            logits = model(X[sl])
            part = data_loss(logits, y[sl], loss, reduction="sum") / N
            if backward:
                part.backward()
        total_loss += float(part.detach())
        correct += int((logits.detach().argmax(1) == y[sl]).sum())
    with torch.set_grad_enabled(backward):
        pen = param_penalty(model, lam, exclude)
        if backward and isinstance(pen, Tensor) and pen.requires_grad:
            pen.backward()
    pen_v = float(pen.detach()) if isinstance(pen, Tensor) else float(pen)
    return {"objective": total_loss + pen_v, "loss": total_loss, "penalty": pen_v,
            "accuracy": correct / N}


def clone_double(model: nn.Module) -> nn.Module:
    """A float64 deep copy of ``model`` (for exact evaluation).

    Examples
    --------
    >>> import torch
    >>> next(clone_double(torch.nn.Linear(2, 2)).parameters()).dtype
    torch.float64
    """
    return copy.deepcopy(model).double()
