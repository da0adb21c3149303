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

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["DiagLowRank", "compress", "transpose_into"]


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

    def mm(self, X: np.ndarray, out: np.ndarray | None = None, add: bool = False,
           work: np.ndarray | None = None) -> np.ndarray:
        """:math:`MX`, ``X`` of shape (n, c); see :meth:`_product` for ``out``, ``add``, ``work``."""
        return self._product(self.U, self.V.T @ X, X, False, out, add, work)

    def tmm(self, X: np.ndarray, out: np.ndarray | None = None, add: bool = False,
            work: np.ndarray | None = None) -> np.ndarray:
        """:math:`M^\\top X`, ``X`` of shape (m, c)."""
        return self._product(self.V, self.U.T @ X, X, False, out, add, work)

    def rmm(self, X: np.ndarray, out: np.ndarray | None = None, add: bool = False,
            work: np.ndarray | None = None) -> np.ndarray:
        """:math:`XM`, ``X`` of shape (c, m)."""
        return self._product(X @ self.U, self.V.T, X, True, out, add, work)

    def rtmm(self, X: np.ndarray, out: np.ndarray | None = None, add: bool = False,
             work: np.ndarray | None = None) -> np.ndarray:
        """:math:`XM^\\top`, ``X`` of shape (c, n)."""
        return self._product(X @ self.V, self.U.T, X, True, out, add, work)

    def _product(self, A: np.ndarray, B: np.ndarray, X: np.ndarray, right: bool,
                 out: np.ndarray | None, add: bool, work: np.ndarray | None) -> np.ndarray:
        """``A @ B`` plus the diagonal's part (``D X`` or ``X D`` on the first ``k`` rows or
        columns), written to ``out`` (``add``: accumulated into it), returned.

        With ``out`` and ``work`` (an array of ``out``'s shape and dtype) nothing of that
        size is allocated: on large iterates fresh arrays cost page faults that take longer
        than the arithmetic (the products here are bandwidth-bound)."""
        k = self.d.shape[0]
        if out is None:
            out = A @ B
            if add:
                raise ValueError("add=True needs out")
        elif add:
            tmp = np.matmul(A, B, out=work) if work is not None else A @ B
            out += tmp
        else:
            np.matmul(A, B, out=out)
        if right:  # X D: scale the first k columns
            Xk, ok, dk = X[:, :k], out[:, :k], self.d[None, :]
        else:  # D X: scale the first k rows
            Xk, ok, dk = X[:k], out[:k], self.d[:, None]
        if work is None:
            ok += Xk * dk
        else:
            wk = work[:, :k] if right else work[:k]
            ok += np.multiply(Xk, dk, out=wk)
        return out


def transpose_into(a: np.ndarray, out: np.ndarray, block: int = 256) -> np.ndarray:
    """``out[...] = a.T`` by square tiles (a 2-D array), which stay in the cache, instead of
    one strided copy, which misses it on almost every element of a large array.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.arange(12.0).reshape(3, 4)
    >>> bool((transpose_into(a, np.empty((4, 3)), block=2) == a.T).all())
    True
    """
    m, n = a.shape
    if out.shape != (n, m):
        raise ValueError(f"out must have shape {(n, m)}, got {out.shape}")
    for i in range(0, m, block):
        for j in range(0, n, block):
            out[j:j + block, i:i + block] = a[i:i + block, j:j + block].T
    return out


