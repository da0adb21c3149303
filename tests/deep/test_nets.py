"""Tests of gufm.nets: features on the LayerNorm sphere, the e2e >= head >= GUFM inequality on
random networks, masking, seeding and argument errors."""

from __future__ import annotations

import math

import pytest
import torch

from gufm.deep.nets import ARCHS, make_model, model_for, sphere_layernorm
from gufm.deep.nets.blocks import layernorm
from gufm.deep.reduction import compare

ARCH_NAMES = list(ARCHS)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

MAIN_ARCHS = ["rn1", "rn2", "t11", "t12", "preln-t11"]


def image_model(arch: str, dtype=torch.float32, **kw):
    return make_model(arch, 2, 8, (1, 8, 8), 3, seed=0, dtype=dtype, **kw)


def token_model(arch: str, dtype=torch.float32, **kw):
    return make_model(arch, 2, 8, num_classes=3, vocab_size=11, seq_len=6, pad_id=0, seed=0,
                      dtype=dtype, **kw)


def on_sphere_error(h: torch.Tensor) -> float:
    d = h.shape[1]
    h = h.detach()
    mean_err = float(h.mean(dim=1).abs().max())
    norm_err = float((h.norm(dim=1) - math.sqrt(d)).abs().max())
    return max(mean_err, norm_err)


