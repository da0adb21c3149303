r"""The GUFM objective :math:`F(W, b, H)` and its Euclidean gradient, on numpy or torch input.

Every value in the package (solvers, certificate, training head, benchmarks) goes through
:func:`value_and_grad`, so the formula lives here once:

.. math::

    F = \sum_c w_c\, \ell(W h_c + b, q_c) + \frac{\lambda_W}{2}\lVert W\rVert_F^2
        + \frac{\lambda_b}{2}\lVert b\rVert^2 + \frac{\lambda_H}{2}\sum_c n_c \lVert h_c\rVert^2

where the columns ``c`` are either all N samples (:math:`w_c = 1/N`, :math:`n_c = 1`) or the G
groups of the reduction (:math:`w_c = p_g`, :math:`n_c = n_g`).  Both give the same number when
the per-sample features are the lift of the group features.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from gufm.backend import Array, asarray_like, finite, is_torch
from gufm.model.losses import weighted_loss, weighted_loss_and_grad
from gufm.model.problem import GUFM


class Gradient(NamedTuple):
    """Euclidean gradient of :math:`F` with respect to ``W``, ``b`` and ``H``."""

    W: Array
    b: Array | None
    H: Array


def column_data(
    prob: GUFM, width: int, columns: str | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Targets ``(K, width)``, weights and multiplicities of the columns of a feature matrix.

    ``columns="samples"`` (width N): targets of every sample, weights 1/N, multiplicity 1.
    ``columns="groups"`` (width G): the reduction's targets, weights p_g and counts n_g.
    ``None`` picks by width (samples first).
    """
    g = prob.groups
    if columns is None:
        columns = "samples" if width == prob.N else "groups" if width == prob.G else ""
    if columns == "samples" and width == prob.N:
        return g.targets[:, g.sample_group], np.full(prob.N, 1.0 / prob.N), np.ones(prob.N)
    if columns == "groups" and width == prob.G:
        return g.targets, g.weights, g.counts.astype(float)
    raise ValueError(
        f"H must have shape (dim, N) = ({prob.dim}, {prob.N}) or (dim, G) = ({prob.dim}, {prob.G}),"
        f" got width {width}"
    )


def _check_inputs(prob: GUFM, W: Array, b: Array | None, H: Array) -> None:
    if tuple(W.shape) != (prob.K, prob.dim):
        raise ValueError(f"W must have shape (K, dim) = ({prob.K}, {prob.dim}), got {tuple(W.shape)}")
    if H.ndim != 2 or H.shape[0] != prob.dim:
        raise ValueError(
            f"H must have shape (dim, N) or (dim, G) with dim = {prob.dim}, got {tuple(H.shape)}"
        )
    if prob.has_bias:
        if b is None:
            raise ValueError("b is required: the problem has a bias (lam_b is not None)")
        if tuple(b.shape) != (prob.K,):
            raise ValueError(f"b must have shape (K,) = ({prob.K},), got {tuple(b.shape)}")
    elif b is not None:
        raise ValueError("b must be None: the problem has no bias (lam_b is None)")
    for name, x in (("W", W), ("b", b), ("H", H)):
        if x is not None and not finite(x):
            raise ValueError(f"{name} contains NaN or inf")


def feasibility_violation(prob: GUFM, H: Array) -> float:
    """Largest violation of the feature constraints, relative to :math:`\\rho`.

    ``layernorm``: max of ``|‖h‖ - ρ|`` and ``|1ᵀh|/√d``; ``sphere``: ``|‖h‖ - ρ|``;
    ``ball``: ``max(‖h‖ - ρ, 0)``; ``penalty``: 0.  All divided by ρ.
    """
    if prob.features == "penalty":
        return 0.0
    if is_torch(H):
        H = H.detach()
    norms = (H**2).sum(0) ** 0.5
    rho = prob.rho
    if prob.features == "ball":
        v = (norms - rho).clip(0, None) if not is_torch(norms) else (norms - rho).clamp(min=0)
        return float(v.max()) / rho
    v = float(abs(norms - rho).max())
    if prob.features == "layernorm":
        v = max(v, float(abs(H.sum(0)).max()) / prob.dim**0.5)
    return v / rho


def value_and_grad(
    prob: GUFM, W: Array, b: Array | None, H: Array, *, columns: str | None = None,
    need_grad: bool = True,
) -> tuple[Array, Gradient | None]:
    """:math:`F(W, b, H)` and its Euclidean gradient (no constraint projection).

    Parameters
    ----------
    prob : GUFM
    W : array (K, d')
        Any feature dimension ``d'`` works (the solvers call this in a reduced dimension).
    b : array (K,) or None
    H : array (d', N) per-sample features or (d', G) group features
    columns : {"samples", "groups"}, optional
        How to read the columns of ``H``; by default from its width (samples win a tie).
    need_grad : bool
        Skip the gradient when False.
    """
    Q, w, n = (asarray_like(a, W) for a in column_data(prob, H.shape[1], columns))
    return evaluate(prob, W, b, H, Q, w, n, need_grad=need_grad)


def evaluate(
    prob: GUFM, W: Array, b: Array | None, H: Array, Q: Array, w: Array, n: Array,
    *, need_grad: bool = True,
) -> tuple[Array, Gradient | None]:
    """Core of :func:`value_and_grad` with the column targets ``Q``, weights ``w`` and
    multiplicities ``n`` already converted to the array type of ``W``."""
    Z = W @ H
    if b is not None:
        Z = Z + b[:, None]
    reg = 0.5 * prob.lam_W * (W**2).sum()
    if b is not None:
        reg = reg + 0.5 * prob.lam_b * (b**2).sum()
    if prob.features == "penalty":
        reg = reg + 0.5 * prob.lam_H * ((H**2).sum(0) * n).sum()
    if not need_grad:
        return weighted_loss(prob.loss, Z, Q, w) + reg, None
    val, Y = weighted_loss_and_grad(prob.loss, Z, Q, w)
    gW = Y @ H.T + prob.lam_W * W
    gH = W.T @ Y
    if prob.features == "penalty":
        gH = gH + prob.lam_H * H * n
    gb = None if b is None else Y.sum(1) + prob.lam_b * b
    return val + reg, Gradient(gW, gb, gH)


def objective(
    prob: GUFM, W: Array, b: Array | None, H: Array, *, check_feasible: bool = True,
    tol: float = 1e-6,
) -> Array:
    """Evaluate the GUFM objective :math:`F(W, b, H)` exactly (see module docstring).

    Parameters
    ----------
    prob : GUFM
    W : array, shape (K, d)
    b : array, shape (K,), or None when the problem has no bias
    H : array, shape (d, N) (all samples, in the order given) or (d, G) (one per class/group)
    check_feasible : bool
        Raise ``ValueError`` when ``H`` violates the feature model by more than ``tol``
        (relative to ρ).  LayerNorm outputs computed with ``eps > 0`` are slightly inside the
        sphere: pass ``check_feasible=False`` or use ``features="ball"`` for them.

    Returns
    -------
    The value, as a numpy float or a 0-d torch tensor (differentiable) matching the input.
    """
    _check_inputs(prob, W, b, H)
    if check_feasible:
        v = feasibility_violation(prob, H)
        if v > tol:
            raise ValueError(
                f"H violates the {prob.features!r} feature constraint by {v:.3g} (relative to rho);"
                " pass check_feasible=False to evaluate anyway"
            )
    val, _ = value_and_grad(prob, W, b, H, need_grad=False)
    return val if is_torch(val) else float(val)
