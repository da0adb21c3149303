r"""Datasets for the end-to-end experiments, read from their standard file formats.

=================== ====================================================================
name                source and format
=================== ====================================================================
``digits``          scikit-learn's bundled 8x8 digits (1797 images, 10 classes); offline
``fashion-mnist``   IDX files (``train-images-idx3-ubyte[.gz]`` ...), e.g. the Debian
                    package ``dataset-fashion-mnist`` (/usr/share/datasets/fashion-mnist)
``mnist``           IDX files, same layout
``cifar10``         the python pickle batches ``cifar-10-batches-py/data_batch_1..5``,
                    ``test_batch``
``imdb``            the ``aclImdb`` folder (``train/pos/*.txt``, ``train/neg``, ``test/...``)
``synthetic-tokens`` generated token sequences whose label is a function of the sequence
=================== ====================================================================

Every loader returns a :class:`Dataset` with a **class-balanced deterministic subset**: for each
class ``k`` the ``n_per_class`` samples are the first ones of a permutation of that class's
indices drawn from ``numpy.random.default_rng(seed)``; samples are ordered class by class.
``n_per_class=None`` keeps every sample of the split (classes may then be imbalanced).

Normalisation (``normalize=``), computed on the returned subset:

* ``"feature"`` (default): per-feature (per pixel and channel) standardisation
  :math:`x_j \leftarrow (x_j - \mu_j)/\sigma_j`, with :math:`\sigma_j` replaced by 1 where a
  feature is constant (the blank corners of the digits);
* ``"global"``: one mean and standard deviation over all entries;
* ``"none"``: raw values scaled to ``[0, 1]`` (pixel / 255, digits / 16).

Token datasets are not normalised: ``X`` holds ``int64`` token ids.

Files are looked up under ``root`` (or, if not given, ``$GUFM_DATA/<name>``,
``~/.cache/gufm/data/<name>`` and, for Fashion-MNIST, ``/usr/share/datasets/fashion-mnist``),
also in the sub-folders ``<name>``, ``raw`` and the torchvision layouts.  A missing file raises
:class:`FileNotFoundError` naming the command that downloads it
(``gufm data download NAME --dir DIR``) and the ``root=`` to pass afterwards.
"""

from __future__ import annotations

import gzip
import os
import pickle
import re
import struct
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

DATASETS = ("digits", "fashion-mnist", "mnist", "cifar10", "imdb", "synthetic-tokens")
NORMALIZATIONS = ("feature", "global", "none")
SPLITS = ("train", "test")

#: id of the padding token and of the out-of-vocabulary token in token datasets built here
PAD_ID = 0
UNK_ID = 1


@dataclass
class Dataset:
    """A labelled data set ready for :func:`gufm.training.train`.

    Attributes
    ----------
    name : str
    X : Tensor
        ``float32`` of shape ``(N, C, H, W)`` for images (normalised, see the module docstring),
        ``int64`` token ids of shape ``(N, T)`` for ``kind="tokens"``.
    y : Tensor
        ``int64`` labels in ``{0, ..., K-1}``, shape ``(N,)``.
    num_classes : int
    kind : {"image", "tokens"}
    image_shape : tuple of int or None
        ``(C, H, W)`` for images.
    vocab_size : int or None
        Token datasets: ids lie in ``[0, vocab_size)``.
    pad_id : int or None
        Token datasets: the padding id (``None``: no padding).
    classes : list of str
        Class names.
    normalization : str
    info : dict
        Provenance (files, split, seed, n_per_class, vocabulary, ...).
    """

    name: str
    X: torch.Tensor
    y: torch.Tensor
    num_classes: int
    kind: str
    image_shape: tuple[int, ...] | None = None
    vocab_size: int | None = None
    pad_id: int | None = None
    classes: list[str] = field(default_factory=list)
    normalization: str = "none"
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def N(self) -> int:
        """Number of samples."""
        return int(self.y.shape[0])

    @property
    def counts(self) -> np.ndarray:
        """Samples per class, shape (K,)."""
        return np.bincount(self.y.numpy(), minlength=self.num_classes)

    def __len__(self) -> int:
        return self.N

    def __repr__(self) -> str:
        return (f"Dataset(name={self.name!r}, N={self.N}, K={self.num_classes}, kind={self.kind!r},"
                f" X={tuple(self.X.shape)}, normalization={self.normalization!r})")


