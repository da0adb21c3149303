r"""Token data sets: the word tokeniser and vocabulary shared by the text loaders, IMDB, and
the ``synthetic-tokens`` stand-in.

Word scheme (IMDB and ``fortunes``): lower-case, drop HTML tags (``<br />``), words are the
matches of ``[a-z0-9]+('[a-z]+)?``; the vocabulary is ``<pad>`` = 0, ``<unk>`` = 1, then the
most frequent words of the loaded documents (ties alphabetical); a document keeps its first
``seq_len`` words, padded with 0 (the networks mask the padding in attention and pooling).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch

from gufm.deep.data.base import (
    PAD_ID,
    UNK_ID,
    Dataset,
    balanced_indices,
    candidate_dirs,
    check_split,
    missing,
    searched,
)

_TAG = re.compile(r"<[^>]+>")
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokenize(text: str) -> list[str]:
    """Lower-case, drop HTML tags (``<br />``), split on ``[a-z0-9]+('[a-z]+)?``.

    Examples
    --------
    >>> tokenize("It's <br />GREAT, isn't it?")
    ["it's", 'great', "isn't", 'it']
    """
    return _WORD.findall(_TAG.sub(" ", text.lower()))


def build_vocab(docs: Sequence[Sequence[str]], size: int) -> list[str]:
    """The ``size - 2`` most frequent words (ties broken alphabetically), after ``<pad>``,
    ``<unk>``.

    Examples
    --------
    >>> build_vocab([["b", "a", "b"], ["c"]], 4)
    ['<pad>', '<unk>', 'b', 'a']
    """
    if isinstance(size, bool) or int(size) != size or size < 3:
        raise ValueError(f"vocab_size must be an integer >= 3, got {size!r}")
    counts = Counter(w for d in docs for w in d)
    words = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: int(size) - 2]
    return ["<pad>", "<unk>", *(w for w, _ in words)]


def encode(docs: Sequence[Sequence[str]], vocab: Sequence[str], seq_len: int) -> np.ndarray:
    """Token ids ``(N, seq_len)``: the first ``seq_len`` words, unknown -> 1, padded with 0.

    Examples
    --------
    >>> encode([["b", "z"], ["a"]], ["<pad>", "<unk>", "b", "a"], 3).tolist()
    [[2, 1, 0], [3, 0, 0]]
    """
    if isinstance(seq_len, bool) or int(seq_len) != seq_len or seq_len < 1:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
    index = {w: i for i, w in enumerate(vocab)}
    out = np.full((len(docs), int(seq_len)), PAD_ID, dtype=np.int64)
    for i, d in enumerate(docs):
        ids = [index.get(w, UNK_ID) for w in d[: int(seq_len)]]
        out[i, : len(ids)] = ids
    return out


def word_token_dataset(name: str, docs: Sequence[Sequence[str]], y: np.ndarray,
                       classes: list[str], vocab_size: int, seq_len: int,
                       vocab: Sequence[str] | None, info: dict) -> Dataset:
    """A ``kind="tokens"`` :class:`Dataset` of word documents (the scheme of the module
    docstring); ``vocab`` (e.g. a training split's ``info["vocab"]``) overrides building one.

    Examples
    --------
    >>> ds = word_token_dataset("toy", [["good", "film"], ["bad", "film", "bad"]], np.array([1, 0]),
    ...                         ["neg", "pos"], vocab_size=10, seq_len=4, vocab=None, info={})
    >>> ds.info["vocab"], ds.X.tolist()                 # padded with <pad> = 0
    (['<pad>', '<unk>', 'bad', 'film', 'good'], [[4, 3, 0, 0], [2, 3, 2, 0]])
    """
    vocab_list = list(vocab) if vocab is not None else build_vocab(docs, vocab_size)
    if vocab_list[:2] != ["<pad>", "<unk>"]:
        raise ValueError("vocab must start with '<pad>', '<unk>' (ids 0 and 1)")
    X = encode(docs, vocab_list, seq_len)
    return Dataset(name=name, X=torch.from_numpy(X), y=torch.from_numpy(np.asarray(y, np.int64)),
                   num_classes=len(classes), kind="tokens", vocab_size=len(vocab_list),
                   pad_id=PAD_ID, classes=list(classes), normalization="none",
                   info=dict(info, seq_len=int(seq_len), vocab=vocab_list))


# ----------------------------------------------------------------------------- IMDB
def load_imdb(root: str | os.PathLike | None = None, *, n_per_class: int | None = None,
              seed: int = 0, split: str = "train", vocab_size: int = 5000, seq_len: int = 128,
              vocab: Sequence[str] | None = None) -> Dataset:
    """IMDB sentiment (``neg`` = 0, ``pos`` = 1) from the ``aclImdb`` folder.

    Only the selected review files are read.  The vocabulary (``vocab_size`` entries: ``<pad>``
    = 0, ``<unk>`` = 1, then the most frequent words of the loaded reviews) is built from the
    loaded subset unless ``vocab`` is given (pass ``train.info["vocab"]`` to encode a test split
    consistently).  Sequences keep their first ``seq_len`` tokens, padded with 0.

    Examples
    --------
    A tiny ``aclImdb`` folder (``<split>/pos`` and ``<split>/neg``, one review per file):

    >>> import tempfile
    >>> from pathlib import Path
    >>> reviews = {"neg": ["Bad film.", "Awful, bad bad."], "pos": ["Good film!", "Great good fun."]}
    >>> with tempfile.TemporaryDirectory() as d:
    ...     for cls, texts in reviews.items():
    ...         sub = Path(d) / "aclImdb" / "train" / cls
    ...         sub.mkdir(parents=True)
    ...         for i, t in enumerate(texts):
    ...             _ = (sub / f"{i}_7.txt").write_text(t, encoding="utf-8")
    ...     ds = load_imdb(d, vocab_size=6, seq_len=3)
    >>> ds.classes, ds.X.shape, ds.y.tolist(), ds.info["vocab"][:3]
    (['neg', 'pos'], torch.Size([4, 3]), [0, 0, 1, 1], ['<pad>', '<unk>', 'bad'])
    """
    check_split(split)
    dirs = candidate_dirs("imdb", root, ["aclImdb", "imdb/aclImdb"])
    folder = next((d for d in dirs if (d / split / "pos").is_dir() and (d / split / "neg").is_dir()),
                  None)
    if folder is None:
        raise missing("imdb", f"aclImdb/{split}/pos and aclImdb/{split}/neg", searched(dirs))
    paths, labels = [], []
    for k, cls in enumerate(("neg", "pos")):
        fs = sorted((folder / split / cls).glob("*.txt"))
        paths += fs
        labels += [k] * len(fs)
    if not paths:
        raise missing("imdb", f"review files under {folder / split}", [folder])
    y = np.asarray(labels, dtype=np.int64)
    idx = balanced_indices(y, n_per_class, seed, 2)
    docs = [tokenize(paths[i].read_text(encoding="utf-8", errors="replace")) for i in idx]
    return word_token_dataset("imdb", docs, y[idx], ["neg", "pos"], vocab_size, seq_len, vocab,
                              {"folder": str(folder), "split": split, "seed": seed,
                               "n_per_class": n_per_class})


# ----------------------------------------------------------------------------- synthetic
def synthetic_labels(X: np.ndarray, num_classes: int) -> np.ndarray:
    r"""Label of token sequences: :math:`y = (\sum_t s_t) \bmod K` (a function of the token
    counts, so every context determines its label and identical contexts share it).

    Examples
    --------
    >>> synthetic_labels(np.array([[1, 2], [3, 3]]), 4).tolist()
    [3, 2]
    """
    return (X.sum(axis=1) % num_classes).astype(np.int64)


def load_synthetic_tokens(root: str | os.PathLike | None = None, *, n_per_class: int | None = 20,
                          seed: int = 0, split: str = "train", num_classes: int = 4,
                          vocab_size: int = 16, seq_len: int = 8) -> Dataset:
    r"""Random token sequences with :math:`y = (\sum_t s_t) \bmod K` (see
    :func:`synthetic_labels`), ``n_per_class`` per class (default 20), no padding.

    Tokens are i.i.d. uniform on ``{0, ..., vocab_size-1}`` from ``default_rng(seed)``
    (``split="test"`` uses an independent stream); sequences are drawn until every class has
    ``n_per_class`` of them.

    Examples
    --------
    >>> ds = load_synthetic_tokens(n_per_class=3, num_classes=2)
    >>> ds.X.shape, ds.counts.tolist()
    (torch.Size([6, 8]), [3, 3])
    """
    check_split(split)
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
