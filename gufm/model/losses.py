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

from gufm.backend import Array, logsumexp, softmax, xlogx

LOSSES = ("ce", "mse")


def check_loss(loss: str) -> str:
    """Validate a loss name and return it."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    return loss


def per_column_loss(loss: str, Z: Array, Q: Array) -> Array:
    r"""Loss of every column: :math:`\ell(Z_{:,g}, Q_{:,g})`, shape ``(G,)``."""
    if loss == "ce":
        return logsumexp(Z, axis=0) - (Q * Z).sum(0)
    if loss == "mse":
        return 0.5 * ((Z - Q) ** 2).sum(0)
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


def weighted_loss(loss: str, Z: Array, Q: Array, p: Array) -> Array:
    r""":math:`g(Z) = \sum_g p_g \ell(Z_{:,g}, q_g)`."""
    return (per_column_loss(loss, Z, Q) * p).sum()


def weighted_loss_grad(loss: str, Z: Array, Q: Array, p: Array) -> Array:
    r"""Gradient :math:`Y = \nabla g(Z)`: CE ``p_g (softmax(z_g) - q_g)``, MSE ``p_g (z_g - q_g)``."""
    if loss == "ce":
        return (softmax(Z, axis=0) - Q) * p
    if loss == "mse":
        return (Z - Q) * p
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


def weighted_loss_and_grad(loss: str, Z: Array, Q: Array, p: Array) -> tuple[Array, Array]:
    """Return ``(g(Z), grad g(Z))`` sharing the softmax computation for CE."""
    if loss == "ce":
        lse = logsumexp(Z, axis=0)
        val = ((lse - (Q * Z).sum(0)) * p).sum()
        S = softmax(Z, axis=0)
        return val, (S - Q) * p
    return weighted_loss(loss, Z, Q, p), weighted_loss_grad(loss, Z, Q, p)


def conjugate(loss: str, Y: Array, Q: Array, p: Array, simplex_tol: float = 1e-12) -> float:
    r"""Fenchel conjugate :math:`g^*(Y)` (see module docstring).

    For CE, returns ``+inf`` when some :math:`s_g = Y_{:,g}/p_g + q_g` leaves the simplex by more
    than ``simplex_tol`` (entries below ``-simplex_tol`` or column sums off by more than it);
    entries in ``[-simplex_tol, 0)`` count as zero.
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
