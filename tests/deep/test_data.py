"""Tests of gufm.data: loaders on tiny files written in each standard format, subsets,
normalisation, errors, and the checksum-verified download."""

from __future__ import annotations

import gzip
import hashlib
import importlib
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from gufm.deep.data import ChecksumError, balanced_indices, fetch, load_dataset, read_idx, tokenize

dl = importlib.import_module("gufm.deep.data.download")  # the module


# ----------------------------------------------------------------------------- writers
def idx_bytes(arr: np.ndarray) -> bytes:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B,
             np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}
    head = bytes([0, 0, codes[arr.dtype], arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return head + arr.tobytes()


def write_idx_set(folder: Path, n_per_class: int = 3, gz: bool = False, size: int = 6,
                  prefix: str = "train", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(10), n_per_class).astype(np.uint8)
    rng.shuffle(y)
    X = rng.integers(0, 256, size=(len(y), size, size)).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in ((f"{prefix}-images-idx3-ubyte", X), (f"{prefix}-labels-idx1-ubyte", y)):
        data = idx_bytes(arr)
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return X, y


def write_cifar(folder: Path, per_batch: int = 10) -> np.ndarray:
    rng = np.random.default_rng(1)
    d = folder / "cifar-10-batches-py"
    d.mkdir(parents=True)
    labels_all = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = list(np.arange(per_batch) % 10)
        data = rng.integers(0, 256, size=(per_batch, 3072)).astype(np.uint8)
        with open(d / name, "wb") as f:  # the official batches are pickles with bytes keys
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                         b"filenames": [b"x.png"] * per_batch}, f, protocol=2)
        if name != "test_batch":
            labels_all += labels
    return np.asarray(labels_all)


def write_imdb(folder: Path) -> None:
    reviews = {
        "train/pos": ["A great, great movie!<br /><br />Loved it.", "Great fun; wonderful cast.",
                      "I'd watch it again. Great."],
        "train/neg": ["Terrible. Boring boring plot.", "Awful acting, boring.",
                      "Worst film; terrible."],
        "test/pos": ["great"], "test/neg": ["boring zzz"],
    }
    for sub, texts in reviews.items():
        (folder / "aclImdb" / sub).mkdir(parents=True)
        for i, t in enumerate(texts):
            (folder / "aclImdb" / sub / f"{i}_7.txt").write_text(t, encoding="utf-8")


# ----------------------------------------------------------------------------- IDX
@pytest.mark.parametrize("gz", [False, True])
def test_idx_loader_raw_and_gz(tmp_path, gz):
    X, y = write_idx_set(tmp_path, gz=gz)
    ds = load_dataset("mnist", root=tmp_path, n_per_class=2, seed=3, normalize="none")
    assert ds.X.shape == (20, 1, 6, 6) and ds.X.dtype == torch.float32
    assert ds.y.dtype == torch.int64 and np.all(ds.counts == 2)
    assert ds.kind == "image" and ds.image_shape == (1, 6, 6)
    # the images are the right ones, scaled to [0, 1], ordered class by class
    idx = balanced_indices(y.astype(np.int64), 2, 3)
    assert np.allclose(ds.X.numpy()[:, 0], X[idx] / 255.0)
    assert np.all(np.diff(ds.y.numpy()) >= 0)


def test_idx_torchvision_layout_and_fashion_name(tmp_path):
    write_idx_set(tmp_path / "FashionMNIST" / "raw", gz=True)
    ds = load_dataset("fashion-mnist", root=tmp_path, n_per_class=1)
    assert ds.N == 10 and ds.classes[0] == "T-shirt/top"
    write_idx_set(tmp_path / "t", prefix="t10k")
    assert load_dataset("mnist", root=tmp_path / "t", split="test").N == 30


def test_read_idx_dtypes_and_bad_magic(tmp_path):
    for arr in (np.arange(6, dtype=">f4").reshape(2, 3), np.arange(4, dtype=">i2"),
                np.arange(8, dtype=">f8").reshape(2, 2, 2)):
        p = tmp_path / "a.idx"
        p.write_bytes(idx_bytes(arr))
        assert np.array_equal(read_idx(p), arr)
    p.write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="IDX"):
        read_idx(p)
    p.write_bytes(idx_bytes(np.arange(4, dtype=np.uint8))[:-1])
    with pytest.raises(ValueError, match="expected 4"):
        read_idx(p)


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_system_package():
    ds = load_dataset("fashion-mnist", n_per_class=5, seed=1)
    assert ds.X.shape == (50, 1, 28, 28) and np.all(ds.counts == 5)
    flat = ds.X.reshape(50, -1)
    assert float(flat.mean(0).abs().max()) < 1e-5
    sd = flat.std(0, unbiased=False)
    assert torch.allclose(sd[sd > 0.5], torch.ones(()), atol=1e-4)


