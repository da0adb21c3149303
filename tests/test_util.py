"""gufm._util.reuse_freed_memory: glibc's allocator tuned for a block, and restored."""

import numpy as np
import pytest

from gufm import _util


class _FakeLibc:
    def __init__(self):
        self.calls = []

    def mallopt(self, param, value):
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad):
        self.calls.append(("trim", pad))
        return 1


def test_heap_reuse_sets_and_restores_glibc_parameters(monkeypatch):
    fake = _FakeLibc()
    monkeypatch.setattr(_util, "_glibc", lambda: fake)
    with _util.reuse_freed_memory():
        assert fake.calls == [("mallopt", _util._M_MMAP_MAX, 0),
                              ("mallopt", _util._M_TRIM_THRESHOLD, 2**30)]
        with _util.reuse_freed_memory():  # nested: nothing more
            pass
        assert len(fake.calls) == 2
    assert fake.calls[2:] == [("mallopt", _util._M_MMAP_MAX, 65536),
                              ("mallopt", _util._M_TRIM_THRESHOLD, 128 * 1024), ("trim", 0)]
    assert _util._heap_depth == 0


def test_heap_reuse_restores_after_an_exception(monkeypatch):
    fake = _FakeLibc()
    monkeypatch.setattr(_util, "_glibc", lambda: fake)
    with pytest.raises(RuntimeError), _util.reuse_freed_memory():
        raise RuntimeError("boom")
    assert fake.calls[-1] == ("trim", 0) and _util._heap_depth == 0


def test_heap_reuse_can_be_switched_off(monkeypatch):
    fake = _FakeLibc()
    monkeypatch.setattr(_util, "_glibc", lambda: fake)
    with _util.reuse_freed_memory(enabled=False):
        pass
    assert fake.calls == []
    monkeypatch.undo()
    monkeypatch.setenv("GUFM_HEAP_REUSE", "0")
    assert _util._glibc() is None


def test_heap_reuse_runs_on_this_machine():
    with _util.reuse_freed_memory():
        a = np.ones((2048, 2048))  # 32 MiB: from the heap inside the block
        del a
        b = np.ones((2048, 2048))
    assert float(b.sum()) == 2048.0**2
