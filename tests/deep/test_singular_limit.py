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

LAM, S, S2 = 0.01, 4, (4, 9)


def _setup(arch: str = "rn1", t: float = 1e-7, loss_seed: int = 0, samples=(S,)):
    """A model whose ``samples`` sit a relative step ``t`` off the embedding's singular set,
    each along a random centred direction; returns (model, X, y, inputs (k, D), directions
    (k, w))."""
    torch.manual_seed(0)
    model = make_model(arch, 2, 6, (1, 2, 2), 3, seed=loss_seed).double()
    g = torch.Generator().manual_seed(1)
    X = torch.randn(12, 1, 2, 2, dtype=torch.float64, generator=g)
    y = torch.arange(12) % 3
    normalize_groups([[model.embed.E.weight]], reference_norm(model))
    E = model.embed.E.weight
    Xs = X[list(samples)].reshape(len(samples), -1)  # (k, D)
    B = Xs.T @ torch.linalg.inv(Xs @ Xs.T)  # dual basis: B^T x_s = e_s
    V = torch.randn(len(samples), 6, dtype=torch.float64, generator=g)
    V = V - V.mean(dim=1, keepdim=True)
    V = V / V.norm(dim=1, keepdim=True)
    with torch.no_grad():
        U = E @ Xs.T
        E.sub_((U - U.mean(dim=0)) @ B.T)  # on the singular set ...
        E.mul_(reference_norm(model) / E.norm())  # (at the embedding's representative)
        E.add_(t * float(E.norm()) * (V.T * Xs.norm(dim=1)) @ B.T)  # ... and a step t off it
    return model, X, y, Xs, V


def _limit_by_autograd(model, X, y, Xs, V_hat, samples=(S,), loss: str = "ce"):
    """The limit objective built explicitly and differentiated by autograd: each freed
    sample's embedding output replaced by mean + v_s, the embedding constrained by an
    independent least-squares projection onto P E X_S = 0."""
    names = [n for n, _ in model.named_parameters()]
    params = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    pinv = torch.linalg.pinv(Xs.T)  # (k, D): X_S^+, so that X_S X_S^+ projects on the span

    def constrained(Et):
        EX = Et @ Xs.T
        return Et - (EX - EX.mean(dim=0)) @ pinv

    with torch.no_grad():
        params["embed.E.weight"].copy_(constrained(params["embed.E.weight"]))  # E_lim
    ref = reference_norm(model)
    vs = [(ref * v).clone().requires_grad_(True) for v in V_hat]

    def replace(_m, _i, out):
        rows = list(out)
        for j, s in enumerate(samples):
            rows[s] = out[s].mean() + vs[j]
        return torch.stack(rows)

    pd = dict(params)
    pd["embed.E.weight"] = constrained(params["embed.E.weight"])
    h = model.embed.E.register_forward_hook(replace)
    try:
        logits = functional_call(model, pd, (X,))
    finally:
        h.remove()
    pen = sum((params[n] ** 2).sum() for n in names if n != "embed.E.weight")
    f = data_loss(logits, y, loss) + 0.5 * LAM * pen
    grads = torch.autograd.grad(f, [params[n] for n in names] + vs)
    gE = grads[names.index("embed.E.weight")]
    E_lim = params["embed.E.weight"].detach()
    gE = (gE - ((gE * E_lim).sum() / (E_lim * E_lim).sum()) * E_lim) * (E_lim.norm() / ref)
    gv_sq = 0.0
    for j, gv in enumerate(grads[len(names):]):
        gv = gv - (gv @ V_hat[j]) * V_hat[j]
        gv_sq += float(gv @ gv)
    rest = sum(float((gr**2).sum()) for n, gr in zip(names, grads, strict=False)
               if n != "embed.E.weight")
    return math.sqrt(rest), float(gE.norm()), math.sqrt(gv_sq)


@pytest.mark.parametrize("arch,loss", [("rn1", "ce"), ("rn2", "ce"), ("rn1", "mse")])
def test_limit_gradient_matches_the_limit_network_differentiated_by_autograd(arch, loss):
    model, X, y, Xs, V = _setup(arch)
    lim = singular_limit(model, X, y, lam=LAM, samples=S, loss=loss)
    rest, emb, direction = _limit_by_autograd(model, X, y, Xs, V, loss=loss)
    assert lim.rest == pytest.approx(rest, rel=1e-5)
    assert lim.embedding == pytest.approx(emb, rel=1e-5)
    assert lim.direction == pytest.approx(direction, rel=1e-5)
    assert lim.grad_norm == pytest.approx(math.sqrt(rest**2 + emb**2 + direction**2), rel=1e-5)
    assert lim.direction > 1e-6 and lim.embedding > 1e-6  # the check compares non-trivial parts
    assert lim.centred_norm < 1e-6


