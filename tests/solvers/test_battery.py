"""Property-based battery: ``gufm.solve`` never certifies what is false.

Random instances over loss (ce, mse) x features (layernorm, sphere, ball, penalty) x bias (none,
unpenalised, penalised) x data (balanced, imbalanced, extreme 1000:1, soft labels) x (d < K,
d >= K) are solved by gufm and, independently, by :func:`independent_solve`: L-BFGS with restarts
on the K-feature (G-feature for soft labels) reduced problem, in a parametrisation of its own,
written here from the problem statement (docs/problem.md, docs/reduction.md) without gufm's
solvers, objective or geometry.  Its best value is an upper bound on the optimum, so every case
asserts:

* ``lower_bound <= value`` (up to rounding) and ``value >= 0`` (every valid instance has F >= 0);
* ``lower_bound <= independent_best + tol``: the bound is valid, certified or not;
* certified => ``value <= independent_best + tol``: no false certificate;
* the reported value is the objective, recomputed here sample by sample, at the returned point,
  which is feasible;
* an answer within a time budget (``max_seconds``).

``benchmarks/battery.py`` runs the same checks on many more (and larger) instances and writes
the outcome table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import scipy.linalg
import scipy.optimize
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gufm

LOSSES = ("ce", "mse")
FEATURES = ("layernorm", "sphere", "ball", "penalty")
BIASES = ("none", "unpenalised", "penalised")
DATA = ("balanced", "imbalanced", "extreme", "soft")
#: time budget handed to gufm.solve (a solve it ends must say so, uncertified unless proven)
BUDGET_S = 60.0
#: rounding slack of a bound/value comparison, relative to 1 + |value|
ROUNDING = 1e-9


# ------------------------------------------------------------------------------ instances
@dataclass
class Case:
    """One instance: the raw data and hyper-parameters, and what the reduced problem sees."""

    loss: str
    features: str
    bias: str
    data: str
    K: int
    d: int
    lam_W: float
    lam_b: float | None
    lam_H: float | None
    radius: float | None
    counts: list[int] | None  # hard labels (class by class)
    soft: np.ndarray | None  # (N, K) soft labels, rows dyadic (exact sums)

    def gufm_problem(self) -> gufm.GUFM:
        data = {"counts": self.counts} if self.soft is None else {"soft_labels": self.soft}
        return gufm.GUFM(**data, dim=self.d, loss=self.loss, features=self.features,
                         radius=self.radius, lam_W=self.lam_W, lam_b=self.lam_b, lam_H=self.lam_H)

    @property
    def rho(self) -> float:
        return math.sqrt(self.d) if self.radius is None else self.radius

    def targets(self) -> np.ndarray:
        """Per-sample targets (N, K), in the order gufm was given the samples."""
        if self.soft is not None:
            return self.soft
        return np.repeat(np.eye(self.K), self.counts, axis=0)

    def reduced(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Weights p (G,), targets Q (K, G) and multiplicities n (G,) of the reduced problem,
        grouping identical rows (hard labels: one group per class)."""
        if self.soft is None:
            n = np.asarray(self.counts, dtype=float)
            return n / n.sum(), np.eye(self.K), n
        groups: dict[tuple, int] = {}
        for row in map(tuple, self.soft.tolist()):
            groups[row] = groups.get(row, 0) + 1
        Q = np.array(list(groups)).T
        n = np.array(list(groups.values()), dtype=float)
        return n / n.sum(), Q, n

    def describe(self) -> dict[str, Any]:
        return {"loss": self.loss, "features": self.features, "bias": self.bias,
                "data": self.data, "K": self.K, "d": self.d, "lam_W": self.lam_W,
                "lam_b": self.lam_b, "lam_H": self.lam_H, "radius": self.radius,
                "counts": self.counts,
                "soft": None if self.soft is None else self.soft.tolist()}


def dyadic_rows(rng: np.random.Generator, N: int, K: int, bits: int = 6) -> np.ndarray:
    """Random distributions on the grid of multiples of 2**-bits: exact sums of 1."""
    scale = 2**bits
    rows = np.zeros((N, K))
    for i in range(N):
        cuts = np.sort(rng.integers(0, scale + 1, size=K - 1))
        rows[i] = np.diff(np.concatenate([[0], cuts, [scale]])) / scale
    return rows


