"""The objective: independent re-computation, numpy/torch agreement, autograd, Taylor remainder."""

import numpy as np
import pytest
import torch

import gufm
from gufm.model.objective import value_and_grad


def random_point(prob, rng, per_sample=True):
    W = rng.standard_normal((prob.K, prob.dim))
    b = rng.standard_normal(prob.K) if prob.has_bias else None
    n = prob.N if per_sample else prob.G
    H = rng.standard_normal((prob.dim, n))
    if prob.features == "layernorm":
        H -= H.mean(0)
    if prob.features != "penalty":
        H *= prob.rho / np.linalg.norm(H, axis=0)
    return W, b, H


def naive_objective(prob, W, b, H, y_or_q):
    """Loop over samples, written from the spec formula without the package's helpers."""
    N = H.shape[1]
    total = 0.0
    for i in range(N):
        z = W @ H[:, i] + (b if b is not None else 0)
        q = y_or_q[i]
        if prob.loss == "ce":
            total += np.log(np.exp(z - z.max()).sum()) + z.max() - q @ z
        else:
            total += 0.5 * np.sum((z - q) ** 2)
    val = total / N + prob.lam_W / 2 * np.sum(W**2)
    if b is not None:
        val += prob.lam_b / 2 * np.sum(b**2)
    if prob.features == "penalty":
        val += prob.lam_H / 2 * np.sum(H**2)
    return val


CASES = [
    dict(loss="ce", features="layernorm"),
    dict(loss="mse", features="sphere", lam_b=0.3),
    dict(loss="ce", features="ball", lam_b=0.0),
    dict(loss="mse", features="penalty", lam_H=0.05),
    dict(loss="ce", features="penalty", lam_H=0.05, lam_b=0.1),
]


@pytest.mark.parametrize("kw", CASES)
def test_objective_matches_naive_loop(kw, rng):
    labels = rng.integers(0, 4, size=13)
    labels[:4] = np.arange(4)
    prob = gufm.GUFM(labels=labels, dim=5, lam_W=0.07, **kw)
    W, b, H = random_point(prob, rng)
    got = gufm.objective(prob, W, b, H)
    want = naive_objective(prob, W, b, H, np.eye(4)[labels])
    assert got == pytest.approx(want, rel=1e-13)


def test_soft_labels_objective(rng):
    Q = rng.dirichlet(np.ones(3), size=4)
    Q = np.vstack([Q, Q[:2]])  # repeated distributions form groups
    prob = gufm.GUFM(soft_labels=Q, dim=4, lam_W=0.1)
    assert prob.G == 4
    W, b, H = random_point(prob, rng, per_sample=False)
    Hfull = prob.lift(H)
    assert gufm.group_objective(prob, W, b, H) == pytest.approx(
        naive_objective(prob, W, b, Hfull, Q), rel=1e-13)


@pytest.mark.parametrize("kw", CASES)
def test_reduced_equals_lifted(kw, rng):
    prob = gufm.GUFM(counts=[4, 2, 3, 1], dim=5, lam_W=0.07, **kw)
    W, b, Hbar = random_point(prob, rng, per_sample=False)
    assert gufm.group_objective(prob, W, b, Hbar) == pytest.approx(
        gufm.objective(prob, W, b, prob.lift(Hbar)), rel=1e-13)