@pytest.mark.parametrize("samples", [(S,), S2])
def test_limit_gradient_of_several_samples_matches_autograd(samples):
    model, X, y, Xs, V = _setup("rn1", samples=samples)
    lim = singular_limit(model, X, y, lam=LAM, samples=samples)
    rest, emb, direction = _limit_by_autograd(model, X, y, Xs, V, samples=samples)
    assert lim.samples == samples
    assert lim.rest == pytest.approx(rest, rel=1e-5)
    assert lim.embedding == pytest.approx(emb, rel=1e-5)
    assert lim.direction == pytest.approx(direction, rel=1e-5)
    assert lim.direction > 1e-6 and lim.embedding > 1e-6
    if len(samples) > 1:  # freeing one sample only is a different limit: the check can fail
        one = singular_limit(model, X, y, lam=LAM, samples=samples[0])
        assert abs(one.embedding - lim.embedding) > 1e-3 * lim.embedding


@pytest.mark.parametrize("samples", [(S,), S2])
def test_outward_slope_is_the_derivative_of_the_network_leaving_the_singular_set(samples):
    model, X, y, Xs, V = _setup("rn1", t=0.0, samples=samples)
    E = model.embed.E.weight
    E0 = E.detach().clone()
    B = Xs.T @ torch.linalg.inv(Xs @ Xs.T)
    # at t = 0 the samples have no direction: take v's from a network a step 1e-9 off the set
    with torch.no_grad():
        E.add_(1e-9 * float(E0.norm()) * (V.T * Xs.norm(dim=1)) @ B.T)
    lim = singular_limit(model, X, y, lam=LAM, samples=samples)
    slopes = []
    for j in range(len(samples)):
        b = B[:, j]
        # sample j leaves the set along v_j; the other freed samples stay on it (at the
        # directions of the network 1e-9 off: fixed, so they do not move to first order)
        others = sum((1e-9 * float(E0.norm()) * Xs[i].norm() * torch.outer(V[i], B[:, i])
                      for i in range(len(samples)) if i != j), torch.zeros_like(E0))

        def f(tau: float, b=b, j=j, others=others) -> float:
            with torch.no_grad():
                E.copy_(E0 + others + tau * torch.outer(V[j], b) / b.norm())
            return full_objective(model, X, y, lam=LAM, exclude=frozenset({id(E)}))["objective"]

        t1, t2 = 1e-5, 2e-5
        slopes.append((f(t2) - f(t1)) / (t2 - t1))
    assert lim.slope == pytest.approx(min(slopes), rel=1e-3, abs=1e-9)
    for got, fd in zip(lim.slopes, slopes, strict=True):
        assert got == pytest.approx(fd, rel=1e-3, abs=1e-9)
    assert abs(lim.slope) > 1e-4  # a non-trivial comparison


@pytest.mark.parametrize("c", [1e-3, 1.0, 1e3])
@pytest.mark.parametrize("samples", [(S,), S2])
def test_limit_is_invariant_under_the_embedding_scale(c, samples):
    model, X, y, _, _ = _setup("rn1", samples=samples)
    base = singular_limit(model, X, y, lam=LAM, samples=samples)
    with torch.no_grad():
        model.embed.E.weight.mul_(c)
    lim = singular_limit(model, X, y, lam=LAM, samples=samples)
    for name in ("grad_norm", "slope", "rest", "embedding", "direction", "centred_norm"):
        assert getattr(lim, name) == pytest.approx(getattr(base, name), rel=1e-7), name


def test_limit_is_invariant_under_the_order_of_the_samples():
    model, X, y, _, _ = _setup("rn1", samples=S2)
    a = singular_limit(model, X, y, lam=LAM, samples=S2)
    b = singular_limit(model, X, y, lam=LAM, samples=S2[::-1])
    for name in ("grad_norm", "slope", "rest", "embedding", "direction", "centred_norm"):
        assert getattr(a, name) == pytest.approx(getattr(b, name), rel=1e-10), name


