"""Depth continuation: the split keeps the function to first order (the remainder falls by 4
when the branches halve) for every architecture, halves the last matrices' penalty, keeps a
two-layer MLP's output exactly, and the chain records fresh/split/continued runs."""

from __future__ import annotations

import pytest
import torch

from gufm.deep.continuation import LAST_MATRICES, deepen, split_block, split_counts
from gufm.deep.nets import ARCHS, make_model
from gufm.deep.pipeline import continuation_chain, embedding_only

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def scaled_model(arch, t, ln_eps=1e-5):
    m = make_model(arch, 2, 8, (1, 4, 4), 3, seed=0, patch_size=2, dtype=torch.float64,
                   ln_eps=ln_eps)
    with torch.no_grad():
        for b in m.blocks:
            for n, p in b.named_parameters():
                if n in LAST_MATRICES:
                    p.mul_(t)
    return m


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("ln_eps", [1e-5, 0.0])
def test_split_is_first_order_function_preserving(arch, ln_eps):
    X = torch.randn(7, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    errs = []
    for t in (0.1, 0.05, 0.025):
        m = scaled_model(arch, t, ln_eps)
        d = deepen(m, 4)
        assert d.depth == 4 and len(d.blocks) == 4
        errs.append(float((d.features(X) - m.features(X)).detach().abs().max()))
    # second-order remainder: halving the branches divides the change by ~4 (not ~2)
    for a, b in zip(errs, errs[1:], strict=False):
        assert 3.0 < a / b < 5.0, errs


@pytest.mark.parametrize("arch", ["rn1", "t11", "preln-t11"])
def test_last_matrices_penalty_is_divided_by_k(arch):
    m = scaled_model(arch, 1.0)
    d = deepen(m, 6)  # every block split in 3

    def last_sq(model):
        return sum(float((p.detach() ** 2).sum()) for b in model.blocks
                   for n, p in b.named_parameters() if n in LAST_MATRICES)

    assert last_sq(d) == pytest.approx(last_sq(m) / 3, rel=1e-12)
    torch.testing.assert_close(d.classifier.weight, m.classifier.weight)
    torch.testing.assert_close(d.embed.E.weight, m.embed.E.weight)


def test_two_layer_mlp_split_is_exact_and_balanced():
    m = scaled_model("rn2", 1.0)
    blk = m.blocks[0]
    x = torch.randn(5, 8, dtype=torch.float64)
    parts = split_block(blk, 3)
    for p in parts:
        torch.testing.assert_close(p.mlp(x), blk.mlp(x) / 3, rtol=1e-12, atol=1e-14)
        n1, n2 = float(p.mlp.V1.weight.norm()), float(p.mlp.V2.weight.norm())
        assert n1 == pytest.approx(n2, rel=1e-10)  # balanced: minimal penalty
    n1, n2 = float(blk.mlp.V1.weight.norm()), float(blk.mlp.V2.weight.norm())
    total = sum(float(p.mlp.V1.weight.norm() ** 2 + p.mlp.V2.weight.norm() ** 2) for p in parts)
    assert total == pytest.approx(2 * n1 * n2, rel=1e-10)


def test_split_counts_and_errors():
    assert split_counts([1.0, 1.0], 2) == [1, 1]
    assert split_counts([1.0, 5.0], 5) == [2, 3]
    assert sum(split_counts([3.0, 1.0, 2.0], 11)) == 11
    with pytest.raises(ValueError, match="depth"):
        split_counts([1.0, 1.0], 1)
    with pytest.raises(ValueError, match="depth"):
        deepen(make_model("rn1", 3, 8, (1, 4, 4), 3), 2)
    with pytest.raises(ValueError, match="build_args"):
        deepen(torch.nn.Linear(2, 2), 3)


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_chain_records_three_runs_and_bounds(loss):
    rows = continuation_chain("rn1", [1, 2, 4], 8, "digits", 2, 4, 0.01, 0.01, 0, loss=loss,
                              polish_steps=10, fresh_max_depth=2, continue_epochs=0)
    kinds = [(r["depth"], r["kind"]) for r in rows]
    assert kinds == [(1, "fresh"), (2, "fresh"), (2, "split"), (2, "continued"),
                     (4, "split"), (4, "continued")]
    for L in (2, 4):
        here = [r for r in rows if r["depth"] == L]
        best = [r for r in here if r["best"]]
        assert len(best) == 1
        assert best[0]["e2e_objective"] == min(r["e2e_objective"] for r in here)
        split = next(r for r in here if r["kind"] == "split")
        cont = next(r for r in here if r["kind"] == "continued")
        assert cont["e2e_objective"] <= split["e2e_objective"] + 1e-12  # polish is monotone
    for r in rows:
        assert r["e2e_objective"] >= r["head_objective"] >= r["gufm_optimum"] - 1e-12
        assert r["gap"] == pytest.approx(r["head_gap"] + r["body_penalty"], abs=1e-12)


def test_chain_deepens_the_network_before_the_limit_polish_when_it_splits_lower(monkeypatch):
    """A run whose limit-polished network splits worse than its network before that polish:
    the chain must split and continue from the latter (here the "limit-polished" network is
    made bad on purpose: its classifier times 100)."""
    import copy

    import gufm.deep.pipeline as pipeline
    from gufm.deep.data import load_dataset
    from gufm.deep.reduction import compare

    real_train = pipeline.train
    kept = {}

    entered = {}

    def train_then_spoil(model, ds, **kw):
        entered[model.depth] = copy.deepcopy(model)
        r = real_train(model, ds, **kw)
        kept[model.depth] = copy.deepcopy(model)
        with torch.no_grad():
            model.classifier.weight.mul_(100.0)
        r.pre_limit_model = kept[model.depth]
        return r

    monkeypatch.setattr(pipeline, "train", train_then_spoil)
    rows = continuation_chain("rn1", [1, 2], 8, "digits", 2, 4, 0.01, 0.01, 0,
                              polish_steps=5, continue_epochs=0, fresh=False)
    split = next(r for r in rows if r["kind"] == "split")
    cont = next(r for r in rows if r["kind"] == "continued")
    assert split["split_from"] == "pre-limit"
    ds = load_dataset("digits", n_per_class=2, seed=0)
    expected = compare(deepen(kept[1], 2), ds, lam=0.01).e2e_objective
    assert split["e2e_objective"] == pytest.approx(expected, rel=1e-12)
    start = deepen(kept[1], 2).state_dict()
    spoiled = copy.deepcopy(kept[1])
    with torch.no_grad():
        spoiled.classifier.weight.mul_(100.0)
    assert split["e2e_objective"] < compare(deepen(spoiled, 2), ds, lam=0.01).e2e_objective
    # the continued run started from that split network
    assert cont["depth"] == 2
    assert all(torch.equal(v, start[k]) for k, v in entered[2].state_dict().items())


def test_chain_can_continue_from_both_splits(monkeypatch):
    """``continue_from="both"`` trains both split networks and keeps the lower continued run."""
    import copy

    import gufm.deep.pipeline as pipeline

    real_train = pipeline.train
    entered, results = [], []

    def train_then_spoil(model, ds, **kw):
        entered.append(copy.deepcopy(model))
        r = real_train(model, ds, **kw)
        keep = copy.deepcopy(model)
        with torch.no_grad():
            model.classifier.weight.mul_(100.0)
        r.pre_limit_model = keep
        results.append(pipeline.compare(model, ds, lam=kw["lam"]).e2e_objective)
        return r

    monkeypatch.setattr(pipeline, "train", train_then_spoil)
    rows = continuation_chain("rn1", [1, 2], 8, "digits", 2, 4, 0.01, 0.01, 0,
                              polish_steps=5, continue_epochs=0, fresh=False,
                              continue_from="both")
    assert [m.depth for m in entered] == [1, 2, 2]  # one fresh run, then both splits trained
    cont = next(r for r in rows if r["kind"] == "continued")
    assert cont["e2e_objective"] == pytest.approx(min(results[1:]), rel=1e-12)
    assert cont["continued_from"] == ("pre-limit" if results[1] <= results[2] else "network")
    with pytest.raises(ValueError, match="continue_from"):
        continuation_chain("rn1", [1, 2], 8, "digits", 2, 4, 0.01, 0.01, 0,
                           continue_from="all")


@pytest.mark.parametrize("rule,expected", [("lower-split", "network"),
                                           ("pre-limit", "pre-limit"),
                                           ("network", "network")])
def test_chain_rule_decides_which_network_is_deepened(monkeypatch, rule, expected):
    """Here the copy "before the limit polish" is the spoiled one (classifier x 100): the
    default keeps the lower split (the network), ``"pre-limit"`` carries the copy anyway."""
    import copy

    import gufm.deep.pipeline as pipeline

    real_train = pipeline.train

    def train_and_spoil_the_copy(model, ds, **kw):
        r = real_train(model, ds, **kw)
        bad = copy.deepcopy(model)
        with torch.no_grad():
            bad.classifier.weight.mul_(100.0)
        r.pre_limit_model = bad
        return r

    monkeypatch.setattr(pipeline, "train", train_and_spoil_the_copy)
    rows = continuation_chain("rn1", [1, 2], 8, "digits", 2, 4, 0.01, 0.01, 0,
                              polish_steps=5, continue_epochs=0, fresh=False,
                              continue_from=rule)
    split = next(r for r in rows if r["kind"] == "split")
    cont = next(r for r in rows if r["kind"] == "continued")
    assert split["split_from"] == expected and cont["continued_from"] == expected
    fresh = next(r for r in rows if r["kind"] == "fresh")
    if expected == "pre-limit":  # the spoiled network splits far worse than the trained one
        assert split["e2e_objective"] > 2 * fresh["e2e_objective"]
    else:
        assert split["e2e_objective"] < 2 * fresh["e2e_objective"]


def test_embedding_only_reference():
    from gufm.deep.data import load_dataset

    ds = load_dataset("digits", n_per_class=2, seed=0)
    out = embedding_only(ds, 8, lam=0.01, epochs=3, polish_steps=3)
    assert out["body_penalty"] >= 0 and out["gap"] >= -1e-12
    assert out["body_penalty"] <= 1e-11  # the frozen block costs nothing, E is shrunk


def test_sweep_continuation_records_three_kinds_and_the_report_flags(tmp_path):
    from gufm.experiments.report import make_report
    from gufm.experiments.spec import expand_grid
    from gufm.experiments.sweep import run_sweep

    specs = expand_grid("rn1", [1, 2], [0], width=8, n_per_class=2, epochs=3,
                        options={"continuation": True, "polish_steps": 3})
    s = run_sweep(specs, tmp_path, progress=False)
    assert s.ok and len(s.completed) == 2
    rep = make_report(tmp_path)
    text = rep["summary"].read_text()
    assert "The sandwich" in text and "L = 0 reference (embedding only): gap" in text
    # digits with 2 per class: N = 20 <= rank of the inputs, the embedding alone suffices
    assert "FLAG: the embedding alone reaches the GUFM optimum" in text
    assert "split gap" in text
    assert "split networks deepened from a network before its singular-limit polish" in text