@pytest.mark.parametrize("kw", CASES)
def test_torch_matches_numpy_and_autograd(kw, rng):
    prob = gufm.GUFM(counts=[4, 2, 3, 1], dim=5, lam_W=0.07, **kw)
    W, b, H = random_point(prob, rng)
    val_np, g_np = value_and_grad(prob, W, b, H, columns="samples")
    Wt = torch.tensor(W, requires_grad=True)
    bt = None if b is None else torch.tensor(b, requires_grad=True)
    Ht = torch.tensor(H, requires_grad=True)
    val_t = gufm.objective(prob, Wt, bt, Ht)
    assert isinstance(val_t, torch.Tensor)
    assert float(val_t) == pytest.approx(float(val_np), rel=1e-14)
    val_t.backward()
    np.testing.assert_allclose(Wt.grad.numpy(), g_np.W, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(Ht.grad.numpy(), g_np.H, rtol=1e-12, atol=1e-14)
    if b is not None:
        np.testing.assert_allclose(bt.grad.numpy(), g_np.b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kw", CASES)
def test_gradient_taylor_remainder(kw, rng):
    """|F(x + t v) - F(x) - t <g, v>| must shrink like t^2 (slope 2 in log-log)."""
    prob = gufm.GUFM(counts=[3, 2, 2], dim=4, lam_W=0.2, **kw)
    W, b, H = random_point(prob, rng)
    f0, g = value_and_grad(prob, W, b, H, columns="samples")
    dW, dH = rng.standard_normal(W.shape), rng.standard_normal(H.shape)
    db = None if b is None else rng.standard_normal(b.shape)
    lin = np.sum(g.W * dW) + np.sum(g.H * dH) + (0 if b is None else np.sum(g.b * db))
    ts = np.logspace(-2, -5, 7)
    rem = []
    for t in ts:
        f, _ = value_and_grad(prob, W + t * dW, None if b is None else b + t * db, H + t * dH,
                              columns="samples", need_grad=False)
        rem.append(abs(f - f0 - t * lin))
    slope = np.polyfit(np.log(ts), np.log(rem), 1)[0]
    assert 1.9 < slope < 2.1


def test_objective_input_errors(rng):
    prob = gufm.GUFM(counts=[2, 2], dim=3, lam_W=0.1)
    W, b, H = random_point(prob, rng)
    with pytest.raises(ValueError, match="W must have shape"):
        gufm.objective(prob, W.T, None, H)
    with pytest.raises(ValueError, match="H must have shape"):
        gufm.objective(prob, W, None, H[:, :3])
    with pytest.raises(ValueError, match="b must be None"):
        gufm.objective(prob, W, np.zeros(2), H)
    Hn = H.copy()
    Hn[0, 0] = np.nan
    with pytest.raises(ValueError, match="H contains NaN"):
        gufm.objective(prob, W, None, Hn)
    with pytest.raises(ValueError, match="violates the 'layernorm'"):
        gufm.objective(prob, W, None, 2 * H)
    pb = gufm.GUFM(counts=[2, 2], dim=3, lam_W=0.1, lam_b=0.1)
    with pytest.raises(ValueError, match="b is required"):
        gufm.objective(pb, W, None, H)


@pytest.mark.parametrize("loss", ["ce", "mse"])
@pytest.mark.parametrize("soft", [False, True])
def test_loss_and_grad_with_softmax_match_the_separate_formulas(loss, soft):
    # one exponential serves value, gradient and softmax (numpy CE); torch takes the separate
    # path; both equal per_column_loss / weighted_loss_grad / softmax, tiny losses included
    import torch

    from gufm.backend import softmax
    from gufm.model.losses import per_column_loss, weighted_loss_and_grad, weighted_loss_grad

    rng = np.random.default_rng(5)
    K, G = 6, 9
    Z = 40 * rng.standard_normal((K, G))
    Q = rng.dirichlet(np.ones(K), G).T if soft else np.eye(K)[:, rng.integers(0, K, G)]
    p = rng.random(G)
    want_val = float((per_column_loss(loss, Z, Q) * p).sum())
    want_Y = weighted_loss_grad(loss, Z, Q, p)
    for conv in (np.asarray, torch.tensor):
        val, Y, S = weighted_loss_and_grad(loss, conv(Z), conv(Q), conv(p), with_softmax=True)
        assert float(val) == pytest.approx(want_val, rel=1e-14, abs=1e-300)
        np.testing.assert_allclose(np.asarray(Y), want_Y, rtol=1e-13, atol=1e-300)
        if loss == "ce":
            np.testing.assert_allclose(np.asarray(S), softmax(Z, axis=0), rtol=1e-13,
                                       atol=1e-300)
        else:
            assert S is None
    val2, Y2 = weighted_loss_and_grad(loss, Z, Q, p)
    assert float(val2) == pytest.approx(want_val, rel=1e-14) and np.allclose(Y2, want_Y)
