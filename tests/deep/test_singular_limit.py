"""The limit objective at the LayerNorm singular set (gufm.deep.singular_limit).

Checked against an independent construction: the limit network itself, where sample s's
embedding output is replaced by a free direction v and the embedding is parametrised on the
condition P E x_s = 0, differentiated by autograd; and the outward slope against a finite
difference of the real network's objective leaving the singular set.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import functional_call

from gufm.deep.invariance import normalize_groups, reference_norm
from gufm.deep.nets import make_model
from gufm.deep.objective import data_loss, full_objective
from gufm.deep.singular_limit import SingularLimit, applies, singular_limit

LAM, S = 0.01, 4


def _setup(arch: str = "rn1", t: float = 1e-7, loss_seed: int = 0):
    torch.manual_seed(0)
    model = make_model(arch, 2, 6, (1, 2, 2), 3, seed=loss_seed).double()
    g = torch.Generator().manual_seed(1)
    X = torch.randn(12, 1, 2, 2, dtype=torch.float64, generator=g)
    y = torch.arange(12) % 3
    normalize_groups([[model.embed.E.weight]], reference_norm(model))
    E = model.embed.E.weight
    x = X[S].reshape(-1)
    v = torch.randn(6, dtype=torch.float64, generator=g)
    v = v - v.mean()
    v = v / v.norm()
    with torch.no_grad():
        u = E @ x
        c = u - u.mean()
        E.sub_(torch.outer(c, x) / (x @ x))  # on the singular set ...
        E.mul_(reference_norm(model) / E.norm())  # (at the embedding's representative)
        E.add_(t * float(E.norm()) * torch.outer(v, x) / x.norm())  # ... and a step t off it
    return model, X, y, x, v


def _limit_by_autograd(model, X, y, x, v_hat, loss: str = "ce"):
    """The limit objective built explicitly and differentiated by autograd."""
    names = [n for n, _ in model.named_parameters()]
    params = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    with torch.no_grad():
        E0 = params["embed.E.weight"]
        u = E0 @ x
        E0 -= torch.outer(u - u.mean(), x) / (x @ x)  # E_lim
    ref = reference_norm(model)
    v = (ref * v_hat).clone().requires_grad_(True)

    def constrained(Et):
        Ex = Et @ x
        return Et - torch.outer(Ex - Ex.mean(), x) / (x @ x)

    def replace(_m, _i, out):
        row = out[S].mean() * torch.ones_like(out[S]) + v
        return torch.cat([out[:S], row[None], out[S + 1:]])

    pd = dict(params)
    pd["embed.E.weight"] = constrained(params["embed.E.weight"])
    h = model.embed.E.register_forward_hook(replace)
    try:
        logits = functional_call(model, pd, (X,))
    finally:
        h.remove()
    pen = sum((params[n] ** 2).sum() for n in names if n != "embed.E.weight")
    f = data_loss(logits, y, loss) + 0.5 * LAM * pen
    grads = torch.autograd.grad(f, [params[n] for n in names] + [v])
    gE = grads[names.index("embed.E.weight")]
    E_lim = params["embed.E.weight"].detach()
    gE = (gE - ((gE * E_lim).sum() / (E_lim * E_lim).sum()) * E_lim) * (E_lim.norm() / ref)
    gv = grads[-1]
    gv = gv - (gv @ v_hat) * v_hat
    rest = sum(float((gr**2).sum()) for n, gr in zip(names, grads, strict=False)
               if n != "embed.E.weight")
    return math.sqrt(rest), float(gE.norm()), float(gv.norm())


@pytest.mark.parametrize("arch,loss", [("rn1", "ce"), ("rn2", "ce"), ("rn1", "mse")])
def test_limit_gradient_matches_the_limit_network_differentiated_by_autograd(arch, loss):
    model, X, y, x, v = _setup(arch)
    lim = singular_limit(model, X, y, lam=LAM, sample=S, loss=loss)
    rest, emb, direction = _limit_by_autograd(model, X, y, x, v, loss)
    assert lim.rest == pytest.approx(rest, rel=1e-5)
    assert lim.embedding == pytest.approx(emb, rel=1e-5)
    assert lim.direction == pytest.approx(direction, rel=1e-5)
    assert lim.grad_norm == pytest.approx(math.sqrt(rest**2 + emb**2 + direction**2), rel=1e-5)
    assert lim.direction > 1e-6 and lim.embedding > 1e-6  # the check compares non-trivial parts
    assert lim.centred_norm < 1e-6


def test_outward_slope_is_the_derivative_of_the_network_leaving_the_singular_set():
    model, X, y, x, v = _setup("rn1", t=0.0)
    E = model.embed.E.weight
    E0 = E.detach().clone()
    # at t = 0 the sample has no direction: take v's from a network a step 1e-9 off the set
    with torch.no_grad():
        E.add_(1e-9 * float(E0.norm()) * torch.outer(v, x) / x.norm())
    lim = singular_limit(model, X, y, lam=LAM, sample=S)

    def f(tau: float) -> float:
        with torch.no_grad():
            E.copy_(E0 + tau * torch.outer(v, x) / x.norm())
        return full_objective(model, X, y, lam=LAM, exclude=frozenset({id(E)}))["objective"]

    t1, t2 = 1e-5, 2e-5
    fd = (f(t2) - f(t1)) / (t2 - t1)
    assert lim.slope == pytest.approx(fd, rel=1e-3, abs=1e-9)
    assert abs(lim.slope) > 1e-4  # a non-trivial comparison


@pytest.mark.parametrize("c", [1e-3, 1.0, 1e3])
def test_limit_is_invariant_under_the_embedding_scale(c):
    model, X, y, _, _ = _setup("rn1")
    base = singular_limit(model, X, y, lam=LAM, sample=S)
    with torch.no_grad():
        model.embed.E.weight.mul_(c)
    lim = singular_limit(model, X, y, lam=LAM, sample=S)
    for name in ("grad_norm", "slope", "rest", "embedding", "direction", "centred_norm"):
        assert getattr(lim, name) == pytest.approx(getattr(base, name), rel=1e-7), name


def test_bad_input_is_refused():
    model, X, y, _, _ = _setup("rn1")
    with pytest.raises(ValueError, match="sample must be in"):
        singular_limit(model, X, y, lam=LAM, sample=12)
    X0 = X.clone()
    X0[2] = 0.0
    with pytest.raises(ValueError, match="all-zero input"):
        singular_limit(model, X0, y, lam=LAM, sample=2)
    t11 = make_model("t11", 2, 8, (1, 4, 4), 3, patch_size=2)
    assert not applies(t11)
    with pytest.raises(ValueError, match="ResNets on flat input"):
        singular_limit(t11, torch.randn(3, 1, 4, 4), torch.arange(3), lam=LAM, sample=0)


def test_stationary_needs_both_conditions():
    assert SingularLimit(0, 1e-5, 0.0, 0.0, 0.0, 0.0, 0.0).stationary(1e-4)
    assert not SingularLimit(0, 2e-4, 1.0, 0.0, 0.0, 0.0, 0.0).stationary(1e-4)
    assert not SingularLimit(0, 1e-5, -2e-4, 0.0, 0.0, 0.0, 0.0).stationary(1e-4)
    assert "converged to the singular limit of sample 0" in SingularLimit(
        0, 1e-5, 0.0, 0.0, 0.0, 0.0, 0.0).describe(1e-4)


def test_limit_polish_lowers_the_objective_and_realises_a_network():
    from gufm.deep.singular_limit import embedding_margins, limit_polish

    model, X, y, x, _ = _setup("rn1")
    E = model.embed.E.weight
    ex = frozenset({id(E)})
    f0 = full_objective(model, X, y, lam=LAM, exclude=ex)["objective"]
    assert float(embedding_margins(model, X)[S]) < 1e-5
    out = limit_polish(model, X, y, lam=LAM, max_iter=40)
    assert out.sample == S and out.accepted and out.iterations > 0
    assert out.start_objective == pytest.approx(f0, rel=1e-12)
    assert out.objective < out.start_objective
    # the returned network is a real network with the reported objective ...
    again = full_objective(model, X, y, lam=LAM, exclude=ex)["objective"]
    assert again == pytest.approx(out.objective, rel=1e-12)
    assert not hasattr(model.embed.E, "parametrizations")
    # ... whose sample S sits the chosen step off the singular set
    Ew = model.embed.E.weight.detach()
    u = Ew @ x
    rel = float((u - u.mean()).norm()) / (float(Ew.norm()) * float(x.norm()))
    # E = E_lim + tau |E_lim| vhat x^T / |x| with E_lim ⟂ vhat x^T: |E| = |E_lim| sqrt(1 + tau^2)
    assert rel == pytest.approx(out.step / math.sqrt(1 + out.step**2), rel=1e-6)
    assert out.limit is not None and out.limit.sample == S
    assert out.converged(1e-4) == out.limit.stationary(1e-4)
    state = out.to_state(1e-4)
    assert state["sample"] == S and state["decrease"] > 0


def test_limit_polish_does_nothing_without_a_flagged_sample_and_refuses_transformers():
    from gufm.deep.singular_limit import limit_polish

    model = make_model("rn1", 1, 6, (1, 2, 2), 3, seed=0).double()
    X = torch.randn(9, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y = torch.arange(9) % 3
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = limit_polish(model, X, y, lam=LAM, flag=1e-12)
    assert out.sample == -1 and not out.accepted and out.objective == out.start_objective
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    t11 = make_model("t11", 2, 8, (1, 4, 4), 3, patch_size=2)
    with pytest.raises(ValueError, match="ResNets on flat input"):
        limit_polish(t11, torch.randn(3, 1, 4, 4), torch.arange(3), lam=LAM)


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_train_reports_the_limit_consistently(loss):
    from gufm.deep.training import train

    model, X, y, _, _ = _setup("rn1")
    ex = frozenset({id(model.embed.E.weight)})
    f0 = full_objective(model, X, y, lam=LAM, loss=loss, exclude=ex)["objective"]
    r = train(model, (X, y), lam=LAM, loss=loss, epochs=0, polish_steps=30, progress=False)
    tol = r.config["polish_tol"]
    assert r.objective <= f0 + 1e-12  # the shrunk embedding's penalty is at most 1e-12
    limit_ok = (r.limit_grad_norm is not None and r.limit_grad_norm <= tol
                and r.limit_slope >= -tol)
    assert r.converged == (r.grad_norm <= tol or limit_ok)
    if r.limit_sample is not None:
        assert "singular-limit polish" in r.stop_reason
    off = train(_setup("rn1")[0], (X, y), lam=LAM, loss=loss, epochs=0, polish_steps=30,
                progress=False, polish_limit=False)
    assert off.limit_sample is None and "singular-limit" not in off.stop_reason
    assert off.config["polish_limit"] is False and r.config["polish_limit"] is True
