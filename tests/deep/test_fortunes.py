"""Tests of the fortunes data sets (topics and next characters), tied soft labels and the
soft-label GUFM in gufm.compare, on small fortune files written by the tests."""

from __future__ import annotations

import importlib
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import gufm
from gufm.deep.data import (
    CHAR_ALPHABET,
    DEFAULT_CATEGORIES,
    DatasetError,
    load_dataset,
    read_fortunes,
    tied_soft_labels,
)
from gufm.deep.data.fortunes import char_ids
from gufm.deep.nets import ARCHS, model_for
from gufm.deep.reduction import compare
from gufm.deep.training import full_objective
from gufm.model.objective import objective

SYSTEM = Path("/usr/share/games/fortunes")


def write_fortunes(folder: Path, topics: dict[str, list[str]], *, index_files: bool = True) -> Path:
    """Category files in the package's format (with the .dat/.u8 files beside them)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, items in topics.items():
        (folder / name).write_text("\n%\n".join(items) + "\n", encoding="utf-8")
        if index_files:  # indexes: binary, must never be read
            (folder / f"{name}.dat").write_bytes(b"\x00\x00\x00\x02\xff\xfe")
            (folder / f"{name}.u8").write_bytes(b"\x00\x01")
    return folder


TOPICS = {
    "cats": [f"The cat number {i} sat on the mat and purred." for i in range(10)],
    "dogs": [f"A dog called Rex {i} barked at the mailman loudly." for i in range(10)],
    "code": [f"Programs crash; debug {i} the code\n\t\t-- Hacker" for i in range(10)],
}


# ----------------------------------------------------------------------------- reading
def test_read_fortunes_format(tmp_path):
    p = tmp_path / "f"
    p.write_bytes("First one.\r\n%\r\nSecond\nfortune \u00e9.\n%  \n\n%\nU_\bn_\bd_\be_\br.\n"
                  "%\nlast without separator".encode())
    assert read_fortunes(p) == ["First one.", "Second\nfortune \u00e9.", "Under.",
                                "last without separator"]


@pytest.mark.parametrize("content, what", [
    (b"caf\xe9 latin-1\n%\n", "not a UTF-8 fortune file"),
    (b"ok\n%\n\x00\x00\x00", "binary data"),
    (b"\n%\n%\n  \n", "holds no fortune"),
])
def test_corrupt_fortune_file_one_line_error(tmp_path, content, what):
    write_fortunes(tmp_path, {"a": ["fine"], "b": ["fine too"]})
    (tmp_path / "b").write_bytes(content)
    with pytest.raises(DatasetError) as exc:
        load_dataset("fortunes", root=tmp_path, categories=["a", "b"])
    msg = str(exc.value)
    assert what in msg and str(tmp_path / "b") in msg and "\n" not in msg
    assert "apt-get install" in msg and "root=" in msg


def test_missing_folder_or_category_says_what_to_install_or_pass(tmp_path, monkeypatch):
    monkeypatch.setenv("GUFM_DATA", str(tmp_path / "home"))
    for name in ("fortunes", "fortunes-next"):
        with pytest.raises(FileNotFoundError) as exc:
            load_dataset(name, root=tmp_path / "nowhere")
        msg = str(exc.value)
        assert isinstance(exc.value, DatasetError) and "\n" not in msg
        assert "apt-get install fortunes" in msg and "--data-root" in msg
    write_fortunes(tmp_path / "f", {"cats": ["x"]})
    with pytest.raises(DatasetError, match="lacks the category file.*dogs"):
        load_dataset("fortunes", root=tmp_path / "f", categories=["cats", "dogs"])


def test_categories_validated(tmp_path):
    write_fortunes(tmp_path, TOPICS)
    for bad in (["cats", "../cats"], ["cats", "cats.dat"], ["cats", "cats"], ["cats"]):
        with pytest.raises(ValueError, match="categor"):
            load_dataset("fortunes", root=tmp_path, categories=bad)
    with pytest.raises(TypeError, match="categories"):
        load_dataset("fortunes", root=tmp_path, categories="cats")


# ----------------------------------------------------------------------------- topics
def test_fortunes_topics_tokens_split_and_balance(tmp_path):
    write_fortunes(tmp_path / "fortunes", TOPICS)  # found in the sub-folder "fortunes"
    cats = ["cats", "dogs", "code"]
    ds = load_dataset("fortunes", root=tmp_path, categories=cats, n_per_class=5, seed=1,
                      vocab_size=40, seq_len=12)
    assert ds.kind == "tokens" and ds.pad_id == 0 and ds.X.dtype == torch.int64
    assert ds.classes == cats and ds.num_classes == 3 and ds.counts.tolist() == [5, 5, 5]
    vocab = ds.info["vocab"]
    assert ds.X.shape == (15, 12) and ds.vocab_size == len(vocab) <= 40  # fewer words exist
    assert vocab[:2] == ["<pad>", "<unk>"]
    # train split: fortunes j with j % 5 != 4 (8 of 10 per category); test: j = 4, 9
    assert ds.info["available_per_class"] == [8, 8, 8]
    test = load_dataset("fortunes", root=tmp_path, categories=cats, split="test", vocab=vocab,
                        seq_len=12)
    assert test.counts.tolist() == [2, 2, 2]
    decoded = [" ".join(vocab[i] for i in row if i != 0) for row in test.X.tolist()]
    # "4" and "9" occur only in test fortunes: unknown to the training vocabulary
    assert decoded[0] == "the cat number <unk> sat on the mat and purred"
    assert decoded[4] == "programs crash debug <unk> the code hacker"
    assert "1" in vocab and "4" not in vocab and "9" not in vocab
    # padding only after the words; deterministic; another seed draws other fortunes
    assert torch.all((ds.X[:, 1:] == 0) <= (ds.X[:, :-1] == 0) | (ds.X[:, 1:] == 0))
    again = load_dataset("fortunes", root=tmp_path, categories=cats, n_per_class=5, seed=1,
                         vocab_size=40, seq_len=12)
    assert torch.equal(ds.X, again.X)
    other = load_dataset("fortunes", root=tmp_path, categories=cats, n_per_class=5, seed=2,
                         vocab_size=40, seq_len=12)
    assert ds.info["indices_sha"] != other.info["indices_sha"]
    with pytest.raises(ValueError, match="n_per_class=9 exceeds the 8 train fortunes of "
                                         "category 'cats'"):
        load_dataset("fortunes", root=tmp_path, categories=cats, n_per_class=9)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_every_token_architecture_takes_fortunes(tmp_path, arch):
    write_fortunes(tmp_path, TOPICS)
    ds = load_dataset("fortunes", root=tmp_path, categories=["cats", "dogs", "code"],
                      n_per_class=2, vocab_size=30, seq_len=6)
    try:
        model = model_for(ds, arch, 1, 8, seed=0)
    except ValueError as exc:  # an architecture without token input says so
        assert "token" in str(exc).lower()
        return
    out = model(ds.X)
    assert out.shape == (6, 3) and torch.isfinite(out).all()


# ----------------------------------------------------------------------------- next chars
def test_char_encoding():
    assert CHAR_ALPHABET[0] == " " and len(CHAR_ALPHABET) == 27
    assert char_ids("Ab--c\n\tD\u00e9!").tolist() == [1, 2, 0, 3, 0, 4]


def test_fortunes_next_windows_are_exact(tmp_path):
    write_fortunes(tmp_path, {"a": ["Hello, hello!", "abc"], "b": ["Help"]})
    ds = load_dataset("fortunes-next", root=tmp_path, categories=["a", "b"], seq_len=3)
    # all windows: "hello hello" (11 chars -> 8), "abc" (none), "help" (1)
    assert ds.N == 9 and ds.info["windows"] == 9 and ds.vocab_size == 27 and ds.pad_id is None
    text = lambda row: "".join(CHAR_ALPHABET[i] for i in row)  # noqa: E731
    pairs = sorted((text(x), ds.classes[k]) for x, k in zip(ds.X.tolist(), ds.y.tolist(),
                                                              strict=True))
    want = sorted([("hel", "l"), ("ell", "o"), ("llo", " "), ("lo ", "h"), ("o h", "e"),
                   (" he", "l"), ("hel", "l"), ("ell", "o"), ("hel", "p")])
    assert pairs == want
    assert ds.classes == [" ", "e", "h", "l", "o", "p"] and np.all(np.diff(ds.y.numpy()) >= 0)
    # "hel" is followed by l twice and p once: the only conflicting context
    assert ds.info["distinct_contexts"] == 6 and ds.info["conflicting_contexts"] == 1


def test_fortunes_next_sampling(tmp_path):
    words = "the then they there these those this that than thaw"
    write_fortunes(tmp_path, {"a": [words] * 3, "b": [words.upper()] * 3})
    kw = dict(root=tmp_path, categories=["a", "b"], seq_len=2)
    full = load_dataset("fortunes-next", **kw)
    ds = load_dataset("fortunes-next", n_contexts=40, seed=3, **kw)
    assert ds.N == 40 and ds.info["windows"] == full.N
    again = load_dataset("fortunes-next", n_contexts=40, seed=3, **kw)
    assert torch.equal(ds.X, again.X) and torch.equal(ds.y, again.y)
    other = load_dataset("fortunes-next", n_contexts=40, seed=4, **kw)
    assert ds.info["positions_sha"] != other.info["positions_sha"]
    assert load_dataset("fortunes-next", n_per_class=2, **kw).N == 54  # 27 * n_per_class
    with pytest.raises(ValueError, match="windows asked for"):
        load_dataset("fortunes-next", n_contexts=full.N + 1, **kw)
    with pytest.raises(ValueError, match="seq_len"):
        load_dataset("fortunes-next", seq_len=0, root=tmp_path, categories=["a", "b"])


# ----------------------------------------------------------------------------- soft labels
class _CollidingHash:
    """Every input gets the same digest: ties must still be exact."""

    @staticmethod
    def blake2b(data, digest_size):
        return types.SimpleNamespace(digest=lambda: b"0" * digest_size)


@pytest.mark.parametrize("collide", [False, True])
def test_tied_soft_labels_against_a_loop(monkeypatch, collide):
    if collide:
        monkeypatch.setattr(importlib.import_module("gufm.deep.data.ties"), "hashlib",
                            _CollidingHash)
    rng = np.random.default_rng(0)
    X = rng.integers(0, 3, size=(60, 2))
    y = rng.integers(0, 4, size=60)
    t = tied_soft_labels(torch.from_numpy(X), torch.from_numpy(y), 4)
    assert t.distinct == len({tuple(r) for r in X.tolist()})
    for i in range(60):
        same = np.all(X == X[i], axis=1)
        want = np.bincount(y[same], minlength=4) / same.sum()
        assert np.allclose(t.soft_labels[i], want, rtol=0, atol=1e-15)
    assert t.conflicting == sum(len(set(y[np.all(X == r, axis=1)])) > 1
                                for r in {tuple(r) for r in X.tolist()})
    with pytest.raises(ValueError, match="labels"):
        tied_soft_labels(X, y, 3)


def _next_corpus(tmp_path: Path) -> gufm.data.Dataset:
    # contexts "ab" -> a/b, "ba" -> a/b: repeated with different continuations
    return load_dataset("fortunes-next", root=write_fortunes(tmp_path, {
        "x": ["abab aabba", "baab abba"], "y": ["abba baba", "aabb abab"]}),
        categories=["x", "y"], seq_len=2)


def test_soft_label_gufm_bound_above_the_hard_label_optimum(tmp_path):
    ds = _next_corpus(tmp_path)
    assert ds.info["conflicting_contexts"] >= 2
    t = tied_soft_labels(ds.X, ds.y, ds.num_classes)
    kw = dict(dim=4, lam_W=0.01, lam_b=0.01)
    soft = gufm.solve(gufm.GUFM(soft_labels=t.soft_labels, **kw))
    hard = gufm.solve(gufm.GUFM(labels=ds.y.numpy(), **kw))
    assert soft.certified and hard.certified
    assert soft.lower_bound > hard.value + 1e-3


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_compare_uses_the_soft_label_gufm(tmp_path, loss):
    ds = _next_corpus(tmp_path)
    model = model_for(ds, "preln-t11", 1, 4, seed=0, bias=True)
    res = compare(model, ds, lam=0.01, loss=loss)  # raises on a violated inequality
    assert res.conflicting_inputs == ds.info["conflicting_contexts"]
    assert res.distinct_inputs == ds.info["distinct_contexts"]
    assert res.e2e_objective >= res.head_objective >= res.gufm_lower_bound - 1e-9
    assert res.gufm_optimum > res.gufm_optimum_hard + 1e-3
    # the reported optimum is the soft-label GUFM's value in the per-sample (hard) scale:
    # CE is linear in the target, MSE differs by mean(1 - |q_i|^2) / 2
    t = tied_soft_labels(ds.X, ds.y, ds.num_classes)
    soft = gufm.solve(gufm.GUFM(soft_labels=t.soft_labels, dim=4, loss=loss, lam_W=0.01,
                                lam_b=0.01))
    shift = 0.0 if loss == "ce" else float(np.mean(1 - (t.soft_labels ** 2).sum(1)) / 2)
    assert res.gufm_optimum == pytest.approx(soft.value + shift, rel=1e-6, abs=1e-9)
    e2e = full_objective(model.double(), ds.X, ds.y, lam=0.01, loss=loss)["objective"]
    assert res.e2e_objective == pytest.approx(e2e, rel=1e-12)


def test_compare_without_conflicting_ties_is_the_hard_label_gufm(tmp_path):
    write_fortunes(tmp_path, TOPICS)
    ds = load_dataset("fortunes", root=tmp_path, categories=["cats", "dogs", "code"],
                      n_per_class=3, vocab_size=30, seq_len=6)
    model = model_for(ds, "preln-t11", 1, 4, seed=0)
    res = compare(model, ds, lam=0.01)
    assert res.conflicting_inputs == 0 and res.gufm_optimum == res.gufm_optimum_hard
    H = model.double().features(ds.X).detach().numpy().T
    W = model.classifier.weight.detach().numpy()
    b = model.classifier.bias.detach().numpy() if model.classifier.bias is not None else None
    prob = gufm.GUFM(labels=ds.y.numpy(), dim=4, lam_W=0.01, lam_b=None if b is None else 0.01)
    assert res.head_objective == pytest.approx(float(objective(prob, W, b, H)), rel=1e-12)


# ----------------------------------------------------------------------------- the package
@pytest.mark.skipif(not SYSTEM.is_dir(), reason="Debian package fortunes not installed")
def test_system_package_default_categories():
    ds = load_dataset("fortunes", n_per_class=20, seed=0)
    assert ds.classes == list(DEFAULT_CATEGORIES) and ds.counts.tolist() == [20] * 6
    assert min(ds.info["available_per_class"]) >= 400
    nxt = load_dataset("fortunes-next", n_per_class=4, seed=0)
    assert nxt.N == 108 and nxt.num_classes >= 15 and nxt.info["windows"] > 100_000


def test_download_says_what_to_install(tmp_path, monkeypatch):
    dl = importlib.import_module("gufm.deep.data.download")
    monkeypatch.setattr(dl, "SYSTEM_DIRS", (str(tmp_path / "absent"),))
    with pytest.raises(DatasetError, match="apt-get install fortunes"):
        dl.download("fortunes")
    monkeypatch.setattr(dl, "SYSTEM_DIRS", (str(tmp_path),))
    assert dl.download("fortunes-next") == tmp_path


def test_quick_preset_language_row_and_its_fallback(monkeypatch):
    presets = importlib.import_module("gufm.experiments.presets")
    monkeypatch.setattr(presets, "fortunes_available", lambda: True)
    row = presets.language_row()
    assert (row.arch, row.dataset) == ("preln-t11", "fortunes") and "fortunes" in row.note
    monkeypatch.setattr(presets, "fortunes_available", lambda: False)
    row = presets.language_row()
    assert row.dataset == "synthetic-tokens" and "fallback" in row.note


def test_fortunes_available(tmp_path):
    assert not gufm.data.fortunes_available(tmp_path)
    write_fortunes(tmp_path, {c: ["x"] for c in DEFAULT_CATEGORIES})
    assert gufm.data.fortunes_available(tmp_path)
