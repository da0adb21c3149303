"""Small shared utilities, one implementation each for the whole package: validators, thread
limits, atomic file writes and log-log fits."""

from __future__ import annotations

import math
import os
import platform
import threading
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


def check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise a ``ValueError`` naming ``name``.

    Examples
    --------
    >>> check_choice("loss", "mse", ("ce", "mse"))
    'mse'
    >>> check_choice("loss", "hinge", ("ce", "mse"))
    Traceback (most recent call last):
    ...
    ValueError: loss must be one of ('ce', 'mse'), got 'hinge'
    """
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


@contextmanager
def limit_threads(n: int | None):
    """Temporarily limit BLAS (threadpoolctl) and torch threads to ``n`` (``None``: no change).

    Examples
    --------
    >>> import torch
    >>> with limit_threads(1):
    ...     torch.get_num_threads()
    1
    """
    if n is None:
        yield
        return
    import torch
    from threadpoolctl import threadpool_limits

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        torch.set_num_threads(old)


# ----------------------------------------------------------------------------- heap reuse
#: glibc's mallopt parameters and defaults (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX = 128 * 1024, 65536
_heap_lock = threading.Lock()
_heap_depth = 0


def _glibc() -> Any:
    """glibc through ctypes, or None (another C library, or ``GUFM_HEAP_REUSE=0``)."""
    if os.environ.get("GUFM_HEAP_REUSE", "1") == "0" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:  # pragma: no cover
        return None


@contextmanager
def reuse_freed_memory(enabled: bool = True):
    """Within the block, freed large arrays stay in the process heap and are reused (glibc).

    glibc serves every allocation above 32 MiB by a fresh ``mmap`` and unmaps it when freed,
    so each new ``K x p`` temporary of a large solve is faulted in and zeroed by the kernel
    again (``python -m benchmarks.bench_certified --heap`` measures what that costs a
    certified solve at K = 3000).  The block sets ``M_MMAP_MAX = 0`` (no ``mmap``; the heap grows
    instead) and a 1 GiB ``M_TRIM_THRESHOLD``; on exit it restores glibc's defaults and
    calls ``malloc_trim(0)``, which returns the freed memory to the system.  Side effect: glibc
    stops adapting its ``mmap`` threshold for the rest of the process (it stays where it
    was), as after any ``mallopt``.  A no-op elsewhere, with ``enabled=False``, inside
    another such block, and with the environment variable ``GUFM_HEAP_REUSE=0``.

    Examples
    --------
    >>> import numpy as np
    >>> with reuse_freed_memory():
    ...     float(np.ones(10).sum())
    10.0
    """
    global _heap_depth
    libc = _glibc() if enabled else None
    if libc is None:
        yield
        return
    with _heap_lock:
        _heap_depth += 1
        if _heap_depth == 1:
            libc.mallopt(_M_MMAP_MAX, 0)
            libc.mallopt(_M_TRIM_THRESHOLD, 2**30)
    try:
        yield
    finally:
        with _heap_lock:
            _heap_depth -= 1
            if _heap_depth == 0:
                libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
                libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
                libc.malloc_trim(0)


# ----------------------------------------------------------------------------- atomic writes
def fsync_dir(path: str | os.PathLike) -> None:
    """``fsync`` a directory so that a rename inside it survives a crash (no-op where the OS
    cannot open directories, e.g. Windows).

    Examples
    --------
    >>> import tempfile
    >>> fsync_dir(tempfile.gettempdir())
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` so that the file exists complete or not at all.

    The text goes to ``.<name>.<pid>.tmp`` next to ``path``, is flushed and ``fsync``-ed, then
    moved into place with :func:`os.replace` (atomic on POSIX) and the folder is ``fsync``-ed.

    Parameters
    ----------
    path : path
        Destination; its folder must exist.
    text : str

    Returns
    -------
    Path
        ``path``.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> p = atomic_write_text(Path(tempfile.mkdtemp()) / "a.txt", "hello")
    >>> p.read_text()
    'hello'
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


# ----------------------------------------------------------------------------- log-log fits
@dataclass(frozen=True)
class SlopeFit:
    """Least-squares line :math:`\\log_{10}y = a + b\\log_{10}x` (see :func:`fit_loglog`).

    Attributes
    ----------
    slope, intercept : float
        ``b`` and ``a`` (NaN when fewer than two distinct ``x``).
    stderr : float
        Standard error of the slope (NaN when ``n <= 2``; 0 for an exact fit).
    r2 : float
        Coefficient of determination.
    n : int
        Points used (``y > 0``).
    dropped : int
        Points left out because ``y <= 0`` or not finite.

    Examples
    --------
    >>> SlopeFit(-1.0, 0.0, 0.0, 1.0, 3).slope
    -1.0
    """

    slope: float
    intercept: float
    stderr: float
    r2: float
    n: int
    dropped: int = 0


def fit_loglog(x: Sequence[float], y: Sequence[float]) -> SlopeFit:
    """Fit :math:`\\log_{10}y = a + b\\log_{10}x` by ordinary least squares.

    With :math:`u = \\log_{10}x`, :math:`v = \\log_{10}y` over the points with :math:`y > 0`:
    :math:`b = \\sum(u-\\bar u)(v-\\bar v)/\\sum(u-\\bar u)^2`, :math:`a = \\bar v - b\\bar u`,
    standard error :math:`\\sqrt{\\text{RSS}/((n-2)\\sum(u-\\bar u)^2)}`,
    :math:`R^2 = 1 - \\text{RSS}/\\text{TSS}`.  The slope does not depend on the base of the
    logarithm, so this is also the exponent ``p`` of a power law ``y = c x**p``.

    Parameters
    ----------
    x : sequence of float
        Abscissae (``> 0``), e.g. depths or problem sizes.
    y : sequence of float
        Values; non-positive or non-finite ones are dropped (counted in ``dropped``).

    Returns
    -------
    SlopeFit

    Raises
    ------
    ValueError
        ``x`` and ``y`` differ in length or ``x`` has non-positive or non-finite entries.

    Examples
    --------
    >>> f = fit_loglog([1, 2, 4, 8], [3.0, 1.5, 0.75, 0.375])
    >>> round(f.slope, 12), round(10 ** f.intercept, 12), f.n
    (-1.0, 3.0, 4)
    """
    xa = np.asarray(x, dtype=float).ravel()
    ya = np.asarray(y, dtype=float).ravel()
    if xa.shape != ya.shape:
        raise ValueError(f"x and y must have the same length, got {xa.size} and {ya.size}")
    if np.any(~np.isfinite(xa)) or np.any(xa <= 0):
        raise ValueError("x must contain positive finite values")
    keep = np.isfinite(ya) & (ya > 0)
    lx, ly = np.log10(xa[keep]), np.log10(ya[keep])
    n = int(keep.sum())
    dropped = int(xa.size - n)
    nan = math.nan
    if n < 2 or np.unique(lx).size < 2:
        return SlopeFit(nan, nan, nan, nan, n, dropped)
    xm, ym = lx.mean(), ly.mean()
    sxx = float(((lx - xm) ** 2).sum())
    b = float(((lx - xm) * (ly - ym)).sum() / sxx)
    a = float(ym - b * xm)
    rss = float(((ly - (a + b * lx)) ** 2).sum())
    tss = float(((ly - ym) ** 2).sum())
    se = math.sqrt(rss / (n - 2) / sxx) if n > 2 else nan
    r2 = 1.0 - rss / tss if tss > 0 else 1.0
    return SlopeFit(b, a, se, r2, n, dropped)
