r"""The :class:`Dataset` container, the data-file errors and the helpers every loader shares.

Errors
------
Every loader reports a missing, truncated, corrupt or hostile data file with **one line** that
names the file (or the folders searched) and says what to install, download or pass:

* :class:`DatasetError` (a ``ValueError``): a file exists but cannot be used (truncated IDX
  header, corrupt gzip stream, labels outside the class range, a pickle holding more than data,
  a fortune file that is not UTF-8 text, ...);
* :class:`DatasetNotFoundError` (a ``DatasetError`` *and* a ``FileNotFoundError``): the files
  are not there.

A command-line front end catches :class:`DatasetError` alone to turn both into an error
message and exit code 2.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gufm._util import check_choice

SPLITS = ("train", "test")

#: id of the padding token and of the out-of-vocabulary token in the word-token datasets
PAD_ID = 0
UNK_ID = 1


class DatasetError(ValueError):
    """A data file is missing, truncated, corrupt or holds more than data; the message is one
    line naming the file and what to install or pass.

    Examples
    --------
    >>> issubclass(DatasetError, ValueError)
    True
    """


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The files of a data set are not where the loader looked (one line: the folders searched
    and the command that installs or downloads them).

    Examples
    --------
    >>> issubclass(DatasetNotFoundError, FileNotFoundError)
    True
    """


def one_line(text: str) -> str:
    """Collapse every run of whitespace (newlines included) to one space, so that an error
    message quoting a file's content stays on one line.

    Examples
    --------
    >>> one_line("a\\n  b\\tc ")
    'a b c'
    """
    return " ".join(str(text).split())


@dataclass
class Dataset:
    """A labelled data set ready for :func:`gufm.training.train`.

    Attributes
    ----------
    name : str
    X : Tensor
        ``float32`` of shape ``(N, C, H, W)`` for images (normalised, see
        :mod:`gufm.deep.data.loaders`), ``int64`` token ids of shape ``(N, T)`` for
        ``kind="tokens"``.
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

    Examples
    --------
    >>> ds = Dataset("toy", torch.zeros(3, 2, dtype=torch.long), torch.tensor([0, 1, 1]), 2,
    ...              "tokens", vocab_size=4)
    >>> ds.N, ds.counts.tolist()
    (3, [1, 2])
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
    """Default data folder: ``$GUFM_DATA`` or ``~/.cache/gufm/data``.

    Examples
    --------
    >>> isinstance(data_home(), Path)
    True
    """
    env = os.environ.get("GUFM_DATA")
    return Path(env) if env else Path.home() / ".cache" / "gufm" / "data"


def searched(dirs: Sequence[Path]) -> list[Path]:
    """The folders of ``dirs`` that exist (all of them, or the first, when none does): what a
    "not found" message lists.

    Examples
    --------
    >>> import tempfile
    >>> here = Path(tempfile.mkdtemp())
    >>> searched([Path("/no/such/dir"), here]) == [here], searched([Path("/no/a"), Path("/no/b")])
    (True, [PosixPath('/no/a')])
    """
    return [d for d in dirs if d.exists()] or list(dirs[:1])


def missing(name: str, what: str, dirs: Sequence[Path]) -> DatasetNotFoundError:
    """The one-line "not found" error of a downloadable data set: the folders searched, the
    ``gufm data download`` command and the ``root=`` / ``--data-root`` to pass afterwards.

    Examples
    --------
    >>> err = missing("cifar10", "cifar-10-batches-py", [Path("/data")])
    >>> type(err).__name__, str(err).split(". ")[0]
    ('DatasetNotFoundError', 'cifar10: cifar-10-batches-py not found (searched /data)')
    """
    where = ", ".join(str(p) for p in dirs) or "(nowhere)"
    dest = data_home() / name
    return DatasetNotFoundError(
        f"{name}: {what} not found (searched {where}). Download it with "
        f"`gufm data download {name} --dir {dest}` (on a machine with internet) and pass "
        f"root='{dest}' (CLI: --data-root {dest}), or pass root= pointing to a folder that "
        f"already holds the files."
    )


def candidate_dirs(name: str, root: str | os.PathLike | None, extra: Sequence[str] = (),
                   system: Sequence[str | os.PathLike] = ()) -> list[Path]:
    """Folders searched for a data set's files: ``root`` (or ``data_home()/name`` followed by
    the ``system`` folders, e.g. a Debian package's) and, below each, the sub-folders ``""``,
    ``name``, ``raw`` and ``extra``.

    Examples
    --------
    >>> [str(p) for p in candidate_dirs("x", "/d")]
    ['/d', '/d/x', '/d/raw']
    """
    bases = [Path(root)] if root is not None else [data_home() / name, *map(Path, system)]
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
    ``default_rng(seed)`` and the first ``n_per_class`` are kept (in increasing index order);
    ``None`` keeps all (in order).

    Raises
    ------
    ValueError
        ``n_per_class < 1`` or larger than the smallest class.

    Examples
    --------
    >>> balanced_indices(np.array([1, 0, 1, 0, 1]), None, 0).tolist()
    [1, 3, 0, 2, 4]
    >>> len(balanced_indices(np.array([1, 0, 1, 0, 1]), 2, 0))
    4
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


def check_split(split: str) -> str:
    """Validate ``split`` (one of :data:`SPLITS`) and return it.

    Examples
    --------
    >>> check_split("test")
    'test'
    >>> check_split("validation")
    Traceback (most recent call last):
    ...
    ValueError: split must be one of ('train', 'test'), got 'validation'
    """
    return check_choice("split", split, SPLITS)


def digest(a: np.ndarray) -> str:
    """First 16 hex digits of the SHA-256 of an array's bytes (provenance of a subset).

    Examples
    --------
    >>> digest(np.arange(3)) == digest(np.arange(3)), digest(np.arange(3)) == digest(np.arange(4))
    (True, False)
    >>> len(digest(np.zeros(5)))
    16
    """
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]