# ----------------------------------------------------------------------------- helpers
def data_home() -> Path:
    """Default data folder: ``$GUFM_DATA`` or ``~/.cache/gufm/data``."""
    env = os.environ.get("GUFM_DATA")
    return Path(env) if env else Path.home() / ".cache" / "gufm" / "data"


def _missing(name: str, what: str, searched: Sequence[Path]) -> FileNotFoundError:
    where = ", ".join(str(p) for p in searched) or "(nowhere)"
    dest = data_home() / name
    return FileNotFoundError(
        f"{name}: {what} not found (searched {where}). Download it with "
        f"`gufm data download {name} --dir {dest}` (on a machine with internet) and pass "
        f"root='{dest}' (CLI: --data-root {dest}), or pass root= pointing to a folder that "
        f"already holds the files."
    )


def _candidate_dirs(name: str, root: str | os.PathLike | None, extra: Sequence[str] = ()) -> list[Path]:
    bases = [Path(root)] if root is not None else [data_home() / name]
    if root is None and name == "fashion-mnist":
        bases.append(Path("/usr/share/datasets/fashion-mnist"))
    subs = ["", name, "raw", *extra]
    out: list[Path] = []
    for b in bases:
        for s in subs:
            p = b / s if s else b
            if p not in out:
                out.append(p)
    return out


def balanced_indices(y: np.ndarray, n_per_class: int | None, seed: int,
                     num_classes: int | None = None) -> np.ndarray:
    """Indices of a class-balanced deterministic subset, ordered class by class.

    For every class ``k`` (in increasing order) a permutation of its indices is drawn from
    ``default_rng(seed)`` and the first ``n_per_class`` are kept; ``None`` keeps all (in order).

    Raises
    ------
    ValueError
        ``n_per_class < 1`` or larger than the smallest class.
    """
    y = np.asarray(y)
    K = int(y.max()) + 1 if num_classes is None else int(num_classes)
    if n_per_class is None:
        return np.concatenate([np.flatnonzero(y == k) for k in range(K)])
    if isinstance(n_per_class, bool) or int(n_per_class) != n_per_class or n_per_class < 1:
        raise ValueError(f"n_per_class must be a positive integer or None, got {n_per_class!r}")
    rng = np.random.default_rng(seed)
    out = []
    for k in range(K):
        idx = np.flatnonzero(y == k)
        if idx.size < n_per_class:
            raise ValueError(
                f"n_per_class={n_per_class} exceeds the {idx.size} samples of class {k}"
            )
        out.append(np.sort(idx[rng.permutation(idx.size)[: int(n_per_class)]]))
    return np.concatenate(out)


def normalize_images(X: np.ndarray, how: str, scale: float) -> np.ndarray:
    r"""Normalise images ``(N, ...)`` (see the module docstring); ``scale`` maps raw to [0, 1]."""
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


def _image_dataset(name: str, X: np.ndarray, y: np.ndarray, K: int, classes: list[str],
                   n_per_class: int | None, seed: int, normalize: str, scale: float,
                   info: dict[str, Any]) -> Dataset:
    idx = balanced_indices(y, n_per_class, seed, K)
    Xs = normalize_images(X[idx], normalize, scale)
    info = dict(info, seed=seed, n_per_class=n_per_class, indices_sha=_digest(idx))
    return Dataset(name=name, X=torch.from_numpy(Xs), y=torch.from_numpy(y[idx].astype(np.int64)),
                   num_classes=K, kind="image", image_shape=tuple(Xs.shape[1:]), classes=classes,
                   normalization=normalize, info=info)


def _digest(a: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


# ----------------------------------------------------------------------------- IDX
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (raw or gzip-compressed, detected from its first bytes).

    Format: two zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), the number of dimensions, then one big-endian uint32 per
    dimension and the data in C order.
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(2)
    opener: Callable[..., Any] = gzip.open if head == b"\x1f\x8b" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number {data[:4]!r})")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4: 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=_IDX_DTYPES[data[2]], offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path}: expected {int(np.prod(dims))} values for shape {dims}, got {arr.size}")
    return arr.reshape(dims)


