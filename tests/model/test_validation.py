"""Certify only what is true: the layout of H is never guessed (F1), soft-label rows are exact so
CE with an unpenalised bias stays bounded (F2), and bad input is refused precisely (F5)."""

import math
import re
import tracemalloc
from fractions import Fraction

import numpy as np
import pytest
import scipy.optimize

import gufm
from gufm.model.objective import column_data, value_and_grad
from gufm.model.validation import MAX_SAMPLES, SOFT_LABEL_TOL, exact_simplex_rows


def naive_value(prob, W, b, H, Q_rows):
    """F at per-sample features H (d, N), one sample at a time, from the formula."""
    N = H.shape[1]
    tot = 0.0
    for i in range(N):
        z = W @ H[:, i] + (0 if b is None else b)
        q = Q_rows[i]
        if prob.loss == "ce":
            m = z.max()
            tot += m + math.log(np.exp(z - m).sum()) - q @ z
        else:
            tot += 0.5 * ((z - q) ** 2).sum()
    F = tot / N + 0.5 * prob.lam_W * (W**2).sum()
    if b is not None:
        F += 0.5 * prob.lam_b * (b**2).sum()
    if prob.features == "penalty":
        F += 0.5 * prob.lam_H * (H**2).sum()
    return F


def exact_sum(row):
    """The real-number sum of floats (no rounding)."""
    return sum(Fraction(x) for x in row)


def balanced_ce_etf_value(K, rho, lam):
    """Balanced CE on a sphere of radius rho with d - 1 >= K - 1: the simplex-ETF optimum,
    minimised over the one scale s of W = s M^T (z_kk = s rho, z_jk = -s rho / (K - 1))."""
    def F(s):
        return math.log1p((K - 1) * math.exp(-s * rho * K / (K - 1))) + 0.5 * lam * K * s * s
    return scipy.optimize.minimize_scalar(F, bounds=(0, 1e3), method="bounded",
                                          options={"xatol": 1e-12}).fun


# ----------------------------------------------------------------------------- F1: layout
@pytest.mark.parametrize("method", ["auto", "closed_form", "gradient", "sdp", "full"])
def test_f1_samples_not_in_group_order(method):
    prob = gufm.GUFM(labels=[1, 0, 2], dim=4, lam_W=1e-2)  # N = G = 3, samples out of order
    res = gufm.solve(prob, method=method)
    want = balanced_ce_etf_value(3, 2.0, 1e-2)
    assert want == pytest.approx(0.054725, abs=5e-7)
    # what must hold for every method: the value is F at the returned point, the bound is valid
    H = res.features()  # per sample, in the order given
    assert gufm.objective(prob, res.W, res.b, H) == pytest.approx(res.value, rel=1e-12)
    assert naive_value(prob, res.W, res.b, H, np.eye(3)[[1, 0, 2]]) == pytest.approx(
        res.value, rel=1e-12)
    assert res.lower_bound <= want * (1 + 1e-9)
    assert res.value >= want * (1 - 1e-9)
    if method in ("auto", "closed_form"):  # the closed form applies: certified at the optimum
        assert res.certified and res.value == pytest.approx(want, rel=1e-7)


@pytest.mark.parametrize("method", ["auto", "gradient", "sdp", "full"])
def test_f1_soft_labels_all_distinct(method):
    Q = np.array([[0.7, 0.3], [0.1, 0.9], [0.4, 0.6]])
    prob = gufm.GUFM(soft_labels=Q, dim=4, lam_W=1e-2)
    assert prob.G == prob.N == 3
    res = gufm.solve(prob, method=method)
    assert naive_value(prob, res.W, res.b, res.features(), prob.soft_labels) == pytest.approx(
        res.value, rel=1e-12)
    assert res.lower_bound <= 0.5392190  # the optimum 0.5392189... (see test_battery)
    assert res.value >= 0.5392189
    if method == "auto":
        assert res.certified and res.value == pytest.approx(0.5392189, abs=1e-6)


