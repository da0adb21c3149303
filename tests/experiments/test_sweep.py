"""Depth sweeps (issue 5): grids, the atomic run table, resume after SIGKILL, Dask."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gufm.cli import main
from gufm.deep.data import fortunes_available
from gufm.deep.reduction import TRAIN_AND_COMPARE_KEYS
from gufm.experiments.presets import PRESETS
from gufm.experiments.spec import RunSpec, expand_grid
from gufm.experiments.sweep import run_sweep
from gufm.experiments.table import finished_runs, load_table, write_run
from gufm.experiments.testing import toy_run

ROOT = Path(__file__).resolve().parents[2]


def exit_code(argv):
    """``gufm ARGV``'s exit status (argparse exits; the commands return)."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code
TINY = dict(width=4, n_per_class=3, epochs=5, options={"polish_steps": 5})


def _values(df: pd.DataFrame) -> pd.DataFrame:
    """The table without the timing metric, in a canonical order."""
    df = df[df["metric"] != "seconds"].drop(columns=["device"])
    return df.sort_values(["run_id", "metric"]).reset_index(drop=True)


# ----------------------------------------------------------------------------- grids
def test_grid_expansion_and_lam_rule():
    specs = expand_grid("rn1,rn2", [2, 4], [0, 1], "digits", lam=0.01, lam_rule="inverse-depth")
    assert len(specs) == 8
    assert {(s.arch, s.depth, s.seed) for s in specs} == {
        (a, L, s) for a in ("rn1", "rn2") for L in (2, 4) for s in (0, 1)}
    for s in specs:
        assert s.lam == pytest.approx(0.01 / s.depth)
    assert len({s.run_id for s in specs}) == 8
    # run ids are stable and depend on every result-relevant field, not on the row label
    a = RunSpec("rn1", "digits", 3, 0, 0.005)
    assert a.run_id == RunSpec("rn1", "digits", 3, 0, 0.005, row="other").run_id
    assert a.run_id != RunSpec("rn1", "digits", 3, 0, 0.005, lr=0.001).run_id
    assert RunSpec.from_dict(a.to_dict()) == a
    const = expand_grid("rn1", [5], [0], lam=0.01)
    assert const[0].lam == 0.01


@pytest.mark.parametrize("kwargs, match", [
    (dict(archs="rn7", depths=[2], seeds=[0]), "arch"),
    (dict(archs="rn1", depths=[0, 2], seeds=[0]), "depths"),
    (dict(archs="rn1", depths=[], seeds=[0]), "depths"),
    (dict(archs="rn1", depths=[2], seeds=[]), "seeds"),
    (dict(archs="rn1", depths=[2], seeds=[-1]), "seeds"),
    (dict(archs="rn1", depths=[2], seeds=[0], dataset="svhn"), "dataset"),
    (dict(archs="rn1", depths=[2], seeds=[0], lam=0.0), "lam"),
    (dict(archs="rn1", depths=[2], seeds=[0], lam_rule="sqrt"), "lam_rule"),
    (dict(archs="rn1", depths=[2], seeds=[0], width=1), "width"),
    (dict(archs="rn1", depths=[2], seeds=[0], options={"colour": 1}), "options"),
])
def test_bad_grids_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        expand_grid(**kwargs)


def test_bad_grid_fails_before_any_run(tmp_path, capsys):
    calls = []

    def spy(**kw):
        calls.append(kw)
        return toy_run(**kw)

    for argv in (["--arch", "rn9", "--depths", "2", "--seeds", "0"],
                 ["--arch", "rn1", "--depths", "0,2", "--seeds", "0"],
                 ["--arch", "rn1", "--depths", "2", "--seeds", ""],
                 ["--arch", "rn1", "--depths", "2,x", "--seeds", "0"]):
        assert exit_code(["sweep", *argv, "--out", str(tmp_path / "s")]) == 2
        err = capsys.readouterr().err
        assert "error: argument --" in err and "Traceback" not in err
    assert not (tmp_path / "s").exists()
    with pytest.raises(ValueError, match="specs must not be empty"):
        run_sweep([], tmp_path / "e", run_fn=spy)
    bad = [RunSpec("rn1", "digits", 2, 0, 0.005), RunSpec("rn1", "digits", 0, 0, 0.005)]
    with pytest.raises(ValueError, match="depth"):
        run_sweep(bad, tmp_path / "e", run_fn=spy)
    with pytest.raises(ValueError, match="jobs"):
        run_sweep(bad[:1], tmp_path / "e", run_fn=spy, jobs=0)
    (tmp_path / "nodata").mkdir()
    with pytest.raises(FileNotFoundError, match="gufm data download"):
        run_sweep(expand_grid("rn1", [2], [0], "mnist"), tmp_path / "e", run_fn=spy,
                  data_root=str(tmp_path / "nodata"))
    assert calls == [] and not (tmp_path / "e").exists()


