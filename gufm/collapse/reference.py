r"""Distance of learned features to a GUFM optimum, and the normalised-Gram distance behind it.

:func:`gufm_distance` compares the Gram of :math:`[W; \bar H^\top]` (classifier rows, then the
uncentred class means) with the Gram of a GUFM optimum solved by :func:`gufm.solvers.solve`
(cached); :func:`nc2_gram` is the formula, also behind ``nc2_classifier`` and ``nc2_means``.
See docs/metrics.md, section 4.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from gufm.backend import Array, convert, get_backend, to_numpy
from gufm.collapse._checks import as_float, check_b, check_W, out
from gufm.collapse.formulas import _gram_distance
from gufm.collapse.stats import CollapseStats, collapse_stats
from gufm.model.problem import GUFM
from gufm.solvers import solve

__all__ = ["gufm_distance", "nc2_gram", "reference_gram"]


def _stack_rows(W: Array | None, M: Array | None) -> Array:
    if W is None:
        return M.T
    if M is None:
        return W
    return get_backend(W).concatenate([W, M.T], axis=0)


def nc2_gram(W: Array | None, M: Array | None, target_gram: Array) -> Any:
    r"""Distance between the normalised Gram of :math:`X = [W; M^\top]` and a target Gram.

    .. math::

        \Big\lVert \frac{XX^\top}{\lVert XX^\top\rVert_F}
        - \frac{T}{\lVert T\rVert_F}\Big\rVert_F \in [0, 2]

    Parameters
    ----------
    W : array (K, d) or None
        Rows stacked first.
    M : array (d, K) or None
        Columns (e.g. class means) stacked below as rows.
    target_gram : array
        ``T``, square of the size of ``X X^T`` (normalised here, so any scale).

    Invariant to rotations :math:`X \mapsto XQ` and to scaling ``X``.  This single formula
    is ``nc2_classifier`` (``M=None``, ``T = E_K``), ``nc2_means`` (``W=None``) and
    :func:`gufm_distance` (both, ``T`` the GUFM optimum's Gram).

    Examples
    --------
    >>> import numpy as np
    >>> round(nc2_gram(np.eye(3), None, np.eye(3)), 12)   # an orthogonal frame against I
    0.0
    """
    if W is None and M is None:
        raise ValueError("give W or M (or both)")
    like = None
    if W is not None:
        W = as_float(W, "W", 2)
        like = W
    if M is not None:
        M = as_float(M, "M", 2, like=like)
        like = M if like is None else like
        if W is not None and tuple(M.shape) != (W.shape[1], W.shape[0]):
            raise ValueError(f"M must have shape (d, K) = ({W.shape[1]}, {W.shape[0]}), got "
                             f"{tuple(M.shape)}")
    X = _stack_rows(W, M)
    T = as_float(target_gram, "target_gram", 2, like=X)
    if tuple(T.shape) != (X.shape[0], X.shape[0]):
        raise ValueError(f"target_gram must have shape ({X.shape[0]}, {X.shape[0]}), got "
                         f"{tuple(T.shape)}")
    return out(_gram_distance(X, T, "W" if M is None else "M" if W is None else "[W; M^T]"), like)


def reference_gram(reference: Any) -> np.ndarray:
    r"""The Gram :math:`XX^\top` of :math:`X = [W; \bar H^\top]` of a GUFM solution, ``(2K, 2K)``.

    ``reference`` is a :class:`gufm.SolveResult` (anything with ``.W`` (K, d) and
    ``.class_features`` (d, K)) or already a square Gram matrix (returned as float64 numpy).

    Examples
    --------
    >>> import numpy as np
    >>> reference_gram(np.eye(4)).shape
    (4, 4)
    """
    if hasattr(reference, "W") and hasattr(reference, "class_features"):
        W = np.asarray(to_numpy(reference.W), dtype=float)
        Hb = np.asarray(to_numpy(reference.class_features), dtype=float)
        if Hb.shape[1] != W.shape[0]:
            raise ValueError(
                f"reference: class_features has {Hb.shape[1]} groups but W has {W.shape[0]} "
                "classes (soft-label references are not supported)"
            )
        X = np.concatenate([W, Hb.T], axis=0)
        return X @ X.T
    G = np.asarray(to_numpy(reference), dtype=float)
    if G.ndim != 2 or G.shape[0] != G.shape[1]:
        raise ValueError(f"reference must be a SolveResult or a square Gram, got shape {G.shape}")
    if not np.all(np.isfinite(G)):
        raise ValueError("reference contains NaN or inf")
    return G


@functools.lru_cache(maxsize=32)
def _solved_gram(counts: tuple[int, ...], dim: int, loss: str, lam_W: float,
                 lam_b: float | None, features: str, radius: float | None) -> np.ndarray:
    prob = GUFM(counts=np.asarray(counts), dim=dim, loss=loss, lam_W=lam_W, lam_b=lam_b,
                features=features, radius=radius)
    return reference_gram(solve(prob, method="auto"))


def resolve_reference(counts: Array, d: int, *, loss: str = "ce", lam: float | None = None,
                      lam_b: float | None = None, features: str = "layernorm",
                      radius: float | None = None, problem: Any = None,
                      reference: Any = None) -> np.ndarray:
    """The reference Gram ``(2K, 2K)``: given, or solved from ``problem`` or ``lam`` (cached).

    Examples
    --------
    >>> import numpy as np
    >>> resolve_reference(np.ones(2), 3, reference=np.eye(4)).shape
    (4, 4)
    """
    K = int(counts.shape[0])
    if reference is not None:
        G = reference_gram(reference)
    elif problem is not None:
        if problem.K != K or problem.dim != d:
            raise ValueError(f"problem has K = {problem.K}, dim = {problem.dim}; the features "
                             f"have K = {K}, d = {d}")
        G = reference_gram(solve(problem, method="auto"))
    elif lam is not None:
        c = tuple(int(round(float(v))) for v in to_numpy(counts))
        G = _solved_gram(c, int(d), loss, float(lam), None if lam_b is None else float(lam_b),
                         features, None if radius is None else float(radius))
    else:
        raise ValueError("gufm_distance needs lam= (to solve the GUFM), problem= or reference=")
    if G.shape != (2 * K, 2 * K):
        raise ValueError(f"reference Gram must have shape (2K, 2K) = ({2 * K}, {2 * K}), got "
                         f"{G.shape}")
    return G


def gufm_distance_from_stats(st: CollapseStats, W: Array, ref_gram: Array) -> Array:
    """:func:`gufm_distance` from statistics and a reference Gram ``(2K, 2K)``.

    Examples
    --------
    >>> import numpy as np
    >>> st = collapse_stats(np.array([[1., 1., 0.], [0., 0., 1.]]), [0, 0, 1])
    >>> X = np.concatenate([np.eye(2), st.means.T])
    >>> float(gufm_distance_from_stats(st, np.eye(2), X @ X.T))
    0.0
    """
    K = st.K
    if tuple(ref_gram.shape) != (2 * K, 2 * K):
        raise ValueError(f"reference Gram must have shape (2K, 2K) = ({2 * K}, {2 * K}), got "
                         f"{tuple(ref_gram.shape)}")
    return _gram_distance(_stack_rows(W, st.means), convert(ref_gram, st.means),
                          "[W; class means^T]")


def gufm_distance(H_or_class_means: Array, labels: Array | None, W: Array,
                  b: Array | None = None, *, loss: str = "ce", lam: float | None = None,
                  lam_b: float | None = None, features: str = "layernorm",
                  radius: float | None = None, counts: Array | None = None,
                  problem: Any = None, reference: Any = None) -> Any:
    r"""Rotation-invariant distance to a GUFM optimum: normalised Grams of :math:`[W; \bar H^\top]`.

    .. math::

        \Big\lVert \frac{XX^\top}{\lVert XX^\top\rVert_F}
        - \frac{X^*X^{*\top}}{\lVert X^*X^{*\top}\rVert_F}\Big\rVert_F,\qquad
        X = \begin{bmatrix} W \\ \bar H^\top\end{bmatrix} \in R^{2K\times d}

    with :math:`\bar H = [\mu_1, \dots, \mu_K]` the **uncentred** class means (GUFM optima are
    not centred for imbalanced classes or MSE) and :math:`X^*` the same for a GUFM optimum
    with the same class counts, dimension, loss and :math:`\lambda`'s (``features="layernorm"``,
    radius :math:`\sqrt d` by default), solved by ``gufm.solve(..., method="auto")`` and cached.
    Invariant to rotations and to scaling ``W`` and ``H`` jointly; 0 at the optimum.  When the
    optimal set holds several Grams this is the distance to the one the solver returns (an upper
    bound on the distance to the set).  ``b`` is validated and not used.

    Parameters
    ----------
    H_or_class_means : array
        Features ``(d, N)`` with ``labels``, or class means ``(d, K)`` with ``labels=None``.
    labels : array of int (N,) or None
    W : array (K, d)
    loss : {"ce", "mse"}
    lam, lam_b : float
        :math:`\lambda_W` and :math:`\lambda_b` (``None``: no bias) of the reference problem.
    features, radius
        Feature model of the reference problem.
    counts : array of int (K,), optional
        Class counts when class means are given (default: balanced).
    problem : gufm.GUFM, optional
        Solve this problem instead of building one.
    reference : SolveResult or array (2K, 2K), optional
        A precomputed solution or Gram: no solve.

    Examples
    --------
    >>> import numpy as np
    >>> W = np.eye(2)
    >>> X = np.concatenate([W, W])                  # class means equal to the classifier rows
    >>> round(gufm_distance(W.T, None, W, reference=X @ X.T), 12)
    0.0
    """
    if labels is None:
        Hb = as_float(H_or_class_means, "H_or_class_means", 2)
        Wc = check_W(W, Hb.shape[0])
        Wc = convert(Wc, Hb) if get_backend(Hb).name == "torch" else Wc
        K = Wc.shape[0]
        if Hb.shape[1] != K:
            raise ValueError(f"class means must have shape (d, K) = ({Hb.shape[0]}, {K}), got "
                             f"{tuple(Hb.shape)}")
        if counts is None:
            cnt = np.ones(K)
        else:
            cnt = np.asarray(to_numpy(counts), dtype=float)
            if cnt.shape != (K,) or np.any(cnt <= 0):
                raise ValueError(f"counts must be {K} positive integers, got {cnt}")
        st = CollapseStats(counts=convert(cnt, Hb), means=Hb, within_ss=convert(np.zeros(K), Hb),
                           quad=lambda U: U.sum(axis=0) * 0)
        like = Hb
    else:
        st = collapse_stats(H_or_class_means, labels)
        Wc = check_W(W, st.d)
        like = H_or_class_means
    check_b(b, st.K)
    G = resolve_reference(st.counts, st.d, loss=loss, lam=lam, lam_b=lam_b, features=features,
                          radius=radius, problem=problem, reference=reference)
    like = as_float(like, "H_or_class_means", 2, check_finite=False) if labels is not None else like
    return out(gufm_distance_from_stats(st, convert(Wc, st.means), G), like)
