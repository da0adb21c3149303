"""The documentation: its python examples run, its API reference imports, its links hold.

The Sphinx build itself (``python -m sphinx -W --keep-going -b html docs docs/_build/html``) is a
step of ``.ci/run``; these tests check what can be checked in seconds.
"""

from __future__ import annotations

import importlib
import os
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
    return re.findall(r"^\s{3}(?:generated/)?(gufm(?:\.\w+)*)\s*$", text, re.M)


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
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)
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


# ------------------------------------------------------------------------------------------
# The derivations of the pages, checked numerically at random points (independent formulas)
def _sphere_problem(loss: str, K: int = 3, d: int = 5, rho: float = 1.3, lam: float = 0.1,
                    lam_b: float | None = None) -> gufm.GUFM:
    return gufm.GUFM(counts=[2] * K, dim=d, loss=loss, features="sphere", radius=rho, lam_W=lam,
                     lam_b=lam_b)


def _random_sphere_features(rng, d: int, K: int, rho: float, free: int | None = None):
    import numpy as np

    H = rng.standard_normal((d, K))
    if free is not None:
        H[free:] = 0.0
    return rho * H / np.linalg.norm(H, axis=0)


def _softmax(Z):
    import numpy as np

    E = np.exp(Z - Z.max(0))
    return E / E.sum(0)


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_certificate_escape_direction_has_second_order_coefficient_lambda_min(loss: str) -> None:
    """docs/certificate.md, section 6: F(eps) - F = eps^2 v^T (diag mu - Y^T Y/(2 lam)) v + O(eps^4)."""
    import numpy as np

    from gufm.model.objective import group_objective

    rng = np.random.default_rng(0)
    K, d, rho, lam = 3, 5, 1.3, 0.1
    prob = _sphere_problem(loss, K, d, rho, lam)
    H = _random_sphere_features(rng, d, K, rho, free=d - 1)       # last axis e is free
    W = rng.standard_normal((K, d))
    W[:, -1] = 0.0
    Z, p = W @ H, np.full(K, 1.0 / K)
    Y = p * (_softmax(Z) - np.eye(K)) if loss == "ce" else p * (Z - np.eye(K))
    mu = -(Z * Y).sum(0) / (2 * rho**2)
    S = np.diag(mu) - Y.T @ Y / (2 * lam)
    v = rng.standard_normal(K)
    u = -Y @ v / lam
    e = np.eye(d)[:, -1]

    def F(eps: float) -> float:
        Heps = np.sqrt(1 - eps**2 * v**2 / rho**2) * H + eps * np.outer(e, v)
        return group_objective(prob, W + eps * np.outer(u, e), None, Heps)

    coeff = [(F(eps) - F(0.0)) / eps**2 for eps in (2e-3, 1e-3)]
    assert abs(coeff[1] - v @ S @ v) < 1e-5 * (1 + abs(v @ S @ v))
    assert abs(coeff[1] - v @ S @ v) < abs(coeff[0] - v @ S @ v) + 1e-9   # error shrinks with eps


def test_closed_form_ce_bound_phi_holds_at_random_points_with_any_bias() -> None:
    """docs/closed_forms.md, section 1: F >= phi(s), s = ||W||_F / sqrt K, for every bias."""
    import math

    import numpy as np

    from gufm.model.objective import group_objective
    from gufm.solvers.closed_form import ce_etf_value

    rng = np.random.default_rng(1)
    K, d, rho, lam = 4, 6, 1.7, 0.05
    prob = _sphere_problem("ce", K, d, rho, lam, lam_b=0.3)
    a = rho * K / (K - 1)
    for _ in range(50):
        W, b = rng.standard_normal((K, d)) * rng.uniform(0.1, 3), rng.standard_normal(K) * 3
        F = group_objective(prob, W, b, _random_sphere_features(rng, d, K, rho))
        s = np.linalg.norm(W) / math.sqrt(K)
        phi = math.log1p((K - 1) * math.exp(-a * s)) + lam * K * s * s / 2
        assert F >= phi - 1e-12 >= ce_etf_value(K, rho, lam) - 1e-12


