"""Shared fixtures: a seeded generator, one-thread execution, and both array backends."""

import numpy as np
import pytest

from gufm._util import limit_threads


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture
def one_thread():
    """Run the test body with one BLAS and one torch thread (optimiser outcomes must not depend on it)."""
    with limit_threads(1):
        yield


@pytest.fixture(params=["numpy", "torch"])
def backend(request):
    """Parametrise a test over both array backends: returns a converter ``to(x)``."""
    if request.param == "numpy":
        return lambda x: np.asarray(x, dtype=np.float64)
    torch = pytest.importorskip("torch")
    return lambda x: torch.as_tensor(np.asarray(x), dtype=torch.float64)
