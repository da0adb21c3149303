"""Download the official archives of the real data sets and verify their checksums.

Sources (all MD5s are the published ones, except IMDB's, computed from the official archive
and the value torchtext and other loaders use):

* ``mnist``: https://ossci-datasets.s3.amazonaws.com/mnist/ (the PyTorch mirror), falling back
  to http://yann.lecun.com/exdb/mnist/; four ``*-ubyte.gz`` files.
* ``fashion-mnist``: http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/ (Zalando
  Research's S3 bucket); four ``*-ubyte.gz`` files, MD5s from the project README.
* ``cifar10``: https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, MD5
  ``c58f30108f718f92721af3b95e74349a``; extracted to ``cifar-10-batches-py/``.
* ``imdb``: https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz, MD5
  ``7c2ac02c03563afcf9b574c7e56c153a``; extracted to ``aclImdb/``.

The Debian package ``dataset-fashion-mnist`` re-compresses the same IDX files, so its ``.gz``
files have other checksums (train images: SHA256
``b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7``);
:func:`gufm.data.load_dataset` reads either.

:func:`fetch` does one file (any URL ``urllib`` opens, ``file://`` included): it streams into
``dest.part``, checks the MD5 and/or SHA256 and only then renames to ``dest``; a file already at
``dest`` with the right checksum is kept.  :func:`download` fetches a data set into a folder and
unpacks archives (safe extraction: members may not leave the folder).
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from gufm.deep.data.base import DatasetNotFoundError, data_home
from gufm.deep.data.fortunes import INSTALL_HINT, SYSTEM_DIRS

#: name -> (list of base URLs tried in order, {file name: md5}, archive to extract or None)
SOURCES: dict[str, tuple[list[str], dict[str, str], str | None]] = {
    "mnist": (
        ["https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"],
        {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        None,
    ),
    "fashion-mnist": (
        ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
        {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        None,
    ),
    "cifar10": (
        ["https://www.cs.toronto.edu/~kriz/"],
        {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
        "cifar-10-python.tar.gz",
    ),
    "imdb": (
        ["https://ai.stanford.edu/~amaas/data/sentiment/"],
        {"aclImdb_v1.tar.gz": "7c2ac02c03563afcf9b574c7e56c153a"},
        "aclImdb_v1.tar.gz",
    ),
}

#: data sets that need no download
BUILTIN = ("digits", "synthetic-tokens")

#: data sets a system package installs (``apt-get install fortunes``); ``download`` returns
#: the installed folder or says what to install
PACKAGED = ("fortunes", "fortunes-next")


class ChecksumError(OSError):
    """A downloaded file does not have the published checksum.

    Examples
    --------
    >>> issubclass(ChecksumError, OSError)
    True
    """


def file_digest(path: str | os.PathLike, algorithm: str = "md5") -> str:
    """Hex digest of a file (streamed in 1 MiB blocks).

    Examples
    --------
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "f"
    >>> _ = p.write_bytes(b"abc")
    >>> file_digest(p)
    '900150983cd24fb0d6963f7d28e17f72'
    >>> file_digest(p, "sha256")[:16]
    'ba7816bf8f01cfea'
    """
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _verify(path: Path, md5: str | None, sha256: str | None) -> str | None:
    """None when the file matches every given checksum, else a description of the mismatch."""
    for algo, want in (("md5", md5), ("sha256", sha256)):
        if want is not None:
            got = file_digest(path, algo)
            if got.lower() != want.lower():
                return f"{algo} {got} != expected {want.lower()}"
    return None


def fetch(url: str, dest: str | os.PathLike, md5: str | None = None, sha256: str | None = None,
          *, timeout: float = 60.0, progress: bool = False) -> Path:
    """Download ``url`` to ``dest`` and verify its checksum(s).

    Parameters
    ----------
    url : str
        Any URL :func:`urllib.request.urlopen` supports (``https://``, ``http://``, ``file://``).
    dest : path
        Target file; its folder is created.  An existing ``dest`` with matching checksums is
        kept without downloading.
    md5, sha256 : str, optional
        Expected hex digests (at least one should be given; with none the file is accepted).
    timeout : float
        Socket timeout in seconds.
    progress : bool
        Show a tqdm bar.

    Returns
    -------
    Path of the verified file.

    Raises
    ------
    ChecksumError
        The downloaded bytes do not match; the partial file is deleted and ``dest`` untouched.
    urllib.error.URLError
        The URL cannot be opened.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     src = Path(d) / "src.txt"
    ...     _ = src.write_bytes(b"hello")
    ...     md5 = file_digest(src)
    ...     got = fetch(src.as_uri(), Path(d) / "out" / "copy.txt", md5=md5)
    ...     print(got.name, got.read_bytes(), file_digest(got) == md5)
    ...     try:
    ...         fetch(src.as_uri(), Path(d) / "bad.txt", md5="0" * 32)
    ...     except ChecksumError as exc:
    ...         print(type(exc).__name__, (Path(d) / "bad.txt").exists())
    copy.txt b'hello' True
    ChecksumError False
    """
    dest = Path(dest)
    if dest.is_file() and (md5 or sha256) and _verify(dest, md5, sha256) is None:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as out:
            total = resp.headers.get("Content-Length") if hasattr(resp, "headers") else None
            bar = None
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=int(total) if total else None, unit="B", unit_scale=True,
                           desc=dest.name)
            for block in iter(lambda: resp.read(1 << 20), b""):
                out.write(block)
                if bar is not None:
                    bar.update(len(block))
            if bar is not None:
                bar.close()
        bad = _verify(part, md5, sha256)
        if bad is not None:
            raise ChecksumError(f"checksum mismatch for {url}: {bad}; the file was not kept")
        os.replace(part, dest)
    finally:
        if part.exists():
            part.unlink()
    return dest


def _safe_extract(archive: Path, folder: Path) -> None:
    base = folder.resolve()
    with tarfile.open(archive) as tar:
        for m in tar.getmembers():
            target = (folder / m.name).resolve()
            if not (target == base or base in target.parents) or m.issym() or m.islnk():
                raise ValueError(f"{archive}: refusing to extract unsafe member {m.name!r}")
        if hasattr(tarfile, "data_filter"):
            tar.extractall(folder, filter="data")
        else:  # pragma: no cover - Python without extraction filters
            tar.extractall(folder)  # noqa: S202 - members checked above


def download(name: str, dir: str | os.PathLike | None = None, *,
             base_urls: Sequence[str] | None = None, progress: bool = True,
             keep_archive: bool = True) -> Path:
    """Download the official files of a data set into ``dir`` and verify them.

    Parameters
    ----------
    name : {"mnist", "fashion-mnist", "cifar10", "imdb"}
        (``"digits"`` and ``"synthetic-tokens"`` need nothing and return ``dir``;
        ``"fortunes"`` and ``"fortunes-next"`` return the Debian package's folder, or raise
        :class:`~gufm.deep.data.base.DatasetNotFoundError` saying what to install.)
    dir : path, optional
        Target folder (default ``$GUFM_DATA/<name>`` or ``~/.cache/gufm/data/<name>``).  Pass it
        as ``root=`` to :func:`gufm.data.load_dataset` afterwards.
    base_urls : sequence of str, optional
        Mirrors to try instead of the official ones (same file names and checksums).
    progress : bool
    keep_archive : bool
        Keep the ``.tar.gz`` after extraction.

    Returns
    -------
    The folder.

    Examples
    --------
    Bundled data sets need nothing; a mirror that lacks the files gives one error naming
    every URL tried:

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     print(download("digits", d) == Path(d))
    ...     try:
    ...         download("cifar10", d, base_urls=[Path(d).as_uri()], progress=False)
    ...     except OSError as exc:
    ...         print(str(exc).splitlines()[0])
    True
    could not download cifar-10-python.tar.gz for cifar10:

    The fortunes come from a Debian package: its folder, or an error saying what to install:

    >>> from gufm.deep.data.base import DatasetNotFoundError
    >>> try:
    ...     ok = download("fortunes").is_dir()
    ... except DatasetNotFoundError as exc:
    ...     ok = "apt-get install fortunes" in str(exc)
    >>> ok
    True
    """
    key = str(name).lower()
    folder = Path(dir) if dir is not None else data_home() / key
    if key in BUILTIN:
        return folder
    if key in PACKAGED:
        found = next((Path(d) for d in SYSTEM_DIRS if Path(d).is_dir()), None)
        if found is None:
            raise DatasetNotFoundError(f"{key}: not downloadable; {INSTALL_HINT}")
        return found
    if key not in SOURCES:
        raise ValueError(f"name must be one of {(*SOURCES, *BUILTIN, *PACKAGED)}, got {name!r}")
    urls, files, archive = SOURCES[key]
    urls = list(base_urls) if base_urls is not None else urls
    folder.mkdir(parents=True, exist_ok=True)
    for fname, md5 in files.items():
        errors = []
        for base in urls:
            try:
                fetch(base.rstrip("/") + "/" + fname, folder / fname, md5=md5, progress=progress)
                break
            except (OSError, ValueError) as exc:  # try the next mirror; ChecksumError included
                errors.append(f"{base}: {exc}")
        else:
            raise OSError(f"could not download {fname} for {key}:\n  " + "\n  ".join(errors))
    if archive is not None:
        _safe_extract(folder / archive, folder)
        if not keep_archive:
            (folder / archive).unlink()
    return folder

