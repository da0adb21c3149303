"""Small shared utilities: thread limits (one implementation for the whole package)."""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def limit_threads(n: int | None):
    """Temporarily limit BLAS (threadpoolctl) and torch threads to ``n`` (``None``: no change)."""
    if n is None:
        yield
        return
    import torch
    from threadpoolctl import threadpool_limits

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        torch.set_num_threads(old)
