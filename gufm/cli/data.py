"""``gufm data download``: fetch and verify a data set's official archives."""

from __future__ import annotations

import argparse
from typing import Any

from gufm.cli._args import HelpFormatter
from gufm.deep.data.download import SOURCES, download


def add_parsers(subparsers: Any) -> None:
    """Register ``data`` (with ``download``).

    Examples
    --------
    >>> import argparse
    >>> p = argparse.ArgumentParser()
    >>> add_parsers(p.add_subparsers(dest="command"))
    >>> p.parse_args(["data", "download", "mnist"]).name
    'mnist'
    """
    d = subparsers.add_parser("data", formatter_class=HelpFormatter,
                              help="data sets: download the official files",
                              description="Download the data sets that are not embedded.")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="{download}")
    dl = dsub.add_parser("download", formatter_class=HelpFormatter,
                         help="download and verify a data set's official archives",
                         description="Download a data set's official archives and check their "
                                     "SHA-256 (needs internet).")
    dl.add_argument("name", choices=sorted(SOURCES), help="data set")
    dl.add_argument("--dir", default=None,
                    help="target folder (default: ~/.cache/gufm/data/NAME)")
    dl.set_defaults(func=cmd_data_download)


def cmd_data_download(args: argparse.Namespace) -> int:
    """``gufm data download NAME --dir DIR``.

    Examples
    --------
    >>> import argparse
    >>> cmd_data_download(argparse.Namespace(name="svhn", dir=None))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: name must be one of (...), got 'svhn'
    """
    folder = download(args.name, args.dir)
    print(f"{args.name}: files in {folder}; load with "
          f"gufm.data.load_dataset({args.name!r}, root={str(folder)!r})")
    return 0