def test_presets_are_valid():
    for name, p in PRESETS.items():
        specs = p.specs()
        assert specs, name
        assert len({s.run_id for s in specs}) == len(specs)
    q = PRESETS["quick"].specs()
    language = "fortunes" if fortunes_available() else "synthetic-tokens"
    assert {s.dataset for s in q} <= {"digits", "fashion-mnist", language}
    assert any(language in n for n in PRESETS["quick"].notes().values())
    rn2 = [s for s in PRESETS["paper-fig1"].specs() if s.arch == "rn2"]
    assert rn2 and all(s.dataset == "mnist" and s.lam_rule == "inverse-depth" for s in rn2)


def test_study_preset_states_the_committed_study():
    """Per-row samples per class, seeds and depths; chains with the polish-only continuation;
    fresh runs only up to depth 8 on L-RN1 / digits; overrides still apply to every row."""
    specs = PRESETS["study"].specs()
    rows = {}
    for s in specs:
        rows.setdefault(s.row, set()).add((s.n_per_class, s.seed, s.depth))
    assert {n for n, _, _ in rows["L-RN1 / digits"]} == {50}
    assert {n for n, _, _ in rows["L-RN1 / fashion-mnist"]} == {100}
    assert {d for _, _, d in rows["L-RN1 / digits"]} == {2, 3, 5, 8, 13, 21}
    assert {sd for _, sd, _ in rows["L-T11 / fashion-mnist"]} == {0}
    assert {sd for _, sd, _ in rows["L-RN2 / digits (lam/L)"]} == {0, 1, 2}
    assert all(dict(s.options)["continuation"] and dict(s.options)["continue_epochs"] == 0
               for s in specs)
    rn1 = [s for s in specs if s.row == "L-RN1 / digits"]
    assert all(dict(s.options)["fresh_max_depth"] == 8 for s in rn1)
    assert {s.n_per_class for s in PRESETS["study"].specs(n_per_class=10)} == {10}
    assert {s.seed for s in PRESETS["study"].specs(seeds=[4])} == {4}


# ----------------------------------------------------------------------------- table
def test_table_resume_and_atomic_files(tmp_path):
    calls = []

    def counting(**kw):
        calls.append((kw["depth"], kw["seed"]))
        return toy_run(**kw)

    specs = expand_grid("rn1", [1, 2, 4], [0, 1], "digits", **TINY)
    s1 = run_sweep(specs[:4], tmp_path, run_fn=counting, progress=False)
    assert len(s1.completed) == 4 and s1.ok
    mt = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("*.csv")}
    s2 = run_sweep(specs, tmp_path, run_fn=counting, progress=False)
    assert len(s2.skipped) == 4 and len(s2.completed) == 2
    assert len(calls) == 6  # nothing recomputed
    for name, m in mt.items():
        assert (tmp_path / "runs" / name).stat().st_mtime_ns == m
    df = load_table(tmp_path)
    assert set(df.columns) >= {"run_id", "arch", "dataset", "depth", "seed", "lam", "lam_rule",
                               "width", "metric", "value"}
    counts = df.groupby("run_id").size()
    assert len(counts) == 6 and (counts == len(TRAIN_AND_COMPARE_KEYS)).all()
    combined = pd.read_csv(tmp_path / "results.csv")
    assert len(combined) == len(df)
    assert not list((tmp_path / "runs").glob(".*"))
    # values round-trip exactly
    sp = specs[0]
    exp = toy_run(**sp.kwargs())
    got = df[df["run_id"] == sp.run_id].set_index("metric")["value"]
    assert all(got[k] == exp[k] for k in exp)


def test_failed_run_is_recorded_and_retried(tmp_path):
    def flaky(**kw):
        if kw["depth"] == 2:
            raise RuntimeError("boom")
        return toy_run(**kw)

    specs = expand_grid("rn1", [1, 2], [0], "digits", **TINY)
    s = run_sweep(specs, tmp_path, run_fn=flaky, progress=False)
    assert not s.ok and len(s.failed) == 1 and len(s.completed) == 1
    rid = specs[1].run_id
    assert "boom" in (tmp_path / "errors" / f"{rid}.txt").read_text()
    s2 = run_sweep(specs, tmp_path, run_fn=toy_run, progress=False)
    assert s2.ok and s2.completed == [rid]
    assert not (tmp_path / "errors" / f"{rid}.txt").exists()


