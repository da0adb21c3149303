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
