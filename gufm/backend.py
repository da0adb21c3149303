"""One array backend, so every formula is written once for numpy and torch.

In the style of POT's ``nx = get_backend(x)``: :func:`get_backend` returns a :class:`Backend`
(:data:`NUMPY` or :data:`TORCH`) whose methods do what numpy and torch spell differently.
Everything the two frameworks share (``@``, ``*``, ``.T``, ``.sum(0)``, ``**``) is used directly.

The module-level functions (:func:`logsumexp`, :func:`to_numpy`, ...) dispatch on their first
argument and are kept for brevity; each is one line over the backend method.

Examples
--------
>>> import numpy as np, torch
>>> from gufm.backend import get_backend
>>> nx = get_backend(np.ones(3))
>>> nx.name, float(nx.logsumexp(np.zeros(4), axis=0)) == float(np.log(4))
('numpy', True)
>>> nx = get_backend(np.ones(2), torch.ones(2))  # any torch input selects torch
>>> nx.name, nx.from_numpy(np.arange(3.0), like=torch.ones(1, dtype=torch.float64)).dtype
('torch', torch.float64)
"""

from __future__ import annotations

from typing import Any

import numpy as np

try:  # torch is a hard dependency, but keep the import lazy-safe for tooling
    import torch
except ImportError:  # pragma: no cover
    torch = None  # type: ignore[assignment]

Array = Any

__all__ = [
    "Array", "Backend", "NUMPY", "TORCH", "get_backend", "is_torch", "to_numpy", "logsumexp",
    "softmax", "xlogx", "asarray_like", "finite", "namespace", "eps", "zeros", "svd",
    "as_index", "segment_sum", "convert",
]


def is_torch(x: Array) -> bool:
    """Return True when ``x`` is a ``torch.Tensor``.

    Examples
    --------
    >>> import numpy as np
    >>> is_torch(np.ones(2))
    False
    """
    return torch is not None and isinstance(x, torch.Tensor)