def test_bad_input_is_refused():
    model, X, y, _, _ = _setup("rn1")
    with pytest.raises(ValueError, match="samples must be indices in"):
        singular_limit(model, X, y, lam=LAM, samples=12)
    with pytest.raises(ValueError, match="samples must not repeat"):
        singular_limit(model, X, y, lam=LAM, samples=[3, 3])
    with pytest.raises(ValueError, match="at least one"):
        singular_limit(model, X, y, lam=LAM, samples=[])
    X0 = X.clone()
    X0[2] = 0.0
    with pytest.raises(ValueError, match="all-zero input"):
        singular_limit(model, X0, y, lam=LAM, samples=2)
    Xd = X.clone()
    Xd[7] = 2.0 * Xd[3]  # sample 7's input is in the span of sample 3's
    with pytest.raises(ValueError, match="sample 7's input lies in the span"):
        singular_limit(model, Xd, y, lam=LAM, samples=3)
    # four inputs in R^4 span every other input
    with pytest.raises(ValueError, match="lies in the span"):
        singular_limit(model, X, y, lam=LAM, samples=[0, 1, 2, 3])
    with pytest.raises(ValueError, match="linearly dependent"):
        singular_limit(model, X, y, lam=LAM, samples=[0, 1, 2, 3, 5])
    t11 = make_model("t11", 2, 8, (1, 4, 4), 3, patch_size=2)
    assert not applies(t11)
    with pytest.raises(ValueError, match="ResNets on flat input"):
        singular_limit(t11, torch.randn(3, 1, 4, 4), torch.arange(3), lam=LAM, samples=0)


def test_a_duplicate_of_a_freed_input_is_the_same_sample():
    model, X, y, _, _ = _setup("rn1")
    Xd, yd = torch.cat([X, X[S:S + 1]]), torch.cat([y, y[S:S + 1]])
    lim = singular_limit(model, Xd, yd, lam=LAM, samples=S)
    assert math.isfinite(lim.grad_norm) and lim.embedding < 1.0  # not 1/|c_s| large
    # the duplicate doubles sample S's weight: the same as freeing S with its loss doubled
    base = singular_limit(model, X, y, lam=LAM, samples=S)
    assert lim.direction != pytest.approx(base.direction, rel=1e-3)


def test_stationary_needs_both_conditions():
    assert SingularLimit((0,), 1e-5, 0.0, 0.0, 0.0, 0.0, 0.0).stationary(1e-4)
    assert not SingularLimit((0,), 2e-4, 1.0, 0.0, 0.0, 0.0, 0.0).stationary(1e-4)
    assert not SingularLimit((0,), 1e-5, -2e-4, 0.0, 0.0, 0.0, 0.0).stationary(1e-4)
    assert "converged to the singular limit of sample 0" in SingularLimit(
        (0,), 1e-5, 0.0, 0.0, 0.0, 0.0, 0.0).describe(1e-4)
    assert "singular limit of samples 0, 5" in SingularLimit(
        (0, 5), 1e-5, 0.0, 0.0, 0.0, 0.0, 0.0).describe(1e-4)
    text = SingularLimit((0, 5), 1e-5, -0.3, 0.0, 0.0, 0.0, 0.0, (0.1, -0.3)).describe(1e-4)
    assert "sample 5 would leave the singular set" in text


@pytest.mark.parametrize("samples", [(S,), S2])
def test_limit_polish_lowers_the_objective_and_realises_a_network(samples):
    from gufm.deep.singular_limit import embedding_margins, limit_polish

    model, X, y, Xs, _ = _setup("rn1", samples=samples)
    E = model.embed.E.weight
    ex = frozenset({id(E)})
    f0 = full_objective(model, X, y, lam=LAM, exclude=ex)["objective"]
    assert float(embedding_margins(model, X)[list(samples)].max()) < 1e-5
    out = limit_polish(model, X, y, lam=LAM, max_iter=40)
    assert sorted(out.samples) == sorted(samples) and out.accepted and out.iterations > 0
    assert out.rounds >= 1
    assert out.start_objective == pytest.approx(f0, rel=1e-12)
    assert out.objective < out.start_objective
    # the returned network is a real network with the reported objective ...
    again = full_objective(model, X, y, lam=LAM, exclude=ex)["objective"]
    assert again == pytest.approx(out.objective, rel=1e-12)
    assert not hasattr(model.embed.E, "parametrizations")
    # ... whose freed samples sit the chosen step off the singular set: P E x_s =
    # tau |E_lim| |x_s| vhat_s, with |E|^2 = |E_lim|^2 + |tau-part|^2 (orthogonal parts)
    Ew = model.embed.E.weight.detach()
    U = Ew @ Xs.T
    C = U - U.mean(dim=0)
    B = Xs.T @ torch.linalg.inv(Xs @ Xs.T)
    E_lim = Ew - C @ B.T
    for j in range(len(samples)):
        rel = float(C[:, j].norm()) / (float(E_lim.norm()) * float(Xs[j].norm()))
        assert rel == pytest.approx(out.step, rel=1e-6)
    assert out.limit is not None and out.limit.samples == out.samples
    assert out.converged(1e-4) == out.limit.stationary(1e-4)
    state = out.to_state(1e-4)
    assert state["samples"] == list(out.samples) and state["decrease"] > 0


