"""ReLU kinks (gufm.deep.kinks): counts against an independent recording, the min-norm
subgradient against a toy whose answer is known, and invariances."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gufm.deep.kinks import kink_subgradient, relu_kinks
from gufm.deep.nets import make_model
from gufm.deep.nets.blocks import MLP, record_relu_inputs, relu


def _data(n: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 1, 3, 3, generator=g, dtype=torch.float64)
    return X, torch.arange(n) % 3


def test_relu_is_torch_relu_outside_the_recording_and_records_inside() -> None:
    z = torch.randn(4, 5, dtype=torch.float64)
    assert torch.equal(relu(z), torch.relu(z))
    with record_relu_inputs() as inputs:
        out = relu(z)
    assert torch.equal(out, torch.relu(z)) and len(inputs) == 1 and torch.equal(inputs[0], z)


def test_chosen_slope_is_the_one_sided_derivative_at_the_kink() -> None:
    z = torch.tensor([[0.0, 0.0, -2.0, 3.0]], dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, True, False, False]])
    value = torch.tensor([[0.25, 1.0, 0.0, 0.0]], dtype=torch.float64)
    with record_relu_inputs({0: (mask, value)}):
        out = relu(z)
    out.sum().backward()
    assert torch.equal(out.detach(), torch.relu(z.detach()))  # the value at a kink is unchanged
    assert z.grad.tolist() == [[0.25, 1.0, 0.0, 1.0]]


@pytest.mark.parametrize("arch", ["rn1", "rn2"])
def test_counts_equal_an_independent_recording_of_the_mlp_inputs(arch: str) -> None:
    m = make_model(arch, 3, 8, (1, 3, 3), 3, seed=1).double()
    X, _ = _data()
    seen: list[torch.Tensor] = []

    def hook(mod: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0]
        seen.append((x if mod.layers == 1 else mod.V1(x)).detach())

    handles = [mod.register_forward_pre_hook(hook) for mod in m.modules() if isinstance(mod, MLP)]
    try:
        k = relu_kinks(m, X, thresholds=(0.5, 0.1, 0.01))
    finally:
        for h in handles:
            h.remove()
    assert len(seen) == 3 and len(k.per_call[0]) == 3
    for t, count in zip((0.5, 0.1, 0.01), k.counts, strict=True):
        want = sum(int((z.abs() <= t * z.abs().amax(1, keepdim=True)).sum()) for z in seen)
        assert count == want
    assert k.total == sum(z.numel() for z in seen)
    assert k.counts[0] > k.counts[1] > 0  # the thresholds are not vacuous here


def test_counts_are_invariant_under_each_samples_scale() -> None:
    m = make_model("rn1", 2, 8, (1, 3, 3), 3, seed=2).double()
    X, _ = _data()
    scale = torch.logspace(-3, 3, X.shape[0], dtype=torch.float64)[:, None, None, None]
    a = relu_kinks(m, X, thresholds=(0.5, 0.2, 0.05))
    b = relu_kinks(m, X * scale, thresholds=(0.5, 0.2, 0.05))
    assert a == b


def test_expected_counts_scale_the_largest_threshold() -> None:
    m = make_model("rn1", 2, 8, (1, 3, 3), 3, seed=2).double()
    k = relu_kinks(m, _data()[0], thresholds=(0.5, 0.05))
    assert k.expected == (k.counts[0], k.counts[0] * 0.1)


@pytest.mark.parametrize("bad", [(), (1e-3, 1e-2), (0.0,), (1.5,)])
def test_bad_thresholds_are_refused(bad: tuple[float, ...]) -> None:
    m = make_model("rn1", 1, 8, (1, 3, 3), 3, seed=0)
    with pytest.raises(ValueError, match="thresholds"):
        relu_kinks(m, _data()[0].float(), thresholds=bad)


def test_a_model_without_relu_is_refused() -> None:
    with pytest.raises(ValueError, match="no relu"):
        relu_kinks(nn.Linear(9, 3).double(), torch.randn(4, 9, dtype=torch.float64))


class _Toy(nn.Module):
    r"""Logits :math:`(\mathrm{relu}(w x), 0)` through the row :math:`(w x, x)`: at
    :math:`w = \epsilon` MSE towards class 1 (target 0 for the first logit) has the natural
    gradient :math:`\epsilon x^2 + \lambda\epsilon` on the smooth side, and :math:`\lambda
    \epsilon` with the relu's derivative 0."""

    width = 1

    def __init__(self, w: float) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float64))

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        x = X.reshape(-1, 1)
        h = relu(torch.cat([self.w * x, x], dim=1))
        return torch.stack([h[:, 0], torch.zeros_like(h[:, 0])], dim=1)