def build_case(*, loss: str, features: str, bias: str, data: str, K: int, small_d: bool,
               extra_d: int, log_lam_W: float, log_lam_b: float, log_lam_H: float,
               radius: float | None, seed: int) -> Case:
    """Deterministic case from its drawn parameters (shared with benchmarks/battery.py)."""
    rng = np.random.default_rng(seed)
    d = max(2, K - 1 - extra_d) if small_d else K + extra_d
    counts = soft = None
    if data == "balanced":
        counts = [int(rng.integers(1, 6))] * K
    elif data == "imbalanced":
        counts = rng.integers(1, 21, size=K).tolist()
    elif data == "extreme":
        big = rng.random(K) < 0.5
        i, j = rng.choice(K, size=2, replace=False)
        big[i], big[j] = True, False  # at least one class of each size
        counts = [1000 if bg else 1 for bg in big]
    else:
        N = int(rng.integers(2, 3 * K + 3))
        soft = dyadic_rows(rng, N, K)
        reps = rng.integers(0, N, size=int(rng.integers(0, 3)))
        soft = np.vstack([soft, soft[reps]])  # some repeated distributions form groups
    return Case(
        loss=loss, features=features, bias=bias, data=data, K=K, d=d,
        lam_W=10.0**log_lam_W,
        lam_b=None if bias == "none" else 0.0 if bias == "unpenalised" else 10.0**log_lam_b,
        lam_H=10.0**log_lam_H if features == "penalty" else None,
        radius=None if features == "penalty" else radius,
        counts=counts, soft=soft)


def random_params(rng: np.random.Generator, max_K: int = 6) -> dict[str, Any]:
    """The parameters of :func:`build_case`, drawn by numpy (for the benchmark script)."""
    return dict(
        loss=str(rng.choice(LOSSES)), features=str(rng.choice(FEATURES)),
        bias=str(rng.choice(BIASES)), data=str(rng.choice(DATA)),
        K=int(rng.integers(2, max_K + 1)), small_d=bool(rng.random() < 0.5),
        extra_d=int(rng.integers(0, 4)), log_lam_W=float(rng.uniform(-3, 0)),
        log_lam_b=float(rng.uniform(-3, 0)), log_lam_H=float(rng.uniform(-3, 0)),
        radius=None if rng.random() < 0.5 else float(rng.uniform(0.5, 3.0)),
        seed=int(rng.integers(2**31)))


params_strategy = st.fixed_dictionaries(dict(
    loss=st.sampled_from(LOSSES), features=st.sampled_from(FEATURES),
    bias=st.sampled_from(BIASES), data=st.sampled_from(DATA), K=st.integers(2, 5),
    small_d=st.booleans(), extra_d=st.integers(0, 2),
    log_lam_W=st.floats(-3, 0), log_lam_b=st.floats(-3, 0), log_lam_H=st.floats(-3, 0),
    radius=st.one_of(st.none(), st.floats(0.5, 3.0)), seed=st.integers(0, 2**31 - 1)))