def test_limit_polish_frees_every_flagged_sample_up_to_max_free():
    from gufm.deep.singular_limit import embedding_margins, limit_polish

    model, X, y, _, _ = _setup("rn1", samples=S2)
    r = embedding_margins(model, X)
    first = S2[int(r[list(S2)].argmin())]  # the most singular of the two
    out = limit_polish(model, X, y, lam=LAM, max_iter=20, max_free=1)
    assert out.samples == (first,) and out.rounds == 1
    model, X, y, _, _ = _setup("rn1", samples=S2)
    out = limit_polish(model, X, y, lam=LAM, max_iter=20)
    assert sorted(out.samples) == sorted(S2) and out.rounds == 1  # both flagged at the start
    with pytest.raises(ValueError, match="max_free"):
        limit_polish(model, X, y, lam=LAM, max_free=0)


def test_a_sample_driven_to_the_singular_set_by_a_round_is_freed_in_the_next(monkeypatch):
    import gufm.deep.polish as polish_module
    from gufm.deep.singular_limit import embedding_margins, limit_polish

    model, X, y, _, _ = _setup("rn1", samples=(9,))
    assert float(embedding_margins(model, X)[S]) > 1e-2  # sample S is not flagged at first
    real = polish_module.polish
    freed_per_round = []

    def first_round_drives_S_to_the_set(net, X, y, **kw):
        freed_per_round.append(len(net.v))
        result = real(net, X, y, **kw)
        if len(freed_per_round) == 1:  # the round ends with sample S at the singular set
            layer = net.net.embed.E
            orig = layer.parametrizations.weight.original
            Xs = X[[9, S]].reshape(2, -1)
            b = (Xs.T @ torch.linalg.inv(Xs @ Xs.T))[:, 1]  # b^T x_9 = 0, b^T x_S = 1
            with torch.no_grad():
                W = layer.weight
                u = W @ Xs[1]
                orig.copy_(W - (1 - 1e-8) * torch.outer(u - u.mean(), b))  # still on x_9's
        return result

    monkeypatch.setattr(polish_module, "polish", first_round_drives_S_to_the_set)
    out = limit_polish(model, X, y, lam=LAM, max_iter=3)
    assert out.samples == (9, S) and out.rounds == 2 and freed_per_round == [1, 2]
    assert "sample 9 freed" in out.stop_reason and f"sample {S} freed" in out.stop_reason


