"""README runs as written: its python blocks run in order, its `gufm solve` output matches, and
what it says about installation matches pyproject.toml and .ci/run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


FENCES = re.compile(r"^```(\w*)\n(.*?)^```", flags=re.M | re.S)


def blocks(lang: str) -> list[str]:
    """The fenced code blocks of README in language ``lang`` (``""``: no language)."""
    return [body for tag, body in FENCES.findall(README) if tag == lang]


def test_python_blocks_run_in_order(tmp_path, monkeypatch):
    """One namespace for all blocks (a later block may use an earlier one's names)."""
    code = blocks("python")
    assert len(code) >= 2
    monkeypatch.chdir(tmp_path)
    ns: dict = {"__name__": "__readme__"}
    for i, src in enumerate(code):
        try:
            exec(compile(src, f"README.md python block {i + 1}", "exec"), ns)
        except Exception as exc:  # pragma: no cover - the message says which block
            pytest.fail(f"README python block {i + 1} raised {type(exc).__name__}: {exc}")


def test_solve_output_matches_readme(capsys):
    from gufm.cli import main

    shown = next(b for b in blocks("") if b.startswith("$ gufm solve"))
    cmd, out = shown.splitlines()[:2]
    assert main(cmd.split()[2:]) == 0
    got = json.loads(capsys.readouterr().out)
    prefix = re.search(r'"value": ([0-9.]+)\.\.\.', out).group(1)
    assert f"{got['value']:.15f}".startswith(prefix) and got["certified"] is True


def test_every_shell_example_states_its_time():
    """Each bash block (or the text right after it) says how long it took."""
    bash = [m for m in FENCES.finditer(README) if m.group(1) == "bash"]
    assert len(bash) >= 2
    for m in bash:
        near = m.group(2) + README[m.end():m.end() + 1500]
        assert re.search(r"\d+ (s|min)\b.*wall|wall.*\d+ (s|min)\b|Measured", near, re.S), \
            m.group(2)[:80]


def test_install_story_matches_pyproject_and_ci():
    pyproject = (ROOT / "pyproject.toml").read_text()
    torch_specs = re.findall(r'"(torch[<>=!~][^"]*)"', pyproject)
    assert torch_specs == ["torch>=2.2"] and "`torch>=2.2`" in README  # a range, never ==
    extras = pyproject.split("[project.optional-dependencies]")[1].split("\n[")[0]
    assert {"distributed", "bench", "test", "docs"} <= set(re.findall(r"^(\w+) = \[", extras, re.M))
    for extra in ("[distributed]", "[bench]", "[test]", "[docs]"):
        assert extra in README, extra
    ci = (ROOT / ".ci" / "run").read_text()
    pinned = re.search(r"pip install -q (torch==[0-9.]+)", ci).group(1)
    assert f"pip install {pinned}" in README  # README installs the same torch first
    for pkg in re.search(r"apt-get install -y -qq ([^)]+)\)", ci).group(1).split():
        assert f"`{pkg}`" in README, f"README does not say .ci/run installs {pkg}"


def test_readme_names_every_architecture_and_data_set():
    from gufm.experiments.spec import ARCH_NAMES, DATASET_NAMES

    for name in (*ARCH_NAMES, *DATASET_NAMES):
        assert f"`{name}`" in README, name
    assert "LICENSE" in README and (ROOT / "LICENSE").read_text().startswith("MIT License")