def test_f1_layout_is_explicit(rng):
    prob = gufm.GUFM(labels=[1, 0, 2, 2], dim=3, lam_W=0.1, lam_b=0.2)
    W, b = rng.standard_normal((3, 3)), rng.standard_normal(3)
    Hg = rng.standard_normal((3, 3))
    Hg -= Hg.mean(0)
    Hg *= prob.rho / np.linalg.norm(Hg, axis=0)
    Y = np.eye(3)[[1, 0, 2, 2]]
    # group layout = the same value as the lifted per-sample layout
    assert gufm.group_objective(prob, W, b, Hg) == pytest.approx(
        naive_value(prob, W, b, prob.lift(Hg), Y), rel=1e-13)
    assert gufm.objective(prob, W, b, prob.lift(Hg)) == pytest.approx(
        naive_value(prob, W, b, prob.lift(Hg), Y), rel=1e-13)
    # the wrong width is refused by each, with the other function named
    with pytest.raises(ValueError, match=r"shape \(dim, N\) = \(3, 4\).*use group_objective"):
        gufm.objective(prob, W, b, Hg)
    with pytest.raises(ValueError, match=r"shape \(dim, G\) = \(3, 3\).*use objective"):
        gufm.group_objective(prob, W, b, prob.lift(Hg))
    with pytest.raises(TypeError, match="columns"):
        value_and_grad(prob, W, b, Hg)  # the layout has no default
    with pytest.raises(ValueError, match="columns must be one of"):
        value_and_grad(prob, W, b, Hg, columns="auto")
    with pytest.raises(ValueError, match="one column per group"):
        column_data(prob, 4, "groups")


def test_f1_same_width_different_order(rng):
    """N == G: the two layouts have the same width and give different (each correct) values."""
    prob = gufm.GUFM(labels=[2, 0, 1], dim=3, lam_W=0.1)
    W = rng.standard_normal((3, 3))
    H = rng.standard_normal((3, 3))
    H -= H.mean(0)
    H *= prob.rho / np.linalg.norm(H, axis=0)
    as_samples = gufm.objective(prob, W, None, H)
    as_groups = gufm.group_objective(prob, W, None, H)
    assert as_samples == pytest.approx(naive_value(prob, W, None, H, np.eye(3)[[2, 0, 1]]),
                                       rel=1e-13)
    assert as_groups == pytest.approx(naive_value(prob, W, None, H, np.eye(3)), rel=1e-13)
    assert abs(as_samples - as_groups) > 1e-3


