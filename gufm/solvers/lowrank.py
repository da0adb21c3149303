r"""Diagonal-plus-low-rank approximations for cheap Hessian-vector products.

In the solver's centred gauge (:func:`gufm.model.geometry.centred_simplex_etf`) the reduced
GUFM's iterates with class imbalance stay close to *diagonal plus low rank*: measured on
distinct counts, ``W``, ``H`` and the loss gradient ``Y`` are
:math:`\operatorname{diag}(d) + UV^\top` with rank 2 to 8 up to a relative error of
1e-7 to 1e-6 along the whole trust-region path.  A Hessian-vector product then costs
:math:`O(K p r)` instead of six :math:`K \times K \times p` matrix products
(:meth:`gufm.solvers.manifold.ReducedManifold.hess`).  The approximation only changes the
inner conjugate-gradient solves (an inexact Newton direction, like the float32 products);
values, gradients and the certificate stay exact.  With mixed precision the factors are
cast to float32 and the whole product runs in float32 with in-place updates
(:meth:`gufm.solvers.manifold.ReducedManifold.hess`), and the preconditioner's diagonal
comes from the factors too (:meth:`DiagLowRank.hadamard_square`).

:func:`compress` finds the factors by a randomized range finder (Halko, Martinsson & Tropp
2011, one power iteration) on the off-diagonal part with its diagonal imputed from the
current low-rank estimate, and returns ``None`` when no rank up to the largest tried meets
the tolerance (the caller then uses dense products).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["DiagLowRank", "compress"]


@dataclass
class DiagLowRank:
    r""":math:`M = D + UV^\top` of shape ``(m, n)``, ``D`` the rectangular diagonal ``d``
    (``min(m, n)`` entries), ``U`` (m, r), ``V`` (n, r).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> M = DiagLowRank(rng.random(3), rng.random((3, 2)), rng.random((4, 2)), (3, 4))
    >>> X = rng.random((4, 2))
    >>> bool(np.allclose(M.mm(X), M.dense() @ X)), bool(np.allclose(M.tmm(X[:3]), M.dense().T @ X[:3]))
    (True, True)
    """

    d: np.ndarray
    U: np.ndarray
    V: np.ndarray
    shape: tuple[int, int]
    error: float = 0.0

    @property
    def rank(self) -> int:
        return int(self.U.shape[1])

    def astype(self, dtype: type) -> DiagLowRank:
        """The same factors in ``dtype`` (e.g. float32 for inexact Hessian products)."""
        return DiagLowRank(self.d.astype(dtype), self.U.astype(dtype), self.V.astype(dtype),
                           self.shape, self.error)

    def hadamard_square(self) -> DiagLowRank:
        r""":math:`M \circ M` (entrywise square) in the same form, of rank :math:`r^2`.

        :math:`(D + UV^\top)\circ(D + UV^\top) = \operatorname{diag}(d^2 + 2 d\circ
        \operatorname{diag}(UV^\top)) + (U \odot U)(V \odot V)^\top`, with
        :math:`\odot` the row-wise Kronecker (Khatri-Rao) product.

        Examples
        --------
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> M = DiagLowRank(rng.random(3), rng.random((3, 2)), rng.random((4, 2)), (3, 4))
        >>> bool(np.allclose(M.hadamard_square().dense(), M.dense() ** 2))
        True
        """
        k, r = self.d.shape[0], self.rank
        m, n = self.shape
        cross = np.einsum("ij,ij->i", self.U[:k], self.V[:k])
        return DiagLowRank(self.d * self.d + 2 * self.d * cross,
                           (self.U[:, :, None] * self.U[:, None, :]).reshape(m, r * r),
                           (self.V[:, :, None] * self.V[:, None, :]).reshape(n, r * r),
                           self.shape)

    def dense(self) -> np.ndarray:
        out = self.U @ self.V.T
        k = self.d.shape[0]
        out[np.arange(k), np.arange(k)] += self.d
        return out

    def mm(self, X: np.ndarray) -> np.ndarray:
        """:math:`MX`, ``X`` of shape (n, c)."""
        out = self.U @ (self.V.T @ X)
        k = self.d.shape[0]
        out[:k] += self.d[:, None] * X[:k]
        return out

    def tmm(self, X: np.ndarray) -> np.ndarray:
        """:math:`M^\\top X`, ``X`` of shape (m, c)."""
        out = self.V @ (self.U.T @ X)
        k = self.d.shape[0]
        out[:k] += self.d[:, None] * X[:k]
        return out

    def rmm(self, X: np.ndarray) -> np.ndarray:
        """:math:`XM`, ``X`` of shape (c, m)."""
        out = (X @ self.U) @ self.V.T
        k = self.d.shape[0]
        out[:, :k] += X[:, :k] * self.d[None, :]
        return out

    def rtmm(self, X: np.ndarray) -> np.ndarray:
        """:math:`XM^\\top`, ``X`` of shape (c, n)."""
        out = (X @ self.V) @ self.U.T
        k = self.d.shape[0]
        out[:, :k] += X[:, :k] * self.d[None, :]
        return out


def compress(M: np.ndarray, tol: float, ranks: tuple[int, ...] = (2, 4, 8, 16),
             imputations: int = 6, seed: int = 0) -> DiagLowRank | None:
    r"""The first rank in ``ranks`` whose :class:`DiagLowRank` approximation of ``M`` has
    :math:`\lVert M - D - UV^\top\rVert_F \le` ``tol`` :math:`\lVert M\rVert_F`, or ``None``.

    The diagonal is exact (``d = diag(M) - diag(UVᵀ)``); ``U V^T`` approximates the
    off-diagonal part, whose diagonal is imputed ``imputations`` times from the previous
    estimate.  Cost :math:`O(mn(r + 4))` per imputation.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(1)
    >>> M = np.diag(rng.random(50)) + rng.random((50, 2)) @ rng.random((2, 50))
    >>> A = compress(M, 1e-12, imputations=20)   # the imputation converges linearly
    >>> A.rank, bool(np.allclose(A.dense(), M))
    (2, True)
    >>> compress(rng.random((50, 50)), 1e-3) is None        # no structure: dense products
    True
    """
    m, n = M.shape
    k = min(m, n)
    idx = np.arange(k)
    diag_M = M[idx, idx].copy()
    O = M.copy()
    O[idx, idx] = 0.0
    norm = float(np.linalg.norm(M))
    if norm == 0.0:
        return DiagLowRank(diag_M, np.zeros((m, 0)), np.zeros((n, 0)), (m, n))
    rng = np.random.default_rng(seed)

    def apply(X: np.ndarray, L: np.ndarray, transpose: bool) -> np.ndarray:
        """(O + diag(L)) X, or its transpose."""
        out = (O.T if transpose else O) @ X
        out[idx] += L[:, None] * X[idx]
        return out

    for r in ranks:
        r = min(r, k)
        L = np.zeros(k)
        for _ in range(imputations):
            Q = np.linalg.qr(apply(rng.standard_normal((n, r + 4)), L, False))[0]
            Q = np.linalg.qr(apply(np.linalg.qr(apply(Q, L, True))[0], L, False))[0]
            B = apply(Q, L, True).T  # Qᵀ (O + diag L), shape (r + 4, n)
            Ub, s, Vt = np.linalg.svd(B, full_matrices=False)
            U, V = Q @ (Ub[:, :r] * s[:r]), Vt[:r].T
            L = np.einsum("ij,ij->i", U[idx], V[idx])
        E = O - U @ V.T
        E[idx, idx] = 0.0
        err = float(np.linalg.norm(E)) / norm
        if err <= tol:
            return DiagLowRank(diag_M - L, U, V, (m, n), err)
    return None
