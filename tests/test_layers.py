"""The package is layered: every folder imports only from the folders below it."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "gufm"
ALIASES = {"__init__.py", "metrics.py", "nets.py", "data.py", "__main__.py"}  # the public façade


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module
            yield from (f"{node.module}.{a.name}" for a in node.names)


def test_import_linter_layers_contract():
    pytest.importorskip("importlinter")
    exe = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(exe)], capture_output=True, text=True, cwd=PKG.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_no_module_inside_the_package_imports_the_root():
    offenders = []
    for f in PKG.rglob("*.py"):
        if f.parent == PKG and f.name in ALIASES:
            continue
        if "gufm" in set(_imports(f)):
            offenders.append(str(f.relative_to(PKG)))
    assert not offenders, f"modules importing the root package `gufm`: {sorted(offenders)}"


def test_no_private_name_crosses_a_folder():
    offenders = []
    for f in PKG.rglob("*.py"):
        folder = f.relative_to(PKG).parts[0] if f.parent != PKG else ""
        for name in _imports(f):
            parts = name.split(".")
            if parts[0] != "gufm" or len(parts) < 3:
                continue
            target_folder = parts[1]
            private = [p for p in parts[2:] if p.startswith("_") and not p.startswith("__")]
            if private and target_folder != folder and not target_folder.startswith("_"):
                offenders.append(f"{f.relative_to(PKG)} -> {name}")
    assert not offenders, offenders
