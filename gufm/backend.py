"""Minimal array-backend dispatch so every formula is written once for numpy and torch.

Only the handful of primitives the package needs are wrapped; everything else uses operators
(``@``, ``*``, ``.T``) and methods that numpy and torch share.
"""

from __future__ import annotations

from typing import Any

import numpy as np

try:  # torch is a hard dependency, but keep the import lazy-safe for tooling
    import torch
except ImportError:  # pragma: no cover
    torch = None  # type: ignore[assignment]

Array = Any


def is_torch(x: Array) -> bool:
    """Return True when ``x`` is a ``torch.Tensor``."""
    return torch is not None and isinstance(x, torch.Tensor)


def logsumexp(z: Array, axis: int) -> Array:
    """Numerically stable ``log(sum(exp(z), axis))``."""
    if is_torch(z):
        return torch.logsumexp(z, dim=axis)
    zmax = np.max(z, axis=axis, keepdims=True)
    return np.log(np.sum(np.exp(z - zmax), axis=axis)) + np.squeeze(zmax, axis=axis)


def softmax(z: Array, axis: int) -> Array:
    """Softmax along ``axis``."""
    if is_torch(z):
        return torch.softmax(z, dim=axis)
    e = np.exp(z - np.max(z, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def xlogx(s: Array) -> Array:
    """Elementwise ``s log s`` with ``0 log 0 = 0``."""
    if is_torch(s):
        return torch.special.xlogy(s, s)
    from scipy.special import xlogy

    return xlogy(s, s)


def asarray_like(x: Array, like: Array) -> Array:
    """Convert numpy data ``x`` to the framework, dtype and device of ``like``."""
    if is_torch(like):
        return torch.as_tensor(np.asarray(x), dtype=like.dtype, device=like.device)
    return np.asarray(x, dtype=like.dtype if hasattr(like, "dtype") else float)


def to_numpy(x: Array) -> np.ndarray:
    """Return a numpy view/copy of a numpy array or torch tensor (detached, on CPU)."""
    if is_torch(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def finite(x: Array) -> bool:
    """True when every entry of ``x`` is finite."""
    if is_torch(x):
        return bool(torch.isfinite(x).all())
    return bool(np.all(np.isfinite(x)))


def namespace(x: Array) -> Any:
    """The module (``torch`` or ``numpy``) whose functions operate on ``x``.

    Only for functions with the same signature in both (``where``, ``sqrt``, ``abs``, ...).
    """
    return torch if is_torch(x) else np


def eps(x: Array) -> float:
    """Machine epsilon of the floating dtype of ``x``."""
    if is_torch(x):
        return float(torch.finfo(x.dtype).eps)
    return float(np.finfo(np.asarray(x).dtype).eps)


def zeros(shape: tuple[int, ...], like: Array) -> Array:
    """Zeros of ``shape`` with the framework, dtype and device of ``like``."""
    if is_torch(like):
        return torch.zeros(shape, dtype=like.dtype, device=like.device)
    return np.zeros(shape, dtype=like.dtype)


def svd(x: Array) -> tuple[Array, Array, Array]:
    """Thin SVD ``x = U diag(S) Vh`` (singular values descending)."""
    if is_torch(x):
        return torch.linalg.svd(x, full_matrices=False)
    return np.linalg.svd(x, full_matrices=False)


def as_index(idx: Array, like: Array) -> Array:
    """Integer indices ``idx`` as an index array of the framework (and device) of ``like``."""
    if is_torch(like):
        if is_torch(idx):
            return idx.to(device=like.device, dtype=torch.long)
        return torch.as_tensor(np.asarray(idx, dtype=np.int64), device=like.device)
    return np.asarray(to_numpy(idx), dtype=np.intp)


def segment_sum(x: Array, idx: Array, n: int, axis: int = -1) -> Array:
    """Sum the slices of ``x`` along ``axis`` into ``n`` bins: ``out[..., k] = sum_{idx_i = k} x[..., i]``.

    ``idx`` holds integers in ``[0, n)`` (an index array of ``x``'s framework, see
    :func:`as_index`).  ``x`` is 1-d or 2-d.  Cost: one pass over ``x`` (torch ``index_add_``;
    numpy ``bincount`` or a sparse indicator product, never the slow ``np.add.at``).
    """
    axis = axis % x.ndim
    if is_torch(x):
        shape = list(x.shape)
        shape[axis] = n
        return torch.zeros(shape, dtype=x.dtype, device=x.device).index_add_(axis, idx, x)
    if x.ndim == 1:
        return np.bincount(idx, weights=x, minlength=n).astype(x.dtype, copy=False)
    import scipy.sparse

    m = x.shape[axis]
    ind = scipy.sparse.csr_array(
        (np.ones(m, dtype=x.dtype), (idx, np.arange(m))), shape=(n, m)
    )
    if axis == 1:
        return np.asarray((ind @ x.T).T)
    return np.asarray(ind @ x)
