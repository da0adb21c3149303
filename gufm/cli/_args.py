"""Argument helpers shared by the sub-commands: the help formatter, list types, flag errors."""

from __future__ import annotations

import argparse
import os
import re
import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows ``(default: X)`` after every option's help (not for on/off flags, whose default is
    off, nor for options whose help states where the default comes from), and keeps the
    description's line breaks.

    Examples
    --------
    >>> import argparse
    >>> p = argparse.ArgumentParser(prog="x", formatter_class=HelpFormatter)
    >>> _ = p.add_argument("--width", type=int, default=64, help="feature dimension")
    >>> "feature dimension (default: 64)" in p.format_help()
    True
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is False or action.default is None or "default" in text:
            return text
        return super()._get_help_string(action)


def paragraphs(*texts: str, width: int = 88) -> str:
    """A description for :class:`HelpFormatter`: each text filled to ``width`` columns; a text
    starting with two spaces is kept as it is (a list or an example).

    Examples
    --------
    >>> print(paragraphs("one two", "  keep  this"))
    one two
    <BLANKLINE>
      keep  this
    """
    return "\n\n".join(t if t.startswith("  ") else textwrap.fill(t, width) for t in texts)


class UsageError(ValueError):
    """A command-line value that cannot be used; the message names the flag.

    Examples
    --------
    >>> isinstance(UsageError("--jobs must be positive"), ValueError)
    True
    """


def int_list(minimum: int) -> Callable[[str], list[int]]:
    """An argparse ``type=`` for comma-separated integers ``>= minimum`` (argparse names the
    flag in its error: ``argument --depths: must be ...``).

    Examples
    --------
    >>> int_list(1)("2,3,5")
    [2, 3, 5]
    """

    def parse(text: str) -> list[int]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        try:
            out = [int(t) for t in items]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be comma-separated integers, got {text!r}") from None
        if not out or min(out) < minimum:
            raise argparse.ArgumentTypeError(
                f"must be comma-separated integers >= {minimum}, got {text!r}")
        return out

    return parse


def name_list(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    """An argparse ``type=`` for comma-separated names, each one of ``allowed``.

    Examples
    --------
    >>> name_list(("rn1", "rn2"))("rn1,rn2")
    ['rn1', 'rn2']
    """

    def parse(text: str) -> list[str]:
        items = [t.strip().lower() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in allowed]
        if not items or bad:
            raise argparse.ArgumentTypeError(
                f"must be one of {', '.join(allowed)} (comma-separated), got {text!r}")
        return items

    return parse


def count_or_all(text: str) -> int | None:
    """``--n-per-class``: a positive integer, or ``all`` (``None``: the whole split).

    Examples
    --------
    >>> count_or_all("50"), count_or_all("all")
    (50, None)
    """
    if text.strip().lower() in ("all", "none"):
        return None
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'all', got {text!r}")
    return n


def name_flags(message: str, flags: Mapping[str, str]) -> str:
    """Replace the Python argument names in an error message by the flags the user typed.

    Examples
    --------
    >>> name_flags("lam_W must be non-negative, got -1", {"lam_W": "--lam-w"})
    '--lam-w must be non-negative, got -1'
    """
    if not flags:
        return message
    pattern = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, flags)) + r")(?![\w-])")
    return pattern.sub(lambda m: flags[m.group(1)], message)


def writable_folder(path: str | os.PathLike, flag: str) -> Path:
    """Check (before anything is written) that ``path`` is, or can be made, a writable folder.

    Raises
    ------
    UsageError
        ``path`` is a file, lies under a file, or cannot be created or written.

    Examples
    --------
    >>> import tempfile
    >>> writable_folder(tempfile.gettempdir(), "--out").is_dir()
    True
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"{flag} {str(p)!r} is a file, not a folder")
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"{flag} {str(p)!r} lies under the file {str(probe)!r}")
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "folder" if probe == p else f"folder {str(probe)!r} above it"
        raise UsageError(f"{flag} {str(p)!r} is not writable (no write permission on the {what})")
    return p
