"""Frames and bases used to build, embed and compare GUFM solutions."""

from __future__ import annotations

import numpy as np


def helmert_basis(d: int, p: int | None = None) -> np.ndarray:
    """First ``p`` columns of the orthonormal Helmert basis of :math:`\\mathbf 1^\\perp \\subset R^d`.

    Column ``j`` (0-based) is :math:`(1,\\dots,1,-(j+1),0,\\dots,0)/\\sqrt{(j+1)(j+2)}` with
    ``j+1`` ones.  Shape ``(d, p)``, ``p <= d - 1`` (default ``d - 1``).  Cost ``O(d p)``.

    Examples
    --------
    >>> import numpy as np
    >>> B = helmert_basis(3)
    >>> np.round(B * np.sqrt([2.0, 6.0]), 12)
    array([[ 1.,  1.],
           [-1.,  1.],
           [ 0., -2.]])
    >>> bool(np.allclose(B.T @ B, np.eye(2))), bool(np.allclose(B.sum(0), 0))
    (True, True)
    """
    p = d - 1 if p is None else p
    if not 0 <= p <= d - 1:
        raise ValueError(f"p must lie in [0, d-1] = [0, {d - 1}], got {p}")
    j = np.arange(1, p + 1)
    rows = np.arange(d)[:, None]
    B = np.where(rows < j[None, :], 1.0, 0.0) - np.where(rows == j[None, :], j[None, :], 0.0)
    return B / np.sqrt(j * (j + 1.0))[None, :]


def helmert_apply(X: np.ndarray, d: int, axis: int = 0) -> np.ndarray:
    """``helmert_basis(d, p) @ X`` for ``X`` of shape (p, n), in ``O(d n)`` (no matrix product).

    Row ``i`` of the product is :math:`\\sum_{j \\ge i} c_j X_j - i\\,c_{i-1} X_{i-1}` with
    :math:`c_j = 1/\\sqrt{(j+1)(j+2)}` (the basis' columns, :func:`helmert_basis`): a reversed
    cumulative sum.  ``axis=1`` applies it to the rows of ``X`` (n, p) instead:
    ``X @ helmert_basis(d, p).T`` (the classifier of a reduced solution, without transposing).

    Examples
    --------
    >>> import numpy as np
    >>> X = np.random.default_rng(0).standard_normal((3, 2))
    >>> bool(np.allclose(helmert_apply(X, 5), helmert_basis(5, 3) @ X))
    True
    >>> bool(np.allclose(helmert_apply(X.T, 5, axis=1), X.T @ helmert_basis(5, 3).T))
    True
    """
    X = np.asarray(X, dtype=float)
    if X.ndim != 2 or axis not in (0, 1):
        raise ValueError(f"X must be 2-d and axis 0 or 1, got shape {X.shape} and axis {axis!r}")
    if axis == 1:
        return helmert_apply(X.T, d).T if not X.flags.c_contiguous else _helmert_rows(X, d)
    p = X.shape[0]
    if not 0 <= p <= d - 1:
        raise ValueError(f"X must have p in [0, d-1] = [0, {d - 1}] rows, got {p}")
    c = 1.0 / np.sqrt(np.arange(1, p + 1) * np.arange(2, p + 2.0))
    out = np.zeros((d, X.shape[1]))
    np.multiply(X, c[:, None], out=out[:p])
    tail = out[:p].copy()
    # reversed cumulative sum, row by row: numpy's cumsum along axis 0 is ~20x slower here
    for i in range(p - 2, -1, -1):
        out[i] += out[i + 1]
    tail *= np.arange(1, p + 1)[:, None]
    out[1 : p + 1] -= tail
    return out


def _helmert_rows(X: np.ndarray, d: int) -> np.ndarray:
    """``X @ helmert_basis(d, p).T`` for a C-contiguous ``X`` (n, p): the cumulative sums run
    along the contiguous axis."""
    p = X.shape[1]
    if not 0 <= p <= d - 1:
        raise ValueError(f"X must have p in [0, d-1] = [0, {d - 1}] columns, got {p}")
    c = 1.0 / np.sqrt(np.arange(1, p + 1) * np.arange(2, p + 2.0))
    Y = X * c[None, :]
    R = np.ascontiguousarray(Y[:, ::-1])  # reversed, so the cumulative sum runs forwards
    np.cumsum(R, axis=1, out=R)
    out = np.zeros((X.shape[0], d))
    out[:, :p] = R[:, ::-1]
    Y *= np.arange(1, p + 1)[None, :]
    out[:, 1 : p + 1] -= Y
    return out


def simplex_etf(K: int, p: int | None = None) -> np.ndarray:
    """Unit columns :math:`m_k` of a simplex ETF, :math:`m_k^\\top m_j = -1/(K-1)`, shape ``(p, K)``.

    Needs ``p >= K - 1`` (default ``K - 1``); extra rows are zero.

    Examples
    --------
    >>> import numpy as np
    >>> M = simplex_etf(3)
    >>> np.round(M.T @ M, 12)
    array([[ 1. , -0.5, -0.5],
           [-0.5,  1. , -0.5],
           [-0.5, -0.5,  1. ]])
    >>> simplex_etf(3, 4).shape
    (4, 3)
    """
    p = K - 1 if p is None else p
    if p < K - 1:
        raise ValueError(f"a simplex ETF of K = {K} vectors needs p >= K - 1, got p = {p}")
    C = helmert_basis(K, K - 1).T * np.sqrt(K / (K - 1.0))  # (K-1, K), Helmert rows ⟂ 1
    out = np.zeros((p, K))
    out[: K - 1] = C
    return out


def centred_simplex_etf(K: int, p: int | None = None) -> np.ndarray:
    r"""The simplex ETF :math:`m_k = \sqrt{K/(K-1)}\,(e_k - \mathbf 1/K)`, shape ``(p, K)``.

    The same frame as :func:`simplex_etf` (:math:`m_k^\top m_j = -1/(K-1)`), in the coordinates
    where it is closest to the identity: column ``k`` is dominated by its ``k``-th entry.  Needs
    ``p >= K`` (default ``K``); extra rows are zero.  The trust-region solver starts in this
    gauge: there the loss curvature of each column of ``W`` is concentrated on one class, so
    the Hessian's diagonal is a good preconditioner (``python -m benchmarks.bench_certified
    --gauge`` counts the Hessian products in both gauges).

    Examples
    --------
    >>> import numpy as np
    >>> M = centred_simplex_etf(3)
    >>> np.round(M.T @ M, 12)
    array([[ 1. , -0.5, -0.5],
           [-0.5,  1. , -0.5],
           [-0.5, -0.5,  1. ]])
    >>> centred_simplex_etf(3, 5).shape
    (5, 3)
    """
    p = K if p is None else p
    if p < K:
        raise ValueError(f"the centred simplex ETF of K = {K} vectors needs p >= K, got p = {p}")
    out = np.zeros((p, K))
    out[:K] = (np.eye(K) - 1.0 / K) * np.sqrt(K / (K - 1.0))
    return out


def etf_gram(K: int) -> np.ndarray:
    """:math:`E_K = (I - \\mathbf 1\\mathbf 1^\\top/K)/\\sqrt{K-1}`, the normalised simplex-ETF Gram.

    Examples
    --------
    >>> import numpy as np
    >>> G = simplex_etf(4).T @ simplex_etf(4)
    >>> bool(np.allclose(etf_gram(4), G / np.linalg.norm(G))), round(float(np.linalg.norm(etf_gram(4))), 12)
    (True, 1.0)
    """
    return (np.eye(K) - 1.0 / K) / np.sqrt(K - 1.0)
