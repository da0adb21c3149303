r"""A restricted unpickler for data files (the CIFAR-10 python batches).

``pickle.load`` runs whatever callable a file names, so a shared "data batch" can run code.
:func:`load_data_pickle` admits only what the CIFAR-10 format holds:

* the containers pickle builds from opcodes, without naming any callable: ``dict``, ``list``,
  ``tuple``, ``bytes``, ``str``, ``int``, ``float``, ``bool``, ``None``;
* numpy arrays of a non-object dtype, which need exactly these globals:
  ``numpy.core.multiarray._reconstruct`` (or ``numpy._core.multiarray._reconstruct``) with the
  class ``numpy.ndarray`` and ``numpy.dtype`` (protocols 0 to 4), or
  ``numpy.core.numeric._frombuffer`` (protocol 5); and numpy scalars of such a dtype
  (``numpy.core.multiarray.scalar``, e.g. labels stored as ``numpy.int64``);
* ``_codecs.encode(text, "latin1")``, how protocol 2 stores ``bytes`` written by Python 3.

Every other global (``os.system``, ``builtins.open``, ``builtins.eval``, any class) raises
before it is called, so nothing named by the file runs.  Object arrays are refused as well.
The admitted names map to wrappers that check their arguments, not to the numpy functions.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from gufm.deep.data.base import DatasetError, one_line

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
    from numpy._core.multiarray import scalar as _np_scalar
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct
    from numpy.core.multiarray import scalar as _np_scalar


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a callable outside the data format (refused before anything runs).

    Examples
    --------
    >>> issubclass(UnsafePickleError, pickle.UnpicklingError)
    True
    >>> try:
    ...     DataUnpickler(io.BytesIO(pickle.dumps(print))).load()
    ... except UnsafePickleError as exc:
    ...     print(exc)
    the file names builtins.print, which a data file never holds
    """


def _checked_dtype(dt: Any) -> np.dtype:
    if not isinstance(dt, np.dtype):
        raise UnsafePickleError(f"expected a numpy dtype, got {type(dt).__name__}")
    if dt.hasobject:
        raise UnsafePickleError(f"object arrays are not data (dtype {dt})")
    return dt


def _dtype(obj: Any, align: bool = False, copy: bool = False) -> np.dtype:
    if not isinstance(obj, str | bytes):
        raise UnsafePickleError(f"numpy.dtype({type(obj).__name__}) is not admitted")
    return _checked_dtype(np.dtype(obj.decode("ascii") if isinstance(obj, bytes) else obj,
                                   bool(align), bool(copy)))


def _reconstruct(subtype: Any, shape: Any, dtype_code: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise UnsafePickleError("only plain numpy.ndarray may be reconstructed")
    return _np_reconstruct(np.ndarray, shape, dtype_code)


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    arr = np.frombuffer(buf, dtype=_checked_dtype(dtype))
    if order not in ("C", "F"):
        raise UnsafePickleError(f"bad array order {order!r}")
    return arr.reshape(shape, order=order)


def _scalar(dtype: Any, data: Any) -> Any:
    if not isinstance(data, bytes):
        raise UnsafePickleError("a numpy scalar must be built from bytes")
    return _np_scalar(_checked_dtype(dtype), data)


def _latin1_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"_codecs.encode(..., {encoding!r}) is not admitted")
    return text.encode("latin-1")


_ADMITTED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class DataUnpickler(pickle.Unpickler):
    """:class:`pickle.Unpickler` whose ``find_class`` admits only the globals listed in the
    module docstring (and persistent ids not at all).

    Examples
    --------
    >>> blob = pickle.dumps({b"labels": [1, 2], b"data": np.arange(3, dtype=np.uint8)})
    >>> DataUnpickler(io.BytesIO(blob)).load()[b"data"].tolist()
    [0, 1, 2]
    >>> DataUnpickler(io.BytesIO(pickle.dumps(print))).load()
    Traceback (most recent call last):
    ...
    gufm.deep.data.safe_pickle.UnsafePickleError: the file names builtins.print, which a data file never holds
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ADMITTED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"the file names {module}.{name}, which a data file never holds"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("persistent ids are not admitted")


def load_data_pickle(path: str | os.PathLike, *, encoding: str = "bytes") -> Any:
    """Unpickle a data file with :class:`DataUnpickler`.

    Parameters
    ----------
    path : path
    encoding : str
        How Python 2 ``str`` objects are decoded (``"bytes"``: kept as ``bytes``, as the
        CIFAR-10 batches need).

    Returns
    -------
    The unpickled object (dicts, lists, bytes, str, numbers, numpy arrays).

    Raises
    ------
    DatasetError
        One line naming the file: it names a callable outside the format (nothing runs), or
        it is truncated or corrupt.
    FileNotFoundError
        The file does not exist.

    Examples
    --------
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "batch"
    >>> _ = p.write_bytes(pickle.dumps({b"labels": [3]}, protocol=2))
    >>> load_data_pickle(p)
    {b'labels': [3]}
    """
    path = Path(path)
    data = path.read_bytes()
    try:
        return DataUnpickler(io.BytesIO(data), encoding=encoding).load()
    except UnsafePickleError as exc:
        raise DatasetError(f"{path}: refused to unpickle ({one_line(str(exc))}); only "
                           "dicts, lists, bytes, str, numbers and numpy arrays are read, and "
                           "nothing in the file was run") from None
    except Exception as exc:  # truncated or corrupt: EOFError, UnpicklingError, ValueError ...
        raise DatasetError(f"{path}: not a readable data pickle ({type(exc).__name__}: "
                           f"{one_line(str(exc))[:200]})") from None
