r"""Datasets for the end-to-end experiments, read from their standard file formats.

===================== ==================================================================
name                  source and format
===================== ==================================================================
``digits``            scikit-learn's bundled 8x8 digits (1797 images, 10 classes); offline
``fashion-mnist``     IDX files (``train-images-idx3-ubyte[.gz]`` ...), e.g. the Debian
                      package ``dataset-fashion-mnist`` (/usr/share/datasets/fashion-mnist)
``mnist``             IDX files, same layout
``cifar10``           the python pickle batches ``cifar-10-batches-py/data_batch_1..5``,
                      ``test_batch`` (read with a restricted unpickler)
``imdb``              the ``aclImdb`` folder (``train/pos/*.txt``, ``train/neg``, ``test/...``)
``fortunes``          topic classification on the Debian package ``fortunes``
                      (/usr/share/games/fortunes), words; see :mod:`gufm.deep.data.fortunes`
``fortunes-next``     next-character prediction on the same corpus (soft labels)
``synthetic-tokens``  generated token sequences whose label is a function of the sequence
===================== ==================================================================

Every loader returns a :class:`Dataset` with a **class-balanced deterministic subset**: for each
class ``k`` the ``n_per_class`` samples are the first ones of a permutation of that class's
indices drawn from ``numpy.random.default_rng(seed)``; samples are ordered class by class.
``n_per_class=None`` keeps every sample of the split (classes may then be imbalanced).
``fortunes-next`` is the exception: its windows are drawn uniformly from the corpus, so its
classes keep the letter frequencies (``n_per_class`` sets the size, see its module).

Images are normalised (``normalize=``, see :mod:`gufm.deep.data.images`); token datasets are
not: ``X`` holds ``int64`` token ids.

Files are looked up under ``root`` (or, if not given, ``$GUFM_DATA/<name>``,
``~/.cache/gufm/data/<name>`` and the system folders of the Debian packages), also in the
sub-folders ``<name>``, ``raw`` and the torchvision layouts.  A missing file raises
:class:`DatasetNotFoundError` (a ``FileNotFoundError``) naming the command that downloads it
(``gufm data download NAME --dir DIR``) or the package that installs it, and the ``root=`` to
pass afterwards; a truncated, corrupt or hostile file raises :class:`DatasetError` (a
``ValueError``).  Both messages are one line naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from gufm.deep.data.base import (
    PAD_ID,
    SPLITS,
    UNK_ID,
    Dataset,
    DatasetError,
    DatasetNotFoundError,
    balanced_indices,
    data_home,
)
from gufm.deep.data.fortunes import load_fortunes, load_fortunes_next
from gufm.deep.data.images import (
    NORMALIZATIONS,
    load_cifar10,
    load_digits,
    load_idx_dataset,
    normalize_images,
    read_idx,
)
from gufm.deep.data.text import (
    build_vocab,
    encode,
    load_imdb,
    load_synthetic_tokens,
    synthetic_labels,
    tokenize,
)

__all__ = [
    "DATASETS", "NORMALIZATIONS", "PAD_ID", "SPLITS", "UNK_ID", "Dataset", "DatasetError",
    "DatasetNotFoundError", "balanced_indices", "build_vocab", "data_home", "encode",
    "load_cifar10", "load_dataset", "load_digits", "load_fortunes", "load_fortunes_next",
    "load_idx_dataset", "load_imdb", "load_synthetic_tokens", "normalize_images", "read_idx",
    "synthetic_labels", "tokenize",
]

DATASETS = ("digits", "fashion-mnist", "mnist", "cifar10", "imdb", "fortunes", "fortunes-next",
            "synthetic-tokens")

_LOADERS: dict[str, Callable[..., Dataset]] = {
    "digits": load_digits,
    "fashion-mnist": lambda root=None, **kw: load_idx_dataset("fashion-mnist", root, **kw),
    "mnist": lambda root=None, **kw: load_idx_dataset("mnist", root, **kw),
    "cifar10": load_cifar10,
    "imdb": load_imdb,
    "fortunes": load_fortunes,
    "fortunes-next": load_fortunes_next,
    "synthetic-tokens": load_synthetic_tokens,
}

_ALIASES = {"fashion": "fashion-mnist", "fashionmnist": "fashion-mnist", "cifar-10": "cifar10",
            "synthetic": "synthetic-tokens", "fortune": "fortunes", "fortune-next": "fortunes-next"}


def load_dataset(name: str, root: str | os.PathLike | None = None, n_per_class: int | None = None,
                 seed: int = 0, split: str = "train", **kwargs: Any) -> Dataset:
    """Load a data set by name (see the module docstring).

    Parameters
    ----------
    name : {"digits", "fashion-mnist", "mnist", "cifar10", "imdb", "fortunes", \
"fortunes-next", "synthetic-tokens"}
    root : path, optional
        Folder holding the files (default: see the module docstring).
    n_per_class : int, optional
        Class-balanced deterministic subset size per class (``None``: all samples);
        ``fortunes-next``: ``27 * n_per_class`` windows.
    seed : int
        Seed of the subset selection (and of the synthetic data).
    split : {"train", "test"}
    **kwargs
        ``normalize=`` for images; ``vocab_size=``, ``seq_len=``, ``vocab=`` for IMDB and
        ``fortunes`` (also ``categories=``); ``seq_len=`` (the context length),
        ``categories=``, ``n_contexts=`` for ``fortunes-next``; ``num_classes=``,
        ``vocab_size=``, ``seq_len=`` for ``synthetic-tokens``.

    Raises
    ------
    ValueError
        Unknown ``name`` or ``split``, bad ``n_per_class``.
    DatasetNotFoundError
        The files are missing (a ``FileNotFoundError``); the message names
        ``gufm data download NAME --dir DIR`` or the package to install.
    DatasetError
        A file is truncated, corrupt or holds more than data (one line naming it).

    Examples
    --------
    >>> load_dataset("digits", n_per_class=3).counts.tolist()
    [3, 3, 3, 3, 3, 3, 3, 3, 3, 3]
    >>> load_dataset("svhn")
    Traceback (most recent call last):
    ...
    ValueError: name must be one of (...), got 'svhn'
    """
    key = str(name).lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in _LOADERS:
        raise ValueError(f"name must be one of {DATASETS}, got {name!r}")
    return _LOADERS[key](root, n_per_class=n_per_class, seed=seed, split=split, **kwargs)