def _find_idx(name: str, root: str | os.PathLike | None, stem: str) -> Path:
    extra = ["FashionMNIST/raw", "MNIST/raw", "fashion", "data/fashion"]
    dirs = _candidate_dirs(name, root, extra)
    alt = stem.replace("-idx", ".idx")  # train-images.idx3-ubyte (a common re-distribution)
    for d in dirs:
        for fname in (stem, stem + ".gz", alt, alt + ".gz"):
            if (d / fname).is_file():
                return d / fname
    raise _missing(name, f"{stem}[.gz]", [d for d in dirs if d.exists()] or dirs[:1])


FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]


def load_idx_dataset(name: str, root: str | os.PathLike | None = None, *,
                     n_per_class: int | None = None, seed: int = 0, split: str = "train",
                     normalize: str = "feature") -> Dataset:
    """MNIST-format data (``mnist``, ``fashion-mnist``) from IDX files."""
    prefix = {"train": "train", "test": "t10k"}[_check_split(split)]
    fx = _find_idx(name, root, f"{prefix}-images-idx3-ubyte")
    fy = _find_idx(name, root, f"{prefix}-labels-idx1-ubyte")
    X, y = read_idx(fx), read_idx(fy).astype(np.int64)
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"{fx} has {X.shape[0]} images but {fy} has {y.shape[0]} labels")
    X = X.reshape(X.shape[0], 1, *X.shape[1:])
    classes = FASHION_CLASSES if name == "fashion-mnist" else [str(k) for k in range(10)]
    return _image_dataset(name, X, y, 10, classes, n_per_class, seed, normalize, 255.0,
                          {"files": [str(fx), str(fy)], "split": split})


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


# ----------------------------------------------------------------------------- digits
def load_digits(root: str | os.PathLike | None = None, *, n_per_class: int | None = None,
                seed: int = 0, split: str = "train", normalize: str = "feature") -> Dataset:
    """scikit-learn's 8x8 digits (values 0..16).  There is no official split: ``"train"`` is
    all 1797 images (``"test"`` raises)."""
    if split != "train":
        raise ValueError("split: the digits data set has no test split; use split='train'")
    from sklearn.datasets import load_digits as _sk

    d = _sk()
    X = d.images.reshape(-1, 1, 8, 8)
    y = d.target.astype(np.int64)
    return _image_dataset("digits", X, y, 10, [str(k) for k in range(10)], n_per_class, seed,
                          normalize, 16.0, {"source": "sklearn.datasets.load_digits",
                                            "split": split})


# ----------------------------------------------------------------------------- CIFAR-10
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck"]


def load_cifar10(root: str | os.PathLike | None = None, *, n_per_class: int | None = None,
                 seed: int = 0, split: str = "train", normalize: str = "feature") -> Dataset:
    """CIFAR-10 from the python pickle batches (``data``: uint8 (n, 3072) rows in CHW order,
    ``labels``: list of int)."""
    files = ([f"data_batch_{i}" for i in range(1, 6)] if _check_split(split) == "train"
             else ["test_batch"])
    dirs = _candidate_dirs("cifar10", root, ["cifar-10-batches-py", "cifar10/cifar-10-batches-py"])
    folder = next((d for d in dirs if all((d / f).is_file() for f in files)), None)
    if folder is None:
        raise _missing("cifar10", "cifar-10-batches-py/" + ", ".join(files),
                       [d for d in dirs if d.exists()] or dirs[:1])
    Xs, ys = [], []
    for f in files:
        with open(folder / f, "rb") as fh:
            batch = pickle.load(fh, encoding="bytes")
        data = batch.get(b"data", batch.get("data"))
        labels = batch.get(b"labels", batch.get("labels"))
        if data is None or labels is None:
            raise ValueError(f"{folder / f}: not a CIFAR-10 batch (no 'data'/'labels' keys)")
        Xs.append(np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(labels, dtype=np.int64))
    X, y = np.concatenate(Xs), np.concatenate(ys)
    return _image_dataset("cifar10", X, y, 10, CIFAR10_CLASSES, n_per_class, seed, normalize,
                          255.0, {"folder": str(folder), "split": split})


