"""The command line: `gufm solve` JSON/summary, errors, and the demo (quick) with resume."""

import json

import pytest

import gufm
from gufm.cli import main


def test_solve_json(capsys):
    rc = main(["solve", "--counts", "50,30,20", "--dim", "16", "--loss", "ce", "--features",
               "layernorm", "--lam-w", "0.005", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"value", "lower_bound", "gap", "certified", "method", "seconds"}
    ref = gufm.solve(gufm.GUFM(counts=[50, 30, 20], dim=16, lam_W=5e-3))
    assert out["value"] == pytest.approx(ref.value, rel=1e-9)
    assert out["certified"] is True and out["gap"] == pytest.approx(out["value"] - out["lower_bound"])


def test_solve_summary_and_options(capsys):
    rc = main(["solve", "--counts", "5,5,5", "--dim", "6", "--loss", "mse", "--features", "penalty",
               "--lam-w", "0.01", "--lam-h", "0.001", "--lam-b", "0.1", "--method", "gradient"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "certified: yes" in text and "lam_H=0.001" in text


@pytest.mark.parametrize("argv, msg", [
    (["--counts", "5", "--dim", "4", "--lam-w", "0.1"], "K >= 2"),
    (["--counts", "5,5", "--dim", "4", "--lam-w", "-0.1"], "--lam-w must be"),
])
def test_solve_errors(argv, msg, capsys):
    assert main(["solve", *argv]) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("argv, flag", [
    (["--method", "magic"], "--method"),
    (["--loss", "hinge"], "--loss"),
])
def test_solve_bad_choice_names_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["solve", "--counts", "5,5", "--dim", "4", "--lam-w", "0.1", *argv])
    assert exc.value.code == 2
    assert f"argument {flag}: invalid choice" in capsys.readouterr().err


def test_demo_quick_runs_and_resumes(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    for name in ("results.csv", "gap_vs_depth.png", "nc_vs_depth.png", "summary.md"):
        assert (tmp_path / name).exists()
    import pandas as pd

    df = pd.read_csv(tmp_path / "results.csv")
    assert sorted(df["depth"].unique()) == [1, 3]
    gap = df[df.metric == "gap"].set_index("depth")["value"]
    assert (gap > 0).all()  # e2e objective above the certified GUFM optimum
    md = (tmp_path / "summary.md").read_text()
    assert md.startswith("# gufm demo") and "## Solver" in md
    assert "| row | L | seeds |" in md  # a markdown table, not a pandas repr
    runs = sorted((tmp_path / "runs").glob("*.csv"))
    stamps = [p.stat().st_mtime_ns for p in runs]
    capsys.readouterr()
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    assert "already finished" in capsys.readouterr().out
    assert len(pd.read_csv(tmp_path / "results.csv")) == len(df)
    assert [p.stat().st_mtime_ns for p in runs] == stamps  # not recomputed
