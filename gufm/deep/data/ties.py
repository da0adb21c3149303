r"""Tied samples: identical inputs, whose labels form a soft label.

A network's features are a function of its input, so samples with the same input ``x`` share
one feature :math:`h(x)`.  When such samples carry different labels (one context, several
next tokens) the GUFM with one free feature per sample is looser than it needs to be: the
tighter problem has one feature per **distinct input** ``u``, with weight :math:`n_u/N` and the
empirical label distribution

.. math::

    q_u = \frac1{n_u} \sum_{i:\,x_i = u} e_{y_i}

as its target (see docs/reduction.md, section 4).  For cross-entropy, which is
linear in the target, :math:`\sum_{i: x_i=u}\ell(z, e_{y_i}) = n_u\,\ell(z, q_u)` exactly; for
the squared loss the two differ by the constant :math:`\tfrac{n_u}2(1 - \lVert q_u\rVert^2)`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TiedLabels:
    """What :func:`tied_soft_labels` finds.

    Attributes
    ----------
    soft_labels : ndarray (N, K) or None
        Row ``i`` is :math:`q_{x_i}`, the label distribution of sample ``i``'s input; ``None``
        when no input occurs with two different labels (then the hard labels are exact).
    inverse : ndarray of int (N,)
        Index of every sample's distinct input.
    distinct : int
        Number of distinct inputs.
    conflicting : int
        Distinct inputs that occur with more than one label.

    Examples
    --------
    >>> import numpy as np
    >>> t = tied_soft_labels(np.array([[0.0], [0.0], [1.0]]), np.array([0, 1, 1]), 2)
    >>> t.soft_labels.tolist(), t.inverse.tolist(), t.distinct, t.conflicting
    ([[0.5, 0.5], [0.5, 0.5], [0.0, 1.0]], [0, 0, 1], 2, 1)
    """

    soft_labels: np.ndarray | None
    inverse: np.ndarray
    distinct: int
    conflicting: int


def _distinct_rows(rows: np.ndarray) -> np.ndarray:
    """Index of every row's distinct row (numbered in order of first occurrence), exact.

    Rows are bucketed by a 128-bit BLAKE2b digest of their bytes (O(N) memory, no copy of the
    data), and every row is compared with its bucket's first row: on a digest collision the
    rows are grouped by ``numpy.unique`` instead, so two different inputs are never tied.
    """
    first: dict[bytes, int] = {}
    inverse = np.empty(rows.shape[0], dtype=np.int64)
    reps: list[int] = []
    for i in range(rows.shape[0]):
        row = np.ascontiguousarray(rows[i])
        key = hashlib.blake2b(row.tobytes(), digest_size=16).digest()
        j = first.setdefault(key, len(reps))
        if j == len(reps):
            reps.append(i)
        elif not np.array_equal(rows[reps[j]], row):  # a 128-bit digest collision
            return np.unique(rows, axis=0, return_inverse=True)[1].reshape(-1).astype(np.int64)
        inverse[i] = j
    return inverse


def tied_soft_labels(X: Any, y: Any, num_classes: int) -> TiedLabels:
    r"""Group identical inputs and average their one-hot labels (module docstring).

    Parameters
    ----------
    X : array or Tensor, shape (N, ...)
        Inputs; two samples are tied when their rows are equal element by element.
    y : array or Tensor of int, shape (N,)
        Labels in ``{0, ..., num_classes-1}``.
    num_classes : int

    Returns
    -------
    TiedLabels

    Raises
    ------
    ValueError
        ``X`` and ``y`` disagree on N, or a label lies outside ``0..num_classes-1``.

    Examples
    --------
    >>> X = np.array([[1, 2], [1, 2], [3, 4], [1, 2]])
    >>> t = tied_soft_labels(X, [0, 1, 1, 1], 2)
    >>> t.distinct, t.conflicting
    (2, 1)
    >>> t.soft_labels.round(3).tolist()
    [[0.333, 0.667], [0.333, 0.667], [0.0, 1.0], [0.333, 0.667]]
    >>> tied_soft_labels(X, [1, 1, 0, 1], 2).soft_labels is None
    True
    """
    Xn = np.asarray(X.detach().cpu() if hasattr(X, "detach") else X)
    yn = np.asarray(y.detach().cpu() if hasattr(y, "detach") else y).astype(np.int64).reshape(-1)
    N = yn.shape[0]
    if Xn.shape[0] != N:
        raise ValueError(f"X has {Xn.shape[0]} samples but y has {N} labels")
    K = int(num_classes)
    if N and (yn.min() < 0 or yn.max() >= K):
        raise ValueError(f"y: labels must lie in 0..{K - 1}, got {int(yn.min())}..{int(yn.max())}")
    if N == 0:
        return TiedLabels(None, np.zeros(0, np.int64), 0, 0)
    inverse = _distinct_rows(Xn.reshape(N, -1))
    M = int(inverse.max()) + 1
    C = np.zeros((M, K))
    np.add.at(C, (inverse, yn), 1.0)
    conflicting = int(((C > 0).sum(1) > 1).sum())
    soft = None if conflicting == 0 else (C / C.sum(1, keepdims=True))[inverse]
    return TiedLabels(soft, inverse, M, conflicting)