# ----------------------------------------------------------------------------- IMDB
_TAG = re.compile(r"<[^>]+>")
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokenize(text: str) -> list[str]:
    """Lower-case, drop HTML tags (``<br />``), split on ``[a-z0-9]+('[a-z]+)?``."""
    return _WORD.findall(_TAG.sub(" ", text.lower()))


def build_vocab(docs: Sequence[Sequence[str]], size: int) -> list[str]:
    """The ``size - 2`` most frequent words (ties broken alphabetically), after ``<pad>``, ``<unk>``."""
    if size < 3:
        raise ValueError(f"vocab_size must be >= 3, got {size!r}")
    counts = Counter(w for d in docs for w in d)
    words = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: size - 2]
    return ["<pad>", "<unk>", *(w for w, _ in words)]


def encode(docs: Sequence[Sequence[str]], vocab: Sequence[str], seq_len: int) -> np.ndarray:
    """Token ids ``(N, seq_len)``: the first ``seq_len`` words, unknown -> 1, padded with 0."""
    index = {w: i for i, w in enumerate(vocab)}
    out = np.full((len(docs), seq_len), PAD_ID, dtype=np.int64)
    for i, d in enumerate(docs):
        ids = [index.get(w, UNK_ID) for w in d[:seq_len]]
        out[i, : len(ids)] = ids
    return out


def load_imdb(root: str | os.PathLike | None = None, *, n_per_class: int | None = None,
              seed: int = 0, split: str = "train", vocab_size: int = 5000, seq_len: int = 128,
              vocab: Sequence[str] | None = None) -> Dataset:
    """IMDB sentiment (``neg`` = 0, ``pos`` = 1) from the ``aclImdb`` folder.

    Only the selected review files are read.  The vocabulary (``vocab_size`` entries: ``<pad>``
    = 0, ``<unk>`` = 1, then the most frequent words of the loaded reviews) is built from the
    loaded subset unless ``vocab`` is given (pass ``train.info["vocab"]`` to encode a test split
    consistently).  Sequences keep their first ``seq_len`` tokens, padded with 0.
    """
    _check_split(split)
    dirs = _candidate_dirs("imdb", root, ["aclImdb", "imdb/aclImdb"])
    folder = next((d for d in dirs if (d / split / "pos").is_dir() and (d / split / "neg").is_dir()),
                  None)
    if folder is None:
        raise _missing("imdb", f"aclImdb/{split}/pos and aclImdb/{split}/neg",
                       [d for d in dirs if d.exists()] or dirs[:1])
    paths, labels = [], []
    for k, cls in enumerate(("neg", "pos")):
        fs = sorted((folder / split / cls).glob("*.txt"))
        paths += fs
        labels += [k] * len(fs)
    if not paths:
        raise _missing("imdb", f"review files under {folder / split}", [folder])
    y = np.asarray(labels, dtype=np.int64)
    idx = balanced_indices(y, n_per_class, seed, 2)
    docs = [tokenize(paths[i].read_text(encoding="utf-8", errors="replace")) for i in idx]
    vocab_list = list(vocab) if vocab is not None else build_vocab(docs, vocab_size)
    X = encode(docs, vocab_list, int(seq_len))
    return Dataset(name="imdb", X=torch.from_numpy(X), y=torch.from_numpy(y[idx]), num_classes=2,
                   kind="tokens", vocab_size=len(vocab_list), pad_id=PAD_ID,
                   classes=["neg", "pos"], normalization="none",
                   info={"folder": str(folder), "split": split, "seed": seed,
                         "n_per_class": n_per_class, "seq_len": int(seq_len), "vocab": vocab_list})