# --------------------------------------------------------------- the independent solver
class Reduced:
    """The reduced problem in a parametrisation of its own:

    ``h_g = rho * A u_g / ||u_g||`` with ``A`` an orthonormal basis of the complement of ``1``
    (layernorm, ``u`` in R^(d-1)), ``A = I`` (sphere), ``A = [I_d 0]`` (ball: the projection of
    the sphere of R^(d+1) onto the closed ball), and ``h_g = u_g`` for penalty.
    ``F = sum_g p_g l(W h_g + b, q_g) + lam_W/2 ||W||^2 + lam_b/2 ||b||^2
    [+ lam_H/2 sum_g n_g ||h_g||^2]``, CE ``l = lse(z) - q.z``, MSE ``l = ||z - q||^2 / 2``.
    """

    def __init__(self, case: Case) -> None:
        self.c = case
        self.p, self.Q, self.n = case.reduced()
        self.K, self.G, d = case.K, self.p.shape[0], case.d
        if case.features == "layernorm":
            self.A = scipy.linalg.null_space(np.ones((1, d)))
        elif case.features == "ball":
            self.A = np.eye(d, d + 1)
        else:
            self.A = np.eye(d)
        self.r = self.A.shape[1]
        self.nb = 0 if case.lam_b is None else self.K
        self.size = self.K * d + self.nb + self.r * self.G

    def unpack(self, x: np.ndarray):
        K, d = self.K, self.c.d
        W = x[: K * d].reshape(K, d)
        b = x[K * d: K * d + self.nb] if self.nb else None
        U = x[K * d + self.nb:].reshape(self.r, self.G)
        return W, b, U

    def features(self, U: np.ndarray):
        if self.c.features == "penalty":
            return U, None
        s = np.linalg.norm(U, axis=0)
        return self.c.rho * (self.A @ (U / s)), s

    def fun(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        c = self.c
        W, b, U = self.unpack(x)
        H, s = self.features(U)
        Z = W @ H + (0 if b is None else b[:, None])
        if c.loss == "ce":
            m = Z.max(0)
            E = np.exp(Z - m)
            lse = m + np.log(E.sum(0))
            loss = float(self.p @ (lse - (self.Q * Z).sum(0)))
            Y = (E / E.sum(0) - self.Q) * self.p
        else:
            R = Z - self.Q
            loss = float(self.p @ (0.5 * (R**2).sum(0)))
            Y = R * self.p
        F = loss + 0.5 * c.lam_W * float((W**2).sum())
        gW = Y @ H.T + c.lam_W * W
        gH = W.T @ Y
        parts = [gW.ravel()]
        if b is not None:
            F += 0.5 * c.lam_b * float(b @ b)
            parts.append(Y.sum(1) + c.lam_b * b)
        if c.features == "penalty":
            F += 0.5 * c.lam_H * float(((H**2).sum(0) * self.n).sum())
            gU = gH + c.lam_H * H * self.n
        else:
            w = U / s
            gw = c.rho * (self.A.T @ gH)
            gU = (gw - w * (w * gw).sum(0)) / s
        parts.append(gU.ravel())
        return F, np.concatenate(parts)


def independent_solve(case: Case, restarts: int = 4, seed: int = 0,
                      maxiter: int = 4000) -> tuple[float, np.ndarray]:
    """Best value of L-BFGS over ``restarts`` random starts (an upper bound on the optimum)."""
    prob = Reduced(case)
    rng = np.random.default_rng(seed)
    best, best_x = math.inf, None
    for r in range(restarts):
        scale = [1.0, 0.1, 3.0, 0.3][r % 4] / math.sqrt(case.d)
        x0 = rng.standard_normal(prob.size) * scale
        K, d = case.K, case.d
        if r % 2 == 1 and case.features != "penalty":  # a start with W aligned to the features
            W0, b0, U0 = prob.unpack(x0.copy())
            H0, _ = prob.features(U0)
            x0[: K * d] = (prob.Q @ H0.T).ravel() * scale
        res = scipy.optimize.minimize(prob.fun, x0, jac=True, method="L-BFGS-B",
                                      options={"maxiter": maxiter, "maxcor": 30,
                                               "gtol": 1e-11, "ftol": 1e-15})
        if res.fun < best:
            best, best_x = float(res.fun), res.x
    return best, best_x


# ---------------------------------------------------------------------------- the checks
def per_sample_value(case: Case, W: np.ndarray, b: np.ndarray | None, H: np.ndarray) -> float:
    """F at per-sample features H (d, N), recomputed here (vectorised over samples)."""
    T = case.targets().T  # (K, N)
    N = T.shape[1]
    Z = W @ H + (0 if b is None else b[:, None])
    if case.loss == "ce":
        m = Z.max(0)
        loss = (m + np.log(np.exp(Z - m).sum(0)) - (T * Z).sum(0)).sum() / N
    else:
        loss = 0.5 * ((Z - T) ** 2).sum() / N
    F = loss + 0.5 * case.lam_W * (W**2).sum()
    if b is not None:
        F += 0.5 * case.lam_b * (b**2).sum()
    if case.features == "penalty":
        F += 0.5 * case.lam_H * (H**2).sum()
    return float(F)


def feasibility(case: Case, H: np.ndarray) -> float:
    if case.features == "penalty":
        return 0.0
    norms = np.linalg.norm(H, axis=0)
    if case.features == "ball":
        v = float(np.clip(norms - case.rho, 0, None).max())
    else:
        v = float(np.abs(norms - case.rho).max())
    if case.features == "layernorm":
        v = max(v, float(np.abs(H.sum(0)).max()))
    return v / case.rho


def check(case: Case, res: Any, indep: float) -> list[str]:
    """Every property the battery asserts; returns the violated ones (empty: all hold)."""
    bad = []
    v, lb = float(res.value), float(res.lower_bound)
    tol = 1e-8 * (1 + abs(indep))
    if not (math.isfinite(v) and v >= -ROUNDING):
        bad.append(f"value {v} is not a finite F >= 0")
    if lb > v + ROUNDING * (1 + abs(v)):
        bad.append(f"invalid bound: lower_bound {lb!r} > value {v!r}")
    if lb > indep + tol:
        bad.append(f"invalid bound: lower_bound {lb!r} > independent {indep!r}")
    if res.certified and v > indep + tol + res.rtol * abs(v):
        bad.append(f"false certificate: value {v!r} > independent {indep!r}")
    H = res.features()
    if feasibility(case, H) > 1e-7:
        bad.append(f"infeasible point (violation {feasibility(case, H):.3g})")
    mine = per_sample_value(case, np.asarray(res.W), None if res.b is None else np.asarray(res.b),
                            H)
    if abs(mine - v) > 1e-9 * (1 + abs(v)):
        bad.append(f"reported value {v!r} != objective at the returned point {mine!r}")
    return bad


def classify(case: Case, res: Any, indep: float) -> str:
    """Outcome for the benchmark table."""
    bad = check(case, res, indep)
    if res.certified and any(b.startswith(("false certificate", "invalid bound")) for b in bad):
        return "false_certificate"
    if any(b.startswith("invalid bound") for b in bad):
        return "invalid_bound"
    if bad:
        return "wrong_value"
    return "certified_correct" if res.certified else "uncertified"


# ----------------------------------------------------------------------------- the tests
def test_independent_gradient_is_right():
    """The test's own gradient, against central differences, in every parametrisation."""
    rng = np.random.default_rng(3)
    for features in FEATURES:
        for loss in LOSSES:
            case = build_case(loss=loss, features=features, bias="penalised", data="soft", K=3,
                              small_d=False, extra_d=1, log_lam_W=-1, log_lam_b=-1,
                              log_lam_H=-1, radius=1.5, seed=1)
            prob = Reduced(case)
            x = rng.standard_normal(prob.size)
            _, g = prob.fun(x)
            e = np.eye(prob.size)
            fd = np.array([(prob.fun(x + 1e-6 * e[i])[0] - prob.fun(x - 1e-6 * e[i])[0]) / 2e-6
                           for i in range(prob.size)])
            np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-7)


