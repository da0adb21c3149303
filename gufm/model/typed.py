r"""Class types and type-structured matrices: the certificate in ``O(K T + T^3)`` for tied counts.

Classes with equal counts are *exchangeable*: a point invariant under permuting them (the
symmetric family of :mod:`gufm.solvers.symmetric`) has logits
:math:`Z_{jk}` that depend only on the types :math:`t(j), t(k)` and on whether :math:`j = k`.
Such a ``K x K`` matrix is

.. math::

    X = E A E^\top + \operatorname{diag}(E e),

with :math:`E \in \{0,1\}^{K\times T}` the type indicator, ``A`` a ``T x T`` matrix (the
off-diagonal values) and ``e`` the per-type correction of the diagonal
(:class:`TypedMatrix`).  These matrices are closed under products,

.. math::

    X^\top X' = E\,[A^\top \operatorname{diag}(m) A' + A^\top\operatorname{diag}(e') +
    \operatorname{diag}(e) A']\,E^\top + \operatorname{diag}(E(e\odot e')),

(``m`` the multiplicities), so the dual certificate's Schur complement
:math:`\operatorname{diag}(\mu) - Y^\top Y/(2\lambda_W)` (docs/certificate.md) is one too, and
its spectrum is explicit: :math:`e_t` on the vectors that sum to zero inside type ``t``
(multiplicity :math:`m_t - 1`), and the spectrum of the ``T x T`` matrix
:math:`R = \operatorname{diag}(\sqrt m) A \operatorname{diag}(\sqrt m) + \operatorname{diag}(e)`
on the vectors constant inside every type.  :func:`certify_typed` builds the same certificate
as :func:`gufm.model.certificate.certify` from ``T`` representative columns of ``Z``, with the
loss formulas of :mod:`gufm.model.losses` applied to them, and proves ``R + tI >= 0`` with
:func:`gufm.model.psd.psd_shift` (plus the rounding margin of a ``K x K`` factorisation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gufm.model.certificate import Certificate
from gufm.model.losses import conjugate, weighted_loss_grad
from gufm.model.objective import column_data, evaluate
from gufm.model.problem import GUFM
from gufm.model.psd import _gamma, psd_shift

__all__ = ["Types", "class_types", "TypedMatrix", "representatives", "typed_logits",
           "typed_value", "certify_typed"]


@dataclass
class Types:
    """Class types of a hard-label problem (equal counts).

    Examples
    --------
    >>> from gufm.model.problem import GUFM
    >>> t = class_types(GUFM(counts=[3, 3, 1, 3, 1], dim=8))
    >>> t.T, t.counts.tolist(), t.mult.tolist(), t.of_class.tolist()
    (2, [1.0, 3.0], [2, 3], [1, 1, 0, 1, 0])
    """

    counts: np.ndarray  # n_t, shape (T,)
    mult: np.ndarray  # m_t, shape (T,)
    of_class: np.ndarray  # type of each class, shape (K,)

    @property
    def T(self) -> int:
        return int(self.counts.shape[0])

    @property
    def K(self) -> int:
        return int(self.of_class.shape[0])

    def expand(self, v: np.ndarray) -> np.ndarray:
        """The per-type vector ``v`` (T,) as a per-class vector ``E v`` (K,)."""
        return np.asarray(v)[self.of_class]


def class_types(prob: GUFM) -> Types | None:
    """Types of equal-count classes, or None for soft labels.

    Examples
    --------
    >>> from gufm.model.problem import GUFM
    >>> class_types(GUFM(counts=[2, 2, 5], dim=4)).mult.tolist()
    [2, 1]
    >>> class_types(GUFM(soft_labels=[[0.5, 0.5], [1.0, 0.0]], dim=4)) is None
    True
    """
    if not prob.hard_labels:
        return None
    uniq, inv, mult = np.unique(prob.groups.counts, return_inverse=True, return_counts=True)
    return Types(uniq.astype(float), mult.astype(np.int64), inv.reshape(-1))


def representatives(types: Types) -> tuple[np.ndarray, np.ndarray]:
    """``(first, second)``: the first and second class of every type (``second`` is ``-1``
    for a type with one class).

    Examples
    --------
    >>> from gufm.model.problem import GUFM
    >>> first, second = representatives(class_types(GUFM(counts=[3, 3, 1, 3], dim=5)))
    >>> first.tolist(), second.tolist()
    ([2, 0], [-1, 1])
    """
    first = np.full(types.T, -1, dtype=np.int64)
    second = np.full(types.T, -1, dtype=np.int64)
    for k, t in enumerate(types.of_class):
        if first[t] < 0:
            first[t] = k
        elif second[t] < 0:
            second[t] = k
    return first, second


class TypedMatrix:
    r"""The ``K x K`` matrix :math:`X = E A E^\top + \operatorname{diag}(E e)` (module docstring).

    Parameters
    ----------
    types : Types
    A : ndarray (T, T)
        ``A[s, t]``: the entries :math:`X_{jk}`, ``j != k``, of row type ``s``, column type ``t``.
    e : ndarray (T,)
        Diagonal entries of type ``t`` are ``A[t, t] + e[t]``.

    Examples
    --------
    >>> import numpy as np
    >>> from gufm.model.problem import GUFM
    >>> types = class_types(GUFM(counts=[2, 2, 1], dim=4))       # types: [1] x1, [2] x2
    >>> X = TypedMatrix(types, np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([0.5, -1.0]))
    >>> X.dense().tolist()
    [[3.0, 4.0, 3.0], [4.0, 3.0, 3.0], [2.0, 2.0, 1.5]]
    >>> Y = TypedMatrix(types, np.array([[0.0, 1.0], [1.0, 2.0]]), np.array([1.0, 2.0]))
    >>> bool(np.allclose(X.tmatmul(Y).dense(), X.dense().T @ Y.dense()))
    True
    """

    def __init__(self, types: Types, A: np.ndarray, e: np.ndarray) -> None:
        self.types = types
        self.A = np.asarray(A, dtype=float)
        self.e = np.asarray(e, dtype=float)
        T = types.T
        if self.A.shape != (T, T) or self.e.shape != (T,):
            raise ValueError(f"A must have shape ({T}, {T}) and e ({T},), got {self.A.shape} "
                             f"and {self.e.shape}")

    def dense(self) -> np.ndarray:
        """The ``K x K`` array."""
        t = self.types.of_class
        X = self.A[np.ix_(t, t)]
        X[np.diag_indices_from(X)] += self.e[t]
        return X

    def columns(self, idx: np.ndarray) -> np.ndarray:
        """The columns ``idx`` as a ``(K, len(idx))`` array (``O(K len(idx))``)."""
        t = self.types.of_class
        idx = np.asarray(idx, dtype=np.int64)
        X = self.A[np.ix_(t, t[idx])]
        X[idx, np.arange(idx.size)] += self.e[t[idx]]
        return X

    def tmatmul(self, other: TypedMatrix) -> TypedMatrix:
        """:math:`X^\\top X'` (module docstring)."""
        m = self.types.mult.astype(float)
        A = self.A.T @ (m[:, None] * other.A) + self.A.T * other.e[None, :] + (
            self.e[:, None] * other.A)
        return TypedMatrix(self.types, A, self.e * other.e)

    def row_sums(self) -> np.ndarray:
        """Per row type, the sum of a row: :math:`\\sum_t m_t A_{st} + e_s` (T,)."""
        return self.A @ self.types.mult.astype(float) + self.e

    def psd_shift(self) -> tuple[float, float, np.ndarray | None]:
        """``(t, lambda_min, v)``: a proved ``t >= 0`` with ``X + tI`` PSD (``X`` symmetric),
        the smallest eigenvalue and, when it is negative, a unit eigenvector (K,).

        ``t`` covers the rounding of a ``K x K`` Cholesky factorisation (the margin of
        :func:`gufm.model.psd.psd_shift` for ``n = K``) on top of the exact reduction.
        """
        types = self.types
        m = types.mult.astype(float)
        sq = np.sqrt(m)
        R = sq[:, None] * (0.5 * (self.A + self.A.T)) * sq[None, :] + np.diag(self.e)
        ps = psd_shift(R)
        inner = types.mult >= 2  # types with zero-sum vectors inside them
        e_min = float(self.e[inner].min()) if inner.any() else math.inf
        lam = min(ps.lambda_min, e_min)
        diag = self.A.diagonal() + self.e
        margin = _gamma(types.K) * float((m * np.clip(diag, 0, None)).sum())
        t = max(ps.shift, -e_min if inner.any() else 0.0, 0.0) + margin
        vec = None
        if lam < 0 and e_min <= ps.lambda_min:
            s = int(np.flatnonzero(inner & (self.e == e_min))[0])
            j, k = np.flatnonzero(types.of_class == s)[:2]
            vec = np.zeros(types.K)
            vec[j], vec[k] = 1 / math.sqrt(2), -1 / math.sqrt(2)
        elif lam < 0 and ps.vector is not None:
            vec = (ps.vector / sq)[types.of_class]
            vec /= np.linalg.norm(vec)
        return t, lam, vec


def _typed_from_columns(types: Types, cols: np.ndarray, first: np.ndarray,
                        second: np.ndarray) -> TypedMatrix:
    """The typed matrix whose column ``first[t]`` is ``cols[:, t]``."""
    A = cols[first, :].copy()  # A[s, t] = X[first[s], first[t]] for s != t
    T = types.T
    e = np.empty(T)
    for t in range(T):
        own = cols[first[t], t]
        A[t, t] = cols[second[t], t] if second[t] >= 0 else 0.0
        e[t] = own - A[t, t]
    return TypedMatrix(types, A, e)


def typed_logits(types: Types, W: np.ndarray, H: np.ndarray,
                 rtol: float = 1e-10) -> TypedMatrix | None:
    """``Z = W H`` as a :class:`TypedMatrix` from the first two classes of every type, or
    ``None`` when ``Z`` is not type-structured to ``rtol`` (relative to ``max |Z|``) on them.

    ``O(K d T)``: only ``2T`` columns of ``Z`` are computed.

    Examples
    --------
    >>> import numpy as np
    >>> from gufm.model.problem import GUFM
    >>> types = class_types(GUFM(counts=[2, 2, 1], dim=4))
    >>> H = np.eye(3); W = np.array([[2.0, 1, 1], [1, 2, 1], [0, 0, 3]])
    >>> typed_logits(types, W, H).dense().tolist() == W.tolist()
    True
    >>> typed_logits(types, W + np.diag([0.0, 1.0, 0.0]), H) is None   # classes 0, 1 differ
    True
    """
    first, second = representatives(types)
    both = np.concatenate([first, second[second >= 0]])
    Zc = W @ H[:, both]
    Zt = _typed_from_columns(types, Zc[:, : types.T], first, second)
    scale = max(float(np.abs(Zc).max()), 1e-300)
    if float(np.abs(Zt.columns(both) - Zc).max()) > rtol * scale:
        return None
    return Zt


def _rep_data(prob: GUFM, types: Types) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-hot targets, per-class weights and counts of the representative classes."""
    first, _ = representatives(types)
    Q, w, n = column_data(prob, prob.G, "groups")
    return Q[:, first], w[first], n[first]