class Backend:
    """Array operations that differ between numpy and torch (base class: numpy).

    Attributes
    ----------
    name : str
        ``"numpy"`` or ``"torch"``.
    xp : module
        The namespace whose same-signature functions (``sqrt``, ``abs``, ``where``,
        ``maximum``, ``exp``, ``log``) operate on this backend's arrays.

    Examples
    --------
    >>> import numpy as np
    >>> nx = get_backend(np.zeros(1))
    >>> nx.concatenate([np.ones(2), np.zeros(1)]).tolist()
    [1.0, 1.0, 0.0]
    """

    name = "numpy"
    xp: Any = np

    # -------------------------------------------------------------- conversion
    def to_numpy(self, x: Array) -> np.ndarray:
        """A numpy view/copy of ``x`` (detached, on CPU for torch)."""
        if is_torch(x):
            return x.detach().cpu().numpy()
        return np.asarray(x)

    def from_numpy(self, x: Array, like: Array | None = None) -> Array:
        """``x`` (numpy data) as an array of this backend, with ``like``'s dtype (default float64)."""
        dt = getattr(like, "dtype", np.float64) if like is not None else np.float64
        return np.asarray(self.to_numpy(x), dtype=dt)

    def detach(self, x: Array) -> Array:
        """``x`` without autograd history (identity for numpy)."""
        return x

    def float_dtype(self, x: Array) -> Any:
        """The working floating dtype for ``x``: its own if float32/float64, else the nearest
        (float16 -> float32, integers and bool -> float64)."""
        dt = np.asarray(x).dtype
        if dt in (np.float32, np.float64):
            return dt
        if dt == np.float16:
            return np.dtype(np.float32)
        return np.dtype(np.float64)

    # ------------------------------------------------------------ construction
    def zeros(self, shape: tuple[int, ...], like: Array) -> Array:
        """Zeros of ``shape`` with the dtype (and device) of ``like``."""
        return np.zeros(shape, dtype=like.dtype)

    def eye(self, n: int, like: Array) -> Array:
        """Identity of size ``n`` with the dtype (and device) of ``like``."""
        return np.eye(n, dtype=like.dtype)

    def concatenate(self, xs: list[Array], axis: int = 0) -> Array:
        """Concatenate along ``axis``."""
        return np.concatenate(xs, axis=axis)

    # ------------------------------------------------------------- reductions
    def logsumexp(self, z: Array, axis: int) -> Array:
        """Numerically stable ``log(sum(exp(z), axis))``."""
        zmax = np.max(z, axis=axis, keepdims=True)
        return np.log(np.sum(np.exp(z - zmax), axis=axis)) + np.squeeze(zmax, axis=axis)

    def softmax(self, z: Array, axis: int) -> Array:
        """Softmax along ``axis``."""
        return self.logsumexp_softmax(z, axis)[1]

    def logsumexp_softmax(self, z: Array, axis: int) -> tuple[Array, Array]:
        """``(logsumexp(z), softmax(z))`` along ``axis`` from one exponential: with
        ``m = max z``, ``e = exp(z - m)``, ``lse = m + log sum e`` (the operations of
        :meth:`logsumexp`) and ``softmax = e / sum e``; numpy allocates one array."""
        zmax = np.max(z, axis=axis, keepdims=True)
        e = np.subtract(z, zmax)
        np.exp(e, out=e)
        tot = np.sum(e, axis=axis, keepdims=True)
        lse = np.log(np.squeeze(tot, axis=axis)) + np.squeeze(zmax, axis=axis)
        return lse, np.divide(e, tot, out=e)

    def xlogx(self, s: Array) -> Array:
        """Elementwise ``s log s`` with ``0 log 0 = 0``."""
        from scipy.special import xlogy

        return xlogy(s, s)

    def clip_min(self, x: Array, lo: float) -> Array:
        """``max(x, lo)`` elementwise."""
        return np.maximum(x, lo)

    def finite(self, x: Array) -> bool:
        """True when every entry of ``x`` is finite."""
        return bool(np.all(np.isfinite(x)))

    def eps(self, x: Array) -> float:
        """Machine epsilon of the floating dtype of ``x``."""
        return float(np.finfo(np.asarray(x).dtype).eps)

    # ---------------------------------------------------------- linear algebra
    def svd(self, x: Array) -> tuple[Array, Array, Array]:
        """Thin SVD ``x = U diag(S) Vh`` (singular values descending)."""
        return np.linalg.svd(x, full_matrices=False)

    def eigh(self, x: Array) -> tuple[Array, Array]:
        """Eigen-decomposition of a symmetric matrix, eigenvalues ascending."""
        return np.linalg.eigh(x)

    # --------------------------------------------------------------- indexing
    def as_index(self, idx: Array, like: Array) -> Array:
        """Integer indices as an index array of this backend (on ``like``'s device)."""
        return np.asarray(self.to_numpy(idx), dtype=np.intp)

    def segment_sum(self, x: Array, idx: Array, n: int, axis: int = -1) -> Array:
        """Sum the slices of ``x`` along ``axis`` into ``n`` bins:
        ``out[..., k] = sum_{idx_i = k} x[..., i]``.

        ``idx`` holds integers in ``[0, n)`` (see :meth:`as_index`); ``x`` is 1-d or 2-d.  Cost:
        one pass over ``x`` (numpy ``bincount`` or a sparse indicator product, never the slow
        ``np.add.at``; torch ``index_add_``).
        """
        axis = axis % x.ndim
        if x.ndim == 1:
            return np.bincount(idx, weights=x, minlength=n).astype(x.dtype, copy=False)
        import scipy.sparse

        m = x.shape[axis]
        ind = scipy.sparse.csr_array((np.ones(m, dtype=x.dtype), (idx, np.arange(m))), shape=(n, m))
        if axis == 1:
            return np.asarray((ind @ x.T).T)
        return np.asarray(ind @ x)


