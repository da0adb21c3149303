r"""Image data sets: IDX files (MNIST, Fashion-MNIST), scikit-learn's digits, CIFAR-10 batches.

Normalisation (``normalize=``), computed on the returned subset:

* ``"feature"`` (default): per-feature (per pixel and channel) standardisation
  :math:`x_j \leftarrow (x_j - \mu_j)/\sigma_j`, with :math:`\sigma_j` replaced by 1 where a
  feature is constant (the blank corners of the digits);
* ``"global"``: one mean and standard deviation over all entries;
* ``"none"``: raw values scaled to ``[0, 1]`` (pixel / 255, digits / 16).

A truncated or corrupt file (an IDX header cut short, a header without its data, a broken
gzip stream, labels outside ``0..9``, a CIFAR-10 batch holding anything but data) raises a
one-line :class:`~gufm.deep.data.base.DatasetError` naming the file.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gufm.deep.data.base import (
    Dataset,
    DatasetError,
    balanced_indices,
    candidate_dirs,
    check_split,
    digest,
    missing,
    one_line,
    searched,
)
from gufm.deep.data.safe_pickle import load_data_pickle

NORMALIZATIONS = ("feature", "global", "none")

#: Debian's ``dataset-fashion-mnist`` package installs its IDX files here
FASHION_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"


def normalize_images(X: np.ndarray, how: str, scale: float) -> np.ndarray:
    r"""Normalise images ``(N, ...)`` (see the module docstring); ``scale`` maps raw to [0, 1].

    Examples
    --------
    >>> normalize_images(np.array([[0.0], [255.0]]), "none", 255.0).ravel().tolist()
    [0.0, 1.0]
    >>> normalize_images(np.array([[0.0], [2.0]]), "feature", 1.0).ravel().tolist()
    [-1.0, 1.0]
    """
    if how not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {how!r}")
    X = X.astype(np.float64) / scale
    if how == "feature":
        mu = X.mean(axis=0, keepdims=True)
        sd = X.std(axis=0, keepdims=True)
        sd[sd < 1e-12] = 1.0
        X = (X - mu) / sd
    elif how == "global":
        sd = X.std()
        X = (X - X.mean()) / (sd if sd > 1e-12 else 1.0)
    return X.astype(np.float32)


def check_labels(y: np.ndarray, num_classes: int, path: Path) -> np.ndarray:
    """``y`` as int64 when every label lies in ``0..num_classes-1``; else a one-line
    :class:`DatasetError` naming ``path`` and the first bad label.

    Examples
    --------
    >>> check_labels(np.array([0, 2, 1], dtype=np.uint8), 3, Path("labels.idx")).dtype
    dtype('int64')
    >>> check_labels(np.array([0, 5]), 3, Path("labels.idx"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    gufm.deep.data.base.DatasetError: labels.idx: label 5 at position 1 is outside 0..2 ...
    """
    y = np.asarray(y)
    bad = np.flatnonzero((y < 0) | (y >= num_classes)) if y.size else np.zeros(0, int)
    if bad.size:
        i = int(bad[0])
        raise DatasetError(f"{path}: label {y[i]} at position {i} is outside 0..{num_classes - 1}"
                           f" ({bad.size} such labels); the file is corrupt or not this data set")
    return y.astype(np.int64)


def image_dataset(name: str, X: np.ndarray, y: np.ndarray, K: int, classes: list[str],
                  n_per_class: int | None, seed: int, normalize: str, scale: float,
                  info: dict[str, Any]) -> Dataset:
    """The class-balanced, normalised :class:`Dataset` of images ``X`` (N, C, H, W).

    Examples
    --------
    >>> X = np.arange(4, dtype=np.uint8).reshape(4, 1, 1, 1) * np.ones((1, 1, 2, 2), np.uint8)
    >>> ds = image_dataset("toy", X, np.array([0, 1, 0, 1]), 2, ["a", "b"], None, 0, "none",
    ...                    255.0, {})
    >>> tuple(ds.X.shape), ds.y.tolist(), ds.image_shape
    ((4, 1, 2, 2), [0, 0, 1, 1], (1, 2, 2))
    """
    idx = balanced_indices(y, n_per_class, seed, K)
    Xs = normalize_images(X[idx], normalize, scale)
    info = dict(info, seed=seed, n_per_class=n_per_class, indices_sha=digest(idx))
    return Dataset(name=name, X=torch.from_numpy(Xs), y=torch.from_numpy(y[idx].astype(np.int64)),
                   num_classes=K, kind="image", image_shape=tuple(Xs.shape[1:]), classes=classes,
                   normalization=normalize, info=info)


# ----------------------------------------------------------------------------- IDX
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_maybe_gzip(path: Path) -> bytes:
    with open(path, "rb") as f:
        head = f.read(2)
        if head != b"\x1f\x8b":
            return head + f.read()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (EOFError, OSError, zlib.error) as exc:  # truncated stream, bad CRC, bad header
        raise DatasetError(f"{path}: corrupt gzip file ({type(exc).__name__}: "
                           f"{one_line(str(exc)) or 'truncated'}); download it again") from None


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (raw or gzip-compressed, detected from its first bytes).

    Format: two zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), the number of dimensions, then one big-endian uint32 per
    dimension and the data in C order.

    Raises
    ------
    DatasetError
        Bad magic number, a header cut short, data shorter or longer than the header says,
        a corrupt gzip stream; one line naming the file.

    Examples
    --------
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "a.idx"
    >>> _ = p.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]))
    >>> read_idx(p).tolist()
    [7, 8, 9]
    """
    path = Path(path)
    data = _read_maybe_gzip(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DatasetError(f"{path}: not an IDX file (bad magic number {data[:4]!r})")
    ndim = data[3]
    start = 4 + 4 * ndim
    if len(data) < start:
        raise DatasetError(f"{path}: truncated IDX header ({len(data)} bytes, the header of a "
                           f"{ndim}-dimensional array needs {start})")
    dims = struct.unpack(f">{ndim}I", data[4:start])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    n = math.prod(dims)
    have = len(data) - start
    if have != n * dtype.itemsize:
        raise DatasetError(f"{path}: expected {n} values ({n * dtype.itemsize} bytes) for shape "
                           f"{dims}, the file holds {have} bytes of data")
    return np.frombuffer(data, dtype=dtype, offset=start).reshape(dims)


def _find_idx(name: str, root: str | os.PathLike | None, stem: str) -> Path:
    extra = ["FashionMNIST/raw", "MNIST/raw", "fashion", "data/fashion"]
    system = [FASHION_SYSTEM_DIR] if name == "fashion-mnist" else []
    dirs = candidate_dirs(name, root, extra, system)
    alt = stem.replace("-idx", ".idx")  # train-images.idx3-ubyte (a common re-distribution)
    for d in dirs:
        for fname in (stem, stem + ".gz", alt, alt + ".gz"):
            if (d / fname).is_file():
                return d / fname
    raise missing(name, f"{stem}[.gz]", searched(dirs))


FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]


def load_idx_dataset(name: str, root: str | os.PathLike | None = None, *,
                     n_per_class: int | None = None, seed: int = 0, split: str = "train",
                     normalize: str = "feature") -> Dataset:
    """MNIST-format data (``mnist``, ``fashion-mnist``) from IDX files (images
    ``(n, H, W)`` uint8, labels ``(n,)`` in ``0..9``).

    Examples
    --------
    Two tiny IDX files (magic ``0 0 0x08 ndim``, big-endian dimensions, then the bytes):

    >>> import struct, tempfile
    >>> def idx(a):
    ...     return bytes([0, 0, 0x08, a.ndim]) + struct.pack(f">{a.ndim}i", *a.shape) + a.tobytes()
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "train-images-idx3-ubyte").write_bytes(idx(np.zeros((20, 4, 4), np.uint8)))
    >>> _ = (d / "train-labels-idx1-ubyte").write_bytes(idx(np.repeat(np.arange(10, dtype=np.uint8), 2)))
    >>> ds = load_idx_dataset("mnist", d, n_per_class=1)
    >>> tuple(ds.X.shape), ds.y.tolist()
    ((10, 1, 4, 4), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    """
    prefix = {"train": "train", "test": "t10k"}[check_split(split)]
    fx = _find_idx(name, root, f"{prefix}-images-idx3-ubyte")
    fy = _find_idx(name, root, f"{prefix}-labels-idx1-ubyte")
    X, y = read_idx(fx), read_idx(fy)
    if X.ndim != 3:
        raise DatasetError(f"{fx}: expected images of shape (n, H, W), got shape {X.shape}")
    if y.ndim != 1:
        raise DatasetError(f"{fy}: expected labels of shape (n,), got shape {y.shape}")
    y = check_labels(y, 10, fy)
    if X.shape[0] != y.shape[0]:
        raise DatasetError(f"{fx} has {X.shape[0]} images but {fy} has {y.shape[0]} labels")
    X = X.reshape(X.shape[0], 1, *X.shape[1:])
    classes = FASHION_CLASSES if name == "fashion-mnist" else [str(k) for k in range(10)]
    return image_dataset(name, X, y, 10, classes, n_per_class, seed, normalize, 255.0,
                         {"files": [str(fx), str(fy)], "split": split})


# ----------------------------------------------------------------------------- digits
def load_digits(root: str | os.PathLike | None = None, *, n_per_class: int | None = None,
                seed: int = 0, split: str = "train", normalize: str = "feature") -> Dataset:
    """scikit-learn's 8x8 digits (values 0..16).  There is no official split: ``"train"`` is
    all 1797 images (``"test"`` raises).

    Examples
    --------
    >>> load_digits(n_per_class=2).X.shape
    torch.Size([20, 1, 8, 8])
    """
    if split != "train":
        raise ValueError("split: the digits data set has no test split; use split='train'")
    from sklearn.datasets import load_digits as _sk

    d = _sk()
    X = d.images.reshape(-1, 1, 8, 8)
    y = d.target.astype(np.int64)
    return image_dataset("digits", X, y, 10, [str(k) for k in range(10)], n_per_class, seed,
                         normalize, 16.0, {"source": "sklearn.datasets.load_digits",
                                           "split": split})


# ----------------------------------------------------------------------------- CIFAR-10
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck"]


def read_cifar_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(n, 3, 32, 32)`` uint8 and labels ``(n,)`` of one CIFAR-10 python batch.

    The batch is a pickled dict (``data``: uint8 ``(n, 3072)`` rows in CHW order,
    ``labels``: list of int, keys ``bytes`` or ``str``), read with the restricted unpickler of
    :mod:`gufm.deep.data.safe_pickle`: a batch naming any callable beyond numpy's array
    reconstruction is refused before anything runs.

    Raises
    ------
    DatasetError
        One line naming the file: hostile or corrupt pickle, missing keys, wrong sizes,
        labels outside ``0..9``.

    Examples
    --------
    >>> import pickle, tempfile
    >>> p = Path(tempfile.mkdtemp()) / "data_batch_1"
    >>> batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [3, 7]}
    >>> _ = p.write_bytes(pickle.dumps(batch, protocol=2))
    >>> X, y = read_cifar_batch(p)
    >>> X.shape, X.dtype, y.tolist()
    ((2, 3, 32, 32), dtype('uint8'), [3, 7])
    """
    path = Path(path)
    batch = load_data_pickle(path)
    if not isinstance(batch, dict):
        raise DatasetError(f"{path}: not a CIFAR-10 batch (a {type(batch).__name__}, not a dict)")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise DatasetError(f"{path}: not a CIFAR-10 batch (no 'data'/'labels' keys)")
    try:
        X = np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{path}: not a CIFAR-10 batch ({one_line(str(exc))})") from None
    if X.shape[0] != y.shape[0]:
        raise DatasetError(f"{path}: {X.shape[0]} images but {y.shape[0]} labels")
    return X, check_labels(y, 10, path)


def load_cifar10(root: str | os.PathLike | None = None, *, n_per_class: int | None = None,
                 seed: int = 0, split: str = "train", normalize: str = "feature") -> Dataset:
    """CIFAR-10 from the python pickle batches (see :func:`read_cifar_batch`).

    Examples
    --------
    Five tiny training batches (two images each) in the official layout:

    >>> import pickle, tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     folder = Path(d) / "cifar-10-batches-py"
    ...     folder.mkdir()
    ...     for i in range(1, 6):
    ...         batch = {b"data": np.full((2, 3072), 40 * i, np.uint8),
    ...                  b"labels": [2 * i - 2, 2 * i - 1]}
    ...         _ = (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))
    ...     ds = load_cifar10(d)
    >>> ds.X.shape, ds.y.tolist(), ds.classes[:3]
    (torch.Size([10, 3, 32, 32]), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], ['airplane', 'automobile', 'bird'])
    """
    files = ([f"data_batch_{i}" for i in range(1, 6)] if check_split(split) == "train"
             else ["test_batch"])
    dirs = candidate_dirs("cifar10", root, ["cifar-10-batches-py", "cifar10/cifar-10-batches-py"])
    folder = next((d for d in dirs if all((d / f).is_file() for f in files)), None)
    if folder is None:
        raise missing("cifar10", "cifar-10-batches-py/" + ", ".join(files), searched(dirs))
    parts = [read_cifar_batch(folder / f) for f in files]
    X = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    return image_dataset("cifar10", X, y, 10, CIFAR10_CLASSES, n_per_class, seed, normalize,
                         255.0, {"folder": str(folder), "split": split})