def test_independent_solver_finds_the_balanced_closed_form():
    """Balanced CE on the LayerNorm sphere, K - 1 <= d - 1: the simplex-ETF value, found by a
    1-d minimisation over the scale of W (z_kk = s rho, z_jk = -s rho / (K - 1))."""
    K, d, lam = 4, 5, 0.05
    rho = math.sqrt(d)
    case = build_case(loss="ce", features="layernorm", bias="none", data="balanced", K=K,
                      small_d=False, extra_d=1, log_lam_W=math.log10(lam), log_lam_b=0,
                      log_lam_H=0, radius=None, seed=0)
    want = scipy.optimize.minimize_scalar(
        lambda s: math.log1p((K - 1) * math.exp(-s * rho * K / (K - 1))) + 0.5 * lam * K * s * s,
        bounds=(0, 100), method="bounded", options={"xatol": 1e-12}).fun
    got, _ = independent_solve(case)
    assert got == pytest.approx(want, rel=1e-8)


@settings(max_examples=80, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(params=params_strategy)
def test_battery_no_false_certificate(params):
    case = build_case(**params)
    prob = case.gufm_problem()
    if case.soft is not None:  # dyadic rows are kept exactly as given
        np.testing.assert_array_equal(prob.soft_labels, case.soft)
    res = gufm.solve(prob, max_seconds=BUDGET_S)
    indep, _ = independent_solve(case)
    bad = check(case, res, indep)
    assert not bad, (bad, case.describe(), res)


@pytest.mark.parametrize("soft, lam_b", [
    ([[0.7, 0.3], [0.1, 0.9], [0.4, 0.6]], None),  # F1: all-distinct soft rows, N == G
    ([[0.5, 0.5], [1, 0], [0, 1]], 0.0),  # F2's instance with the exact rows
])
def test_reproducers_against_independent(soft, lam_b):
    case = Case(loss="ce", features="layernorm", bias="none" if lam_b is None else "unpenalised",
                data="soft", K=2, d=4, lam_W=1e-2, lam_b=lam_b, lam_H=None, radius=None,
                counts=None, soft=np.array(soft, dtype=float))
    res = gufm.solve(case.gufm_problem())
    indep, _ = independent_solve(case, restarts=6)
    assert not check(case, res, indep)
    assert res.certified and res.value == pytest.approx(indep, rel=1e-7)
    if lam_b is None:
        assert indep == pytest.approx(0.5392189, abs=1e-6)


def test_f2_reproducer_near_exact_rows():
    """Rows [.5, .5 + 9e-10] (renormalised exactly by gufm) against the independent optimum
    of the exact rows [.5, .5]: F moves by at most 9e-10 per unit of logit."""
    soft = [[0.5, 0.5 + 9e-10], [1, 0], [0, 1]]
    res = gufm.solve(gufm.GUFM(soft_labels=soft, dim=4, lam_W=1e-2, lam_b=0.0),
                     max_seconds=BUDGET_S)
    exact = Case(loss="ce", features="layernorm", bias="unpenalised", data="soft", K=2, d=4,
                 lam_W=1e-2, lam_b=0.0, lam_H=None, radius=None, counts=None,
                 soft=np.array([[0.5, 0.5], [1, 0], [0, 1]]))
    indep, _ = independent_solve(exact, restarts=6)
    assert 0 <= res.lower_bound <= res.value
    assert res.value == pytest.approx(indep, abs=1e-7)
    assert res.lower_bound <= indep + 1e-7


def test_check_catches_what_it_must():
    """The battery's checks can fail: a bound above the optimum, a wrong value, an infeasible
    point, each on the balanced closed-form case whose optimum is known."""
    from types import SimpleNamespace

    case = build_case(loss="ce", features="sphere", bias="none", data="balanced", K=3,
                      small_d=False, extra_d=1, log_lam_W=-1, log_lam_b=0, log_lam_H=0,
                      radius=1.0, seed=0)
    res = gufm.solve(case.gufm_problem())
    indep, _ = independent_solve(case)
    assert classify(case, res, indep) == "certified_correct"

    def fake(**kw):
        base = dict(value=res.value, lower_bound=res.lower_bound, certified=res.certified,
                    rtol=res.rtol, W=res.W, b=res.b, features=res.features,
                    stop_reason=res.stop_reason)
        base.update(kw)
        return SimpleNamespace(**base)

    assert classify(case, fake(lower_bound=indep + 1e-3, value=indep + 1e-3), indep) == \
        "false_certificate"
    assert classify(case, fake(lower_bound=indep + 1e-3, value=indep + 1e-3, certified=False),
                    indep) == "invalid_bound"
    assert classify(case, fake(lower_bound=res.value + 1e-3, certified=False), indep) == \
        "invalid_bound"
    assert classify(case, fake(value=res.value + 1e-3, certified=False), indep) == "wrong_value"
    H = res.features()
    assert classify(case, fake(features=lambda: 1.01 * H, certified=False), indep) == \
        "wrong_value"
