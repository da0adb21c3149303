"""Tests of gufm.streaming: streamed statistics equal the in-memory metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gufm import metrics as M
from gufm.collapse.streaming import CollapseAccumulator, stream_report


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The blocks here are tiny: with several threads, thread synchronisation dominates (and on
    an oversubscribed CI machine becomes pathological), so these tests run single-threaded."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


ALL = ["nc1", "nc1_trace_ratio", "nc1_cdnv", "nc2_classifier", "nc2_means", "nc3", "nc3_duality"]


def make_data(seed=0, K=4, d=7, N=600, offset=0.0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.arange(K), rng.integers(0, K, N - K)])
    rng.shuffle(y)
    H = (rng.standard_normal((d, N)) + 2 * rng.standard_normal((d, K))[:, y] + offset)
    return H.astype(dtype), y, rng.standard_normal((K, d))


def batches_of(H, y, size):
    """Row-major (batch, d) batches of column-major features H (d, N)."""
    return [(np.ascontiguousarray(H[:, i:i + size].T), y[i:i + size])
            for i in range(0, H.shape[1], size)]


def assert_close(got, want, rtol, keys=None):
    """Every key of ``got`` (or ``keys``) close to ``want``; only nc4 (two passes) may be missing."""
    assert set(want) - set(got) <= {"nc4"}, set(want) - set(got)
    for k in keys or got:
        if want[k] == float("inf"):  # e.g. gnc2_log when two normalised means coincide (d = 1)
            assert float(got[k]) == want[k], k
            continue
        assert abs(float(got[k]) - want[k]) <= rtol * max(abs(want[k]), 1e-3), (k, got[k], want[k])


@pytest.mark.parametrize("passes", [1, 2])
@pytest.mark.parametrize(("batch", "block"), [(37, None), (600, 16), (128, 5)])
def test_stream_equals_in_memory_float64(passes, batch, block):
    H, y, W = make_data(offset=3.0)
    G = np.random.default_rng(1).standard_normal((8, 8))
    want = M.collapse_report(H, y, W, gufm_reference=G)
    got = stream_report(batches_of(H, y, batch), 4, W, passes=passes, block_size=block,
                        gufm_reference=G)
    assert set(got) == set(want) - ({"nc4"} if passes == 1 else set())
    assert all(isinstance(v, float) for v in got.values())
    assert_close(got, want, 1e-10)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10**6), K=st.integers(2, 5), d=st.integers(1, 6),
       batch=st.integers(7, 50), passes=st.sampled_from([1, 2]))
def test_stream_equals_in_memory_property(seed, K, d, batch, passes):
    H, y, W = make_data(seed, K=K, d=d, N=K + 60)
    want = M.collapse_report(H, y, W)
    got = stream_report(batches_of(H, y, batch), K, W, passes=passes)
    assert_close(got, want, 1e-9)


@pytest.mark.parametrize("passes", [1, 2])
def test_stream_float32_documented_tolerance(passes):
    # float32 batches with a large common offset (|mu| >> spread): shifted sums keep the
    # float32 report within 1e-4 relative of float64 on the same (float32-rounded) data
    H32, y, W = make_data(2, K=5, d=24, N=200_000, offset=1e3, dtype=np.float32)
    want = M.collapse_report(H32.astype(np.float64), y, W)
    got = stream_report(batches_of(H32, y, 65_536), 5, W, passes=passes)
    assert_close(got, want, 1e-4)


@pytest.mark.parametrize("passes", [1, 2])
def test_stream_float32_collapsed_features(passes):
    # near-collapsed float32 features: class means 1e3 apart, unit spread, common offset 1e3.
    # The within-class statistics come from residuals about (rounded) class means, so their
    # float32 rounding scales with the spread, not with the means: 1e-4 of float64 still holds
    rng = np.random.default_rng(5)
    K, d, N = 4, 16, 100_000
    y = rng.integers(0, K, N)
    y[:K] = np.arange(K)
    H = 1e3 * rng.standard_normal((d, K))[:, y] + rng.standard_normal((d, N)) + 1e3
    H32, W = H.astype(np.float32), rng.standard_normal((K, d))
    want = M.collapse_report(H32.astype(np.float64), y, W)
    assert want["nc1"] < 1e-5  # collapsed: the cancellation a naive sum of squares would hit
    got = stream_report(batches_of(H32, y, 30_000), K, W, passes=passes)
    assert_close(got, want, 1e-4)


def test_zero_rows_have_cosine_zero_in_float32():
    # dead (all-zero) feature rows next to far-away class means: cos(0, w) = 0 exactly, as in
    # float64 -- the numerator w^T h assembled from w^T (h - mu) + w^T mu is rounding there
    H, y, W = make_data(6, K=3, d=8, N=3000, offset=1e3)
    H[:, ::3] = 0.0
    H32 = H.astype(np.float32)
    want = M.collapse_report(H32.astype(np.float64), y, W)
    Hn, Wn = H32.astype(np.float64), W
    cos = np.einsum("dn,nd->n", Hn, Wn[y]) / np.maximum(
        np.linalg.norm(Hn, axis=0) * np.linalg.norm(Wn[y], axis=1), 1e-300)
    assert want["nc3"] == pytest.approx(1 - cos.mean(), rel=1e-12)
    got = stream_report(batches_of(H32, y, 1000), 3, W, passes=2)
    assert abs(float(got["nc3"]) - want["nc3"]) <= 1e-7


def test_torch_batches_and_outputs():
    H, y, W = make_data(3)
    want = M.collapse_report(H, y, W)
    acc = CollapseAccumulator(4, 7, W=torch.tensor(W))
    for h, yy in batches_of(H, y, 100):
        acc.update(torch.tensor(h), torch.tensor(yy))
    got = acc.report()
    assert all(isinstance(v, torch.Tensor) and v.ndim == 0 for v in got.values())
    assert_close(got, want, 1e-10)
    # the report follows W's framework; the stats can be taken in either
    assert isinstance(acc.report(W)["nc1"], float)
    st_np = acc.stats(like=np.zeros(1))
    assert M.METRICS["nc1"].from_stats(st_np, None) == pytest.approx(want["nc1"], rel=1e-10)
    df = acc.report(W, as_frame=True)
    assert df.shape == (1, len(got)) and "nc4" not in got  # one pass: no nc4


def test_two_pass_W_given_late_and_nc3_left_out_without_W():
    H, y, W = make_data(4)
    want = M.collapse_report(H, y, W)
    bs = batches_of(H, y, 64)
    acc = CollapseAccumulator(4, 7)
    for h, yy in bs:
        acc.update(h, yy)
    no_w = acc.report()
    assert set(no_w) == {"nc1", "nc1_trace_ratio", "nc1_cdnv", "nc2_means", "nc2_equinorm",
                         "gnc2_dist", "gnc2_log"}
    with_w = acc.report(W)  # W was not there during the pass: no nc3
    assert "nc3" not in with_w and "nc2_classifier" in with_w
    acc2 = CollapseAccumulator(4, 7, passes=2)
    for h, yy in bs:
        acc2.update(h, yy)
    with pytest.raises(ValueError, match="next_pass"):
        acc2.report()
    acc2.next_pass(W=W)
    for h, yy in bs:
        acc2.update(h, yy)
    assert_close(acc2.report(), want, 1e-10)
    assert acc2.num_samples == H.shape[1]


def test_forward_hook():
    torch.manual_seed(0)
    K, d = 3, 5
    net = torch.nn.Sequential(torch.nn.Linear(4, d), torch.nn.Tanh(), torch.nn.Linear(d, K))
    net = net.double()
    X = torch.randn(90, 4, dtype=torch.float64)
    y = torch.arange(90) % K
    W = net[2].weight.detach()
    acc = CollapseAccumulator(K, d, W=W)
    handle = acc.hook(net[1])
    for i in range(0, 90, 32):
        with acc.labels(y[i:i + 32]):
            net(X[i:i + 32])
    with pytest.raises(ValueError, match="no labels set"):
        net(X[:4])
    acc.set_labels(y[:4])
    handle.remove()
    net(X[:4])  # no hook any more: ignored
    with torch.no_grad():
        H = net[1](net[0](X)).T  # (d, N)
    want = M.collapse_report(H, y, W)
    got = acc.report()
    assert_close(got, {k: float(v) for k, v in want.items()}, 1e-10)


def test_degenerate_inputs():
    H, y, W = make_data(5)
    bs = batches_of(H, y, 100)
    acc = CollapseAccumulator(4, 7, W=W)
    for h, yy in bs[:3]:
        acc.update(h, yy)
    bad = bs[3][0].copy()
    bad[5, 2] = np.nan
    with pytest.raises(ValueError, match="H_batch contains NaN"):
        acc.update(bad, bs[3][1])
    inf = bs[3][0].copy()
    inf[0, 0] = np.inf
    with pytest.raises(ValueError, match="H_batch contains NaN or inf"):
        acc.update(inf, bs[3][1])
    with pytest.raises(ValueError, match=r"pass H.T"):
        acc.update(np.ones((7, 3)), np.zeros(7, dtype=int))
    with pytest.raises(ValueError, match=r"labels_batch must lie in \[0, K-1\]"):
        acc.update(bs[3][0], bs[3][1] + 4)
    with pytest.raises(ValueError, match="labels_batch must have length"):
        acc.update(bs[3][0], bs[3][1][:-1])
    for h, yy in bs[3:]:  # the failed batches left the accumulator untouched
        acc.update(h, yy)
    assert_close(acc.report(), M.collapse_report(H, y, W), 1e-10)
    with pytest.raises(ValueError, match="W differs"):
        acc.report(W + 1)
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        CollapseAccumulator(1, 3)
    with pytest.raises(ValueError, match=r"W must have shape \(K, d\)"):
        CollapseAccumulator(4, 7, W=W[:, :3])
    with pytest.raises(ValueError, match="W contains NaN"):
        CollapseAccumulator(4, 7, W=W * np.nan)
    empty = CollapseAccumulator(5, 7)
    empty.update(bs[0][0], bs[0][1])
    with pytest.raises(ValueError, match="class 4 has no samples"):
        empty.report()
    flat = CollapseAccumulator(2, 3)
    flat.update(np.ones((6, 3)), np.array([0, 1, 0, 1, 0, 1]))
    with pytest.raises(ValueError, match="zero between-class spread"):
        flat.report()
    two = CollapseAccumulator(4, 7, passes=2)
    two.update(*bs[0])
    two.next_pass()
    two.update(*bs[1])
    with pytest.raises(ValueError, match="second pass saw different data"):
        two.report()
    with pytest.raises(ValueError, match="one-shot iterator"):
        stream_report(iter(bs), 4, W)


def test_single_sample_class_and_large_K_blocks():
    rng = np.random.default_rng(6)
    K, d = 300, 8  # K above the (block x K) product threshold and above the block size
    y = np.concatenate([np.arange(K), rng.integers(0, K, 700)])
    y[y == 7] = 8
    y[0] = 7  # class 7 has exactly one sample: within-class variance 0
    H = rng.standard_normal((d, y.size)) + 3 * rng.standard_normal((d, K))[:, y]
    W = rng.standard_normal((K, d))
    want = M.collapse_report(H, y, W)
    for passes, block in [(1, 64), (2, 64), (1, None), (2, None)]:  # K > block, K < block
        acc = CollapseAccumulator(K, d, W=W, passes=passes, block_size=block)
        for _ in range(passes):
            for h, yy in batches_of(H, y, 250):
                acc.update(h, yy)
            if passes == 2 and acc._pass == 1:
                acc.next_pass()
        got = acc.report()
        assert_close(got, want, 1e-9)
        assert float(acc.stats().within_ss[7]) == 0.0


def test_memory_independent_of_N():
    def state_numel(acc):
        return sum(v.numel() for v in vars(acc).values() if isinstance(v, torch.Tensor))

    sizes = []
    for N in (100, 5000):
        H, y, W = make_data(7, N=N)
        acc = CollapseAccumulator(4, 7, W=W, passes=2)
        for h, yy in batches_of(H, y, 1000):
            acc.update(h, yy)
        acc.next_pass()
        for h, yy in batches_of(H, y, 1000):
            acc.update(h, yy)
        sizes.append(state_numel(acc))
    assert sizes[0] == sizes[1]