def test_closed_form_mse_ridge_value_in_the_spectrum() -> None:
    """docs/closed_forms.md, section 2: min_W F = 1/2 - (1/2K) sum_i sigma_i / (sigma_i + K lam)."""
    import numpy as np

    from gufm.model.objective import group_objective

    rng = np.random.default_rng(2)
    K, d, rho, lam = 4, 3, 1.1, 0.2
    prob = _sphere_problem("mse", K, d, rho, lam)
    H = _random_sphere_features(rng, d, K, rho)
    G = H.T @ H
    W = np.linalg.solve(G + K * lam * np.eye(K), H.T)
    sigma = np.linalg.eigvalsh(G)
    expected = 0.5 - (sigma / (sigma + K * lam)).sum() / (2 * K)
    assert abs(group_objective(prob, W, None, H) - expected) < 1e-13
    for _ in range(5):   # and W is the minimiser
        Wp = W + 1e-3 * rng.standard_normal(W.shape)
        assert group_objective(prob, Wp, None, H) > expected


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_certificate_bound_is_valid_at_any_point(loss: str) -> None:
    """docs/certificate.md, section 7: the bound built at ANY point is below the optimum."""
    import numpy as np

    rng = np.random.default_rng(3)
    prob = gufm.GUFM(counts=[3, 2, 1], dim=3, loss=loss, features="sphere", radius=1.2, lam_W=0.1)
    best = gufm.solve(prob).value
    for _ in range(20):
        W = rng.standard_normal((3, 3)) * rng.uniform(0.1, 3)
        Z = W @ _random_sphere_features(rng, 3, 3, 1.2)
        assert gufm.certify(prob, Z).lower_bound <= best + 1e-12


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_certificate_gap_identity_at_any_point(loss: str) -> None:
    """docs/certificate.md, section 4: F - bound = <grad_W F, W>/2 + rho^2 G t at any point."""
    import numpy as np

    from gufm.model.objective import group_objective

    rng = np.random.default_rng(4)
    K, d, rho, lam = 3, 4, 1.3, 0.2
    prob = _sphere_problem(loss, K, d, rho, lam)
    for _ in range(10):
        W = rng.standard_normal((K, d))
        H = _random_sphere_features(rng, d, K, rho)
        Z, p = W @ H, np.full(K, 1.0 / K)
        Y = p * (_softmax(Z) - np.eye(K)) if loss == "ce" else p * (Z - np.eye(K))
        grad_W = lam * W + Y @ H.T
        cert = gufm.certify(prob, Z)
        gap = group_objective(prob, W, None, H) - cert.lower_bound
        assert abs(gap - (0.5 * np.sum(grad_W * W) + rho**2 * K * cert.shift)) < 1e-9 * (1 + gap)


def _apigen():
    sys.path.insert(0, str(DOCS / "_scripts"))
    try:
        import apigen
    finally:
        sys.path.pop(0)
    return apigen


def test_api_pages_document_the_module_even_when_a_function_shadows_its_name() -> None:
    """``gufm.model.objective`` is both a module and (re-exported) a function of gufm.model."""
    apigen = _apigen()
    text = apigen.page("gufm.model.objective")
    assert ".. automodule:: gufm.model.objective" in text
    assert ".. autofunction:: group_objective" in text and ".. autofunction:: objective" in text
    pkg = apigen.page("gufm.model")
    assert ":doc:`gufm.model.objective`" in pkg and "autofunction" not in pkg   # only re-exports
    assert set(apigen.API_ROOTS) == set(api_roots())


def test_api_pages_cover_every_public_module(tmp_path: Path) -> None:
    apigen = _apigen()
    written = set(apigen.write_api(tmp_path))
    expected = {n for root in apigen.API_ROOTS for n in submodules(root)
                if not any(p.startswith("_") for p in n.split(".")[1:])}
    assert written == expected
    assert {p.stem for p in tmp_path.glob("*.rst")} == expected


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_pages_hold_no_control_characters(page: Path) -> None:
    r"""A tab or form feed in a page is a ``\t`` / ``\f`` eaten by a non-raw python string
    (``\top``, ``\frac``) on its way in."""
    bad = [(i + 1, line) for i, line in enumerate(page.read_text().splitlines())
           if re.search(r"[\x00-\x09\x0b-\x1f]", line)]
    assert not bad, bad


def test_docstrings_hold_no_control_characters() -> None:
    r"""``:math:`\rho``` in a non-raw docstring is a carriage return: the API pages break."""
    import ast

    bad = []
    for path in sorted((ROOT / "gufm").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                doc = ast.get_docstring(node, clean=False) or ""
                if re.search(r"[\x00-\x09\x0b-\x1f]", doc):
                    bad.append(f"{path.relative_to(ROOT)}: {getattr(node, 'name', '<module>')}")
    assert not bad, bad


def test_metrics_page_table_of_what_vanishes_at_the_optimum() -> None:
    """docs/metrics.md, section 7: which variants are 0 at certified GUFM optima."""
    import numpy as np

    from gufm.metrics import collapse_report

    def report(counts: list[int], loss: str) -> dict:
        prob = gufm.GUFM(counts=counts, dim=8, loss=loss, lam_W=0.01)
        res = gufm.solve(prob)
        assert res.certified
        y = np.repeat(np.arange(len(counts)), counts)
        return collapse_report(res.features(), y, res.W, lam=0.01, loss=loss)

    ce, mse, imb = report([5] * 4, "ce"), report([5] * 4, "mse"), report([8, 4, 2, 2], "ce")
    assert max(ce.values()) < 1e-8                                      # everything vanishes
    for name in ("nc2_classifier", "nc3_duality"):
        assert abs(mse[name] - 0.52) < 0.01 and abs(imb[name] - {"nc2_classifier": 0.20,
                                                                  "nc3_duality": 0.35}[name]) < 0.01
    for name in set(mse) - {"nc2_classifier", "nc3_duality"}:
        assert mse[name] < 1e-8, name
    for name in ("nc1", "nc1_trace_ratio", "nc1_cdnv", "nc4", "gufm_distance"):
        assert imb[name] < 1e-8, name
    assert imb["nc2_means"] > 0.4 and imb["nc3"] > 1e-3


def test_package_cites_docs_pages_not_the_spec_or_issues() -> None:
    """Docstrings refer to docs/<page>.md (which ships); never to the spec or an issue number."""
    stale = re.compile(r"spec(?:ification)?\s+sections?\s+\d|shared/spec|GUFM\.md|\bissues?\s*#?\d+",
                       re.I)
    bad = []
    for path in sorted((ROOT / "gufm").rglob("*.py")):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if stale.search(line):
                bad.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not bad, "\n".join(bad)
