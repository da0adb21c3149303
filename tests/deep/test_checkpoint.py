"""Safe network and checkpoint files: round trips for every architecture, hostile pickles
refused without running code, garbage rejected with one line naming the file."""

from __future__ import annotations

import pickle

import pytest
import torch

from gufm.deep.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_network,
    save_checkpoint,
    save_network,
)
from gufm.deep.nets import ARCHS, make_model
from gufm.deep.training import train


class Evil:
    """Unpickling this creates a file (what a hostile checkpoint would do)."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.parametrize("arch", list(ARCHS))
def test_network_round_trip(tmp_path, arch):
    m = make_model(arch, 2, 8, (1, 4, 4), 3, seed=0, patch_size=2, ln_eps=0.0,
                   dtype=torch.float64)
    f = save_network(m, tmp_path / "net.pt", note="x")
    m2, meta = load_network(f)
    assert meta["build"]["arch"] == arch and meta["info"] == {"note": "x"}
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    assert next(m2.parameters()).dtype == torch.float64
    assert torch.equal(m(x), m2(x))


@pytest.mark.parametrize("how", ["torch", "pickle"])
@pytest.mark.parametrize("loader", [load_network, load_checkpoint])
def test_hostile_pickle_runs_no_code(tmp_path, how, loader):
    target = tmp_path / "pwned"
    f = tmp_path / "hostile.pt"
    payload = {"format": "gufm-network", "version": 1, "meta": "{}", "x": Evil(str(target))}
    if how == "torch":
        torch.save(payload, f)
    else:
        f.write_bytes(pickle.dumps(payload))
    with pytest.raises(CheckpointError) as info:
        loader(f)
    msg = str(info.value)
    assert str(f) in msg and "\n" not in msg
    assert not target.exists()


@pytest.mark.parametrize("content", [b"", b"garbage", b"PK\x03\x04 truncated zip"])
def test_garbage_files(tmp_path, content):
    f = tmp_path / "bad.ckpt"
    f.write_bytes(content)
    for loader in (load_network, load_checkpoint):
        with pytest.raises(CheckpointError, match="bad.ckpt"):
            loader(f)
    with pytest.raises(CheckpointError, match="no such"):
        load_network(tmp_path / "missing.pt")


def test_wrong_kind_and_mismatched_weights(tmp_path):
    f = tmp_path / "c.ckpt"
    save_checkpoint(f, {"config": {}, "history": []})
    with pytest.raises(CheckpointError, match="not a gufm-network file"):
        load_network(f)
    m = make_model("rn1", 2, 8, (1, 4, 4), 3, seed=0)
    g = save_network(m, tmp_path / "n.pt")
    obj = torch.load(g, weights_only=True)
    obj["state"].pop("classifier.weight")
    torch.save(obj, g)
    with pytest.raises(CheckpointError, match="unusable network file"):
        load_network(g)


def test_train_rejects_a_hostile_checkpoint(tmp_path):
    target = tmp_path / "pwned"
    f = tmp_path / "run.ckpt"
    torch.save({"x": Evil(str(target))}, f)
    X = torch.randn(6, 1, 4, 4)
    y = torch.tensor([0, 1, 2] * 2)
    m = make_model("rn1", 1, 6, (1, 4, 4), 3, seed=0)
    with pytest.raises(CheckpointError, match="run.ckpt"):
        train(m, (X, y), lam=0.01, epochs=2, polish_steps=1, checkpoint=f, progress=False)
    assert not target.exists()


# ----------------------------------------------------------------------------- the CLI
def _train_args(*extra):
    return ["train", "--arch", "rn1", "--depth", "1", "--width", "8", "--dataset", "digits",
            "--n-per-class", "2", "--epochs", "2", "--polish-steps", "2", *extra]


def test_cli_save_init_from_and_hostile_files(tmp_path, capsys):
    from gufm.cli import main

    net = tmp_path / "net1.pt"
    assert main(_train_args("--save", str(net), "--json")) == 0
    captured = capsys.readouterr()
    assert captured.err == ""  # not a terminal: no progress bars
    first = __import__("json").loads(captured.out)
    assert first["converged"] in (True, False) and net.is_file()
    deeper = _train_args("--init-from", str(net), "--json")
    deeper[deeper.index("--depth") + 1] = "3"
    assert main(deeper) == 0
    assert __import__("json").loads(capsys.readouterr().out)["gap"] >= -1e-12
    # deeper saved network into a shallower run: refused, one line
    wrong = _train_args("--init-from", str(net))
    wrong[wrong.index("--arch") + 1] = "rn2"
    assert main(wrong) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rn1" in err

    target = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"x": Evil(str(target))}, evil)
    for flag in ("--init-from", "--checkpoint"):
        assert main(_train_args(flag, str(evil))) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "evil.pt" in err
        assert not target.exists()
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"\x00garbage")
    assert main(_train_args("--checkpoint", str(junk))) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "junk.ckpt" in err
