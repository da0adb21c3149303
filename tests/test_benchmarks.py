"""The benchmark runner: JSON schema, error entries, generated markdown, README block.

No timing thresholds: the checks are on structure and on correctness (the baselines agree with
gufm where they must).  The quick run of the suite's own modules is marked ``slow``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `benchmarks` is a folder of the repository, not installed
    sys.path.insert(0, str(ROOT))

from benchmarks import runner  # noqa: E402


def _check_row(row: dict[str, Any]) -> None:
    assert set(runner.ROW_KEYS) <= set(row)
    assert isinstance(row["case"], str) and row["case"]
    assert isinstance(row["baseline"], str) and row["baseline"]
    for key in ("baseline_seconds", "gufm_seconds", "ratio"):
        assert isinstance(row[key], float), (key, row)
        assert row[key] > 0
    assert math.isclose(row["ratio"], row["baseline_seconds"] / row["gufm_seconds"], rel_tol=1e-6)
    assert isinstance(row["ratio_is_bound"], bool)
    for key in ("baseline_reached", "gufm_certified"):
        assert row[key] is None or isinstance(row[key], bool)
    assert row["rel_diff"] is None or isinstance(row["rel_diff"], float)
    assert isinstance(row["notes"], str)


def _check_payload(payload: dict[str, Any], quick: bool) -> None:
    assert payload["schema"] == runner.SCHEMA
    assert payload["quick"] is quick
    assert isinstance(payload["seconds"], float)
    assert isinstance(payload["started"], str) and isinstance(payload["command"], str)
    m = payload["machine"]
    for key in ("platform", "cpu_count", "python", "numpy", "torch", "torch_threads"):
        assert key in m, key
    assert isinstance(m["cpu_count"], int)
    assert "cuda" in m
    assert isinstance(payload["threads"], dict)
    assert set(payload["load_average"]) == {"start", "end"}
    assert list(payload["benchmarks"]) == payload["modules"]
    for name, e in payload["benchmarks"].items():
        assert e["name"] == name
        assert e["status"] in ("ok", "error")
        assert isinstance(e["seconds"], float)
        assert isinstance(e["comparisons"], list)
        if e["status"] == "ok":
            assert isinstance(e["result"], dict)
            assert e["error"] is None
        else:
            assert isinstance(e["error"], str) and e["error"]


# ------------------------------------------------------------------------------- fast, in process
def _fake_module(monkeypatch: pytest.MonkeyPatch, name: str, run: Any) -> None:
    mod = types.ModuleType(f"benchmarks.bench_{name}")
    mod.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, f"benchmarks.bench_{name}", mod)


def _fake_ok(quick: bool) -> dict[str, Any]:
    return {"quick": quick, "value": np.float64(1.5), "flag": np.bool_(True),
            "array": np.arange(3), "nan": float("nan"), "inf": -np.inf,
            "comparisons": [{"case": "toy", "baseline": "slow method", "baseline_seconds": 2.0,
                             "gufm_seconds": np.float64(0.5), "baseline_reached": np.bool_(True),
                             "rel_diff": 1e-9, "gufm_certified": True}],
            "slopes": [{"curve": "toy vs N", "range": "1–10", "slope": 1.0, "points": 2}],
            "summary": ["a toy sentence."]}


def _fake_raise(quick: bool) -> dict[str, Any]:
    raise RuntimeError("boom")


def test_missing_raising_and_bad_modules_are_error_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_module(monkeypatch, "boom", _fake_raise)
    _fake_module(monkeypatch, "notdict", lambda quick: [1, 2])
    _fake_module(monkeypatch, "exits", lambda quick: sys.exit(3))
    e = runner.run_module("boom", True)
    assert e["status"] == "error" and "RuntimeError: boom" in e["error"]
    assert "Traceback" in e["traceback"]
    e = runner.run_module("no_such_module_xyz", True)
    assert e["status"] == "error" and "not found" in e["error"]
    assert runner.run_module("notdict", True)["status"] == "error"
    assert runner.run_module("exits", True)["status"] == "error"


def test_failed_parts_make_an_error_entry_that_keeps_the_results(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A baseline whose optional dependency is missing is an error entry, never ``ok``."""
    def partial(quick: bool) -> dict[str, Any]:
        out = _fake_ok(quick)
        out["errors"] = {"pymanopt": "ModuleNotFoundError: No module named 'pymanopt'"}
        return out

    _fake_module(monkeypatch, "partial", partial)
    e = runner.run_module("partial", True)
    assert e["status"] == "error"
    assert "pymanopt: ModuleNotFoundError" in e["error"]
    assert e["result"]["value"] == 1.5 and len(e["comparisons"]) == 1  # the rest is kept