# ----------------------------------------------------------------------------- CIFAR / IMDB
def test_cifar_pickles(tmp_path):
    labels = write_cifar(tmp_path)
    ds = load_dataset("cifar10", root=tmp_path, n_per_class=3)
    assert ds.X.shape == (30, 3, 32, 32) and np.all(ds.counts == 3)
    assert np.bincount(labels).min() == 5
    test = load_dataset("cifar-10", root=tmp_path / "cifar-10-batches-py", split="test")
    assert test.N == 10 and test.classes[0] == "airplane"


def test_imdb_folder(tmp_path):
    write_imdb(tmp_path)
    ds = load_dataset("imdb", root=tmp_path, vocab_size=6, seq_len=5)
    assert ds.kind == "tokens" and ds.X.dtype == torch.int64 and ds.X.shape == (6, 5)
    vocab = ds.info["vocab"]
    assert vocab[:2] == ["<pad>", "<unk>"] and len(vocab) == 6
    assert vocab[2:4] == ["great", "boring"]  # 5 and 3 occurrences
    assert ds.vocab_size == 6 and ds.pad_id == 0 and ds.y.tolist() == [0, 0, 0, 1, 1, 1]
    # "Terrible. Boring boring plot." -> terrible boring boring plot <pad>
    first = ds.X[0].tolist()
    assert first[1:3] == [vocab.index("boring")] * 2 and first[4] == 0
    test = load_dataset("imdb", root=tmp_path / "aclImdb", split="test", vocab=vocab, seq_len=3)
    assert test.X.tolist() == [[vocab.index("boring"), 1, 0], [vocab.index("great"), 0, 0]]
    assert tokenize("It's <br />GREAT, isn't it?") == ["it's", "great", "isn't", "it"]


def test_synthetic_tokens_rule_and_determinism():
    ds = load_dataset("synthetic-tokens", n_per_class=7, seed=2, num_classes=3)
    assert np.all(ds.counts == 7) and ds.kind == "tokens" and ds.pad_id is None
    assert torch.equal(ds.y, ds.X.sum(1) % 3)
    again = load_dataset("synthetic", n_per_class=7, seed=2, num_classes=3)
    assert torch.equal(ds.X, again.X)
    other = load_dataset("synthetic-tokens", n_per_class=7, seed=2, num_classes=3, split="test")
    assert not torch.equal(ds.X, other.X)


# ----------------------------------------------------------------------------- subsets, norms
def test_digits_subset_deterministic_and_normalised():
    a = load_dataset("digits", n_per_class=20, seed=0)
    b = load_dataset("digits", n_per_class=20, seed=0)
    c = load_dataset("digits", n_per_class=20, seed=1)
    assert torch.equal(a.X, b.X) and not torch.equal(a.X, c.X)
    assert np.all(a.counts == 20) and a.X.shape == (200, 1, 8, 8)
    flat = a.X.reshape(200, -1).double()
    assert float(flat.mean(0).abs().max()) < 1e-6
    sd = flat.std(0, unbiased=False)
    assert torch.all(((sd - 1).abs() < 1e-5) | (sd < 1e-6))  # constant pixels stay 0
    full = load_dataset("digits")
    assert full.N == 1797
    g = load_dataset("digits", n_per_class=5, normalize="global").X
    assert abs(float(g.mean())) < 1e-5 and abs(float(g.std(unbiased=False)) - 1) < 1e-4


def test_balanced_indices_errors():
    y = np.array([0, 0, 1, 1, 1])
    assert sorted(balanced_indices(y, 2, 0).tolist())[:2] == [0, 1]
    with pytest.raises(ValueError, match="n_per_class"):
        balanced_indices(y, 3, 0)
    with pytest.raises(ValueError, match="n_per_class"):
        balanced_indices(y, 0, 0)


