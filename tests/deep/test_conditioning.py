"""The LayerNorm singularity: measured, flagged, and why it stalls a gradient criterion."""

import math

import pytest
import torch

from gufm.deep.conditioning import LN_MARGIN_FLAG, layernorm_margin
from gufm.deep.nets import make_model
from gufm.deep.nets.blocks import record_layernorm_inputs, sphere_layernorm
from gufm.deep.objective import full_objective
from gufm.deep.training import train


def _data(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 3, 3, generator=g, dtype=torch.float64), torch.arange(n) % 3


def test_recorder_sees_every_layernorm_call_and_nothing_outside():
    m = make_model("rn2", 3, 8, (1, 3, 3), 3, seed=0).double()
    X, _ = _data()
    with record_layernorm_inputs() as norms:
        m(X)
    assert len(norms) == 1 + 3 + 1  # embedding, one per block, the final exact LayerNorm
    assert all(n.shape == (X.shape[0],) for n in norms)
    sphere_layernorm(torch.ones(2, 3))  # outside the block: not recorded, no error
    assert len(norms) == 5


@pytest.mark.parametrize("arch", ["rn1", "rn2", "t11", "preln-t11"])
def test_margin_finds_the_sample_on_the_singular_set(arch):
    m = make_model(arch, 2, 8, (1, 4, 4), 3, seed=1, patch_size=2).double()
    X = torch.randn(16, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    healthy = layernorm_margin(m, X)
    assert not healthy.flagged and healthy.ratio > LN_MARGIN_FLAG
    if hasattr(m.embed, "pos"):  # patches: without positions a zero image embeds to 0
        with torch.no_grad():
            m.embed.pos.zero_()
    X[5] = 0.0
    got = layernorm_margin(m, X)
    assert got.flagged and got.ratio < 1e-6
    assert got.sample == 5 and got.call == 0


def test_curvature_grows_like_one_over_the_margin_squared():
    """Moving one sample's embedding towards span(1) by a factor r makes the objective's
    second difference along a fixed direction of E grow like 1/r^2."""
    m = make_model("rn1", 2, 8, (1, 3, 3), 3, seed=2).double()
    X, y = _data()
    E = m.embed.E.weight.detach().clone()
    x0 = X[0].reshape(-1)
    dE = torch.randn(E.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    curv = []
    for r in (1e-1, 1e-2, 1e-3):
        # E_r: row-centred action on x0 shrunk by r (E x0 -> mean * 1 + r * centred part)
        u = x0 / x0.dot(x0)
        c = E @ x0
        cent = c - c.mean()
        Er = E - (1 - r) * torch.outer(cent, u)
        assert torch.allclose(Er @ x0 - (Er @ x0).mean(), r * cent)
        vals = []
        for t in (-1e-7, 0.0, 1e-7):
            with torch.no_grad():
                m.embed.E.weight[:] = Er + t * dE
            vals.append(full_objective(m, X, y, lam=0.0, loss="ce")["objective"])
        curv.append(abs(vals[0] - 2 * vals[1] + vals[2]) / 1e-14)
        assert layernorm_margin(m, X).sample == 0 or r == 1e-1
    assert curv[1] > 30 * curv[0] and curv[2] > 30 * curv[1]  # ~100x per decade: 1/r^2


def test_train_reports_the_margin_and_names_the_singular_sample():
    X, y = _data()
    X[4] = 0.0  # its embedding is 0 whatever E: on the singular set from the start
    r = train(make_model("rn1", 2, 8, (1, 3, 3), 3, seed=0), (X.float(), y), lam=0.01,
              epochs=20, polish_steps=5, polish_tol=1e-30, progress=False)
    assert not r.converged and math.isfinite(r.objective)  # an all-zero input once gave NaN
    assert r.ln_margin_sample == 4 and r.ln_margin < LN_MARGIN_FLAG
    assert "sample 4 is near the LayerNorm singularity" in r.stop_reason
    assert r.to_dict()["ln_margin_sample"] == 4
    healthy = train(make_model("rn1", 2, 8, (1, 3, 3), 3, seed=0), (_data()[0].float(), y),
                    lam=0.01, epochs=20, polish_steps=5, polish_tol=1e-30, progress=False)
    assert math.isfinite(healthy.ln_margin) and "singularity" not in healthy.stop_reason


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_row_at_the_singular_set_maps_to_zero_with_zero_gradient(dtype):
    x = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 4.0], [3.0, 3.0, 3.0]], dtype=dtype,
                     requires_grad=True)
    h = sphere_layernorm(x)
    assert h[0].abs().max() == 0 and torch.isfinite(h).all()
    assert float(h[1].norm()) == pytest.approx(math.sqrt(3), rel=1e-6)
    h.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad[0].abs().max() == 0


def test_recording_sees_only_its_own_thread():
    """A Dask worker runs two sweep runs in two threads: one thread's margin must not collect
    the other's LayerNorm calls (nor make them fail)."""
    import threading

    m = make_model("rn1", 3, 8, (1, 3, 3), 3, seed=0).double()
    X, _ = _data()
    stop = threading.Event()
    errors = []

    def busy():
        try:
            while not stop.is_set():
                m(X)
        except Exception as exc:  # pragma: no cover - the failure this test guards against
            errors.append(exc)

    t = threading.Thread(target=busy)
    t.start()
    try:
        for _ in range(50):
            with record_layernorm_inputs() as norms:
                m(X)
            assert len(norms) == 5
    finally:
        stop.set()
        t.join()
    assert not errors