def compress(M: np.ndarray, tol: float, ranks: tuple[int, ...] = (2, 4, 8, 16),
             imputations: int = 6, seed: int = 0, start: DiagLowRank | None = None,
             warm_imputations: int = 2) -> DiagLowRank | None:
    r"""The first rank in ``ranks`` whose :class:`DiagLowRank` approximation of ``M`` has
    :math:`\lVert M - D - UV^\top\rVert_F \le` ``tol`` :math:`\lVert M\rVert_F`, or ``None``.

    The diagonal is exact (``d = diag(M) - diag(UVᵀ)``); ``U V^T`` approximates the
    off-diagonal part, whose diagonal is imputed ``imputations`` times from the previous
    estimate.  Cost :math:`O(mn(r + 4))` per imputation, and no array of ``M``'s size is
    allocated (the error is summed in row blocks).

    ``start`` (the factors of a nearby matrix of the same shape, e.g. the previous iterate's)
    is tried first: its rank, its imputed diagonal and its right factor as the range finder's
    first columns, with ``warm_imputations`` imputations.  When that misses the tolerance the
    cold search continues from its rank up, so a poor start costs time, never accuracy.

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
    norm2 = float(np.vdot(M, M))
    if norm2 == 0.0:
        return DiagLowRank(diag_M, np.zeros((m, 0)), np.zeros((n, 0)), (m, n))
    rng = np.random.default_rng(seed)

    def apply(X: np.ndarray, L: np.ndarray, transpose: bool) -> np.ndarray:
        """(O + diag(L)) X, or its transpose, from M itself (O = M - diag(diag_M): no copy)."""
        out = (M.T if transpose else M) @ X
        out[idx] += (L - diag_M)[:, None] * X[idx]
        return out

    def impute(r: int, L: np.ndarray, V0: np.ndarray | None, times: int):
        """``times`` rounds of range finding (one power iteration) and diagonal imputation."""
        for _ in range(times):
            omega = rng.standard_normal((n, r + 4))
            if V0 is not None:
                omega[:, :V0.shape[1]] = V0
            Q = np.linalg.qr(apply(omega, L, False))[0]
            Q = np.linalg.qr(apply(np.linalg.qr(apply(Q, L, True))[0], L, False))[0]
            B = apply(Q, L, True).T  # Qᵀ (O + diag L), shape (r + 4, n)
            Ub, s, Vt = np.linalg.svd(B, full_matrices=False)
            U, V = Q @ (Ub[:, :r] * s[:r]), Vt[:r].T
            L = np.einsum("ij,ij->i", U[idx], V[idx])
        return U, V, L

    def accept(U: np.ndarray, V: np.ndarray, L: np.ndarray) -> DiagLowRank | None:
        err2 = _offdiag_error2(M, U, V)
        if err2 <= tol * tol * norm2:
            return DiagLowRank(diag_M - L, U, V, (m, n), math.sqrt(err2 / norm2))
        return None

    if start is not None:
        if start.shape != (m, n):
            raise ValueError(f"start must have the shape of M, {(m, n)}, got {start.shape}")
        r0 = start.rank
        if 0 < r0 <= k:
            L0 = np.einsum("ij,ij->i", start.U[idx], start.V[idx])
            out = accept(*impute(r0, L0, start.V, warm_imputations))
            if out is not None:
                return out
            ranks = tuple(r for r in ranks if r >= r0)
    for r in ranks:
        r = min(r, k)
        out = accept(*impute(r, np.zeros(k), None, imputations))
        if out is not None:
            return out
    return None


def _offdiag_error2(M: np.ndarray, U: np.ndarray, V: np.ndarray, rows: int = 256) -> float:
    r""":math:`\sum_{i \ne j} (M - UV^\top)_{ij}^2`, in blocks of ``rows`` rows (one reused
    ``rows x n`` buffer: nothing of ``M``'s size is allocated).

    Not from the expansion :math:`\lVert O\rVert^2 - 2\langle O, UV^\top\rangle +
    \lVert UV^\top\rVert^2`: its terms are ~``1/tol²`` times larger than the result, and
    their rounding (a BLAS dot of ``mn`` terms is accurate to ~1e-13, not 1e-16) swamps it.

    Examples
    --------
    >>> import numpy as np
    >>> M = np.arange(12.0).reshape(3, 4)
    >>> float(_offdiag_error2(M, np.zeros((3, 1)), np.zeros((4, 1)), rows=2))
    381.0
    """
    m, n = M.shape
    k = min(m, n)
    buf = np.empty((min(rows, m), n))
    total = 0.0
    for i in range(0, m, rows):
        blk = buf[: min(rows, m - i)]
        np.matmul(U[i:i + rows], V.T, out=blk)
        np.subtract(M[i:i + rows], blk, out=blk)
        diag = np.arange(i, min(i + rows, k))
        blk[diag - i, diag] = 0.0
        total += float(np.vdot(blk, blk))
    return total