# ------------------------------------------------------------------ F2: exact soft labels
def test_f2_rows_sum_exactly_to_one():
    Q = np.array([[0.5, 0.5 + 9e-10], [1, 0], [0, 1], [0.7, 0.3], [0.1, 0.2 + 0.7]])
    assert exact_sum([0.7, 0.3]) != 1  # the float row [0.7, 0.3] sums to 1 - 2**-54
    prob = gufm.GUFM(soft_labels=Q, dim=4, lam_W=1e-2, lam_b=0.0)
    for row in prob.soft_labels.tolist():
        assert exact_sum(row) == 1
    for row in prob.groups.targets.T.tolist():
        assert exact_sum(row) == 1
    # entries move by the row's deviation (<= 1e-9) plus rounding only
    np.testing.assert_allclose(prob.soft_labels, Q, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(prob.soft_labels[1:3], Q[1:3])


def test_f2_bias_direction_is_flat(rng):
    """With exact rows F(b + t 1) = F(b): the unpenalised-bias problem is bounded below."""
    Q = np.array([[0.5, 0.5 + 9e-10], [1, 0], [0, 1]])
    prob = gufm.GUFM(soft_labels=Q, dim=4, lam_W=1e-2, lam_b=0.0)
    W, b = rng.standard_normal((2, 4)), rng.standard_normal(2)
    H = rng.standard_normal((4, 3))
    H -= H.mean(0)
    H *= prob.rho / np.linalg.norm(H, axis=0)
    f0 = gufm.objective(prob, W, b, H)
    for t in (1e3, -1e6, 1e6):
        assert gufm.objective(prob, W, b + t, H) == pytest.approx(f0, abs=1e-8)
    # the rows as given would lose t * 9e-10 / 3 per step: 3e-4 at t = 1e6
    assert 1e6 * 9e-10 / 3 > 1e-4


def test_f2_reproducer_not_certified_unbounded():
    prob = gufm.GUFM(soft_labels=[[0.5, 0.5 + 9e-10], [1, 0], [0, 1]], dim=4, lam_W=1e-2,
                     lam_b=0.0)
    res = gufm.solve(prob)
    assert math.isfinite(res.value) and res.value >= 0  # F >= 0 for every valid instance
    assert res.lower_bound <= res.value
    # same optimum as the rows [.5, .5] (they differ by 9e-10 in one entry)
    ref = gufm.solve(gufm.GUFM(soft_labels=[[0.5, 0.5], [1, 0], [0, 1]], dim=4, lam_W=1e-2,
                               lam_b=0.0))
    assert res.value == pytest.approx(ref.value, abs=1e-8)
    assert res.lower_bound <= ref.value + 1e-8


@pytest.mark.parametrize("row", [[0.5, 0.5 + 2 * SOFT_LABEL_TOL], [0.6, 0.6], [1.2, -0.2]])
def test_f2_rows_off_the_simplex_refused(row):
    with pytest.raises(ValueError, match=r"soft_labels: every row must be a probability.*row 0"):
        gufm.GUFM(soft_labels=[row, [1, 0]], dim=4, lam_W=1e-2)


def test_exact_simplex_rows_properties(rng):
    Q = rng.dirichlet(np.full(7, 0.3), size=50)
    Q[0] = [1e-300, 0, 0, 0, 0, 0, 1]
    E = exact_simplex_rows(Q)
    assert all(exact_sum(r) == 1 for r in E.tolist())
    assert np.all(E >= 0)
    np.testing.assert_allclose(E, Q, rtol=0, atol=7 * 2.0**-52)
    np.testing.assert_array_equal(exact_simplex_rows(E), E)  # idempotent


# ------------------------------------------------------------------ F5: no silent coercion
def make(**kw):
    base = dict(counts=[5, 3, 2], dim=4, lam_W=1e-2)
    base.update(kw)
    return gufm.GUFM(**base)


@pytest.mark.parametrize("kw, match", [
    (dict(counts=[True] * 3), "counts must hold integers, got bool"),
    (dict(counts=np.ones(3, dtype=bool)), "counts must hold integers, got booleans"),
    (dict(counts=["5", "3"]), "counts must hold integers, got str '5' at index 0"),
    (dict(counts=np.array(["5", "3"])), "counts must hold integers, got an array of dtype"),
    (dict(counts="53"), "counts must be a sequence of integers"),
    (dict(dim="4"), "dim must be an integer, got str '4'"),
    (dict(dim=4.0), "dim must be an integer, got float"),
    (dict(dim=True), "dim must be an integer, got bool"),
    (dict(lam_W="0.01"), "lam_W must be a real number, got str"),
    (dict(lam_W=True), "lam_W must be a real number, got bool"),
    (dict(lam_b=False), "lam_b must be a real number, got bool"),
    (dict(radius="2"), "radius must be a real number, got str"),
    (dict(features="penalty", lam_H="1"), "lam_H must be a real number, got str"),
    (dict(counts=[5, 3], num_classes=2.7), "num_classes must be an integer, got float 2.7"),
    (dict(counts=None, labels=[0, 1, 1], num_classes=2.7), "num_classes must be an integer"),
    (dict(counts=None, labels=[0, True, 1]), "labels must hold integers, got bool"),
    (dict(counts=None, labels=["0", "1"]), "labels must hold integers"),
    (dict(counts=None, soft_labels=[[True, False], [False, True]]), "soft_labels must hold real"),
    (dict(counts=None, soft_labels=[["a", "b"]]), "soft_labels must hold real"),
])
def test_f5_type_errors_name_the_argument(kw, match):
    with pytest.raises(TypeError, match=match):
        make(**kw)


@pytest.mark.parametrize("kw, match", [
    (dict(counts=[1e300, 1, 1]), r"counts: a class count overflows.*2\*\*53"),
    (dict(counts=[2**62] * 3), r"counts: a class count overflows.*2\*\*53"),
    (dict(counts=np.array([2**62] * 3)), r"counts: a class count overflows"),
    (dict(counts=[2**52, 2**52, 2]), r"counts: the total N = sum\(counts\) = .* overflows"),
    (dict(counts=[2**64, 1]), r"counts: a class count overflows"),
    (dict(counts=[1.5, 2]), r"counts must be integers, got 1.5 at index 0"),
    (dict(counts=[np.inf, 2]), r"counts must be integers, got inf at index 0"),
    (dict(counts=np.array([np.nan, 2])), r"counts must be integers, got nan at index 0"),
    (dict(counts=[5, 3], num_classes=3), r"num_classes = 3 contradicts counts, which has K = 2"),
    (dict(counts=None, labels=[0, 2**40]), r"labels: K = 1099511627777 classes .* GiB"),
    (dict(counts=None, labels=[0, -1]), r"labels must be non-negative integers, got -1"),
    (dict(num_classes=1, counts=None, labels=[0, 0]), r"num_classes must be an integer >= 2"),
    (dict(dim=1), r"dim must be an integer >= 2, got 1"),
])
def test_f5_value_errors_name_the_argument(kw, match):
    with pytest.raises(ValueError, match=match):
        make(**kw)


def test_f5_huge_K_fails_before_allocating():
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"counts: K = 100000 classes .* 74.5 GiB"):
            gufm.GUFM(counts=np.ones(10**5, dtype=np.int64), dim=4, lam_W=1e-2)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20  # far below the 74.5 GiB K x K identity