def test_limit_polish_does_nothing_without_a_flagged_sample_and_refuses_transformers():
    from gufm.deep.singular_limit import limit_polish

    model = make_model("rn1", 1, 6, (1, 2, 2), 3, seed=0).double()
    X = torch.randn(9, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y = torch.arange(9) % 3
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = limit_polish(model, X, y, lam=LAM, flag=1e-12)
    assert out.samples == () and not out.accepted and out.objective == out.start_objective
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    t11 = make_model("t11", 2, 8, (1, 4, 4), 3, patch_size=2)
    with pytest.raises(ValueError, match="ResNets on flat input"):
        limit_polish(t11, torch.randn(3, 1, 4, 4), torch.arange(3), lam=LAM)


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_train_reports_the_limit_consistently(loss):
    from gufm.deep.training import train

    model, X, y, _, _ = _setup("rn1", samples=S2)
    ex = frozenset({id(model.embed.E.weight)})
    f0 = full_objective(model, X, y, lam=LAM, loss=loss, exclude=ex)["objective"]
    r = train(model, (X, y), lam=LAM, loss=loss, epochs=0, polish_steps=30, progress=False)
    tol = r.config["polish_tol"]
    assert r.objective <= f0 + 1e-12  # the shrunk embedding's penalty is at most 1e-12
    limit_ok = (r.limit_grad_norm is not None and r.limit_grad_norm <= tol
                and r.limit_slope >= -tol)
    assert r.converged == (r.grad_norm <= tol or limit_ok)
    if r.limit_samples is not None:
        assert set(r.limit_samples) <= set(S2) and "singular-limit polish" in r.stop_reason
    off = train(_setup("rn1")[0], (X, y), lam=LAM, loss=loss, epochs=0, polish_steps=30,
                progress=False, polish_limit=False)
    assert off.limit_samples is None and "singular-limit" not in off.stop_reason
    assert off.config["polish_limit"] is False and r.config["polish_limit"] is True


def test_train_keeps_the_network_before_the_limit_polish(monkeypatch):
    import copy

    import gufm.deep.training as training
    from gufm.deep.polish import PolishResult

    def stalled(model, X, y, **kw):  # an L-BFGS polish that stops at once, unconverged
        return PolishResult(0, 1.0, 1.0, 1.0, False, "stub: no further decrease", 0)

    monkeypatch.setattr(training, "run_polish", stalled)
    model, X, y, _, _ = _setup("rn1", samples=S2)
    start = copy.deepcopy(model)
    r = training.train(model, (X, y), lam=LAM, epochs=0, polish_steps=40, progress=False,
                       keep_pre_limit=True)
    assert sorted(r.limit_samples) == sorted(S2)
    pre = r.pre_limit_model
    assert pre is not None and pre is not r.model
    # the copy is the network as the (stub) polish left it: the start, its embedding shrunk
    # like the result's (features unchanged, embedding penalty at most 1e-12; the two samples
    # 1e-7 off the singular set lose about 1e-10 to cancellation in the centring)
    with torch.no_grad():
        assert torch.allclose(pre(X), start(X), rtol=0, atol=1e-8)
    assert pre.embed.E.weight.norm() < start.embed.E.weight.norm()
    f_pre = full_objective(pre, X, y, lam=LAM)["objective"]
    f_start = full_objective(start, X, y, lam=LAM,
                             exclude=frozenset({id(start.embed.E.weight)}))["objective"]
    assert f_pre == pytest.approx(f_start, abs=1e-11)
    assert r.objective < f_pre  # the limit polish was kept: it lowered the objective
    # keeping the copy changes nothing else
    model2 = _setup("rn1", samples=S2)[0]
    r2 = training.train(model2, (X, y), lam=LAM, epochs=0, polish_steps=40, progress=False)
    assert r2.pre_limit_model is None and r2.objective == r.objective


@pytest.mark.parametrize("samples", [(S,), S2])
def test_limit_network_is_the_limit_whose_gradient_singular_limit_states(samples):
    """The network :func:`limit_network` yields (what the limit polish minimises and the kink
    measure differentiates) has the objective of the network near the limit and, by autograd
    and the reduced gradient, exactly the parts of :func:`singular_limit`'s limit gradient."""
    from gufm.deep.invariance import reduced_gradient
    from gufm.deep.singular_limit import embedding_margins, limit_network

    model, X, y, _, _ = _setup("rn1", samples=samples)
    lim = singular_limit(model, X, y, lam=LAM, samples=samples)
    f_near = full_objective(model, X, y, lam=LAM, exclude=frozenset({id(model.embed.E.weight)}))
    with limit_network(model, X, samples) as (net, groups):
        assert len(groups) == 1 + len(samples)
        exclude = frozenset(id(p) for g in groups for p in g)
        net.zero_grad(set_to_none=True)
        f_lim = full_objective(net, X, y, lam=LAM, backward=True, exclude=exclude)
        rest, inv = reduced_gradient(net, groups)
        k = groups[0][0].numel()
    assert f_lim["objective"] == pytest.approx(f_near["objective"], abs=1e-6)
    assert float(rest.norm()) == pytest.approx(lim.rest, rel=1e-5)
    assert float(inv[:k].norm()) == pytest.approx(lim.embedding, rel=1e-5)
    assert float(inv[k:].norm()) == pytest.approx(lim.direction, rel=1e-5)
    assert lim.embedding > 1e-6 and lim.direction > 1e-6
    assert not hasattr(model.embed.E, "parametrizations")  # removed on exit ...
    assert float(embedding_margins(model, X)[list(samples)].max()) < 1e-12  # ... E on it


def test_limit_network_refuses_a_sample_exactly_on_the_set_without_a_direction():
    from gufm.deep.singular_limit import limit_network

    model, X, *_ = _setup("rn1", t=0.0)
    with pytest.raises(ValueError, match="direction"), limit_network(model, X, [S]):
        pass
