"""Write the API reference pages (one reStructuredText page per module) into ``docs/generated/``.

Sphinx's recursive autosummary resolves ``gufm.model.objective`` as the *function* that
``gufm/model/__init__.py`` re-exports under the same name, and then never documents the module.
So the pages are written here instead: every public module below the roots gets a page with its
docstring (``automodule``), a summary table and the classes, exceptions and functions it
*defines* (re-exports are documented where they are defined); a package's page lists its
sub-modules.  Private modules (a name starting with ``_``) and ``__main__`` are skipped.

``conf.py`` calls :func:`write_api` at every build, after removing the folder, so a module that
was moved or removed leaves no stale page.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path
from types import ModuleType

#: the packages of the API reference, in the order of docs/api.rst
API_ROOTS = ("gufm.model", "gufm.solvers", "gufm.collapse", "gufm.deep", "gufm.experiments",
             "gufm.backend")


def submodules(module: ModuleType) -> list[str]:
    """Public direct sub-modules of a package (``[]`` for a plain module)."""
    if not hasattr(module, "__path__"):
        return []
    return [info.name for info in pkgutil.iter_modules(module.__path__, module.__name__ + ".")
            if not info.name.rsplit(".", 1)[1].startswith("_")]


def members(module: ModuleType) -> tuple[list[str], list[str], list[str]]:
    """Public classes, exceptions and functions defined in ``module``, in source order."""
    found = []
    for name, obj in vars(module).items():
        if name.startswith("_") or not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if getattr(obj, "__module__", None) != module.__name__:
            continue
        try:
            line = inspect.getsourcelines(obj)[1]
        except (OSError, TypeError):
            line = 10**9
        found.append((line, name, obj))
    found.sort(key=lambda t: (t[0], t[1]))
    classes = [n for _, n, o in found if inspect.isclass(o) and not issubclass(o, BaseException)]
    excs = [n for _, n, o in found if inspect.isclass(o) and issubclass(o, BaseException)]
    funcs = [n for _, n, o in found if inspect.isfunction(o)]
    return classes, excs, funcs


def _first_line(module: ModuleType) -> str:
    doc = inspect.getdoc(module) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def page(modname: str) -> str:
    """The reStructuredText of one module's page."""
    module = importlib.import_module(modname)
    classes, excs, funcs = members(module)
    out = [modname, "=" * len(modname), "", f".. automodule:: {modname}", ""]
    if classes or excs or funcs:
        out += [".. rubric:: Summary", "", ".. autosummary::", "   :nosignatures:", ""]
        out += [f"   {n}" for n in classes + excs + funcs] + [""]
    for n in classes + excs:
        out += [f".. autoclass:: {n}", "   :members:", "   :show-inheritance:", ""]
    for n in funcs:
        out += [f".. autofunction:: {n}", ""]
    subs = submodules(module)
    if subs:
        out += [".. rubric:: Modules", ""]
        for s in subs:
            line = _first_line(importlib.import_module(s))
            out += [f"- :doc:`{s}`" + (f": {line}" if line else "")]
        out += ["", ".. toctree::", "   :hidden:", ""] + [f"   {s}" for s in subs] + [""]
    return "\n".join(out)


def write_api(folder: Path, roots: tuple[str, ...] = API_ROOTS) -> list[str]:
    """Write one page per module below ``roots`` into ``folder``; return the module names."""
    folder.mkdir(parents=True, exist_ok=True)
    todo, done = list(roots), []
    while todo:
        name = todo.pop(0)
        (folder / f"{name}.rst").write_text(page(name))
        done.append(name)
        todo += submodules(importlib.import_module(name))
    return done