def typed_value(prob: GUFM, types: Types, W: np.ndarray, b: np.ndarray | None,
                H: np.ndarray) -> float | None:
    r"""The group objective at a type-structured point from ``T`` representative columns.

    :func:`gufm.model.objective.evaluate` on the first class of every type with the weights
    :math:`m_t p_t` and counts :math:`m_t n_t` (and the whole ``W`` and ``b``); equal to
    :func:`gufm.model.objective.group_objective` when every class of a type has the same loss
    and feature norm, which holds when ``Z`` is type-structured (checked; ``None`` otherwise).
    ``O(K d T)`` instead of ``O(K d G)``.

    Examples
    --------
    >>> import numpy as np
    >>> from gufm.model.problem import GUFM
    >>> from gufm.model.objective import group_objective
    >>> from gufm.model.geometry import helmert_basis, simplex_etf
    >>> prob = GUFM(counts=[5, 5, 5, 2], dim=5, lam_W=0.1)
    >>> H = helmert_basis(5) @ simplex_etf(4, 4) * 5**0.5   # a simplex ETF on the LN sphere
    >>> W = 0.7 * H.T
    >>> types = class_types(prob)
    >>> bool(np.isclose(typed_value(prob, types, W, None, H), group_objective(prob, W, None, H)))
    True
    """
    if typed_logits(types, W, H) is None:
        return None
    first, _ = representatives(types)
    Q, w, n = _rep_data(prob, types)
    m = types.mult.astype(float)
    val, _ = evaluate(prob, W, b, H[:, first], Q, w * m, n * m, need_grad=False)
    return float(val)


