r"""The GUFM objective :math:`F(W, b, H)` and its Euclidean gradient, on numpy or torch input.

Every value in the package (solvers, certificate, training head, benchmarks) goes through
:func:`value_and_grad`, so the formula lives here once:

.. math::

    F = \sum_c w_c\, \ell(W h_c + b, q_c) + \frac{\lambda_W}{2}\lVert W\rVert_F^2
        + \frac{\lambda_b}{2}\lVert b\rVert^2 + \frac{\lambda_H}{2}\sum_c n_c \lVert h_c\rVert^2

where the columns ``c`` are either all N samples (:math:`w_c = 1/N`, :math:`n_c = 1`) or the G
groups of the reduction (:math:`w_c = p_g`, :math:`n_c = n_g`).  Both give the same number when
the per-sample features are the lift of the group features.

The layout is always explicit, never guessed from the width of ``H`` (with ``N == G`` both
layouts have the same width but the samples need not be in group order):
:func:`objective` takes per-sample features ``(d, N)``, :func:`group_objective` one feature per
group ``(d, G)``, and :func:`value_and_grad` a required ``columns="samples" | "groups"``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from gufm.backend import Array, asarray_like, finite, is_torch
from gufm.model.losses import weighted_loss, weighted_loss_and_grad
from gufm.model.problem import GUFM


class Gradient(NamedTuple):
    """Euclidean gradient of :math:`F` with respect to ``W``, ``b`` and ``H``.

    Examples
    --------
    >>> import numpy as np
    >>> from gufm.model.problem import GUFM
    >>> prob = GUFM(counts=[1, 1], dim=2, loss="mse", features="sphere", radius=1.0, lam_W=1.0)
    >>> value, grad = value_and_grad(prob, np.eye(2), None, np.eye(2), columns="samples")
    >>> float(value), grad.W.tolist(), grad.b, grad.H.tolist()   # zero loss: only lam_W W
    (1.0, [[1.0, 0.0], [0.0, 1.0]], None, [[0.0, 0.0], [0.0, 0.0]])
    """

    W: Array
    b: Array | None
    H: Array


#: the two column layouts of a feature matrix
LAYOUTS = ("samples", "groups")


def column_data(
    prob: GUFM, width: int, columns: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Targets ``(K, width)``, weights and multiplicities of the columns of a feature matrix.

    The layout is always stated, never guessed from the width (with ``N == G`` the samples and
    the groups have the same width but, in general, a different order).

    Parameters
    ----------
    prob : GUFM
    width : int
        Number of columns of the feature matrix; must be ``N`` for ``"samples"`` and ``G``
        for ``"groups"``.
    columns : {"samples", "groups"}
        ``"samples"``: column ``i`` is sample ``i`` in the order the samples were given
        (targets :math:`q_{y_i}`, weights :math:`1/N`, multiplicity 1).  ``"groups"``: column
        ``g`` is group ``g`` of ``prob.groups`` (targets :math:`q_g`, weights :math:`p_g`,
        multiplicity :math:`n_g`).

    Returns
    -------
    Q, w, n : ndarray
        Targets ``(K, width)``, weights ``(width,)`` and multiplicities ``(width,)``.

    Examples
    --------
    >>> from gufm.model.problem import GUFM
    >>> prob = GUFM(labels=[1, 0, 1], dim=3, lam_W=0.1)
    >>> Q, w, n = column_data(prob, 3, "samples")
    >>> Q.argmax(0).tolist(), w.round(3).tolist()
    ([1, 0, 1], [0.333, 0.333, 0.333])
    >>> Q, w, n = column_data(prob, 2, "groups")
    >>> Q.argmax(0).tolist(), n.tolist()
    ([0, 1], [1.0, 2.0])
    """
    g = prob.groups
    if columns == "samples":
        _check_width("H", width, prob, columns)
        return g.targets[:, g.sample_group], np.full(prob.N, 1.0 / prob.N), np.ones(prob.N)
    if columns == "groups":
        _check_width("H", width, prob, columns)
        return g.targets, g.weights, g.counts.astype(float)
    raise ValueError(f"columns must be one of {LAYOUTS}, got {columns!r}")


def _check_width(name: str, width: int, prob: GUFM, columns: str) -> None:
    if columns == "samples" and width != prob.N:
        raise ValueError(
            f"{name} must have shape (dim, N) = ({prob.dim}, {prob.N}), one column per sample, "
            f"got width {width}; for one feature per group (shape (dim, G) = ({prob.dim}, "
            f"{prob.G})) use group_objective"
        )
    if columns == "groups" and width != prob.G:
        raise ValueError(
            f"{name} must have shape (dim, G) = ({prob.dim}, {prob.G}), one column per group, "
            f"got width {width}; for per-sample features (shape (dim, N) = ({prob.dim}, "
            f"{prob.N})) use objective"
        )