def test_f5_counts_build_is_O_K():
    tracemalloc.start()
    try:
        prob = gufm.GUFM(counts=[10**10, 1], dim=4, lam_W=1e-2)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20  # an N-length int64 array would be 80 GB
    assert prob.N == 10**10 + 1 and prob.groups.members is None
    np.testing.assert_allclose(prob.groups.weights, [10**10 / (10**10 + 1), 1 / (10**10 + 1)])
    assert MAX_SAMPLES == 2**53
    small = gufm.GUFM(counts=[2, 1], dim=4, lam_W=1e-2)
    np.testing.assert_array_equal(small.groups.sample_group, [0, 0, 1])  # built on demand


def test_f5_exact_integer_floats_and_numpy_scalars_accepted():
    p = make(counts=[5.0, 3.0, 2.0], dim=np.int64(4), lam_W=np.float32(0.01), lam_b=0,
             num_classes=np.int32(3))
    assert p.counts.dtype == np.int64 and p.counts.tolist() == [5, 3, 2]
    assert type(p.dim) is int and type(p.lam_W) is float and p.lam_b == 0.0
    q = gufm.GUFM(labels=np.array([0.0, 1.0, 1.0]), dim=3, lam_W=0.1)
    assert q.labels.dtype == np.int64 and q.counts.tolist() == [1, 2]


@pytest.mark.parametrize("name, kw", [
    ("lam_W", {}), ("lam_H", {"features": "penalty"}), ("radius", {}),
])
def test_f5_zero_and_negative_state_the_same_rule(name, kw):
    msgs = []
    for v in (0.0, -1.0):
        with pytest.raises(ValueError) as e:
            make(**kw, **{name: v})
        msgs.append(str(e.value))
    rule = f"{name} must be positive ({name} > 0)"
    assert all(m.startswith(rule) for m in msgs), msgs


def test_f5_lam_b_rule_and_penalty_message():
    with pytest.raises(ValueError, match=r"lam_b must be non-negative \(lam_b >= 0\), or None"):
        make(lam_b=-1e-3)
    with pytest.raises(ValueError, match=r"lam_H is required for features='penalty': pass "
                                         r"lam_H > 0.*replaces the norm constraint"):
        make(features="penalty")


@pytest.mark.parametrize("argv, flag", [
    (["--lam-w", "0"], r"lam[-_][wW] must be positive"),
    (["--lam-w", "0.01", "--dim", "1"], r"dim must be an integer >= 2"),
    (["--lam-w", "0.01", "--features", "penalty"], r"lam[-_][hH] is required"),
    (["--lam-w", "0.01", "--counts", "9007199254740993,3"], r"counts: a class count overflows"),
])
def test_cli_solve_bad_values_one_line_exit_2(argv, flag, capsys):
    from gufm.cli import main

    base = ["solve", "--counts", "5,3", "--dim", "4"]
    assert main(base + argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("gufm solve: error: ")
    assert re.search(flag, err), err


def test_f5_torch_inputs():
    import torch

    p = gufm.GUFM(labels=torch.tensor([0, 1, 1]), dim=3, lam_W=0.1)
    assert p.counts.tolist() == [1, 2]
    q = gufm.GUFM(soft_labels=torch.tensor([[0.25, 0.75], [1.0, 0.0]], dtype=torch.float32),
                  dim=3, lam_W=0.1)
    np.testing.assert_array_equal(q.soft_labels, [[0.25, 0.75], [1.0, 0.0]])
    assert gufm.GUFM(counts=torch.tensor([3, 2]), dim=3, lam_W=0.1).N == 5
    with pytest.raises(TypeError, match="counts must hold integers, got booleans"):
        gufm.GUFM(counts=torch.tensor([True, True]), dim=3, lam_W=0.1)