class _TorchBackend(Backend):
    """The torch implementation of :class:`Backend` (any device)."""

    name = "torch"
    xp = torch

    def from_numpy(self, x: Array, like: Array | None = None) -> Array:
        if like is not None and is_torch(like):
            dt, dev = like.dtype, like.device
        else:
            dt, dev = torch.float64, None
        if is_torch(x):
            return x.to(dtype=dt, device=dev)
        return torch.as_tensor(np.asarray(x), dtype=dt, device=dev)

    def detach(self, x: Array) -> Array:
        return x.detach()

    def float_dtype(self, x: Array) -> Any:
        if x.dtype in (torch.float32, torch.float64):
            return x.dtype
        if x.dtype in (torch.float16, torch.bfloat16):
            return torch.float32
        return torch.float64

    def zeros(self, shape: tuple[int, ...], like: Array) -> Array:
        return torch.zeros(shape, dtype=like.dtype, device=like.device)

    def eye(self, n: int, like: Array) -> Array:
        return torch.eye(n, dtype=like.dtype, device=like.device)

    def concatenate(self, xs: list[Array], axis: int = 0) -> Array:
        return torch.cat(xs, dim=axis)

    def logsumexp(self, z: Array, axis: int) -> Array:
        return torch.logsumexp(z, dim=axis)

    def softmax(self, z: Array, axis: int) -> Array:
        return torch.softmax(z, dim=axis)

    def logsumexp_softmax(self, z: Array, axis: int) -> tuple[Array, Array]:
        return torch.logsumexp(z, dim=axis), torch.softmax(z, dim=axis)

    def xlogx(self, s: Array) -> Array:
        return torch.special.xlogy(s, s)

    def clip_min(self, x: Array, lo: float) -> Array:
        return x.clamp(min=lo)

    def finite(self, x: Array) -> bool:
        return bool(torch.isfinite(x).all())

    def eps(self, x: Array) -> float:
        return float(torch.finfo(x.dtype).eps)

    def svd(self, x: Array) -> tuple[Array, Array, Array]:
        return torch.linalg.svd(x, full_matrices=False)

    def eigh(self, x: Array) -> tuple[Array, Array]:
        return torch.linalg.eigh(x)

    def as_index(self, idx: Array, like: Array) -> Array:
        if is_torch(idx):
            return idx.to(device=like.device, dtype=torch.long)
        return torch.as_tensor(np.asarray(idx, dtype=np.int64), device=like.device)

    def segment_sum(self, x: Array, idx: Array, n: int, axis: int = -1) -> Array:
        axis = axis % x.ndim
        shape = list(x.shape)
        shape[axis] = n
        return torch.zeros(shape, dtype=x.dtype, device=x.device).index_add_(axis, idx, x)


#: The numpy backend.
NUMPY: Backend = Backend()
#: The torch backend (``None`` when torch is not installed).
TORCH: Backend | None = _TorchBackend() if torch is not None else None


def get_backend(*arrays: Array) -> Backend:
    """The backend of ``arrays``: torch when any of them is a tensor, else numpy.

    ``None`` entries are ignored, so optional arguments (a missing bias) can be passed as they are.

    Examples
    --------
    >>> import numpy as np
    >>> get_backend(np.ones(2), None).name
    'numpy'
    """
    for a in arrays:
        if is_torch(a):
            return TORCH  # type: ignore[return-value]
    return NUMPY


def convert(x: Array, like: Array | None) -> Array:
    """``x`` in the array type of ``like`` (numpy, or torch with ``like``'s dtype and device).

    ``like=None`` returns ``x`` unchanged.  Used to hand results back in the caller's array type.

    Examples
    --------
    >>> import numpy as np, torch
    >>> convert(np.ones(2), torch.zeros(1, dtype=torch.float64))
    tensor([1., 1.], dtype=torch.float64)
    >>> convert(torch.ones(2, dtype=torch.float64), np.zeros(1)).tolist()
    [1.0, 1.0]
    """
    if like is None or x is None:
        return x
    return get_backend(like).from_numpy(x, like=like)


# ----------------------------------------------------------- one-line dispatch shortcuts
def to_numpy(x: Array) -> np.ndarray:
    """A numpy view/copy of a numpy array or torch tensor (detached, on CPU).

    Examples
    --------
    >>> import torch
    >>> to_numpy(torch.tensor([1.0, 2.0], requires_grad=True))
    array([1., 2.], dtype=float32)
    """
    return NUMPY.to_numpy(x)


def logsumexp(z: Array, axis: int) -> Array:
    """Numerically stable ``log(sum(exp(z), axis))`` (see :meth:`Backend.logsumexp`).

    Examples
    --------
    >>> import numpy as np, torch
    >>> float(logsumexp(np.array([1000.0, 1000.0]), axis=0)) == 1000 + float(np.log(2))
    True
    >>> logsumexp(torch.zeros(2, 3, dtype=torch.float64), axis=0).shape
    torch.Size([3])
    """
    return get_backend(z).logsumexp(z, axis)