def _check_inputs(prob: GUFM, W: Array, b: Array | None, H: Array, columns: str) -> None:
    if tuple(W.shape) != (prob.K, prob.dim):
        raise ValueError(f"W must have shape (K, dim) = ({prob.K}, {prob.dim}), got {tuple(W.shape)}")
    if H.ndim != 2 or H.shape[0] != prob.dim:
        what = "(dim, N)" if columns == "samples" else "(dim, G)"
        raise ValueError(f"H must have shape {what} with dim = {prob.dim}, got {tuple(H.shape)}")
    _check_width("H", int(H.shape[1]), prob, columns)
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
    """Largest violation of the feature constraints by ambient features ``H``, relative to ρ.

    ``layernorm``: max of ``|‖h‖ - ρ|`` and ``|1ᵀh|/√d``; ``sphere``: ``|‖h‖ - ρ|``;
    ``ball``: ``max(‖h‖ - ρ, 0)``; ``penalty``: 0.  All divided by ρ (see
    :meth:`gufm.model.features.FeatureModel.violation`).

    Examples
    --------
    >>> import numpy as np, gufm
    >>> prob = gufm.GUFM(counts=[1, 1], dim=2, features="sphere", radius=1.0)
    >>> feasibility_violation(prob, np.array([[1.0, 0.0], [0.0, 1.5]]))
    0.5
    """
    return prob.feature_model.violation(H, prob.rho)


def value_and_grad(
    prob: GUFM, W: Array, b: Array | None, H: Array, *, columns: str, need_grad: bool = True,
) -> tuple[Array, Gradient | None]:
    """:math:`F(W, b, H)` and its Euclidean gradient (no constraint projection).

    Parameters
    ----------
    prob : GUFM
    W : array (K, d')
        Any feature dimension ``d'`` works (the solvers call this in a reduced dimension).
    b : array (K,) or None
    H : array (d', N) per-sample features or (d', G) group features
    columns : {"samples", "groups"}
        How to read the columns of ``H`` (required: the layout is never guessed from the
        width, see :func:`column_data`).
    need_grad : bool
        Skip the gradient when False.

    Returns
    -------
    value : float or 0-d tensor
    gradient : Gradient or None

    Examples
    --------
    >>> import numpy as np
    >>> from gufm.model.problem import GUFM
    >>> prob = GUFM(counts=[1, 1], dim=2, loss="mse", features="sphere", radius=1.0, lam_W=1.0)
    >>> val, g = value_and_grad(prob, np.zeros((2, 2)), None, np.eye(2), columns="groups")
    >>> float(val), g.W.tolist()
    (0.5, [[-0.5, 0.0], [0.0, -0.5]])
    """
    Q, w, n = (asarray_like(a, W) for a in column_data(prob, int(H.shape[1]), columns))
    return evaluate(prob, W, b, H, Q, w, n, need_grad=need_grad)


def evaluate(
    prob: GUFM, W: Array, b: Array | None, H: Array, Q: Array, w: Array, n: Array,
    *, need_grad: bool = True,
) -> tuple[Array, Gradient | None]:
    r"""Core of :func:`value_and_grad` with the column targets ``Q``, weights ``w`` and
    multiplicities ``n`` already converted to the array type of ``W``.

    .. math::

        F = \sum_c w_c \ell(W h_c + b, Q_{:,c}) + \tfrac{\lambda_W}{2}\lVert W\rVert_F^2
            + \tfrac{\lambda_b}{2}\lVert b\rVert^2 + \tfrac{\lambda_H}{2}\sum_c n_c\lVert h_c\rVert^2

    The columns of ``H``, ``Q``, ``w`` and ``n`` must correspond one to one (checked).

    Examples
    --------
    >>> import numpy as np
    >>> from gufm.model.problem import GUFM
    >>> prob = GUFM(counts=[1, 1], dim=2, loss="mse", features="sphere", radius=1.0, lam_W=1.0)
    >>> Q, w, n = column_data(prob, 2, "groups")
    >>> float(evaluate(prob, np.zeros((2, 2)), None, np.eye(2), Q, w, n, need_grad=False)[0])
    0.5
    """
    width = H.shape[1]
    if Q.shape[-1] != width or w.shape[0] != width or n.shape[0] != width:
        raise ValueError(
            f"Q, w and n must have one entry per column of H (width {width}), got shapes "
            f"{tuple(Q.shape)}, {tuple(w.shape)} and {tuple(n.shape)}"
        )
    Z = W @ H
    if b is not None:
        Z = Z + b[:, None]
    reg = 0.5 * prob.lam_W * (W**2).sum()
    if b is not None:
        reg = reg + 0.5 * prob.lam_b * (b**2).sum()
    freg, fgrad = prob.feature_model.regulariser(H, n, prob.lam_H)
    reg = reg + freg
    if not need_grad:
        return weighted_loss(prob.loss, Z, Q, w) + reg, None
    val, Y = weighted_loss_and_grad(prob.loss, Z, Q, w)
    gW = Y @ H.T + prob.lam_W * W
    gH = W.T @ Y
    if fgrad is not None:
        gH = gH + fgrad
    gb = None if b is None else Y.sum(1) + prob.lam_b * b
    return val + reg, Gradient(gW, gb, gH)


