"""Sweep report (issue 5): slopes on synthetic tables with known slopes, output files."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from gufm._util import fit_loglog
from gufm.cli import main
from gufm.experiments.report import make_report
from gufm.experiments.spec import expand_grid
from gufm.experiments.sweep import run_sweep
from gufm.experiments.table import write_run
from gufm.experiments.testing import TOY_SLOPES, toy_run


def test_fit_loglog_exact_power_law():
    L = np.array([2, 3, 5, 8, 13, 21, 34], float)
    f = fit_loglog(L, 0.7 * L**-0.35)
    assert f.slope == pytest.approx(-0.35, abs=1e-12)
    assert 10**f.intercept == pytest.approx(0.7, rel=1e-12)
    assert f.stderr == pytest.approx(0.0, abs=1e-12) and f.r2 == pytest.approx(1.0)
    assert f.n == 7 and f.dropped == 0


def test_fit_loglog_matches_linregress_and_drops_nonpositive(rng):
    L = np.repeat([2.0, 5.0, 13.0, 34.0], 5)
    y = 0.1 * L**-0.8 * np.exp(0.2 * rng.standard_normal(L.size))
    f = fit_loglog(L, y)
    ref = stats.linregress(np.log10(L), np.log10(y))
    assert f.slope == pytest.approx(ref.slope, rel=1e-12)
    assert f.stderr == pytest.approx(ref.stderr, rel=1e-10)
    assert f.r2 == pytest.approx(ref.rvalue**2, rel=1e-10)
    y2 = y.copy()
    y2[[0, 7]] = [0.0, -1.0]
    g = fit_loglog(L, y2)
    assert g.n == L.size - 2 and g.dropped == 2
    h = fit_loglog([3.0, 3.0], [1.0, 2.0])  # one depth: no slope
    assert math.isnan(h.slope)
    with pytest.raises(ValueError, match="x and y"):
        fit_loglog([1, 2], [1.0])
    with pytest.raises(ValueError, match="x must"):
        fit_loglog([0, 2], [1.0, 2.0])


@pytest.fixture(scope="module")
def toy_sweep(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("toy")
    specs = (expand_grid("rn1", [2, 3, 5, 8, 13], [0, 1, 2], "digits", width=8)
             + expand_grid("preln-t11", [2, 5, 13], [0, 1], "synthetic-tokens", width=8))
    s = run_sweep(specs, tmp_path, run_fn=toy_run, progress=False, validate_data=False)
    assert s.ok
    return tmp_path


def test_report_slopes_and_files(toy_sweep):
    rep = make_report(toy_sweep)
    out = toy_sweep / "report"
    for name in ("summary.md", "nc_vs_depth.png", "gap_vs_depth.png",
                 "regularization_vs_depth.png", "slopes.csv", "by_depth.csv"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    sl = pd.read_csv(out / "slopes.csv")
    for row in ("L-RN1 / digits", "pre-LN L-T11 / synthetic-tokens"):
        for m, p in TOY_SLOPES.items():
            r = sl[(sl["row"] == row) & (sl["metric"] == m)].iloc[0]
            # the per-seed factor is the same at every depth: the OLS slope is exact
            assert r["slope"] == pytest.approx(p, abs=1e-10), (row, m)
            assert r["stderr"] >= 0
        body = sl[(sl["row"] == row) & (sl["metric"] == "body_regularization")].iloc[0]
        assert body["slope"] == pytest.approx(-1.0, abs=1e-10)  # e2e - head = gap / 2
    text = (out / "summary.md").read_text()
    assert "L-RN1 / digits" in text and "-1" in text and "synthetic-tokens" in text
    assert "every context determines its label" in text
    assert "holds in every run" in text
    assert any("gap slope -1.00" in h for h in rep["headline"])
    agg = rep["by_depth"]
    a = agg[(agg["row"] == "L-RN1 / digits") & (agg["depth"] == 5)].iloc[0]
    assert a["seeds"] == 3


def test_report_cli_on_a_hand_written_table(tmp_path, capsys):
    """A table with a known noisy slope, written run by run (no sweep); ``gufm report``."""
    rng = np.random.default_rng(0)
    for sp in expand_grid("rn2", [2, 4, 8, 16], [0, 1, 2, 3], "digits",
                          lam_rule="inverse-depth"):
        m = toy_run(**sp.kwargs())
        m["nc1"] = 0.3 * sp.depth**-0.25 * math.exp(0.05 * rng.standard_normal())
        write_run(tmp_path, sp, m)
    assert not (tmp_path / "results.csv").exists()  # no sweep ran: the report reads runs/
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "rep")]) == 0
    assert "summary.md" in capsys.readouterr().out
    sl = pd.read_csv(tmp_path / "rep" / "slopes.csv").set_index("metric")
    assert sl.loc["nc1", "slope"] == pytest.approx(-0.25, abs=0.05)
    assert 0 < sl.loc["nc1", "stderr"] < 0.05
    assert (tmp_path / "rep" / "nc_vs_depth.png").is_file()


def test_report_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no finished runs"):
        make_report(tmp_path / "empty")
    assert main(["report", str(tmp_path / "empty")]) == 2


def test_sandwich_flags_switched_off_blocks_only_when_they_are():
    import pandas as pd

    from gufm.experiments.report import sandwich_section

    w = pd.DataFrame({"row": ["r"] * 3, "depth": [2, 4, 8], "gap": [0.3, 0.2, 0.1],
                      "gufm_optimum": [0.05] * 3, "e2e_objective": [0.35, 0.25, 0.15]})

    def flagged(body):
        lines = sandwich_section(w.assign(body_regularization=body), ["r"])
        return any("switched off" in line for line in lines)

    assert flagged([1e-5, 1e-5, 1e-5])           # below 1% of the gap everywhere
    assert not flagged([1e-5, 1e-5, 0.01])       # 10% of the gap at the deepest depth
    assert not flagged([0.1, 0.1, 0.05])
