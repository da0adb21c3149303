"""Scale-invariant groups: exact invariance over c in [1e-3, 1e3] for every architecture that
claims a group, no claim where the features do change, and a reduced gradient norm that does
not depend on the representative and excludes the invariant direction."""

from __future__ import annotations

import math

import pytest
import torch

from gufm.deep.invariance import (
    gradient_norms,
    invariant_groups,
    normalize_groups,
    reduced_grad_sq,
    reference_norm,
    rescale,
)
from gufm.deep.nets import ARCHS, make_model
from gufm.deep.objective import full_objective

CS = [1e-3, 1e-2, 0.3, 1.0, 7.0, 1e2, 1e3]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def build(arch, kind, ln_eps):
    kw = dict(seed=0, dtype=torch.float64, ln_eps=ln_eps)
    if kind == "image":
        return make_model(arch, 2, 8, (1, 4, 4), 3, patch_size=2, **kw)
    return make_model(arch, 2, 8, num_classes=3, vocab_size=9, seq_len=5, pad_id=0, **kw)


def inputs(kind):
    g = torch.Generator().manual_seed(3)
    if kind == "image":
        return 2 * torch.randn(9, 1, 4, 4, generator=g, dtype=torch.float64)
    x = torch.randint(1, 9, (9, 5), generator=g)
    x[0, 3:] = 0
    return x


def expected_groups(arch, kind, ln_eps):
    """The claim of GUFMNet.scale_invariant_groups, restated independently."""
    resnet = ARCHS[arch][0] == "resnet"
    return ["embed"] if (resnet and kind == "image") or ln_eps == 0 else []


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("kind", ["image", "tokens"])
@pytest.mark.parametrize("ln_eps", [1e-5, 1e-2, 0.0])
def test_claimed_groups_are_exactly_invariant(arch, kind, ln_eps):
    m = build(arch, kind, ln_eps)
    x = inputs(kind)
    groups = m.scale_invariant_groups()
    assert sorted(groups) == expected_groups(arch, kind, ln_eps)
    h0 = m.features(x).detach()
    for ps in groups.values():
        assert {id(p) for p in ps} == {id(p) for p in m.embed.parameters()}
        for c in CS:
            rescale(ps, c)
            err = float((m.features(x).detach() - h0).abs().max())
            rescale(ps, 1 / c)
            assert err <= 1e-9, (c, err)


@pytest.mark.parametrize("arch", ["t11", "t12", "preln-t11"])
def test_transformer_embedding_is_not_invariant_with_eps(arch):
    """With ln_eps > 0 scaling the embedding changes a transformer's features (tokens get
    different factors, attention is not homogeneous): no group may be claimed."""
    m = build(arch, "image", 1e-2)
    x = inputs("image")
    h0 = m.features(x).detach()
    ps = list(m.embed.parameters())
    rescale(ps, 1e-2)
    assert float((m.features(x).detach() - h0).abs().max()) > 1e-4
    assert invariant_groups(m) == []


@pytest.mark.parametrize("arch", ["rn1", "rn2"])
def test_no_block_matrix_is_invariant(arch):
    m = build(arch, "image", 1e-5)
    x = inputs("image")
    z0 = m(x).detach()
    for name, p in m.named_parameters():
        if name.startswith("embed"):
            continue
        rescale([p], 3.0)
        assert float((m(x).detach() - z0).abs().max()) > 1e-6, name
        rescale([p], 1 / 3.0)


@pytest.mark.parametrize("arch", ["rn1", "rn2", "t11"])
def test_reduced_gradient_is_scale_free_and_orthogonal(arch):
    eps = 0.0 if arch == "t11" else 1e-5
    m = build(arch, "image", eps)
    x = inputs("image")
    y = torch.tensor([0, 1, 2] * 3)
    groups = invariant_groups(m)
    assert len(groups) == 1
    ref = gradient_norms(m, x, y, lam=0.02)
    for c in (1e-3, 1e3):
        rescale(groups[0], c)
        g = gradient_norms(m, x, y, lam=0.02)
        rescale(groups[0], 1 / c)
        assert g["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-6)
        assert g["grad_norm_rest"] == pytest.approx(ref["grad_norm_rest"], rel=1e-8)
    # Euler: the reduced objective's gradient is orthogonal to the group, so the projection
    # only removes rounding; at the representative the scale factor is 1
    normalize_groups(groups, reference_norm(m))
    m.zero_grad(set_to_none=True)
    ids = frozenset(id(p) for p in groups[0])
    full_objective(m, x, y, lam=0.02, backward=True, exclude=ids)
    dot = sum(float((p.grad * p.detach()).sum()) for p in groups[0])
    gn = math.sqrt(sum(float((p.grad**2).sum()) for p in groups[0]))
    assert abs(dot) <= 1e-10 * max(1.0, gn * reference_norm(m))
    rest, inv = reduced_grad_sq(m, groups)
    assert inv == pytest.approx(gn**2, rel=1e-8)
    assert math.sqrt(rest + inv) == pytest.approx(ref["grad_norm"], rel=1e-6)


def test_penalize_mode_has_no_groups():
    m = build("rn1", "image", 1e-5)
    assert invariant_groups(m, "penalize") == []
    with pytest.raises(ValueError, match="scale_invariant"):
        invariant_groups(m, "drop")