def certify_typed(prob: GUFM, types: Types, Z: TypedMatrix, b: np.ndarray | None = None, *,
                  dense: bool = True) -> Certificate | None:
    r"""The dual certificate of :func:`gufm.model.certificate.certify` at type-structured
    logits ``Z + b 1ᵀ`` (``Z = W Hbar`` as a :class:`TypedMatrix`, e.g. from
    :func:`typed_logits`), in ``O(K T + T^3)``.

    ``Y`` is the loss gradient at the representative columns, the multipliers
    :math:`\mu_t` come from the feature model (:meth:`FeatureModel.dual_diagonal`), and the
    Schur complement's shift from :meth:`TypedMatrix.psd_shift`.  Returns ``None`` (the
    caller uses the dense certificate) when the feature model repairs by scaling
    (``penalty``) or the bias is not constant inside every type.  With ``dense`` the
    certificate's ``Y`` (K, K) and ``mu`` (K,) are dense arrays as :func:`certify` returns
    them (``O(K^2)``); without, ``Y`` is ``None`` and ``mu`` is per type.

    Examples
    --------
    >>> import numpy as np
    >>> from gufm.model.problem import GUFM
    >>> from gufm.model.certificate import certify
    >>> from gufm.solvers import solve
    >>> prob = GUFM(counts=[4, 4, 4, 2, 2], dim=6, lam_W=0.05)
    >>> res = solve(prob)
    >>> W, H, types = res.W, res.class_features, class_types(prob)
    >>> c1, c2 = certify_typed(prob, types, typed_logits(types, W, H)), certify(prob, W @ H)
    >>> bool(abs(c1.lower_bound - c2.lower_bound) < 1e-12), bool(np.allclose(c1.Y, c2.Y))
    (True, True)
    """
    if b is not None:
        b = np.asarray(b, dtype=float)
        if float(np.abs(b - types.expand(b[representatives(types)[0]])).max()) > 1e-12 * max(
                float(np.abs(b).max()), 1e-300):
            return None  # the bias differs inside a type: not a type-structured point
    first, second = representatives(types)
    Zr = Z.columns(first)  # (K, T), no bias
    Q, w, _ = _rep_data(prob, types)
    m = types.mult.astype(float)
    Yr = weighted_loss_grad(prob.loss, Zr if b is None else Zr + b[:, None], Q, w)
    Y = _typed_from_columns(types, Yr, first, second)
    if prob.has_bias and prob.lam_b == 0:
        # unpenalised bias: Y 1 = 0 exactly (as certify does: remove the row means)
        r = Y.row_sums() / types.K
        Y = TypedMatrix(types, Y.A - r[:, None], Y.e)
        Yr = Y.columns(first)
    block = prob.feature_model.dual_diagonal(Zr, Yr, prob.rho, types.counts, prob.lam_H)
    if block.repair != "shift":
        return None
    YtY = Y.tmatmul(Y)
    S = TypedMatrix(types, -YtY.A / (2.0 * prob.lam_W), block.diag - YtY.e / (2.0 * prob.lam_W))
    t, lmin, vec = S.psd_shift()
    mu = block.diag + t
    gstar = conjugate(prob.loss, Yr * m, Q, w * m)
    Yd, mud = (Y.dense(), types.expand(mu)) if dense else (None, mu)
    if math.isinf(gstar):
        return Certificate(-math.inf, lmin, t, Yd, mud, vec, "Y outside the conjugate's domain")
    lb = -gstar - prob.feature_model.dual_term(mu * m, prob.rho)
    if prob.has_bias and prob.lam_b > 0:
        lb -= float((m * Y.row_sums() ** 2).sum()) / (2 * prob.lam_b)
    return Certificate(lb, lmin, t, Yd, mud, vec, "")
