r"""Real English text offline: the ``fortunes`` corpus (Debian package ``fortunes``).

The package installs one file per category under ``/usr/share/games/fortunes`` (about 18,000
fortunes in 43 categories); inside a file, fortunes are separated by lines holding only ``%``.
The ``.dat`` and ``.u8`` files beside them are indexes and are not read.

Reading (:func:`read_fortunes`): the file must be UTF-8 text without NUL bytes; ``\r\n`` counts
as ``\n``; overstruck characters (``_\bx``, how some fortunes underline) keep the last
character; each fortune is stripped and empty ones are dropped.  A fortune keeps its
attribution line (``-- Author``).

Splits: within each category file, fortune number ``j`` (0-based, in file order) belongs to
the test split when ``j % 5 == 4`` and to the training split otherwise.

Two data sets are built from the fortunes of a set of categories (default
:data:`DEFAULT_CATEGORIES`, K = 6 topics with 582 to 1051 fortunes each, 466 to 840 per
class in the training split):

``fortunes`` (:func:`load_fortunes`): topic classification.
    The label is the category.  Words follow the scheme of :mod:`gufm.deep.data.text`
    (vocabulary of ``vocab_size`` = 2000 built on the loaded subset, ``<pad>`` = 0,
    ``<unk>`` = 1); a fortune keeps its first ``seq_len`` = 32 words, padding masked; fortunes
    without a word are dropped.  ``n_per_class`` fortunes per category are drawn as by every
    loader (:func:`~gufm.deep.data.base.balanced_indices`).

``fortunes-next`` (:func:`load_fortunes_next`): next-character prediction.
    Each fortune is lower-cased and every run of characters outside ``a-z`` becomes one space
    (so the alphabet is :data:`CHAR_ALPHABET`, space = 0, ``a`` .. ``z`` = 1 .. 26).  A sample
    is a window inside one fortune: the context is ``seq_len`` = c (default 3) consecutive
    characters, the label the character that follows.  ``N`` windows are drawn uniformly
    without replacement from all windows of the split (``default_rng(seed)``), with
    ``N = n_contexts`` or, if that is not given, ``N = 27 * n_per_class`` (``n_per_class``
    per class *on average*: the classes keep English letter frequencies and are not balanced;
    ``None`` for both keeps every window).  The classes are the characters that occur as a
    label among the drawn windows (K <= 27), in alphabet order; samples are ordered class by
    class.  Identical contexts with different next characters are what makes the GUFM's
    labels soft (:mod:`gufm.deep.data.ties`); ``info`` records the number of distinct and of
    conflicting contexts.

Folders searched: ``root`` (and ``root/fortunes``) when given, else ``$GUFM_DATA/fortunes``
(or ``~/.cache/gufm/data/fortunes``) and then :data:`SYSTEM_DIRS`.  Missing or unreadable
files raise a one-line :class:`~gufm.deep.data.base.DatasetError` saying what to install or
pass.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from gufm.deep.data.base import (
    Dataset,
    DatasetError,
    DatasetNotFoundError,
    balanced_indices,
    check_split,
    data_home,
    digest,
)
from gufm.deep.data.text import tokenize, word_token_dataset
from gufm.deep.data.ties import tied_soft_labels

#: where distributions install the fortune files (Debian/Ubuntu first)
SYSTEM_DIRS = ("/usr/share/games/fortunes", "/usr/share/fortunes", "/usr/share/fortune",
               "/usr/local/share/games/fortunes")

#: the default topics: six categories of the Debian package about one subject each
DEFAULT_CATEGORIES = ("computers", "men-women", "politics", "science", "songs-poems", "work")

#: fortune ``j`` of a category is in the test split when ``j % TEST_EVERY == TEST_EVERY - 1``
TEST_EVERY = 5

#: characters of ``fortunes-next``; the id of a character is its index
CHAR_ALPHABET = " abcdefghijklmnopqrstuvwxyz"

INSTALL_HINT = ("install the Debian package (`apt-get install fortunes`) or pass root= "
                "(CLI: --data-root DIR) naming a folder of fortune files (one file per "
                "category, fortunes separated by lines holding only %)")

_SEPARATOR = re.compile(r"^%[ \t]*$", flags=re.MULTILINE)
_OVERSTRIKE = re.compile(r"[^\x08\n]\x08")
_NON_ALPHA = re.compile(r"[^a-z]+")
_CATEGORY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


def read_fortunes(path: str | os.PathLike) -> list[str]:
    """The fortunes of one category file (see the module docstring for the format).

    Raises
    ------
    DatasetError
        One line naming the file: not UTF-8 text, NUL bytes (a binary file, e.g. an index),
        or no fortune in it.
    FileNotFoundError
        ``path`` does not exist.

    Examples
    --------
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "tiny"
    >>> _ = p.write_text("One.\\n%\\nTwo\\nlines.\\n%\\n\\n%\\nThree _\\bx.\\n")
    >>> read_fortunes(p)
    ['One.', 'Two\\nlines.', 'Three x.']
    """
    path = Path(path)
    raw = path.read_bytes()
    hint = "reinstall it (`apt-get install --reinstall fortunes`) or pass root= naming another folder"
    if b"\x00" in raw:
        raise DatasetError(f"{path}: not a fortune file (binary data at byte {raw.index(0)}); "
                           + hint)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not a UTF-8 fortune file ({exc.reason} at byte "
                           f"{exc.start}); " + hint) from None
    text = text.replace("\r\n", "\n")
    while _OVERSTRIKE.search(text):
        text = _OVERSTRIKE.sub("", text)
    out = [f.strip() for f in _SEPARATOR.split(text.replace("\x08", ""))]
    out = [f for f in out if f]
    if not out:
        raise DatasetError(f"{path}: holds no fortune; " + hint)
    return out


def _check_categories(categories: Sequence[str] | None) -> tuple[str, ...]:
    cats = DEFAULT_CATEGORIES if categories is None else categories
    if isinstance(cats, str) or not all(isinstance(c, str) for c in cats):
        raise TypeError(f"categories must be a sequence of names, got {categories!r}")
    cats = tuple(cats)
    bad = [c for c in cats if not _CATEGORY.fullmatch(c) or c.endswith((".dat", ".u8"))]
    if bad:
        raise ValueError(f"categories: {bad[0]!r} is not a fortune category file name")
    if len(set(cats)) != len(cats) or len(cats) < 2:
        raise ValueError(f"categories must be at least 2 distinct names, got {list(cats)}")
    return cats


def fortune_dirs(root: str | os.PathLike | None) -> list[Path]:
    """The folders searched for fortune files, in order (module docstring).

    Examples
    --------
    >>> [str(p) for p in fortune_dirs("/data")]
    ['/data', '/data/fortunes']
    """
    if root is not None:
        return [Path(root), Path(root) / "fortunes"]
    return [data_home() / "fortunes", *map(Path, SYSTEM_DIRS)]


def find_fortunes(root: str | os.PathLike | None, categories: Sequence[str]) -> Path:
    """The first folder of :func:`fortune_dirs` that holds every category file.

    Raises
    ------
    DatasetNotFoundError
        One line: the folders searched, which categories they lack and what to install/pass.

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "art").write_text("a fortune")
    >>> find_fortunes(d, ["art"]) == d
    True
    """
    dirs = fortune_dirs(root)
    for d in dirs:
        if all((d / c).is_file() for c in categories):
            return d
    have = [d for d in dirs if d.is_dir()]
    if have:
        lack = [c for c in categories if not (have[0] / c).is_file()]
        what = f"{have[0]} lacks the category file(s) {', '.join(lack)}"
        others = [str(d) for d in have[1:]]
        where = f"; also searched {', '.join(others)}" if others else ""
    else:
        what = "no fortune folder found"
        where = f" (searched {', '.join(str(d) for d in dirs)})"
    raise DatasetNotFoundError(f"fortunes: {what}{where}; {INSTALL_HINT}")


def fortunes_available(root: str | os.PathLike | None = None,
                       categories: Sequence[str] | None = None) -> bool:
    """Whether :func:`find_fortunes` finds the category files (default: the default topics),
    e.g. whether the Debian package ``fortunes`` is installed.

    Examples
    --------
    >>> fortunes_available("/nonexistent")
    False
    """
    try:
        find_fortunes(root, _check_categories(categories))
    except DatasetNotFoundError:
        return False
    return True


def load_corpus(root: str | os.PathLike | None, categories: Sequence[str] | None,
                split: str) -> tuple[Path, tuple[str, ...], list[list[str]]]:
    """``(folder, categories, fortunes)``: the split's fortunes of every category, in file
    order (see the module docstring for the split rule).

    Examples
    --------
    Fortune ``j`` of a category is a test one when ``j % 5 == 4``:

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     for c in ("cats", "dogs"):
    ...         _ = (Path(d) / c).write_text("\\n%\\n".join(f"{c} {j}" for j in range(6)) + "\\n")
    ...     folder, cats, train = load_corpus(d, ["cats", "dogs"], "train")
    ...     _, _, test = load_corpus(d, ["cats", "dogs"], "test")
    ...     print(folder == Path(d), cats)
    True ('cats', 'dogs')
    >>> train[0], test
    (['cats 0', 'cats 1', 'cats 2', 'cats 3', 'cats 5'], [['cats 4'], ['dogs 4']])
    """
    check_split(split)
    cats = _check_categories(categories)
    folder = find_fortunes(root, cats)
    keep = (lambda j: j % TEST_EVERY == TEST_EVERY - 1) if split == "test" else \
        (lambda j: j % TEST_EVERY != TEST_EVERY - 1)
    texts = []
    for c in cats:
        fs = read_fortunes(folder / c)
        texts.append([f for j, f in enumerate(fs) if keep(j)])
    return folder, cats, texts


def load_fortunes(root: str | os.PathLike | None = None, *, n_per_class: int | None = None,
                  seed: int = 0, split: str = "train", categories: Sequence[str] | None = None,
                  vocab_size: int = 2000, seq_len: int = 32,
                  vocab: Sequence[str] | None = None) -> Dataset:
    """Topic classification on the fortunes (``fortunes``; module docstring).

    Parameters
    ----------
    root : path, optional
        Folder of the fortune files (default: see the module docstring).
    n_per_class : int, optional
        Fortunes per category (``None``: every fortune of the split; classes then imbalanced).
    seed : int
        Seed of the subset.
    split : {"train", "test"}
    categories : sequence of str, optional
        Category file names (default :data:`DEFAULT_CATEGORIES`); class ``k`` is
        ``categories[k]``.
    vocab_size, seq_len : int
        Vocabulary size (``<pad>``, ``<unk>`` included) and words kept per fortune.
    vocab : sequence of str, optional
        A fixed vocabulary (e.g. the training split's ``info["vocab"]``).

    Returns
    -------
    Dataset
        ``kind="tokens"``, ``pad_id=0``, ``classes`` = the categories.

    Raises
    ------
    DatasetError
        Files missing or unreadable (one line: what to install or pass).
    ValueError
        ``n_per_class`` above the fortunes of a category (naming it), bad arguments.

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "cats").write_text("A cat.\\n%\\nCats nap.\\n%\\nMy cat!\\n")
    >>> _ = (d / "dogs").write_text("A dog.\\n%\\nDogs bark.\\n%\\nMy dog!\\n")
    >>> ds = load_fortunes(d, categories=["cats", "dogs"], n_per_class=2, seq_len=3)
    >>> ds.classes, ds.X.shape, ds.y.tolist()
    (['cats', 'dogs'], torch.Size([4, 3]), [0, 0, 1, 1])
    """
    folder, cats, texts = load_corpus(root, categories, split)
    docs, labels, dropped = [], [], 0
    for k, fs in enumerate(texts):
        for f in fs:
            words = tokenize(f)
            if words:
                docs.append(words)
                labels.append(k)
            else:
                dropped += 1
    y = np.asarray(labels, dtype=np.int64)
    per_class = np.bincount(y, minlength=len(cats))
    if n_per_class is not None:
        small = [i for i in range(len(cats)) if per_class[i] < n_per_class]
        if small and not (isinstance(n_per_class, bool) or n_per_class < 1):
            k = small[0]
            raise ValueError(
                f"n_per_class={n_per_class} exceeds the {per_class[k]} {split} fortunes of "
                f"category {cats[k]!r} ({folder / cats[k]}); pass a smaller n_per_class or "
                f"other categories="
            )
    idx = balanced_indices(y, n_per_class, seed, len(cats))
    return word_token_dataset(
        "fortunes", [docs[i] for i in idx], y[idx], list(cats), vocab_size, seq_len, vocab,
        {"folder": str(folder), "categories": list(cats), "split": split, "seed": seed,
         "n_per_class": n_per_class, "available_per_class": per_class.tolist(),
         "dropped_without_words": dropped, "indices_sha": digest(idx)})


def char_ids(text: str) -> np.ndarray:
    """``fortunes-next`` encoding of one fortune: lower-case, every run of characters outside
    ``a-z`` one space, stripped; ids are indices into :data:`CHAR_ALPHABET`.

    Examples
    --------
    >>> char_ids("Hi, Bo!").tolist()
    [8, 9, 0, 2, 15]
    """
    s = _NON_ALPHA.sub(" ", text.lower()).strip()
    b = np.frombuffer(s.encode("ascii"), dtype=np.uint8).astype(np.int64)
    return np.where(b == ord(" "), 0, b - ord("a") + 1)


def load_fortunes_next(root: str | os.PathLike | None = None, *, n_per_class: int | None = None,
                       seed: int = 0, split: str = "train",
                       categories: Sequence[str] | None = None, seq_len: int = 3,
                       n_contexts: int | None = None) -> Dataset:
    """Next-character prediction on the fortunes (``fortunes-next``; module docstring).

    Parameters
    ----------
    root, split, categories
        As :func:`load_fortunes`.
    n_per_class : int, optional
        Sets ``N = 27 * n_per_class`` windows when ``n_contexts`` is not given (``n_per_class``
        per class on average, not balanced).
    seed : int
        Seed of the drawn windows.
    seq_len : int
        Context length c.
    n_contexts : int, optional
        Number of windows N (overrides ``n_per_class``); ``None`` for both: every window.

    Returns
    -------
    Dataset
        ``kind="tokens"``, ``vocab_size=27``, ``pad_id=None``; ``classes`` are the next
        characters present; ``info`` holds ``distinct_contexts``, ``conflicting_contexts``,
        ``windows`` (all windows of the split) and ``positions_sha``.

    Raises
    ------
    DatasetError
        Files missing or unreadable.
    ValueError
        More windows asked for than the split holds, fewer than 2 classes, bad arguments.

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "a").write_text("abab abab\\n")
    >>> _ = (d / "b").write_text("baba\\n")
    >>> ds = load_fortunes_next(d, categories=["a", "b"], seq_len=2)
    >>> ds.classes, ds.N, ds.info["distinct_contexts"], ds.info["conflicting_contexts"]
    ([' ', 'a', 'b'], 9, 4, 1)
    """
    if isinstance(seq_len, bool) or int(seq_len) != seq_len or seq_len < 1:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
    c = int(seq_len)
    for name, v in (("n_contexts", n_contexts), ("n_per_class", n_per_class)):
        if v is not None and (isinstance(v, bool) or int(v) != v or v < 1):
            raise ValueError(f"{name} must be a positive integer or None, got {v!r}")
    folder, cats, texts = load_corpus(root, categories, split)
    seqs = [char_ids(f) for fs in texts for f in fs]
    seqs = [s for s in seqs if s.size > c]
    if not seqs:
        raise ValueError(f"no fortune of the {split} split is longer than seq_len={c}")
    corpus = np.concatenate(seqs)
    starts = np.cumsum([0] + [s.size for s in seqs[:-1]])
    # window w predicts corpus[t] from corpus[t-c:t]; t runs over every in-fortune position >= c
    targets = np.concatenate([np.arange(st + c, st + s.size) for st, s in zip(starts, seqs,
                                                                            strict=True)])
    total = int(targets.size)
    N = (total if n_per_class is None else len(CHAR_ALPHABET) * int(n_per_class)) \
        if n_contexts is None else int(n_contexts)
    if N > total:
        raise ValueError(f"{'n_contexts' if n_contexts is not None else 'n_per_class'}: "
                         f"{N} windows asked for, the {split} split of {list(cats)} holds "
                         f"{total} (seq_len={c})")
    rng = np.random.default_rng(seed)
    pos = targets if N == total else np.sort(targets[rng.choice(total, size=N, replace=False)])
    X = corpus[pos[:, None] + np.arange(-c, 0)[None, :]]
    nxt = corpus[pos]
    present = np.unique(nxt)
    if present.size < 2:
        raise ValueError(f"the {N} drawn windows have a single next character; draw more")
    y = np.searchsorted(present, nxt)
    order = np.argsort(y, kind="stable")
    X, y, pos = X[order], y[order], pos[order]
    tied = tied_soft_labels(X, y, present.size)
    return Dataset(
        name="fortunes-next", X=torch.from_numpy(np.ascontiguousarray(X, dtype=np.int64)),
        y=torch.from_numpy(y.astype(np.int64)), num_classes=int(present.size), kind="tokens",
        vocab_size=len(CHAR_ALPHABET), pad_id=None,
        classes=[CHAR_ALPHABET[i] for i in present], normalization="none",
        info={"folder": str(folder), "categories": list(cats), "split": split, "seed": seed,
              "n_per_class": n_per_class, "n_contexts": N, "seq_len": c, "windows": total,
              "alphabet": CHAR_ALPHABET, "distinct_contexts": tied.distinct,
              "conflicting_contexts": tied.conflicting, "positions_sha": digest(pos)})
