"""The ``gufm`` command: solve, demo, train, data, sweep, report.

This module only assembles the parser; each sub-command is one module of this package with an
``add_parsers(subparsers)`` function that registers it and sets ``func`` (the parsed arguments
-> an exit code).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from gufm.cli import data, demo, report, solve, sweep, train
from gufm.cli._args import HelpFormatter, name_flags

#: the sub-command modules, in the order ``gufm --help`` lists them
COMMANDS = (solve, demo, train, data, sweep, report)

DESCRIPTION = """\
Generalised unconstrained features models (GUFM): certified global optima, neural-collapse
metrics, and the check that deep regularised networks reduce to a GUFM.

start here:
  gufm demo                      the main job on embedded data (writes ./gufm-demo)
  gufm solve --counts 50,30,20 --dim 16 --lam-w 0.005
  gufm COMMAND --help            the options of one command
"""


def _version() -> str:
    try:
        return version("gufm")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The ``gufm`` argument parser with every sub-command.

    Examples
    --------
    >>> build_parser().parse_args(["report", "some/folder"]).dir
    'some/folder'
    """
    parser = argparse.ArgumentParser(prog="gufm", description=DESCRIPTION,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"gufm {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, title="commands",
                                metavar="COMMAND")
    for mod in COMMANDS:
        mod.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``gufm`` with ``argv`` (default: the command line); returns the exit status.

    A value the command cannot use (:class:`ValueError`, e.g. a corrupt data file) or a file
    problem (:class:`OSError`: a missing folder or data file, no permission) prints one line
    naming the flag and returns 2; argparse's own errors (an unknown choice) exit with 2 too.

    Examples
    --------
    >>> main(["solve", "--counts", "2,2,2", "--dim", "4", "--lam-w", "0.1", "--json"])
    ... # doctest: +ELLIPSIS
    {"value": 0.24454354570..., "certified": true, "method": "closed_form", ...}
    0
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as exc:
        msg = name_flags(str(exc), getattr(args, "flags", {}))
        if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in msg:
            msg = f"{msg}: {exc.filename}"
        print(f"gufm {args.command}: error: {' '.join(msg.split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
