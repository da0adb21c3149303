"""The certificate's PSD decision (gufm.model.psd) against eigh, including near-singular cases."""

from __future__ import annotations

import numpy as np
import pytest

from gufm.model.psd import cholesky_certifies, lobpcg_min, psd_shift


def _random_psd(n: int, rank: int, rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    X = rng.standard_normal((n, rank)) * scale
    return X @ X.T


def _proved(S: np.ndarray, t: float) -> bool:
    """Independent check: eigh of S + t I has no eigenvalue below eigh's own rounding level."""
    w = np.linalg.eigvalsh(S + t * np.eye(S.shape[0]))
    return bool(w[0] >= -1e-14 * max(1.0, float(np.abs(w).max())))


@pytest.mark.parametrize("n, rank", [(5, 5), (30, 12), (80, 79)])
def test_psd_matrices_are_decided_by_one_cholesky(n, rank):
    rng = np.random.default_rng(n)
    S = _random_psd(n, rank, rng) + (1e-3 * np.eye(n) if rank == n else 0.0)
    r = psd_shift(S)
    lam = np.linalg.eigvalsh(S)[0]
    if rank == n:  # positive definite: decided at the rounding level
        assert r.method == "cholesky" and r.vector is None
    assert r.shift >= max(0.0, -lam)  # never below what eigh says is needed
    # at most the factorisation's rounding bound: ~ 2 gamma_{n+1} tr(S)
    gamma = (n + 1) * 2.0**-53 / (1 - (n + 1) * 2.0**-53)
    assert r.shift <= 3 * gamma * np.trace(S) + max(0.0, -lam) * 1.01 + 1e-15
    assert _proved(S, r.shift)


@pytest.mark.parametrize("n", [6, 40, 120])
@pytest.mark.parametrize("depth", [1.0, 1e-4, 1e-9])
def test_indefinite_matrices_shift_matches_eigh(n, depth):
    """S = PSD - depth v vᵀ: the shift is -lambda_min (eigh) up to a tiny margin."""
    rng = np.random.default_rng(int(n / depth) % 1000)
    S = _random_psd(n, n // 2, rng)
    v = rng.standard_normal(n)
    v /= np.linalg.norm(v)
    S = S - depth * (S.trace() / n) * np.outer(v, v)
    lam = float(np.linalg.eigvalsh(S)[0])
    assert lam < 0
    r = psd_shift(S)
    assert r.shift >= -lam
    assert r.shift <= -lam * (1 + 1e-6) + 1e-11 * np.abs(S).max()
    assert r.lambda_min == pytest.approx(lam, rel=1e-6, abs=1e-12 * np.abs(S).max())
    assert r.method in ("lobpcg", "eigh")
    # the escape vector is an eigenvector of lambda_min
    assert np.linalg.norm(S @ r.vector - r.lambda_min * r.vector) <= 1e-6 * np.abs(S).max()
    assert _proved(S, r.shift)


def test_singular_psd_with_rounding_level_negativity():
    """The certificate's typical case: rank-deficient PSD computed in floating point (a
    diagonal minus a Gram), whose computed lambda_min is a rounding-level negative."""
    rng = np.random.default_rng(7)
    n = 60
    Y = rng.standard_normal((n - 1, n))
    G = Y.T @ Y
    mu = np.linalg.eigvalsh(G)[-1]  # diag(mu) - G is PSD with a one-dimensional kernel
    S = np.diag(np.full(n, mu)) - G
    lam = float(np.linalg.eigvalsh(S)[0])
    r = psd_shift(S)
    assert abs(lam) < 1e-10 * mu
    assert r.shift >= max(0.0, -lam)
    assert r.shift < 1e-11 * mu  # the proof costs only a rounding-level shift
    assert _proved(S, r.shift)


def test_cholesky_certifies_agrees_with_eigh_on_random_matrices():
    rng = np.random.default_rng(3)
    for trial in range(40):
        n = int(rng.integers(2, 30))
        S = _random_psd(n, int(rng.integers(1, n + 1)), rng)
        S -= rng.uniform(-1, 1) * np.eye(n)  # positive or negative shifts of the spectrum
        lam = float(np.linalg.eigvalsh(S)[0])
        t = cholesky_certifies(S, 0.0)
        if lam > 1e-8 * np.abs(S).max():
            assert t is not None, trial
        if lam < -1e-8 * np.abs(S).max():
            assert t is None, trial
        if t is not None:
            assert t >= max(0.0, -lam)


def test_lobpcg_min_matches_eigh():
    rng = np.random.default_rng(11)
    S = _random_psd(100, 100, rng)
    S[0, 0] -= 200.0  # a separated smallest eigenvalue
    lam, v, res = lobpcg_min(S)
    w, V = np.linalg.eigh(S)
    assert lam == pytest.approx(w[0], rel=1e-8)
    assert abs(float(v @ V[:, 0])) == pytest.approx(1.0, abs=1e-6)
    assert res <= 1e-6 * np.abs(S).max()
    assert lobpcg_min(np.eye(5)) is None  # too small for a block of 4


@pytest.mark.parametrize("bad, match", [
    (np.ones((2, 3)), "square"), (np.zeros((0, 0)), "square"),
    (np.array([[1.0, np.nan], [np.nan, 1.0]]), "NaN"),
])
def test_bad_matrices_raise(bad, match):
    with pytest.raises(ValueError, match=match):
        psd_shift(bad)


def test_negative_tau_raises():
    with pytest.raises(ValueError, match="tau"):
        cholesky_certifies(np.eye(2), -1.0)


def test_negligible_shift_is_proved_by_cholesky_alone():
    """An optimum's certificate: ||S|| ~ 1e-4 and a cluster of 30 eigenvalues within 2e-15 of
    zero, some negative.  With a negligible shift allowed, Cholesky factorisations prove the
    smallest shift up to it (no eigenpair, no eigh); without, LOBPCG/eigh decide as before;
    a shift larger than allowed is not taken."""
    rng = np.random.default_rng(3)
    n, m = 200, 30
    Q = np.linalg.qr(rng.standard_normal((n, n)))[0]
    w = np.concatenate([np.linspace(-2e-15, 2e-15, m), 10 ** rng.uniform(-5, -4, n - m)])
    S = (Q * w) @ Q.T
    S = 0.5 * (S + S.T)
    lam = float(np.linalg.eigvalsh(S)[0])
    assert lam < -1e-15
    assert psd_shift(S).method in ("lobpcg", "eigh")
    r = psd_shift(S, negligible=1e-13)
    assert r.method == "cholesky" and r.vector is None and r.lambda_min == -r.shift
    assert max(0.0, -lam) <= r.shift <= 1e-13
    assert r.shift <= 2.0 * max(0.0, -lam) + 1e-15  # the bisection gets close to the need
    assert _proved(S, r.shift)
    assert psd_shift(S, negligible=1e-16).method in ("lobpcg", "eigh")
