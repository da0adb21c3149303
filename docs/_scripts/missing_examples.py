"""List the public functions and classes of gufm whose docstring has no ``Examples`` section.

Usage::

    python docs/_scripts/missing_examples.py            # one line per object, then counts
    python docs/_scripts/missing_examples.py --summary  # counts per module only

Public means: defined in a module of the package whose dotted path has no component starting
with ``_`` (``__init__`` excepted), with a name not starting with ``_``.  Re-exports are counted
once, where they are defined.  ``gufm.__main__`` is skipped (importing it runs the CLI).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import pkgutil
import re
import sys
from collections import Counter

import gufm

EXAMPLES = re.compile(r"^\s*Examples\s*\n\s*-{8,}\s*$", re.M)


def public_modules() -> list[str]:
    names = ["gufm"]
    for info in pkgutil.walk_packages(gufm.__path__, prefix="gufm."):
        parts = info.name.split(".")[1:]
        if any(p.startswith("_") for p in parts):
            continue
        names.append(info.name)
    return names


def missing() -> tuple[list[str], int]:
    """Return the objects without an Examples section, and the number of public objects."""
    out, total = [], 0
    for name in public_modules():
        mod = importlib.import_module(name)
        for attr, obj in sorted(vars(mod).items()):
            if attr.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            if getattr(obj, "__module__", None) != name:
                continue
            total += 1
            if not EXAMPLES.search(inspect.getdoc(obj) or ""):
                out.append(f"{name}.{attr}")
    return out, total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--summary", action="store_true", help="counts per module only")
    args = ap.parse_args(argv)
    names, total = missing()
    if not args.summary:
        print("\n".join(names))
    per_module = Counter(n.rsplit(".", 1)[0] for n in names)
    for mod, n in sorted(per_module.items()):
        print(f"{n:4d}  {mod}", file=sys.stderr if not args.summary else sys.stdout)
    print(f"{len(names)} of {total} public functions/classes have no Examples section",
          file=sys.stderr if not args.summary else sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
