"""Data sets for the end-to-end experiments (see :mod:`gufm.data.loaders`).

``load_dataset(name, root=None, n_per_class=None, seed=0, split="train")`` returns a
:class:`Dataset`; ``download(name, dir)`` fetches the official archives (needs internet).
"""

from gufm.deep.data.download import SOURCES, ChecksumError, download, fetch, file_digest
from gufm.deep.data.loaders import (
    DATASETS,
    Dataset,
    balanced_indices,
    data_home,
    load_dataset,
    read_idx,
    tokenize,
)

__all__ = [
    "DATASETS", "SOURCES", "ChecksumError", "Dataset", "balanced_indices", "data_home",
    "download", "fetch", "file_digest", "load_dataset", "read_idx", "tokenize",
]
