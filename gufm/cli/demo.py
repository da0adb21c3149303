"""``gufm demo``: the main job, on embedded data."""

from __future__ import annotations

import argparse
from typing import Any

from gufm.cli._args import HelpFormatter, paragraphs, writable_folder
from gufm.experiments.demo import run_demo


def add_parsers(subparsers: Any) -> None:
    """Register ``demo``.

    Examples
    --------
    >>> import argparse
    >>> p = argparse.ArgumentParser()
    >>> add_parsers(p.add_subparsers(dest="command"))
    >>> p.parse_args(["demo"]).out
    'gufm-demo'
    """
    d = subparsers.add_parser(
        "demo", formatter_class=HelpFormatter,
        help="the main job: certified solves, then networks against the GUFM optimum",
        description=paragraphs("Solve four GUFM instances (closed form, certified, and one with an honest "
                    "gap), then train L-RN1 on scikit-learn's bundled digits at depths 1, 3 and "
                    "8 and compare each network with its GUFM optimum. Writes the run table, "
                    "figures and summary.md to --out; rerunning resumes (finished depths are "
                    "kept). No download needed."))
    d.add_argument("--out", default="gufm-demo", help="output folder")
    d.add_argument("--quick", action="store_true",
                   help="depths 1 and 3, fewer epochs (a smoke test, not converged)")
    d.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    """``gufm demo``: :func:`gufm.experiments.demo.run_demo`.

    Examples
    --------
    >>> import argparse, tempfile
    >>> from pathlib import Path
    >>> f = Path(tempfile.mkdtemp()) / "a-file"
    >>> _ = f.write_text("")
    >>> cmd_demo(argparse.Namespace(out=str(f), quick=True))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    gufm.cli._args.UsageError: --out '...a-file' is a file, not a folder
    """
    writable_folder(args.out, "--out")
    return run_demo(out=args.out, quick=args.quick)
