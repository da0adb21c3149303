"""Data sets for the end-to-end experiments (see :mod:`gufm.deep.data.loaders`).

``load_dataset(name, root=None, n_per_class=None, seed=0, split="train")`` returns a
:class:`Dataset`; ``download(name, dir)`` fetches the official archives (needs internet).
A missing, truncated, corrupt or hostile file raises :class:`DatasetError` (one line naming
the file; :class:`DatasetNotFoundError` is also a ``FileNotFoundError``).
"""

from gufm.deep.data.base import DatasetError, DatasetNotFoundError
from gufm.deep.data.download import SOURCES, ChecksumError, download, fetch, file_digest
from gufm.deep.data.fortunes import (
    CHAR_ALPHABET,
    DEFAULT_CATEGORIES,
    fortunes_available,
    read_fortunes,
)
from gufm.deep.data.loaders import (
    DATASETS,
    Dataset,
    balanced_indices,
    data_home,
    load_dataset,
    read_idx,
    tokenize,
)
from gufm.deep.data.safe_pickle import load_data_pickle
from gufm.deep.data.ties import TiedLabels, tied_soft_labels

__all__ = [
    "CHAR_ALPHABET", "DATASETS", "DEFAULT_CATEGORIES", "SOURCES", "ChecksumError", "Dataset",
    "DatasetError", "DatasetNotFoundError", "TiedLabels", "balanced_indices", "data_home",
    "download", "fetch", "file_digest", "fortunes_available", "load_data_pickle",
    "load_dataset", "read_fortunes", "read_idx", "tied_soft_labels", "tokenize",
]
