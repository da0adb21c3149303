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


# ----------------------------------------------------------------------------- help, version, errors
def _exit(argv):
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def test_version(capsys):
    from importlib.metadata import version

    assert _exit(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"gufm {version('gufm')}"


def test_every_option_has_help_and_shows_its_default(capsys):
    import argparse

    from gufm.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == {"solve", "demo", "train", "data", "sweep", "report"}
    parsers = dict(sub.choices)
    data_sub = next(a for a in parsers["data"]._actions
                    if isinstance(a, argparse._SubParsersAction))
    parsers["data download"] = data_sub.choices["download"]
    for name, p in parsers.items():
        text = p.format_help()
        for act in p._actions:
            if isinstance(act, argparse._HelpAction | argparse._SubParsersAction):
                continue
            assert act.help, f"gufm {name} {act.option_strings or act.dest}: no help"
            if act.default not in (None, False) and act.option_strings:
                assert "default" in p._get_formatter()._get_help_string(act), (name, act.dest)
        assert "==SUPPRESS==" not in text
    top = parser.format_help()
    assert "Each sub-command lives" not in top and "gufm demo" in top


def test_sweep_out_is_a_file_or_not_writable(tmp_path, capsys, monkeypatch):
    f = tmp_path / "table.csv"
    f.write_text("keep")
    grid = ["sweep", "--arch", "rn1", "--depths", "1", "--seeds", "0", "--width", "4",
            "--n-per-class", "3", "--epochs", "1", "--polish-steps", "0", "--no-progress"]
    assert main([*grid, "--out", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--out" in err and "is a file" in err
    assert f.read_text() == "keep"
    assert main([*grid, "--out", str(f / "sub")]) == 2
    assert "lies under the file" in capsys.readouterr().err
    monkeypatch.setattr("os.access", lambda *a, **k: False)  # a read-only folder (root ignores chmod)
    ro = tmp_path / "ro"
    assert main([*grid, "--out", str(ro / "sweep")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--out" in err and "not writable" in err
    assert not ro.exists() and not (tmp_path / "sub").exists()


def test_bad_flag_values_name_the_flag(tmp_path, capsys):
    assert _exit(["sweep", "--arch", "rn1", "--dataset", "cifar100", "--out", str(tmp_path)]) == 2
    assert "argument --dataset: must be one of" in capsys.readouterr().err
    assert _exit(["train", "--arch", "rn1", "--depth", "1", "--dataset", "cifar100"]) == 2
    assert "argument --dataset: invalid choice" in capsys.readouterr().err
    assert main(["sweep", "--arch", "rn1", "--width", "1", "--out", str(tmp_path / "w")]) == 2
    assert "--width must be" in capsys.readouterr().err


def test_missing_data_and_missing_report_folder_are_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc = main(["sweep", "--arch", "rn1", "--dataset", "mnist", "--depths", "1", "--seeds", "0",
               "--data-root", str(tmp_path / "empty"), "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "gufm data download mnist" in err
    assert not (tmp_path / "s" / "runs").exists()
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err
