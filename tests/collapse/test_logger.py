"""CollapseLogger: every-k logging to a long-format CSV and to a TensorBoard-style writer."""

from __future__ import annotations

import csv
import sys

import numpy as np
import pytest
import torch

from gufm import metrics as M
from gufm.collapse import CollapseLogger
from gufm.collapse.streaming import CollapseAccumulator


class FakeWriter:
    def __init__(self):
        self.scalars = []
        self.closed = False

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def close(self):
        self.closed = True


def toy(seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), 10)
    H = rng.standard_normal((4, 30)) + 3 * rng.standard_normal((4, 3))[:, y]
    return H, y, rng.standard_normal((3, 4))


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_logs_every_k_epochs_in_long_format(tmp_path):
    H, y, W = toy()
    path = tmp_path / "sub" / "nc.csv"
    writer = FakeWriter()
    logger = CollapseLogger(every=3, path=path, tensorboard=writer, center="classes")
    logged = [e for e in range(8) if logger.log(e, H + e, y, W) is not None]
    assert logged == [0, 3, 6]
    rows = read_rows(path)
    assert rows[0] == ["epoch", "metric", "value"]
    want = M.collapse_report(H + 3, y, W, center="classes")
    assert len(rows) == 1 + 3 * len(want)
    got = {r[1]: float(r[2]) for r in rows[1:] if r[0] == "3"}
    assert got == {k: float(v) for k, v in want.items()}  # repr round-trips floats exactly
    assert ("collapse/nc1", want["nc1"], 3) in writer.scalars
    assert len(writer.scalars) == 3 * len(want)
    logger.close()
    assert not writer.closed  # a writer passed in belongs to the caller
    # a second logger appends without a second header
    with CollapseLogger(every=1, path=path, metrics=["nc4"]) as again:
        again(9, H, y, W)
    rows = read_rows(path)
    assert rows.count(["epoch", "metric", "value"]) == 1
    assert rows[-1][:2] == ["9", "nc4"] and len(rows) == 2 + 3 * len(want)


def test_streamed_report_and_torch_values(tmp_path):
    H, y, W = toy(1)
    acc = CollapseAccumulator(3, 4, W=torch.tensor(W))
    acc.update(torch.tensor(H.T), torch.tensor(y))
    logger = CollapseLogger(path=tmp_path / "s.csv", metrics=["nc1", "nc3"])
    vals = logger.log_report(0, acc.report())
    assert set(vals) == {"nc1", "nc3"} and all(isinstance(v, float) for v in vals.values())
    assert vals["nc1"] == pytest.approx(M.nc1(H, y), rel=1e-10)
    assert logger.history == [(0, "nc1", vals["nc1"]), (0, "nc3", vals["nc3"])]


def test_bad_arguments(tmp_path, monkeypatch):
    with pytest.raises(TypeError, match="every must be an int"):
        CollapseLogger(every=2.0, path=tmp_path / "a.csv")
    with pytest.raises(ValueError, match="every must be >= 1"):
        CollapseLogger(every=0, path=tmp_path / "a.csv")
    with pytest.raises(ValueError, match="nothing to log to"):
        CollapseLogger(path=None)
    with pytest.raises(ValueError, match="metrics: unknown names"):
        CollapseLogger(path=tmp_path / "a.csv", metrics=["nc6"])
    with pytest.raises(TypeError, match="tensorboard must be"):
        CollapseLogger(path=None, tensorboard=3)
    with pytest.raises(TypeError, match="epoch must be an int"):
        CollapseLogger(path=tmp_path / "a.csv").due(1.5)
    # without the tensorboard package: a clear error, not a bare ModuleNotFoundError
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match="pip install tensorboard"):
        CollapseLogger(path=None, tensorboard=tmp_path / "runs")
