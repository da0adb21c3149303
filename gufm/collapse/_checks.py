"""Argument checks shared by the collapse modules (private to :mod:`gufm.collapse`).

Every check raises ``ValueError`` naming the argument; nothing is clamped or coerced beyond the
documented promotion to a floating dtype (integers and bool to float64, half precision to float32).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from gufm.backend import Array, convert, get_backend, is_torch

CENTERS = ("samples", "classes")


def as_float(x: Array, name: str, ndim: int, like: Array | None = None, *,
             check_finite: bool = True) -> Array:
    """``x`` as a floating array of ``ndim`` dimensions (in ``like``'s type when given)."""
    if not is_torch(x):
        try:
            x = np.asarray(x)
        except Exception as exc:  # noqa: BLE001 - any conversion failure is the caller's input
            raise ValueError(f"{name} must be an array, got {type(x).__name__}") from exc
        if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
            raise ValueError(f"{name} must be a numeric array, got dtype {x.dtype}")
    elif x.is_complex():
        raise ValueError(f"{name} must be real, got {x.dtype}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {tuple(x.shape)}")
    if like is None:
        dt = get_backend(x).float_dtype(x)
        x = x.detach().to(dt) if is_torch(x) else x.astype(dt, copy=False)
    else:
        x = convert(x.detach() if is_torch(x) else x, like)
    if check_finite and not get_backend(x).finite(x):
        raise ValueError(f"{name} contains NaN or inf")
    return x


def check_W(W: Array, d: int | None, name: str = "W") -> Array:
    """A finite classifier ``(K, d)`` with ``K >= 2`` rows."""
    W = as_float(W, name, 2)
    if W.shape[0] < 2:
        raise ValueError(f"{name} must have K >= 2 rows (one per class), got shape {tuple(W.shape)}")
    if d is not None and W.shape[1] != d:
        raise ValueError(f"{name} must have shape (K, d) with d = {d} (the rows of H), got "
                         f"{tuple(W.shape)}")
    return W


def check_b(b: Array | None, K: int) -> Array | None:
    """A finite bias ``(K,)`` or None."""
    if b is None:
        return None
    b = as_float(b, "b", 1)
    if b.shape[0] != K:
        raise ValueError(f"b must have shape (K,) = ({K},), got {tuple(b.shape)}")
    return b


def check_center(center: str) -> str:
    """``"samples"`` or ``"classes"``."""
    if center not in CENTERS:
        raise ValueError(f'center must be "samples" or "classes", got {center!r}')
    return center


def labels_tensor(labels: Array, N: int, K: int | None, device: Any,
                  name: str = "labels", allow_empty: bool = False) -> tuple[torch.Tensor, int]:
    """Validate labels (length ``N``, integers in ``0..K-1``) as a long tensor on ``device``.

    Torch labels are checked where they live (one device synchronisation, no copy to the host).
    ``K=None`` takes ``labels.max() + 1``; ``K < 2`` raises.  ``allow_empty``: zero labels
    are valid (an empty batch).
    """
    if not is_torch(labels):
        a = np.asarray(labels)
        if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
            raise ValueError(f"{name} must be integers, got dtype {a.dtype}")
        labels = torch.as_tensor(a)
    y = labels.detach()
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-dimensional, got shape {tuple(y.shape)}")
    if y.shape[0] != N:
        raise ValueError(f"{name} must have length N = {N} (the samples of H), got {y.shape[0]}")
    if N == 0:
        if allow_empty and K is not None:
            return y.to(device=device, dtype=torch.long), int(K)
        raise ValueError(f"{name}: need at least one sample")
    if y.is_complex():
        raise ValueError(f"{name} must be integers, got {y.dtype}")
    y = y.to(device)
    if y.is_floating_point():
        if not bool((torch.isfinite(y) & (y == y.round())).all()):
            raise ValueError(f"{name} must be integers (got non-integral or non-finite values)")
    y = y.to(torch.long)
    lo, hi = torch.stack(torch.aminmax(y)).tolist()  # one device synchronisation
    if lo < 0:
        raise ValueError(f"{name} must be >= 0, got {lo}")
    if K is None:
        K = hi + 1
    elif hi >= K:
        raise ValueError(f"{name} must lie in [0, K-1] = [0, {K - 1}], got values in [{lo}, {hi}]")
    if K < 2:
        raise ValueError(f"{name}: need K >= 2 classes, got K = {K}")
    return y, int(K)


def out(x: Array, like: Array) -> Any:
    """A python float for numpy ``like``, else a 0-d tensor of ``like``'s dtype and device."""
    if is_torch(like):
        return x.to(dtype=like.dtype, device=like.device) if is_torch(x) else convert(
            np.asarray(x), like)
    return float(x)


def fro(x: Array) -> Array:
    r"""Frobenius norm :math:`\lVert x\rVert_F` (a numpy scalar or a 0-d tensor)."""
    return (x * x).sum() ** 0.5