def test_stale_tmp_file_is_ignored_and_cleaned(tmp_path):
    sp = expand_grid("rn1", [1], [0], **TINY)[0]
    write_run(tmp_path, sp, toy_run(**sp.kwargs()))
    dead = tmp_path / "runs" / f".{sp.run_id}.csv.999999999.tmp"
    dead.write_text("run_id,arch\npartial")
    assert finished_runs(tmp_path) == {sp.run_id}
    run_sweep([sp], tmp_path, run_fn=toy_run, progress=False)
    assert not dead.exists()


# ----------------------------------------------------------------------------- kill + resume
def test_sigkill_then_resume_real_runs(tmp_path):
    """A real ``gufm sweep`` (real train_and_compare) killed with SIGKILL loses nothing
    finished and duplicates nothing when rerun."""
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "gufm", "sweep", "--arch", "rn1", "--depths", "1,2",
           "--seeds", "0,1", "--dataset", "digits", "--width", "4", "--n-per-class", "3",
           "--epochs", "5", "--polish-steps", "5", "--out", str(out), "--no-progress"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if list((out / "runs").glob("*.csv")) if (out / "runs").is_dir() else []:
                break
            time.sleep(0.02)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        else:  # finished before the kill (a very fast machine): the rerun must still skip all
            assert proc.returncode == 0
    finally:
        proc.wait()
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / "runs").glob("*.csv")}
    assert before, "no run finished before the kill"
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert f"{len(before)} already finished" in res.stdout
    for name, (mt, data) in before.items():  # finished runs were not recomputed
        p = out / "runs" / name
        assert p.stat().st_mtime_ns == mt and p.read_bytes() == data
    df = load_table(out)
    per_run = df.groupby("run_id").size()
    assert len(per_run) == 4 and (per_run == len(TRAIN_AND_COMPARE_KEYS)).all()
    assert not df.duplicated(["run_id", "metric"]).any()
    comb = pd.read_csv(out / "results.csv")
    assert comb["run_id"].nunique() == 4 and len(comb) == len(df)
    assert (df[df["metric"] == "gap"]["value"] >= -1e-9).all()


# ----------------------------------------------------------------------------- dask
def test_dask_cluster_matches_local_processes_and_in_process(tmp_path):
    """A Dask LocalCluster gives the same table as local processes (toy runs) and as this
    process (real train_and_compare, tiny)."""
    from distributed import Client, LocalCluster

    toy = expand_grid("rn1,rn2", [1, 2, 3], [0, 1], "digits", **TINY)
    assert run_sweep(toy, tmp_path / "procs", jobs=2, run_fn=toy_run, progress=False).ok
    real = expand_grid("rn1", [1, 2], [0], "digits", **TINY)
    assert run_sweep(real, tmp_path / "here", progress=False).ok
    with LocalCluster(n_workers=1, processes=False, threads_per_worker=2,
                      dashboard_address=None) as cluster:
        dk = run_sweep(toy, tmp_path / "dask_toy", scheduler=cluster.scheduler_address,
                       run_fn=toy_run, progress=False)  # by address: distributed.Client(addr)
        assert dk.ok and len(dk.completed) == len(toy)
        with Client(cluster) as client:
            assert run_sweep(real, tmp_path / "dask_real", scheduler=client, progress=False).ok
    pd.testing.assert_frame_equal(_values(load_table(tmp_path / "procs")),
                                  _values(load_table(tmp_path / "dask_toy")))
    a, b = _values(load_table(tmp_path / "here")), _values(load_table(tmp_path / "dask_real"))
    pd.testing.assert_frame_equal(a.drop(columns="value"), b.drop(columns="value"))
    np.testing.assert_allclose(a["value"], b["value"], rtol=1e-9, atol=1e-12)
    assert set(a["metric"]) == set(TRAIN_AND_COMPARE_KEYS) - {"seconds"}


def test_cli_settings_come_from_runspec_or_the_preset():
    """`gufm sweep` restates no default: a grid gets RunSpec's, a preset its own, and a flag
    given (even `--n-per-class all`) overrides both."""
    from dataclasses import fields

    from gufm.cli import build_parser
    from gufm.cli.sweep import build_specs

    def specs(*argv):
        return build_specs(build_parser().parse_args(["sweep", *argv, "--out", "x"]))[0]

    grid = specs("--arch", "rn1", "--depths", "2", "--seeds", "0")
    ref = {f.name: f.default for f in fields(RunSpec) if f.name not in
           ("arch", "dataset", "depth", "seed", "row", "options")}
    assert {k: getattr(grid[0], k) for k in ref} == ref and grid[0].dataset == "digits"
    quick = PRESETS["quick"]
    pre = specs("--preset", "quick")
    assert {s.n_per_class for s in pre} == {quick.n_per_class} and len(pre) == 28
    assert {s.n_per_class for s in specs("--preset", "quick", "--n-per-class", "all")} == {None}
    assert {s.width for s in specs("--preset", "quick", "--width", "8")} == {8}