# ----------------------------------------------------------------------------- synthetic
def synthetic_labels(X: np.ndarray, num_classes: int) -> np.ndarray:
    r"""Label of token sequences: :math:`y = (\sum_t s_t) \bmod K` (a function of the token
    counts, so every context determines its label and identical contexts share it)."""
    return (X.sum(axis=1) % num_classes).astype(np.int64)


def load_synthetic_tokens(root: str | os.PathLike | None = None, *, n_per_class: int | None = 20,
                          seed: int = 0, split: str = "train", num_classes: int = 4,
                          vocab_size: int = 16, seq_len: int = 8) -> Dataset:
    r"""Random token sequences with :math:`y = (\sum_t s_t) \bmod K` (see
    :func:`synthetic_labels`), ``n_per_class`` per class (default 20), no padding.

    Tokens are i.i.d. uniform on ``{0, ..., vocab_size-1}`` from ``default_rng(seed)``
    (``split="test"`` uses an independent stream); sequences are drawn until every class has
    ``n_per_class`` of them.
    """
    _check_split(split)
    n = 20 if n_per_class is None else int(n_per_class)
    if n < 1:
        raise ValueError(f"n_per_class must be a positive integer, got {n_per_class!r}")
    if num_classes < 2 or vocab_size < 2 or seq_len < 1:
        raise ValueError("need num_classes >= 2, vocab_size >= 2 and seq_len >= 1")
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    chosen: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    while min(len(c) for c in chosen) < n:
        batch = rng.integers(0, vocab_size, size=(4 * n * num_classes, seq_len))
        for s, k in zip(batch, synthetic_labels(batch, num_classes), strict=True):
            if len(chosen[k]) < n:
                chosen[k].append(s)
    X = np.stack([s for c in chosen for s in c]).astype(np.int64)
    y = np.repeat(np.arange(num_classes), n)
    return Dataset(name="synthetic-tokens", X=torch.from_numpy(X), y=torch.from_numpy(y),
                   num_classes=num_classes, kind="tokens", vocab_size=vocab_size, pad_id=None,
                   classes=[str(k) for k in range(num_classes)], normalization="none",
                   info={"rule": "y = sum(tokens) mod K", "seed": seed, "split": split,
                         "n_per_class": n})


# ----------------------------------------------------------------------------- entry point
_LOADERS: dict[str, Callable[..., Dataset]] = {
    "digits": load_digits,
    "fashion-mnist": lambda root=None, **kw: load_idx_dataset("fashion-mnist", root, **kw),
    "mnist": lambda root=None, **kw: load_idx_dataset("mnist", root, **kw),
    "cifar10": load_cifar10,
    "imdb": load_imdb,
    "synthetic-tokens": load_synthetic_tokens,
}


def load_dataset(name: str, root: str | os.PathLike | None = None, n_per_class: int | None = None,
                 seed: int = 0, split: str = "train", **kwargs: Any) -> Dataset:
    """Load a data set by name (see the module docstring).

    Parameters
    ----------
    name : {"digits", "fashion-mnist", "mnist", "cifar10", "imdb", "synthetic-tokens"}
    root : path, optional
        Folder holding the files (default: see the module docstring).
    n_per_class : int, optional
        Class-balanced deterministic subset size per class (``None``: all samples).
    seed : int
        Seed of the subset selection (and of the synthetic data).
    split : {"train", "test"}
    **kwargs
        ``normalize=`` for images; ``vocab_size=``, ``seq_len=``, ``vocab=`` for IMDB;
        ``num_classes=``, ``vocab_size=``, ``seq_len=`` for ``synthetic-tokens``.

    Raises
    ------
    ValueError
        Unknown ``name`` or ``split``, bad ``n_per_class``.
    FileNotFoundError
        The files are missing; the message names ``gufm data download NAME --dir DIR``.
    """
    key = str(name).lower().replace("_", "-")
    key = {"fashion": "fashion-mnist", "fashionmnist": "fashion-mnist", "cifar-10": "cifar10",
           "synthetic": "synthetic-tokens"}.get(key, key)
    if key not in _LOADERS:
        raise ValueError(f"name must be one of {DATASETS}, got {name!r}")
    return _LOADERS[key](root, n_per_class=n_per_class, seed=seed, split=split, **kwargs)
