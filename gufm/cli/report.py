"""``gufm report``: figures and a markdown summary of a sweep folder."""

from __future__ import annotations

import argparse
from typing import Any

from gufm.cli._args import HelpFormatter, paragraphs
from gufm.experiments.report import make_report


def add_parsers(subparsers: Any) -> None:
    """Register ``report``.

    Examples
    --------
    >>> import argparse
    >>> p = argparse.ArgumentParser()
    >>> add_parsers(p.add_subparsers(dest="command"))
    >>> p.parse_args(["report", "runs/quick"]).dir
    'runs/quick'
    """
    r = subparsers.add_parser(
        "report", formatter_class=HelpFormatter,
        help="figures and a markdown summary of a sweep folder",
        description=paragraphs("NC1, NC2 and NC3 against depth (mean and spread over seeds, one row per "
                    "network and data set), the gap between each network's objective and the "
                    "GUFM optimum against depth with fitted log-log slopes, the regularisation "
                    "against depth, and a table of slopes (DIR/report/summary.md)."))
    r.add_argument("dir", help="sweep folder (the --out of gufm sweep) or a results.csv")
    r.add_argument("--out", default=None, help="output folder (default: DIR/report)")
    r.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    """``gufm report DIR``: :func:`gufm.experiments.report.make_report`.

    Examples
    --------
    >>> import argparse
    >>> cmd_report(argparse.Namespace(dir="no/such/folder", out=None))
    Traceback (most recent call last):
    ...
    FileNotFoundError: folder 'no/such/folder' does not exist
    """
    rep = make_report(args.dir, out=args.out)
    print(f"gufm report: {rep['summary']}")
    for f in rep["figures"]:
        print(f"  figure {f}")
    for line in rep["headline"]:
        print(f"  {line}")
    return 0