def _checked_value(
    prob: GUFM, W: Array, b: Array | None, H: Array, columns: str, check_feasible: bool,
    tol: float,
) -> Array:
    _check_inputs(prob, W, b, H, columns)
    if check_feasible:
        v = feasibility_violation(prob, H)
        if v > tol:
            raise ValueError(
                f"H violates the {prob.features!r} feature constraint by {v:.3g} (relative to rho);"
                " pass check_feasible=False to evaluate anyway"
            )
    val, _ = value_and_grad(prob, W, b, H, columns=columns, need_grad=False)
    return val if is_torch(val) else float(val)


def objective(
    prob: GUFM, W: Array, b: Array | None, H: Array, *, check_feasible: bool = True,
    tol: float = 1e-6,
) -> Array:
    r"""Evaluate the GUFM objective :math:`F(W, b, H)` at per-sample features.

    .. math::

        F = \frac1N \sum_{i=1}^N \ell(W h_i + b, q_i) + \frac{\lambda_W}{2}\lVert W\rVert_F^2
            + \frac{\lambda_b}{2}\lVert b\rVert^2
            \;\big[+ \frac{\lambda_H}{2}\lVert H\rVert_F^2\big]

    (see docs/problem.md).  For one feature per class/group use :func:`group_objective`.

    Parameters
    ----------
    prob : GUFM
    W : array, shape (K, d)
    b : array, shape (K,), or None when the problem has no bias
    H : array, shape (d, N)
        One column per sample, in the order the samples were given (``labels=`` /
        ``soft_labels=`` order; class by class for ``counts=``).  Any other width raises.
    check_feasible : bool
        Raise ``ValueError`` when ``H`` violates the feature model by more than ``tol``
        (relative to ρ).  LayerNorm outputs computed with ``eps > 0`` are slightly inside the
        sphere: pass ``check_feasible=False`` or use ``features="ball"`` for them.
    tol : float
        Feasibility tolerance, relative to ρ.

    Returns
    -------
    float or torch.Tensor
        The value, as a float or a 0-d torch tensor (differentiable) matching the input.

    Examples
    --------
    >>> import numpy as np
    >>> from gufm.model.problem import GUFM
    >>> prob = GUFM(labels=[1, 0], dim=2, loss="mse", features="sphere", radius=1.0, lam_W=1.0)
    >>> H = np.array([[0.0, 1.0], [1.0, 0.0]])   # sample 0 (class 1) at e_2, sample 1 at e_1
    >>> objective(prob, np.eye(2), None, H)      # W h_i = one-hot of y_i: loss 0, 0.5 ||W||^2
    1.0
    """
    return _checked_value(prob, W, b, H, "samples", check_feasible, tol)


def group_objective(
    prob: GUFM, W: Array, b: Array | None, H: Array, *, check_feasible: bool = True,
    tol: float = 1e-6,
) -> Array:
    r"""Evaluate :math:`F` at one feature per group (the reduced problem of docs/reduction.md).

    .. math::

        F = \sum_g p_g\, \ell(W h_g + b, q_g) + \frac{\lambda_W}{2}\lVert W\rVert_F^2
            + \frac{\lambda_b}{2}\lVert b\rVert^2
            \;\big[+ \frac{\lambda_H}{2}\sum_g n_g \lVert h_g\rVert^2\big]

    equal to :func:`objective` at the lifted features ``prob.lift(H)``.

    Parameters
    ----------
    prob : GUFM
    W : array, shape (K, d)
    b : array, shape (K,), or None
    H : array, shape (d, G)
        Column ``g`` is the feature of group ``g`` of ``prob.groups`` (class ``g`` for hard
        labels).  Any other width raises.
    check_feasible, tol
        As in :func:`objective`.

    Returns
    -------
    float or torch.Tensor

    Examples
    --------
    >>> import numpy as np
    >>> from gufm.model.problem import GUFM
    >>> prob = GUFM(labels=[1, 0], dim=2, loss="mse", features="sphere", radius=1.0, lam_W=1.0)
    >>> group_objective(prob, np.eye(2), None, np.eye(2))   # class 0 at e_1, class 1 at e_2
    1.0
    """
    return _checked_value(prob, W, b, H, "groups", check_feasible, tol)
