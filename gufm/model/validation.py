r"""Validation of the arguments of :class:`gufm.GUFM`: no silent coercion, precise errors.

Every check names the argument it rejects.  The rules (see docs/problem.md):

* integers (``dim``, ``num_classes``) must be integers (Python ``int`` or a numpy integer, never
  ``bool``, ``float`` or ``str``): a ``TypeError`` otherwise;
* reals (``lam_W``, ``lam_b``, ``lam_H``, ``radius``) must be real numbers (never ``bool`` or
  ``str``), finite, and obey their rule (``> 0`` or ``>= 0``); the message states the rule whether
  the value breaks it by sign or by being zero;
* ``counts`` and ``labels`` hold integers (integer arrays, or floats with integral values);
  every count, and their total :math:`N`, must be at most :data:`MAX_SAMPLES` :math:`= 2^{53}`
  so that they are exact in float64;
* the reduced problem stores a dense ``K x G`` target matrix; it is refused *before* it is
  allocated when it would exceed :data:`MAX_TARGET_ENTRIES` entries;
* soft-label rows must be non-negative and sum to one within :data:`SOFT_LABEL_TOL`; accepted
  rows are then **renormalised exactly** (:func:`exact_simplex_rows`): with an unpenalised bias
  the CE objective :math:`\operatorname{lse}(z) - q^\top z` changes by
  :math:`t\,(1 - \mathbf 1^\top q)` along :math:`b + t\mathbf 1`, so a row whose exact sum is
  not 1 (even :math:`1 + 2^{-52}`) makes the problem unbounded below.  After the exact
  renormalisation every valid instance has :math:`F \ge 0`.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any

import numpy as np

from gufm.backend import is_torch, to_numpy

#: largest count and largest total N accepted (integers up to 2**53 are exact in float64)
MAX_SAMPLES = 2**53
#: largest number of entries of the dense K x G target matrix of the reduced problem (1 GiB)
MAX_TARGET_ENTRIES = 2**27
#: soft-label rows must sum to 1 within this before the exact renormalisation
SOFT_LABEL_TOL = 1e-9
#: soft labels are stored as integer multiples of 2**-52 (so that row sums are exact)
_GRID = 2.0**52


def check_int(name: str, value: Any, *, minimum: int) -> int:
    """An integer ``>= minimum``, as a Python ``int``.

    Raises
    ------
    TypeError
        ``bool``, ``float``, ``str`` or anything else that is not an integer.
    ValueError
        An integer below ``minimum``.

    Examples
    --------
    >>> check_int("dim", 4, minimum=2)
    4
    >>> check_int("dim", "4", minimum=2)
    Traceback (most recent call last):
    ...
    TypeError: dim must be an integer, got str '4'
    """
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got bool {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}") from None
    if v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {v}")
    return int(v)


def check_real(name: str, value: Any, *, positive: bool, none_means: str | None = None
               ) -> float | None:
    """A finite real number, ``> 0`` (``positive``) or ``>= 0``; ``None`` when ``none_means``.

    Parameters
    ----------
    name : str
        The argument's name, used in every message.
    value : real number or None
    positive : bool
        The rule: ``value > 0`` when True, ``value >= 0`` otherwise.
    none_means : str, optional
        What ``None`` stands for (then ``None`` is accepted and returned); ``None`` is refused
        when not given.

    Raises
    ------
    TypeError
        ``bool``, ``str`` or any non-real value.
    ValueError
        NaN, infinity, or a value that breaks the rule (the message states the rule).

    Examples
    --------
    >>> check_real("lam_W", 0.01, positive=True)
    0.01
    >>> check_real("lam_W", 0, positive=True)
    Traceback (most recent call last):
    ...
    ValueError: lam_W must be positive (lam_W > 0), got 0
    """
    rule = f"positive ({name} > 0)" if positive else f"non-negative ({name} >= 0)"
    if none_means is not None:
        rule += f", or None ({none_means})"
    if value is None:
        if none_means is not None:
            return None
        raise ValueError(f"{name} is required: it must be {rule}")
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if v < 0 or (positive and v == 0):
        raise ValueError(f"{name} must be {rule}, got {value!r}")
    return v


def check_table_size(name: str, K: int, G: int) -> None:
    """Refuse a ``K x G`` target matrix above :data:`MAX_TARGET_ENTRIES` before allocating it.

    Examples
    --------
    >>> check_table_size("counts", 10, 10)
    >>> check_table_size("counts", 10**5, 10**5)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: counts: K = 100000 classes and G = 100000 groups need ... matrix of 74.5 GiB; ...
    """
    if K * G > MAX_TARGET_ENTRIES:
        raise ValueError(
            f"{name}: K = {K} classes and G = {G} groups need a dense K x G target matrix of "
            f"{K * G * 8 / 2**30:.1f} GiB; at most K * G = {MAX_TARGET_ENTRIES} entries (1 GiB) "
            "are supported"
        )


def _integer_array(name: str, x: Any, what: str) -> np.ndarray:
    """A 1-d array of exact integers (int64), every entry at most MAX_SAMPLES in magnitude."""
    if isinstance(x, (str, bytes)):
        raise TypeError(f"{name} must be a sequence of integers, got {type(x).__name__} {x!r}")
    if is_torch(x):
        x = to_numpy(x)
    a = x if isinstance(x, np.ndarray) else _sequence_array(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {a.shape}")
    kind = a.dtype.kind
    if kind == "b":
        raise TypeError(f"{name} must hold integers, got booleans")
    if kind in "iu":
        big = a.size and max(abs(int(a.max())), abs(int(a.min()))) > MAX_SAMPLES
        if big:
            raise ValueError(f"{name}: {what} overflows: every entry must be at most "
                             f"2**53 = {MAX_SAMPLES} in magnitude")
        return a.astype(np.int64)
    if kind == "f":
        wrong = ~np.isfinite(a) | (a != np.round(a))
        if np.any(wrong):
            i = int(np.argmax(wrong))
            raise ValueError(f"{name} must be integers, got {float(a[i])!r} at index {i}")
        if a.size and float(np.abs(a).max()) > MAX_SAMPLES:
            raise ValueError(f"{name}: {what} overflows: every entry must be at most "
                             f"2**53 = {MAX_SAMPLES} in magnitude, got {float(np.abs(a).max()):.3g}")
        return a.astype(np.int64)
    if kind == "O":
        out = np.empty(a.shape[0], dtype=np.int64)
        for i, v in enumerate(a.tolist()):
            if isinstance(v, (bool, np.bool_)):
                raise TypeError(f"{name} must hold integers, got bool {v!r} at index {i}")
            if isinstance(v, numbers.Integral):
                iv = int(v)
            elif isinstance(v, numbers.Real):
                fv = float(v)
                if not math.isfinite(fv) or fv != round(fv):
                    raise ValueError(f"{name} must be integers, got {v!r} at index {i}")
                iv = int(fv)
            else:
                raise TypeError(
                    f"{name} must hold integers, got {type(v).__name__} {v!r} at index {i}")
            if abs(iv) > MAX_SAMPLES:
                raise ValueError(f"{name}: {what} overflows: every entry must be at most "
                                 f"2**53 = {MAX_SAMPLES} in magnitude, got {v!r} at index {i}")
            out[i] = iv
        return out
    raise TypeError(f"{name} must hold integers, got an array of dtype {a.dtype}")


def _sequence_array(x: Any) -> np.ndarray:
    """A Python sequence as an array: numeric when no entry is a bool (``np.asarray([True, 2])``
    would silently turn the bool into 1), else objects, checked entry by entry."""
    try:
        a = np.asarray(x)
    except (ValueError, OverflowError):  # ragged or out of every integer type
        return np.asarray(x, dtype=object)
    if a.dtype.kind in "iuf" and a.ndim == 1 and not any(
            isinstance(v, (bool, np.bool_)) for v in x):
        return a
    return np.asarray(x, dtype=object) if a.ndim == 1 else a


def check_counts(counts: Any) -> np.ndarray:
    """Class counts: ``K >= 2`` positive integers with total ``N <= 2**53``; int64, O(K).

    Examples
    --------
    >>> check_counts([5, 3.0, 2]).tolist()
    [5, 3, 2]
    >>> check_counts([True, True, True])
    Traceback (most recent call last):
    ...
    TypeError: counts must hold integers, got bool True at index 0
    """
    c = _integer_array("counts", counts, "a class count")
    K = c.shape[0]
    if K < 2:
        raise ValueError(f"counts: need K >= 2 classes, got K = {K}")
    if np.any(c <= 0):
        raise ValueError(f"counts: class {int(np.argmax(c <= 0))} is empty (count <= 0)")
    check_table_size("counts", K, K)
    total = sum(c.tolist())  # exact (Python integers): an int64 sum could wrap around
    if total > MAX_SAMPLES:
        raise ValueError(f"counts: the total N = sum(counts) = {total} overflows: N must be at "
                         f"most 2**53 = {MAX_SAMPLES} (exact in float64)")
    return c


def check_labels(labels: Any, num_classes: Any) -> tuple[np.ndarray, int]:
    """Per-sample hard labels in ``{0..K-1}`` and K (``num_classes`` or ``max + 1``).

    Examples
    --------
    >>> y, K = check_labels([2, 0, 1, 2], None)
    >>> y.tolist(), K
    ([2, 0, 1, 2], 3)
    """
    y = _integer_array("labels", labels, "a label")
    if y.shape[0] == 0:
        raise ValueError("labels must be a non-empty 1-d array, got shape (0,)")
    if y.min() < 0:
        raise ValueError(f"labels must be non-negative integers, got {int(y.min())}")
    if num_classes is None:
        K = int(y.max()) + 1
        if K < 2:
            raise ValueError(f"labels: need K >= 2 classes, got K = {K}")
    else:
        K = check_int("num_classes", num_classes, minimum=2)
        if y.max() >= K:
            raise ValueError(f"labels: label {int(y.max())} is >= num_classes = {K}")
    check_table_size("labels", K, K)
    return y, K


def check_soft_labels(soft_labels: Any) -> np.ndarray:
    """Soft labels ``(N, K)``: rows on the simplex within :data:`SOFT_LABEL_TOL`, returned
    renormalised exactly (:func:`exact_simplex_rows`).

    Examples
    --------
    >>> check_soft_labels([[0.5, 0.5 + 9e-10], [1, 0]]).sum(1).tolist()
    [1.0, 1.0]
    """
    if isinstance(soft_labels, (str, bytes)):
        raise TypeError(f"soft_labels must be an (N, K) array, got {type(soft_labels).__name__}")
    Q = to_numpy(soft_labels) if is_torch(soft_labels) else np.asarray(soft_labels)
    if Q.dtype.kind == "b":
        raise TypeError("soft_labels must hold real numbers, got booleans")
    if Q.dtype.kind not in "iuf":
        raise TypeError(f"soft_labels must hold real numbers, got an array of dtype {Q.dtype}")
    Q = Q.astype(np.float64)
    if Q.ndim != 2 or Q.shape[0] == 0:
        raise ValueError(f"soft_labels must have shape (N, K), got {Q.shape}")
    if Q.shape[1] < 2:
        raise ValueError(f"soft_labels: need K >= 2 classes, got K = {Q.shape[1]}")
    if not np.all(np.isfinite(Q)):
        raise ValueError("soft_labels contains NaN or inf")
    dev = np.abs(Q.sum(1) - 1)
    if np.any(Q < 0) or np.any(dev > SOFT_LABEL_TOL):
        i = int(np.argmax((Q < 0).any(1) | (dev > SOFT_LABEL_TOL)))
        raise ValueError(
            "soft_labels: every row must be a probability distribution (non-negative, summing "
            f"to 1 within {SOFT_LABEL_TOL:g}); row {i} = {Q[i].tolist()} sums to {Q[i].sum()!r}"
        )
    return exact_simplex_rows(Q)


def exact_simplex_rows(Q: np.ndarray) -> np.ndarray:
    r"""Rows renormalised so that their **exact** (real-number) sum is 1.

    Each row is divided by its sum, rounded to the grid of integer multiples of :math:`2^{-52}`
    and the rounding residual (a few grid steps) moved onto the row's largest entry.  Sums of
    grid values in ``[0, 1]`` are exact in float64, so every row sums to exactly 1 and the
    objective is bounded (see the module docstring).  Each entry moves by at most
    :math:`2^{-53} K` beyond the division; entries below :math:`2^{-53}` become 0.

    Parameters
    ----------
    Q : ndarray, shape (N, K)
        Non-negative rows with positive sums.

    Returns
    -------
    ndarray, shape (N, K)

    Examples
    --------
    >>> from fractions import Fraction
    >>> sum(Fraction(x) for x in [0.7, 0.3]) == 1       # the exact sum is 1 - 2**-54
    False
    >>> Q = exact_simplex_rows(np.array([[0.7, 0.3], [0.1, 0.2 + 0.7]]))
    >>> [sum(Fraction(x) for x in r) == 1 for r in Q.tolist()]
    [True, True]
    """
    Q = np.asarray(Q, dtype=np.float64)
    n = np.rint(Q / Q.sum(1, keepdims=True) * _GRID)  # integers <= 2**52, exact in float64
    rows = np.arange(Q.shape[0])
    top = n.argmax(1)
    n[rows, top] += _GRID - n.sum(1)  # the residual is a few units; exact integer arithmetic
    return n / _GRID