def test_certified_module_without_pymanopt_is_an_error_entry(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pymanopt", None)  # import pymanopt now fails
    e = runner.run_module("certified", True)
    assert e["status"] == "error" and "pymanopt" in e["error"]
    assert e["result"] is None


def test_run_suite_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_module(monkeypatch, "fake", _fake_ok)
    _fake_module(monkeypatch, "boom", _fake_raise)
    out = tmp_path / "res" / "bench.json"
    env_before = os.environ.get(runner.RESULTS_ENV)
    payload = runner.run_suite(True, out=out, only="fake,bench_boom,missing_xyz")
    assert os.environ.get(runner.RESULTS_ENV) == env_before  # restored
    text = out.read_text()
    loaded = json.loads(text)  # strict JSON: no NaN / Infinity
    assert "NaN" not in text and "Infinity" not in text
    assert loaded == payload
    _check_payload(loaded, quick=True)
    b = loaded["benchmarks"]
    assert list(b) == ["fake", "boom", "missing_xyz"]
    assert b["fake"]["status"] == "ok"
    assert b["fake"]["result"]["nan"] is None and b["fake"]["result"]["inf"] is None
    assert b["fake"]["result"]["array"] == [0, 1, 2] and b["fake"]["result"]["flag"] is True
    assert len(b["fake"]["comparisons"]) == 1
    _check_row(b["fake"]["comparisons"][0])
    assert b["fake"]["comparisons"][0]["ratio"] == 4.0
    assert b["boom"]["status"] == "error" and b["missing_xyz"]["status"] == "error"
    md = (out.parent / "RESULTS_quick.md").read_text()
    assert md == runner.render_markdown(loaded, source=out.name)
    assert "| fake | toy | slow method | 2.00 s | 500.0 ms | 4.00× | yes | 1.0e-09 | yes |" in md
    assert "toy vs N" in md and "a toy sentence." in md
    assert "`boom`: RuntimeError: boom" in md
    # --update keeps the other entries and replaces the re-run ones
    _fake_module(monkeypatch, "boom", _fake_ok)
    again = runner.run_suite(True, out=out, only="boom,fake2", update=True)
    assert list(again["benchmarks"]) == ["fake", "boom", "missing_xyz", "fake2"]
    assert again["modules"] == list(again["benchmarks"])
    assert again["benchmarks"]["boom"]["status"] == "ok"
    assert again["benchmarks"]["fake"]["run_started"] == payload["started"]
    assert len(again["previous_runs"]) == 1
    _check_payload(again, quick=True)


def test_default_paths() -> None:
    j, m = runner.default_paths(False, None)
    assert j == runner.RESULTS_DIR / "benchmarks.json" and m == runner.RESULTS_DIR / "RESULTS.md"
    j, m = runner.default_paths(False, "x/y/out.json")
    assert j == Path("x/y/out.json") and m == Path("x/y/RESULTS.md")
    assert runner.default_paths(True, "o.json")[1].name == "RESULTS_quick.md"
    assert runner.default_paths(False, "o.json", "t.md")[1] == Path("t.md")


def test_resolve_names() -> None:
    assert runner.resolve_names(None)[: len(runner.EXPECTED)] == list(runner.EXPECTED)
    assert runner.resolve_names("bench_solver, metrics,solver,bench_x.py") == ["solver", "metrics",
                                                                             "x"]


def test_readme_block(tmp_path: Path) -> None:
    payload = {"schema": runner.SCHEMA, "quick": False, "command": "python -m benchmarks run",
               "machine": {"cpu_count": 2}, "benchmarks": {"fake": {
                   "name": "fake", "status": "ok", "seconds": 1.0,
                   "comparisons": [runner.make_row("toy", "slow", 3.0, 1.0)], "result": {}}}}
    readme = tmp_path / "README.md"
    plain = "# title\n\nno markers here\n"
    readme.write_text(plain)
    assert runner.update_readme(payload, readme) is False
    assert readme.read_text() == plain
    readme.write_text("# t\n" + runner.README_START + "\n")  # end marker missing
    assert runner.update_readme(payload, readme) is False
    assert runner.update_readme(payload, tmp_path / "absent.md") is False
    before, after = "# title\n\nintro\n", "\n## next\ntail\n"
    readme.write_text(before + runner.README_START + "\nold table\n" + runner.README_END + after)
    assert runner.update_readme(payload, readme) is True
    text = readme.read_text()
    assert text.startswith(before + runner.README_START + "\n")
    assert text.endswith(runner.README_END + after)
    assert "old table" not in text and "| fake | toy | slow | 3.00 s | 1.00 s | 3.00× |" in text
    assert runner.update_readme(payload, readme) is True
    assert readme.read_text() == text  # idempotent


def test_adapters_for_other_modules() -> None:
    solver = {"full_baseline": {"N": 5000, "d": 64, "K": 10, "gufm_seconds": 0.1,
                                "gufm_value": 1.0, "gufm_certified": True, "full_seconds": 10.0,
                                "full_value": 1.1, "full_reached_1e-6": False, "ratio": 100.0,
                                "full_stop": "max"},
              "lbfgs_implementation": {"K": 30, "iterations": 200, "scipy_lbfgsb_seconds": 0.5,
                                       "gufm_lbfgs_seconds": 0.25, "ratio": 2.0}}
    metrics = {"config": {"N": 10, "d": 2, "K": 2, "dtype": "float32", "device": "cpu"},
               "baseline_seconds": 3.0, "stream_2pass_seconds": 1.0, "read_seconds": 0.1,
               "ratio_baseline_vs_stream_2pass": 3.0, "bandwidth_GBps": 5.0,
               "max_rel_diff_baseline_vs_2pass": 1e-9, "gemm_floor_seconds": 0.3,
               "ratio_gemm_floor_vs_two_reads": 1.5}
    training = {"results": [{"arch": "rn1", "depth": 8, "width": 64, "N": 500, "device": "cpu",
                             "threads": 1, "adam_step_ms": 10.0, "lbfgs_eval_ms": 20.0,
                             "adam_samples_per_s": 5e4}]}
    sweep = {"throughput": [{"jobs": 1, "runs": 6, "seconds": 4.0},
                            {"jobs": 2, "runs": 6, "seconds": 2.0}],
             "vectorized_cpu": {"device": "cpu", "seeds": 4, "depth": 4, "width": 8,
                                "epochs": 50, "N": 200, "adam_loop_s": 1.0,
                                "adam_vectorized_s": 0.5, "full_loop_s": 5.0,
                                "full_vectorized_s": 4.0},
             "vectorized_cuda": "skipped: no CUDA"}
    counts = {"solver": 2, "metrics": 3, "training": 1, "sweep": 3}
    for name, res in (("solver", solver), ("metrics", metrics), ("training", training),
                      ("sweep", sweep)):
        rows = runner.extract_comparisons(name, res)
        assert len(rows) == counts[name], name
        for r in rows:
            _check_row(r)
    floor = runner.extract_comparisons("metrics", metrics)[2]
    assert floor["baseline_seconds"] == 0.3 and "1.50x two reads" in floor["notes"]
    rows = runner.extract_comparisons("solver", solver)
    assert rows[0]["ratio_is_bound"] and rows[0]["baseline_reached"] is False
    assert runner.extract_comparisons("solver", {"full_baseline": "garbage"}) == []
    assert runner.extract_comparisons("unknown", {"x": 1}) == []
    payload = {"benchmarks": {"sweep": {"status": "ok", "result": sweep, "comparisons": []},
                              "bad": {"status": "error", "result": None, "comparisons": []}}}
    assert runner.refresh_comparisons(payload) is True
    assert len(payload["benchmarks"]["sweep"]["comparisons"]) == 3
    assert runner.refresh_comparisons(payload) is False


def test_isolated_module_timeout_and_missing() -> None:
    e = runner.run_module_isolated("no_such_module_xyz", True, timeout=120)
    assert e["status"] == "error" and "not found" in e["error"]
    e = runner.run_module_isolated("scaling", True, timeout=0.5)
    assert e["status"] == "error" and "timed out" in e["error"]


# ------------------------------------------------------------------------------- the quick runner
@pytest.mark.slow
def test_quick_runner_subprocess(tmp_path: Path) -> None:
    """``python -m benchmarks run --quick`` on this suite's own modules plus a missing one."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "run", "--quick", "--out", str(out),
         "--only", "baselines,scaling,no_such_module"],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = json.loads(out.read_text())
    _check_payload(payload, quick=True)
    b = payload["benchmarks"]
    assert b["no_such_module"]["status"] == "error"
    for name in ("baselines", "scaling"):
        assert b[name]["status"] == "ok", b[name]["error"]
        assert b[name]["comparisons"], name
        for row in b[name]["comparisons"]:
            _check_row(row)
    res = b["baselines"]["result"]
    assert res["errors"] == {}
    for part in ("full_gradient", "cvxpy_nuclear", "pymanopt", "metrics_numpy", "gpu"):
        assert part in res, part
    # correctness of the baselines (not speed): the nuclear-norm UFM equals gufm's optimum
    pts = [p for p in res["cvxpy_nuclear"]["points"] if "cvxpy" in p]
    assert pts and all(p["agree"] for p in pts)
    assert all(p["gufm_certified"] for p in pts)
    # pymanopt on a certifiable problem reaches the certified value; gufm certifies its point
    first = res["pymanopt"]["points"][0]
    assert first["gufm_certified"] and abs(first["rel_diff"]) < 1e-6
    assert first["pymanopt"]["certified"]
    # numpy metrics as published scripts agree with gufm's reports
    assert max(res["metrics_numpy"]["max_rel_diff"].values()) < 1e-5
    assert "skipped" in res["gpu"] or res["gpu"]["comparisons"]
    sc = b["scaling"]["result"]
    assert {s["curve"] for s in sc["slopes"]} >= {"gufm end to end vs N"}
    for s in sc["slopes"]:
        assert s["slope"] is None or isinstance(s["slope"], float)
    for p in sc["plots"]:
        assert Path(p).is_file() and Path(p).parent == tmp_path
    assert all(p["certified"] for p in sc["N"]["points"])
    md = (tmp_path / "RESULTS_quick.md").read_text()
    assert md == runner.render_markdown(payload, source=out.name)
    assert "| baselines |" in md and "| scaling |" in md


def test_certified_series_rows_are_honest() -> None:
    """One tiny point of each kind: certified, pymanopt in the same run, skipped past the cap."""
    pytest.importorskip("pymanopt")
    from benchmarks import bench_certified

    pts, rows = bench_certified.series("distinct", "ce", [8, 10_000], cap=5.0, repeats=1,
                                       pymanopt_time=10.0)
    assert pts[0]["certified"] and pts[0]["load_average"]
    assert pts[0]["pymanopt"]["certified"]  # the baseline reaches the certified optimum
    assert "skipped" in pts[1]  # predicted far beyond the cap: recorded, not run
    assert len(rows) == 1
    _check_row(rows[0])
    assert rows[0]["gufm_certified"] and rows[0]["baseline_reached"]
    pts, rows = bench_certified.series("tied", "ce", [9], cap=5.0, repeats=1, pymanopt_time=1.0)
    assert pts[0]["certified"] and rows == []  # no pymanopt row for the tied series


def test_heap_ablation_runs_both_variants_in_fresh_interpreters(tmp_path: Path) -> None:
    """The heap-reuse ablation: each variant solved (and certified) in its own interpreter, the
    ratio taken from the best times; the same value either way (the allocator changes no
    number)."""
    from benchmarks import bench_certified

    out = bench_certified.heap_ablation(12, repeats=1)
    runs = out["runs"]
    assert set(runs) == {"heap reuse", "mmap (GUFM_HEAP_REUSE=0)"}
    assert all(len(r) == 1 and r[0]["certified"] and r[0]["minor_faults"] > 0
               for r in runs.values())
    a, b = (r[0]["value"] for r in runs.values())
    assert a == b
    assert out["ratio"] == pytest.approx(out["best_seconds"]["mmap (GUFM_HEAP_REUSE=0)"]
                                         / out["best_seconds"]["heap reuse"])


def test_newton_probe_never_goes_up_and_leaves_the_model_at_its_end_point() -> None:
    import torch

    from benchmarks.singular import newton_probe
    from gufm.deep.invariance import invariant_groups
    from gufm.deep.nets import make_model
    from gufm.deep.objective import full_objective

    model = make_model("rn1", 1, 6, (1, 2, 2), 3, seed=0)
    X = torch.randn(12, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    y = torch.arange(12) % 3
    groups = invariant_groups(model)
    assert groups, "the embedding of a bias-free ResNet is scale invariant"
    out = newton_probe(model, X, y, lam=0.01, loss="ce", groups=groups, max_iter=15)
    assert out["end"]["objective"] <= out["start"]["objective"]
    assert out["decrease"] == out["start"]["objective"] - out["end"]["objective"]
    assert 1 <= out["iterations"] <= 15 and len(out["trace"]) == out["iterations"]
    objs = [out["start"]["objective"]] + [t["objective"] for t in out["trace"]]
    # a trust region accepts descent steps only
    assert all(b <= a for a, b in zip(objs[:-1], objs[1:], strict=True))
    exclude = frozenset(id(p) for g in groups for p in g)
    again = full_objective(model, X.double(), y, lam=0.01, loss="ce", exclude=exclude)
    assert again["objective"] == pytest.approx(out["end"]["objective"], rel=1e-12)
    # the probe minimised the reduced objective: the embedding's penalty was left out
    with_pen = full_objective(model, X.double(), y, lam=0.01, loss="ce")["objective"]
    assert with_pen > again["objective"]


def test_compare_studies_pairs_the_seeds_of_each_cell(tmp_path: Path) -> None:
    from benchmarks.compare_studies import main
    from gufm.experiments.spec import RunSpec
    from gufm.experiments.table import write_run

    new, old = tmp_path / "new", tmp_path / "old"
    for seed, (a, b) in enumerate([(1.0, 2.0), (3.0, 6.0), (5.0, 10.0)]):
        write_run(new, RunSpec("rn1", "digits", depth=2, seed=seed), {"gap": a, "split_gap": b})
        write_run(old, RunSpec("rn1", "digits", depth=2, seed=seed), {"gap": 2 * a,
                                                                      "split_gap": b})
    write_run(new, RunSpec("rn1", "digits", depth=4, seed=0), {"gap": 1.0})  # no partner
    write_run(old, RunSpec("rn1", "digits", depth=2, seed=7), {"gap": 100.0})  # no partner
    out = main([str(new), str(old), "--out", str(tmp_path / "c.json")])
    cells = {(c["metric"], c["depth"]): c for c in out["cells"]}
    assert set(cells) == {("gap", 2), ("split_gap", 2)}  # only shared seeds and depths
    gap = cells[("gap", 2)]
    assert gap["seeds"] == 3 and gap["new"] == pytest.approx(3.0) and gap["old"] == 6.0
    assert gap["ratio"] == 0.5 and gap["log10_ratio"] == pytest.approx(math.log10(0.5))
    assert gap["sem"] == pytest.approx(0.0, abs=1e-12) and gap["direction"] == "lower"
    split = cells[("split_gap", 2)]
    assert split["ratio"] == 1.0 and split["direction"] == "equal" and not split["clearly"]
    assert json.loads((tmp_path / "c.json").read_text())["benchmark"] == "compare-studies"
    with pytest.raises(ValueError, match="no runs"):
        main([str(tmp_path / "empty"), str(old)])


def test_chain_rules_runs_every_rule_on_the_same_row(tmp_path: Path) -> None:
    from benchmarks.chain_rules import main

    out = main(["--small", "--seeds", "0", "--jobs", "1", "--out", str(tmp_path / "c.json")])
    assert [c["rule"] for c in out["chains"]] == ["network", "lower-split", "both"]
    for rule, s in out["summary"].items():
        assert s["ratio"][1] == pytest.approx(out["summary"][rule]["best_gap"][1]
                                              / out["summary"]["network"]["best_gap"][1])
        assert s["best_gap"][1] == out["summary"]["network"]["best_gap"][1]  # same fresh run
    for c in out["chains"]:
        d2 = c["depths"]["2"]
        assert d2["best_gap"] == min(d2["fresh_gap"], d2["split_gap"], d2["continued_gap"])
        assert d2["split_from"] in ("network", "pre-limit")
    assert json.loads((tmp_path / "c.json").read_text())["benchmark"] == "chain-rules"


def test_kinks_benchmark_measures_the_limit_before_and_after(monkeypatch) -> None:
    """``benchmarks.singular --kinks`` on a stub training that leaves sample 4 a step 1e-7
    off the embedding's singular set (3 digits per class): both phases are measured on the
    limit."""
    from types import SimpleNamespace

    import torch

    import gufm.deep.data as data
    import gufm.deep.training as training
    from benchmarks import singular

    real = data.load_dataset
    monkeypatch.setattr(data, "load_dataset", lambda name, n_per_class, seed: real(
        name, n_per_class=3, seed=seed))

    def stub(model, ds, **_kw):
        model.double()
        E = model.embed.E.weight
        x = ds.X.double().reshape(ds.X.shape[0], -1)[4]
        with torch.no_grad():
            u = E @ x
            E.sub_(torch.outer(u - u.mean(), x) / (x @ x))  # sample 4 on the set ...
            v = torch.randn(E.shape[0], dtype=E.dtype, generator=torch.Generator().manual_seed(0))
            E.add_(1e-7 * float(E.norm()) * torch.outer(v - v.mean(), x) / (x @ x))  # ... near
        return SimpleNamespace(limit_samples=(4,), limit_grad_norm=1.0, stop_reason="stub")

    monkeypatch.setattr(training, "train", stub)
    out = singular.kinks(1, 5, deltas=(1e-2,))
    for phase in ("trained", "extra"):
        k = out[phase]["kinks"]
        assert k["total"] == 30 * 32 and len(k["counts"]) == len(k["thresholds"]) == 7
        assert all(a >= b for a, b in zip(k["counts"][:-1], k["counts"][1:], strict=True))
        (sub,) = k["subgradient"]
        assert sub["delta"] == 1e-2 and sub["min_norm"] <= sub["grad_norm"] * (1 + 1e-9)
        assert sub["pairs"] == k["counts"][0]  # delta = the largest threshold, 1e-2
        p = out[phase]["limit_parts"]
        assert p["grad_norm"] == pytest.approx(
            (p["rest"] ** 2 + p["embedding"] ** 2 + p["direction"] ** 2) ** 0.5, rel=1e-9)
    assert out["extra"]["accepted"] and out["extra"]["samples"] == [4]
    assert out["extra"]["decrease"] >= 0