@pytest.mark.parametrize("arch", ARCH_NAMES)
@pytest.mark.parametrize("kind", ["image", "tokens"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("ln_eps", [1e-5, 0.0])
def test_features_on_layernorm_sphere(arch, kind, dtype, tol, ln_eps):
    g = torch.Generator().manual_seed(1)
    if kind == "image":
        model = image_model(arch, dtype, ln_eps=ln_eps)
        x = 3 * torch.randn(7, 1, 8, 8, generator=g, dtype=dtype)
    else:
        model = token_model(arch, dtype, ln_eps=ln_eps)
        x = torch.randint(1, 11, (7, 6), generator=g)
        x[0, 3:] = 0  # padding
        x[1, :] = 0  # only padding
    h = model.features(x)
    assert h.shape == (7, 8) and h.dtype == dtype
    assert on_sphere_error(h) < tol * math.sqrt(8)
    assert model(x).shape == (7, 3)


def test_sphere_layernorm_matches_torch_layernorm_as_eps_to_zero():
    x = torch.randn(5, 16, dtype=torch.float64)
    ref = torch.nn.functional.layer_norm(x, (16,), eps=1e-300)
    assert torch.allclose(sphere_layernorm(x), ref, atol=1e-12)
    assert torch.allclose(layernorm(x, 0.0), ref, atol=1e-12)
    # zero input: no NaN (value and gradient)
    z = torch.zeros(2, 4, dtype=torch.float64, requires_grad=True)
    out = sphere_layernorm(z)
    out.sum().backward()
    assert torch.all(out == 0) and torch.all(torch.isfinite(z.grad))


@pytest.mark.parametrize("arch", ["t11", "preln-t11", "rn1"])
def test_padding_is_masked(arch):
    model = token_model(arch, torch.float64)
    a = torch.tensor([[3, 4, 5, 0, 0, 0]])
    b = torch.tensor([[3, 4, 5, 0, 0]])  # fewer pads: same real tokens at the same positions
    assert torch.allclose(model.features(a), model.features(b), atol=1e-12)


def test_patch_embedding_shapes_and_errors():
    m = make_model("t11", 1, 8, (3, 32, 32), 10)
    assert m.embed.n_tokens == 16 and m.embed.p == 8
    m = make_model("t12", 1, 8, (1, 28, 28), 10, patch_size=4)
    assert m.embed.n_tokens == 49
    with pytest.raises(ValueError, match="patch_size"):
        make_model("t11", 1, 8, (1, 8, 8), 10, patch_size=3)


def test_make_model_errors():
    with pytest.raises(ValueError, match="arch"):
        make_model("resnet50", 2, 8, (1, 8, 8), 3)
    with pytest.raises(ValueError, match="depth"):
        make_model("rn1", 0, 8, (1, 8, 8), 3)
    with pytest.raises(ValueError, match="depth"):
        make_model("rn1", 1.5, 8, (1, 8, 8), 3)
    with pytest.raises(ValueError, match="width"):
        make_model("rn1", 1, 1, (1, 8, 8), 3)
    with pytest.raises(ValueError, match="num_classes"):
        make_model("rn1", 1, 8, (1, 8, 8), 1)
    with pytest.raises(ValueError, match="input_shape"):
        make_model("t11", 1, 8, None, 3)
    with pytest.raises(ValueError, match="vocab_size"):
        make_model("t11", 1, 8, (6,), 3, input_kind="tokens")
    with pytest.raises(ValueError, match="input_kind"):
        make_model("rn1", 1, 8, (6,), 3, input_kind="audio")
    with pytest.raises(ValueError, match="ln_eps"):
        make_model("rn1", 1, 8, (1, 8, 8), 3, ln_eps=-1)
    with pytest.raises(ValueError, match="vector"):
        make_model("t11", 1, 8, num_classes=3, in_dim=5)


def test_seeded_models_are_identical_and_leave_global_rng_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = make_model("t12", 2, 8, (1, 8, 8), 3, seed=7)
    assert torch.equal(before, torch.random.get_rng_state())
    b = make_model("t12", 2, 8, (1, 8, 8), 3, seed=7)
    c = make_model("t12", 2, 8, (1, 8, 8), 3, seed=8)
    for (n, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q), n
    assert any(not torch.equal(p, r) for p, r in zip(a.parameters(), c.parameters(), strict=True))


def test_seeded_models_built_in_threads_equal_the_serial_ones():
    """Seeded builds in several threads at once (a Dask worker with two threads runs two
    sweep runs so) must not interleave their draws from torch's global generator."""
    from concurrent.futures import ThreadPoolExecutor

    seeds = list(range(8)) * 3
    serial = [make_model("t11", 2, 16, (1, 8, 8), 3, seed=s) for s in seeds]
    with ThreadPoolExecutor(8) as pool:
        threaded = list(pool.map(lambda s: make_model("t11", 2, 16, (1, 8, 8), 3, seed=s), seeds))
    for a, b in zip(serial, threaded, strict=True):
        for (n, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
            assert torch.equal(p, q), n


def test_all_parameters_are_weights_without_bias_or_affine():
    m = image_model("t12")
    names = [n for n, _ in m.named_parameters()]
    assert not any(n.endswith(".bias") for n in names)
    assert "classifier.weight" in names and "embed.pos" in names
    assert make_model("rn1", 1, 8, (1, 8, 8), 3, bias=True).classifier.bias is not None
    # the depth is the number of blocks
    assert len(make_model("rn2", 5, 8, (1, 8, 8), 3).blocks) == 5


def test_model_for_datasets():
    from gufm.deep.data import load_dataset

    ds = load_dataset("synthetic-tokens", n_per_class=3)
    m = model_for(ds, "preln-t11", 1, 8)
    assert m(ds.X).shape == (12, 4)
    img = load_dataset("digits", n_per_class=2)
    assert model_for(img, "rn2", 1, 8)(img.X).shape == (20, 10)
    assert model_for(img, "t11", 1, 8)(img.X).shape == (20, 10)


# --------------------------------------------------------------------- e2e >= head >= optimum
def _data(K=3, n=4, imbalanced=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    counts = [n + (k if imbalanced else 0) for k in range(K)]
    y = torch.cat([torch.full((c,), k) for k, c in enumerate(counts)])
    X = torch.randn(len(y), 1, 8, 8, generator=g) + 0.5 * y[:, None, None, None]
    return X, y


@pytest.mark.parametrize("arch", MAIN_ARCHS)
@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_inequality_random_networks(arch, loss):
    X, y = _data()
    for scale in (1.0, 4.0):
        model = image_model(arch, torch.float64)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(scale)
        res = compare(model, (X, y), lam=0.01, loss=loss)  # raises on a violation
        assert res.e2e_objective >= res.head_objective >= res.gufm_optimum - 1e-12
        assert res.gap >= res.head_gap >= -1e-12
        assert res.gufm_certified
        assert res.feature_violation < 1e-12


@pytest.mark.parametrize("bias,imbalanced", [(True, False), (False, True)])
def test_inequality_bias_and_imbalanced(bias, imbalanced):
    X, y = _data(imbalanced=imbalanced)
    model = image_model("rn1", torch.float64, bias=bias)
    res = compare(model, (X, y), lam=0.01, loss="ce")
    assert res.bias == bias
    assert res.e2e_objective >= res.head_objective >= res.gufm_lower_bound - 1e-10