def test_toy_kink_accounts_for_the_whole_gradient() -> None:
    """MSE with target e_1 (class 1): the first logit relu(w x) wants to be 0, any w <= 0 gives
    it, and the penalty wants w = 0.  At w = eps > 0 the natural gradient is (x^2 + lam) eps
    (smooth side); choosing the derivative 0 at the kink leaves lam * eps."""
    eps, lam = 1e-9, 0.1
    X, y = torch.full((1, 1), 2.0, dtype=torch.float64), torch.tensor([1])
    r = kink_subgradient(_Toy(eps), X, y, lam=lam, loss="mse", delta=1e-6)
    assert r.pairs == 1 and r.switched == 1
    assert r.grad_norm == pytest.approx((4.0 + lam) * eps, rel=1e-9)
    assert r.min_norm == pytest.approx(lam * eps, rel=1e-6)
    assert r.checked_norm == pytest.approx(lam * eps, rel=1e-6)
    far = kink_subgradient(_Toy(eps), X, y, lam=lam, loss="mse", delta=1e-10)
    assert far.pairs == 0 and far.min_norm == far.grad_norm == r.grad_norm


def test_a_kink_that_opens_downhill_is_clarke_stationary_too() -> None:
    """MSE with target 1 for the first logit (class 0): at w = eps the loss pulls w up (slope
    2 (2 eps - 1) < 0) while for w < 0 it is flat.  The one-sided slopes -2 and lam * eps
    bracket 0, so a derivative s in (0, 1) zeroes the gradient: Clarke stationarity is
    necessary for a minimum, not sufficient (this kink is not one).  The measure says so."""
    eps, lam = 1e-9, 0.1
    X, y = torch.full((1, 1), 2.0, dtype=torch.float64), torch.tensor([0])
    r = kink_subgradient(_Toy(eps), X, y, lam=lam, loss="mse", delta=1e-6)
    # natural: d/dw 0.5 (2w - 1)^2 + lam w^2 / 2 = 2 (2 eps - 1) + lam eps
    assert r.grad_norm == pytest.approx(abs(2 * (2 * eps - 1) + lam * eps), rel=1e-12)
    assert r.min_norm <= 1e-15 and r.checked_norm <= 1e-15 and r.switched == 1


def test_min_norm_is_invariant_under_the_order_of_the_samples() -> None:
    m = make_model("rn1", 2, 8, (1, 3, 3), 3, seed=3).double()
    X, y = _data(15, seed=4)
    a = kink_subgradient(m, X, y, lam=0.01, delta=0.05)
    perm = torch.randperm(15, generator=torch.Generator().manual_seed(5))
    b = kink_subgradient(m, X[perm], y[perm], lam=0.01, delta=0.05)
    assert a.pairs == b.pairs > 0
    assert b.grad_norm == pytest.approx(a.grad_norm, rel=1e-10)
    assert b.checked_norm == pytest.approx(a.checked_norm, rel=1e-6, abs=1e-12)
    assert a.min_norm <= a.grad_norm and a.checked_norm <= a.grad_norm * (1 + 1e-9)


def test_parameters_are_left_unchanged() -> None:
    m = make_model("rn1", 2, 8, (1, 3, 3), 3, seed=3).double()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    kink_subgradient(m, *_data(), lam=0.01, delta=0.05)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_bad_delta_and_too_many_pairs_are_refused() -> None:
    m = make_model("rn1", 2, 8, (1, 3, 3), 3, seed=3).double()
    X, y = _data()
    with pytest.raises(ValueError, match="delta"):
        kink_subgradient(m, X, y, lam=0.01, delta=0.0)
    with pytest.raises(ValueError, match="max_pairs"):
        kink_subgradient(m, X, y, lam=0.01, delta=0.5, max_pairs=3)


def test_a_kink_on_the_flat_side_does_not_lower_the_gradient() -> None:
    """At w = -eps (relu off) towards class 0: the natural gradient is the penalty's -lam eps;
    switching the relu on adds the data pull 2 (-2 eps - 1), of the same sign, so the best
    derivative stays 0 and the minimum is the natural gradient."""
    eps, lam = 1e-9, 0.1
    X, y = torch.full((1, 1), 2.0, dtype=torch.float64), torch.tensor([0])
    r = kink_subgradient(_Toy(-eps), X, y, lam=lam, loss="mse", delta=1e-6)
    assert r.pairs == 1 and r.switched == 0
    assert r.grad_norm == pytest.approx(lam * eps, rel=1e-9)
    assert r.min_norm == pytest.approx(lam * eps, rel=1e-6)
    assert r.checked_norm == pytest.approx(lam * eps, rel=1e-6)
