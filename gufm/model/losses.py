r"""Losses of the GUFM, their gradients and their Fenchel conjugates (numpy or torch).

Conventions (docs/problem.md, sections 4-5).  Logits are stored column-wise: ``Z`` has
shape ``(K, G)``, one column per group (class or distinct soft label), targets ``Q`` have shape
``(K, G)`` with columns in the probability simplex, and group weights ``p`` sum to one.

* ``ce``:  :math:`\ell(z, q) = \operatorname{logsumexp}(z) - q^\top z`.
* ``mse``: :math:`\ell(z, q) = \tfrac12 \lVert z - q \rVert^2`.

The weighted sum :math:`g(Z) = \sum_g p_g\, \ell(Z_{:,g}, q_g)` is what the reduced problem and
the convex relaxation see.  Its conjugate is

* CE:  :math:`g^*(Y) = \sum_g p_g \sum_j s_{jg}\log s_{jg}`, :math:`s_g = Y_{:,g}/p_g + q_g`,
  finite exactly when every :math:`s_g` lies in the simplex;
* MSE: :math:`g^*(Y) = \sum_g \big(Y_{:,g}^\top q_g + \lVert Y_{:,g}\rVert^2/(2p_g)\big)`.
"""

from __future__ import annotations

import math
from typing import Any

from gufm._util import check_choice
from gufm.backend import Array, logsumexp, logsumexp_softmax, softmax, xlogx

LOSSES = ("ce", "mse")


def check_loss(loss: str) -> str:
    """Validate a loss name and return it.

    Examples
    --------
    >>> check_loss("mse")
    'mse'
    >>> check_loss("hinge")
    Traceback (most recent call last):
    ...
    ValueError: loss must be one of ('ce', 'mse'), got 'hinge'
    """
    return check_choice("loss", loss, LOSSES)


def per_column_loss(loss: str, Z: Array, Q: Array) -> Array:
    r"""Loss of every column: :math:`\ell(Z_{:,g}, Q_{:,g})`, shape ``(G,)``.

    Examples
    --------
    >>> import numpy as np
    >>> Z, Q = np.array([[1.0, 0.0], [0.0, 0.0]]), np.eye(2)
    >>> per_column_loss("mse", Z, Q)
    array([0. , 0.5])
    >>> np.round(per_column_loss("ce", Z, Q), 6)     # log(1 + e^-1), log 2
    array([0.313262, 0.693147])
    """
    if loss == "ce":
        # lse(z) - qᵀz = lse(z - qᵀz): shifting first keeps a tiny loss accurate (the own
        # logit's term is exactly 1), where the difference of two large numbers would not be
        return logsumexp(Z - (Q * Z).sum(0), axis=0)
    if loss == "mse":
        return 0.5 * ((Z - Q) ** 2).sum(0)
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


def weighted_loss(loss: str, Z: Array, Q: Array, p: Array) -> Array:
    r""":math:`g(Z) = \sum_g p_g \ell(Z_{:,g}, q_g)`.

    Examples
    --------
    >>> import numpy as np
    >>> round(float(weighted_loss("ce", np.zeros((3, 3)), np.eye(3), np.full(3, 1 / 3))), 6)  # log 3
    1.098612
    """
    return (per_column_loss(loss, Z, Q) * p).sum()


def _ce_residual(S: Array, Q: Array) -> Array:
    """``S - Q`` for CE; for one-hot columns the own entry is minus the sum of the others
    (``s_own - 1`` would lose all relative precision when the loss is tiny)."""
    if bool(((Q == 0) | (Q == 1)).all()):
        R = S * (1 - Q)
        R -= Q * R.sum(0)
        return R
    return S - Q


def weighted_loss_grad(loss: str, Z: Array, Q: Array, p: Array) -> Array:
    r"""Gradient :math:`Y = \nabla g(Z)`: CE ``p_g (softmax(z_g) - q_g)``, MSE ``p_g (z_g - q_g)``.

    Examples
    --------
    >>> import numpy as np
    >>> weighted_loss_grad("ce", np.zeros((2, 2)), np.eye(2), np.array([0.5, 0.5]))
    array([[-0.25,  0.25],
           [ 0.25, -0.25]])
    """
    if loss == "ce":
        return _ce_residual(softmax(Z, axis=0), Q) * p
    if loss == "mse":
        return (Z - Q) * p
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


def weighted_loss_and_grad(loss: str, Z: Array, Q: Array, p: Array,
                           with_softmax: bool = False) -> tuple[Any, ...]:
    r"""Return ``(g(Z), grad g(Z))`` sharing the softmax computation for CE.

    With ``with_softmax``, ``(g(Z), grad g(Z), S)``, ``S`` the column softmax for CE (the
    loss curvature's ingredient) and ``None`` for MSE.  For CE one exponential serves both
    (:func:`gufm.backend.logsumexp_softmax` of :math:`\tilde z = z - q^\top z`, the argument
    of :func:`per_column_loss`; the softmax is shift invariant).

    Examples
    --------
    >>> import numpy as np
    >>> Z, Q, p = np.array([[1.0, -1.0], [0.0, 2.0]]), np.eye(2), np.array([0.5, 0.5])
    >>> val, Y = weighted_loss_and_grad("ce", Z, Q, p)
    >>> bool(np.isclose(val, weighted_loss("ce", Z, Q, p)))
    True
    >>> bool(np.allclose(Y, weighted_loss_grad("ce", Z, Q, p)))
    True
    """
    if loss == "ce":
        lse, S = logsumexp_softmax(Z - (Q * Z).sum(0), axis=0)
        val = (lse * p).sum()
        Y = _ce_residual(S, Q)
        Y *= p  # (a fresh array: in place)
        return (val, Y, S) if with_softmax else (val, Y)
    out = weighted_loss(loss, Z, Q, p), weighted_loss_grad(loss, Z, Q, p)
    return (*out, None) if with_softmax else out


def conjugate(loss: str, Y: Array, Q: Array, p: Array, simplex_tol: float = 1e-12) -> float:
    r"""Fenchel conjugate :math:`g^*(Y)` (see module docstring).

    For CE, returns ``+inf`` when some :math:`s_g = Y_{:,g}/p_g + q_g` leaves the simplex by more
    than ``simplex_tol`` (entries below ``-simplex_tol`` or column sums off by more than it);
    entries in ``[-simplex_tol, 0)`` count as zero.

    Examples
    --------
    Fenchel-Young holds with equality at :math:`Y = \nabla g(Z)`: :math:`g(Z) + g^*(Y) = \langle Y, Z\rangle`.

    >>> import numpy as np
    >>> Z, Q, p = np.array([[1.0, -1.0], [0.0, 2.0]]), np.eye(2), np.array([0.5, 0.5])
    >>> val, Y = weighted_loss_and_grad("ce", Z, Q, p)
    >>> bool(np.isclose(val + conjugate("ce", Y, Q, p), (Y * Z).sum()))
    True
    >>> conjugate("ce", np.ones((2, 2)), Q, p)       # s_g leaves the simplex
    inf
    """
    if loss == "ce":
        S = Y / p + Q
        if float(S.min()) < -simplex_tol or float(abs(S.sum(0) - 1).max()) > simplex_tol * 1e3:
            return math.inf
        S = S.clip(0, None) if hasattr(S, "clip") else S
        return float((xlogx(S).sum(0) * p).sum())
    if loss == "mse":
        return float(((Y * Q).sum(0) + (Y**2).sum(0) / (2 * p)).sum())
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