def test_loader_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("GUFM_DATA", str(tmp_path / "home"))
    with pytest.raises(ValueError, match="name"):
        load_dataset("svhn")
    with pytest.raises(ValueError, match="split"):
        load_dataset("digits", split="test")
    with pytest.raises(ValueError, match="normalize"):
        load_dataset("digits", n_per_class=1, normalize="minmax")
    for name in ("mnist", "fashion-mnist", "cifar10", "imdb"):
        if name == "fashion-mnist" and Path("/usr/share/datasets/fashion-mnist").is_dir():
            continue
        with pytest.raises(FileNotFoundError) as exc:
            load_dataset(name)
        msg = str(exc.value)
        assert f"gufm data download {name} --dir" in msg and "root=" in msg
    with pytest.raises(FileNotFoundError, match="gufm data download mnist"):
        load_dataset("mnist", root=tmp_path / "nowhere")


# ----------------------------------------------------------------------------- download
def test_fetch_file_url_and_checksums(tmp_path):
    src = tmp_path / "src" / "blob.bin"
    src.parent.mkdir()
    payload = bytes(range(256)) * 100
    src.write_bytes(payload)
    md5 = hashlib.md5(payload).hexdigest()
    sha = hashlib.sha256(payload).hexdigest()
    dest = tmp_path / "out" / "blob.bin"
    assert fetch(src.as_uri(), dest, md5=md5, sha256=sha) == dest
    assert dest.read_bytes() == payload
    src.unlink()  # a verified file is kept without downloading again
    assert fetch(src.as_uri(), dest, md5=md5) == dest

    src.write_bytes(payload + b"x")
    bad = tmp_path / "out" / "bad.bin"
    with pytest.raises(ChecksumError, match="md5"):
        fetch(src.as_uri(), bad, md5=md5)
    assert not bad.exists() and not list((tmp_path / "out").glob("*.part"))
    with pytest.raises(ChecksumError, match="sha256"):
        fetch(src.as_uri(), bad, sha256=sha)
    with pytest.raises(OSError):
        fetch((tmp_path / "missing").as_uri(), bad, md5=md5)


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_download_from_mirror_then_load(tmp_path, monkeypatch):
    staging = tmp_path / "staging"
    write_cifar(staging, per_batch=10)
    members = {f"cifar-10-batches-py/{p.name}": p.read_bytes()
               for p in (staging / "cifar-10-batches-py").iterdir()}
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    blob = _tar_gz(members)
    (mirror / "cifar-10-python.tar.gz").write_bytes(blob)
    md5 = hashlib.md5(blob).hexdigest()
    monkeypatch.setitem(dl.SOURCES, "cifar10", ([(tmp_path / "dead").as_uri(), mirror.as_uri()],
                                                {"cifar-10-python.tar.gz": md5},
                                                "cifar-10-python.tar.gz"))
    folder = dl.download("cifar10", tmp_path / "data", progress=False)
    ds = load_dataset("cifar10", root=folder, n_per_class=2)
    assert ds.N == 20
    with pytest.raises(ValueError, match="name"):
        dl.download("svhn", tmp_path)


def test_published_checksums_and_urls():
    urls, files, _ = dl.SOURCES["cifar10"]
    assert files["cifar-10-python.tar.gz"] == "c58f30108f718f92721af3b95e74349a"
    assert urls[0].startswith("https://www.cs.toronto.edu/")
    assert dl.SOURCES["mnist"][1]["train-images-idx3-ubyte.gz"] == "f68b3c2dcbeaaa9fbdd348bbdeb94873"
    assert "ai.stanford.edu" in dl.SOURCES["imdb"][0][0]
    assert "fashion-mnist" in dl.SOURCES["fashion-mnist"][0][0]


def test_unsafe_archive_is_refused(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    blob = _tar_gz({"../evil.txt": b"x"})
    (mirror / "aclImdb_v1.tar.gz").write_bytes(blob)
    monkeypatch.setitem(dl.SOURCES, "imdb", ([mirror.as_uri()],
                                             {"aclImdb_v1.tar.gz": hashlib.md5(blob).hexdigest()},
                                             "aclImdb_v1.tar.gz"))
    with pytest.raises(ValueError, match="unsafe"):
        dl.download("imdb", tmp_path / "data", progress=False)
    assert not (tmp_path / "evil.txt").exists()


def test_cli_data_download_errors(tmp_path, capsys):
    from gufm.cli import main

    assert main(["data", "download", "svhn", "--dir", str(tmp_path)]) == 2
    assert "name must be one of" in capsys.readouterr().err