def softmax(z: Array, axis: int) -> Array:
    """Softmax along ``axis`` (see :meth:`Backend.softmax`).

    Examples
    --------
    >>> import numpy as np
    >>> softmax(np.array([[0.0, 1000.0], [0.0, 1000.0]]), axis=0)
    array([[0.5, 0.5],
           [0.5, 0.5]])
    """
    return get_backend(z).softmax(z, axis)


def logsumexp_softmax(z: Array, axis: int) -> tuple[Array, Array]:
    """``(logsumexp(z), softmax(z))`` along ``axis``, sharing the exponential (see
    :meth:`Backend.logsumexp_softmax`).

    Examples
    --------
    >>> import numpy as np
    >>> lse, s = logsumexp_softmax(np.array([[0.0, 1000.0], [0.0, 1000.0]]), axis=0)
    >>> bool(np.allclose(lse, [np.log(2), 1000 + np.log(2)])), s.tolist()
    (True, [[0.5, 0.5], [0.5, 0.5]])
    """
    return get_backend(z).logsumexp_softmax(z, axis)


def xlogx(s: Array) -> Array:
    """Elementwise ``s log s`` with ``0 log 0 = 0``.

    Examples
    --------
    >>> import numpy as np
    >>> xlogx(np.array([0.0, 1.0, np.e]))
    array([0.        , 0.        , 2.71828183])
    """
    return get_backend(s).xlogx(s)


def asarray_like(x: Array, like: Array) -> Array:
    """Convert numpy data ``x`` to the framework, dtype and device of ``like``.

    Examples
    --------
    >>> import numpy as np, torch
    >>> asarray_like(np.arange(2), torch.zeros(1, dtype=torch.float64))
    tensor([0., 1.], dtype=torch.float64)
    """
    return get_backend(like).from_numpy(x, like=like)


def finite(x: Array) -> bool:
    """True when every entry of ``x`` is finite.

    Examples
    --------
    >>> import numpy as np, torch
    >>> finite(np.array([1.0, 2.0])), finite(torch.tensor([1.0, float("nan")]))
    (True, False)
    """
    return get_backend(x).finite(x)


def namespace(x: Array) -> Any:
    """The module (``torch`` or ``numpy``) whose same-signature functions operate on ``x``.

    Examples
    --------
    >>> import numpy as np, torch
    >>> namespace(np.ones(1)).__name__, namespace(torch.ones(1)).__name__
    ('numpy', 'torch')
    """
    return get_backend(x).xp


def eps(x: Array) -> float:
    """Machine epsilon of the floating dtype of ``x``.

    Examples
    --------
    >>> import numpy as np, torch
    >>> eps(np.ones(1)) == 2.0**-52, eps(torch.ones(1)) == 2.0**-23
    (True, True)
    """
    return get_backend(x).eps(x)


def zeros(shape: tuple[int, ...], like: Array) -> Array:
    """Zeros of ``shape`` with the framework, dtype and device of ``like``.

    Examples
    --------
    >>> import torch
    >>> zeros((2,), torch.ones(1, dtype=torch.float64))
    tensor([0., 0.], dtype=torch.float64)
    """
    return get_backend(like).zeros(shape, like)


def svd(x: Array) -> tuple[Array, Array, Array]:
    """Thin SVD ``x = U diag(S) Vh`` (singular values descending).

    Examples
    --------
    >>> import numpy as np
    >>> U, S, Vh = svd(np.diag([1.0, 3.0, 2.0]))
    >>> S
    array([3., 2., 1.])
    """
    return get_backend(x).svd(x)


def as_index(idx: Array, like: Array) -> Array:
    """Integer indices ``idx`` as an index array of the framework (and device) of ``like``.

    Examples
    --------
    >>> import numpy as np, torch
    >>> as_index(np.array([2, 0]), torch.zeros(3))
    tensor([2, 0])
    """
    return get_backend(like).as_index(idx, like)


def segment_sum(x: Array, idx: Array, n: int, axis: int = -1) -> Array:
    """Sum slices of ``x`` along ``axis`` into ``n`` bins (see :meth:`Backend.segment_sum`).

    Examples
    --------
    >>> import numpy as np
    >>> segment_sum(np.array([[1.0, 2.0, 3.0]]), np.array([0, 1, 0]), 2)
    array([[4., 2.]])
    """
    return get_backend(x).segment_sum(x, idx, n, axis)
