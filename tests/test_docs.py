"""The documentation: its python examples run, its API reference imports, its links hold.

The Sphinx build itself (``python -m sphinx -W --keep-going -b html docs docs/_build/html``) is a
step of ``.ci/run``; these tests check what can be checked in seconds.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import gufm

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
MATH_PAGES = ["problem", "reduction", "closed_forms", "certificate", "metrics", "networks", "training"]
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
#: optional dependencies (extras): no module of the package may need them at import time
OPTIONAL = ("dask", "distributed", "pymanopt")


def python_blocks(text: str) -> list[str]:
    """The bodies of the ```python fenced blocks of a markdown page, in order."""
    return FENCE.findall(text)


def api_roots() -> list[str]:
    """Module names listed in the autosummary directives of docs/api.rst."""
    text = (DOCS / "api.rst").read_text()
    return re.findall(r"^\s{3}(gufm(?:\.\w+)*)\s*$", text, re.M)


def submodules(name: str) -> list[str]:
    """``name`` and every module below it (``__main__`` excluded: it runs the CLI)."""
    mod = importlib.import_module(name)
    out = [name]
    if hasattr(mod, "__path__"):
        for info in pkgutil.walk_packages(mod.__path__, prefix=name + "."):
            if not info.name.endswith("__main__"):
                out.append(info.name)
    return out


def test_python_blocks_are_found() -> None:
    assert python_blocks("a\n```python\nx = 1\n```\nb\n```bash\nls\n```\n") == ["x = 1\n"]
    assert python_blocks("```text\nx = 1\n```\n") == []


def test_every_math_page_exists_and_is_in_the_toctree() -> None:
    index = (DOCS / "index.md").read_text()
    for page in MATH_PAGES:
        assert (DOCS / f"{page}.md").is_file(), page
        assert re.search(rf"^{page}$", index, re.M), f"{page} missing from the toctree"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_python_code_blocks_run(page: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ```python block of a page runs, the blocks of one page in one namespace."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    blocks = python_blocks(page.read_text())
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for i, block in enumerate(blocks):
        code = compile(block, f"{page.name}[block {i}]", "exec")
        exec(code, namespace)  # noqa: S102


def test_api_reference_lists_the_public_packages() -> None:
    roots = set(api_roots())
    for name in ("gufm.model", "gufm.solvers", "gufm.collapse", "gufm.deep", "gufm.experiments"):
        assert name in roots, name


@pytest.mark.parametrize("root", api_roots())
def test_every_module_of_the_api_reference_imports(root: str) -> None:
    for name in submodules(root):
        importlib.import_module(name)


def test_top_level_names_of_the_api_reference_exist() -> None:
    text = (DOCS / "api.rst").read_text()
    block = text.split("Top level", 1)[1]
    names = re.findall(r"^\s{3}([A-Za-z_]\w*)\s*$", block, re.M)
    assert names, "no top-level names listed"
    for name in names:
        assert hasattr(gufm, name), name


def test_no_module_needs_an_optional_dependency_at_import() -> None:
    """Import every module with the optional extras made unimportable."""
    names = [n for root in ("gufm",) for n in submodules(root)]
    code = (
        "import sys, importlib\n"
        + "".join(f"sys.modules[{m!r}] = None\n" for m in OPTIONAL)
        + f"for n in {names!r}:\n    importlib.import_module(n)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"OMP_NUM_THREADS": "1", "PATH": ""}, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def _section_numbers(page: Path) -> set[int]:
    return {int(m) for m in re.findall(r"^##\s+(\d+)\.", page.read_text(), re.M)}


def test_docstring_references_to_docs_pages_exist() -> None:
    """``docs/<page>.md`` and ``docs/<page>.md, section N`` in the package point somewhere real."""
    ref = re.compile(r"docs/(\w+)\.md(?:,\s+sections?\s+(\d+)(?:\s*[-–]\s*(\d+))?)?")
    bad = []
    for path in sorted((ROOT / "gufm").rglob("*.py")):
        text = path.read_text()
        for m in ref.finditer(text):
            page = DOCS / f"{m.group(1)}.md"
            if not page.is_file():
                bad.append(f"{path.relative_to(ROOT)}: {m.group(0)} (no such page)")
                continue
            if m.group(2):
                lo = int(m.group(2))
                hi = int(m.group(3) or lo)
                missing = set(range(lo, hi + 1)) - _section_numbers(page)
                if missing:
                    bad.append(f"{path.relative_to(ROOT)}: {m.group(0)} (no section {sorted(missing)})")
    assert not bad, "\n".join(bad)


def test_section_reference_checker_catches_a_bad_reference(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text("# t\n\n## 1. One\n\ntext\n\n## 2. Two\n")
    assert _section_numbers(page) == {1, 2}
