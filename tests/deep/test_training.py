"""Tests of gufm.training and gufm.compare: the exact objective, determinism, checkpoint/resume,
the L-BFGS polish, the scale-invariant embedding, the reduction inequality after training, the
train_and_compare/CLI contract."""

from __future__ import annotations

import json
import math

import pytest
import torch

import gufm
from gufm.deep import pipeline as P
from gufm.deep import reduction as C
from gufm.deep.nets import make_model
from gufm.deep.training import (
    full_objective,
    gradient_norms,
    lr_factor,
    scale_invariant_params,
    shrink_invariant,
    train,
)

KEYS = ["e2e_objective", "gufm_optimum", "gap", "head_objective", "head_gap", "body_penalty",
        "nc1", "nc2", "nc3", "gufm_distance", "train_accuracy", "grad_norm", "converged",
        "seconds"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_data(K=3, n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(K).repeat_interleave(n)
    X = torch.randn(K * n, 1, 4, 4, generator=g) + 1.5 * torch.randn(K, 1, 4, 4, generator=g)[y]
    return X, y


def tiny_model(arch="rn1", seed=0, **kw):
    return make_model(arch, 2, 6, (1, 4, 4), 3, seed=seed, **kw)


def params(model):
    return [p.detach().clone() for p in model.parameters()]


# ----------------------------------------------------------------------------- objective
@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_objective_is_mean_loss_plus_l2_on_all_parameters(loss):
    X, y = tiny_data()
    m = tiny_model(dtype=torch.float64, bias=True)
    out = full_objective(m, X.double(), y, lam=0.03, loss=loss, chunk_size=4)
    Z = m(X.double()).detach()
    E = torch.nn.functional.one_hot(y, 3).double()
    if loss == "ce":
        per = torch.logsumexp(Z, 1) - (Z * E).sum(1)
    else:
        per = 0.5 * ((Z - E) ** 2).sum(1)
    pen = 0.015 * sum(float((p.detach() ** 2).sum()) for p in m.parameters())
    assert out["loss"] == pytest.approx(float(per.mean()), rel=1e-13)
    assert out["penalty"] == pytest.approx(pen, rel=1e-13)
    assert out["objective"] == pytest.approx(float(per.mean()) + pen, rel=1e-13)


def test_lr_schedule():
    total = 100
    f = [lr_factor(s, total, "cosine", 0.1, 0.0) for s in range(total)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0) and f[10] == 1.0
    assert all(a >= b for a, b in zip(f[10:], f[11:], strict=False)) and f[-1] < 1e-3
    assert lr_factor(50, 100, "constant", 0.0, 0.0) == 1.0
    assert lr_factor(99, 100, "linear", 0.0, 0.5) == pytest.approx(0.505)


def test_train_argument_errors():
    X, y = tiny_data()
    m = tiny_model()
    for kw, name in [({"lam": 0}, "lam"), ({"lam": 0.1, "lr": -1}, "lr"),
                     ({"lam": 0.1, "epochs": -1}, "epochs"),
                     ({"lam": 0.1, "schedule": "step"}, "schedule"),
                     ({"lam": 0.1, "polish": "adam"}, "polish"),
                     ({"lam": 0.1, "loss": "hinge"}, "loss"),
                     ({"lam": 0.1, "batch_size": 0}, "batch_size"),
                     ({"lam": 0.1, "scale_invariant": "drop"}, "scale_invariant")]:
        with pytest.raises(ValueError, match=name):
            train(m, (X, y), progress=False, **kw)


# ----------------------------------------------------------------------------- determinism
def test_same_seed_same_parameters():
    X, y = tiny_data()
    runs = []
    for seed in (0, 0, 1):
        m = tiny_model()
        train(m, (X, y), lam=0.01, epochs=4, batch_size=4, seed=seed, polish_steps=3,
              progress=False)
        runs.append(params(m))
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(runs[0], runs[2], strict=True))


def test_checkpoint_resume_equals_uninterrupted(tmp_path):
    X, y = tiny_data()
    kw = dict(lam=0.01, epochs=7, batch_size=4, seed=3, polish_steps=6, progress=False,
              checkpoint_every=2)
    ref_model = tiny_model()
    ref = train(ref_model, (X, y), **kw)

    ck = tmp_path / "run.ckpt"
    first = train(tiny_model(), (X, y), checkpoint=ck, stop_after=3, **kw)
    assert not first.completed and first.epochs_done == 3 and ck.is_file()
    # resume into a differently initialised model object: the checkpoint restores everything
    second = train(tiny_model(seed=99), (X, y), checkpoint=ck, stop_after=2, **kw)
    assert not second.completed and second.epochs_done == 5
    m = tiny_model(seed=98)
    final = train(m, (X, y), checkpoint=ck, **kw)
    assert final.completed and final.epochs_done == 7
    assert all(torch.equal(a, b) for a, b in zip(params(ref_model), params(m), strict=True))
    assert final.objective == ref.objective and final.polish_iters == ref.polish_iters
    assert [h["objective"] for h in final.history] == [h["objective"] for h in ref.history]
    # a finished checkpoint is returned as is
    again = tiny_model(seed=5)
    done = train(again, (X, y), checkpoint=ck, **kw)
    assert all(torch.equal(a, b) for a, b in zip(params(ref_model), params(again), strict=True))
    assert done.objective == ref.objective
    with pytest.raises(ValueError, match="checkpoint"):
        train(tiny_model(), (X, y), checkpoint=ck, **(kw | {"lam": 0.02}))
    fresh = train(tiny_model(), (X, y), checkpoint=ck, resume=False, **(kw | {"lam": 0.02}))
    assert fresh.completed


def test_polish_lowers_objective_and_gradient():
    """The polish starts from the Adam state (deterministic) and never ends above it; the
    result says whether it converged, by the documented criterion."""
    X, y = tiny_data()
    m = tiny_model()
    adam = train(m, (X, y), lam=0.01, epochs=60, lr=0.01, polish="none", progress=False)
    adam64 = C.compare(m, (X, y), lam=0.01)  # the same weights in float64
    m2 = tiny_model()
    full = train(m2, (X, y), lam=0.01, epochs=60, lr=0.01, polish_steps=300, progress=False)
    assert next(m2.parameters()).dtype == torch.float64
    # monotone: the polished objective is at most the Adam one (+ the shrunk embedding's 1e-12)
    assert full.objective <= adam64.e2e_objective + 2e-12
    assert full.objective < adam64.e2e_objective  # 300 L-BFGS steps from an Adam point do help
    for r in (adam, full):
        assert r.converged == (r.grad_norm <= r.config["polish_tol"])
        assert r.stop_reason
    assert full.polish_iters > 0 and full.adam_steps == 60
    assert [h["phase"] for h in full.history][-1] == "lbfgs"
    assert full.grad_norm <= full.grad_norm_exact + 1e-12  # the invariant direction excluded


def test_scale_invariant_embedding_is_shrunk_exactly():
    X, y = tiny_data()
    X = X.double()
    for eps in (0.0, 1e-5):  # a bias-free ResNet's embedding is invariant whatever ln_eps
        m = tiny_model(ln_eps=eps, dtype=torch.float64)
        inv = scale_invariant_params(m)
        assert inv and scale_invariant_params(m, "penalize") == []
        before = m(X).detach()
        g_before = gradient_norms(m, X, y, lam=0.01)
        c = shrink_invariant(inv, 0.01, 1e-12)
        assert c < 1e-3
        assert 0.005 * sum(float((p.detach() ** 2).sum()) for p in inv) <= 1.0001e-12
        assert torch.allclose(m(X).detach(), before, rtol=0, atol=1e-9)  # same function
        g_after = gradient_norms(m, X, y, lam=0.01)
        # the reduced gradient does not depend on the representative; the exact one blows up
        assert g_after["grad_norm"] == pytest.approx(g_before["grad_norm"], rel=1e-5)
        assert g_after["grad_norm_exact"] > 10 * g_before["grad_norm_exact"]

    m = tiny_model()
    res = train(m, (X.float(), y), lam=0.01, epochs=20, polish_steps=20, progress=False)
    assert res.shrink < 1e-3 and res.config["scale_invariant"] == "reduce"
    emb_pen = 0.005 * sum(float((p.detach() ** 2).sum()) for p in scale_invariant_params(m))
    assert emb_pen <= 1.0001e-12
    check = C.compare(m, (X, y), lam=0.01)
    assert check.e2e_objective == pytest.approx(res.objective, rel=1e-12)
    assert check.converged == res.converged and check.grad_norm == pytest.approx(res.grad_norm)


# ----------------------------------------------------------------------------- reduction check
@pytest.mark.parametrize("arch", ["rn1", "rn2", "t11", "t12", "preln-t11"])
@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_inequality_after_brief_training(arch, loss):
    X, y = tiny_data()
    m = make_model(arch, 1, 6, (1, 4, 4), 3, seed=0, patch_size=2)
    res0 = C.compare(m, (X, y), lam=0.01, loss=loss)
    train(m, (X, y), lam=0.01, loss=loss, epochs=15, lr=0.01, polish_steps=10, progress=False)
    res = C.compare(m, (X, y), lam=0.01, loss=loss)
    assert res.e2e_objective >= res.head_objective >= res.gufm_optimum - 1e-12
    assert res.e2e_objective < res0.e2e_objective  # training helped
    assert res.gufm_certified and 0 <= res.train_accuracy <= 1
    assert 0 <= res.grad_norm_rest <= res.grad_norm_exact + 1e-12
    d = res.to_dict()
    assert d["gap"] == pytest.approx(d["e2e_objective"] - d["gufm_optimum"])
    assert json.dumps(d)


def test_violation_raises(monkeypatch):
    X, y = tiny_data()
    m = tiny_model(dtype=torch.float64)
    real = gufm.solve

    def wrong_solver(prob, **kw):
        res = real(prob, **kw)
        res.value += 10.0
        res.lower_bound += 10.0  # a "certified" bound above a feasible value: impossible
        return res

    monkeypatch.setattr(C, "solve", wrong_solver)
    with pytest.raises(C.ReductionViolation, match="lower bound"):
        C.compare(m, (X, y), lam=0.01)


def test_compare_argument_errors():
    X, y = tiny_data()
    with pytest.raises(ValueError, match="lam"):
        C.compare(tiny_model(), (X, y), lam=0.0)
    with pytest.raises(ValueError, match="bias"):
        C.compare(tiny_model(), (X, y), lam=0.1, bias=True)
    with pytest.raises(ValueError, match="features"):
        C.compare(torch.nn.Linear(16, 3), (X, y), lam=0.1)


def test_train_and_compare_contract():
    out = P.train_and_compare("rn1", 1, 12, "digits", 3, 5, 0.01, 0.01, 0, polish_steps=3)
    assert list(out) == [*KEYS, "stop_reason"] and tuple(KEYS) == C.TRAIN_AND_COMPARE_KEYS
    assert all(isinstance(out[k], float) for k in KEYS if k != "converged")
    assert isinstance(out["converged"], bool) and isinstance(out["stop_reason"], str)
    assert out["body_penalty"] == pytest.approx(out["e2e_objective"] - out["head_objective"])
    assert out["gap"] == pytest.approx(out["e2e_objective"] - out["gufm_optimum"])
    assert out["e2e_objective"] >= out["head_objective"] >= out["gufm_optimum"] - 1e-12
    tok = P.train_and_compare("t11", 1, 8, "synthetic-tokens", 3, 3, 0.01, 0.01, 0, loss="mse",
                              polish_steps=2)
    assert math.isfinite(tok["gap"]) and tok["gap"] >= -1e-12


def test_cli_train_json(capsys):
    from gufm.cli import main

    rc = main(["train", "--arch", "rn2", "--depth", "1", "--width", "12", "--dataset", "digits",
               "--n-per-class", "2", "--epochs", "3", "--lam", "0.01", "--lr", "0.01",
               "--seed", "0", "--polish-steps", "2", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out)[:len(KEYS)] == KEYS
    rc = main(["train", "--arch", "rn1", "--depth", "1", "--width", "12", "--dataset", "digits",
               "--n-per-class", "2", "--epochs", "2", "--polish-steps", "1"])
    assert rc == 0 and "gap" in capsys.readouterr().out


def test_cli_train_errors(tmp_path, capsys, monkeypatch):
    from gufm.cli import main

    monkeypatch.setenv("GUFM_DATA", str(tmp_path))
    rc = main(["train", "--arch", "rn1", "--depth", "1", "--dataset", "mnist", "--epochs", "1"])
    assert rc == 2 and "gufm data download mnist --dir" in capsys.readouterr().err
    rc = main(["train", "--arch", "rn1", "--depth", "0", "--epochs", "1"])
    assert rc == 2 and "depth" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--arch", "vgg", "--depth", "1"])


def test_gufm_compare_is_the_function():
    X, y = tiny_data()
    assert gufm.compare is C.compare
    res = gufm.compare(tiny_model(), (X, y), lam=0.01)
    assert isinstance(res, C.ComparisonResult) and res.gap >= 0
