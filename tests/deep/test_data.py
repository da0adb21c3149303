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

from gufm.deep.data import (
    ChecksumError,
    DatasetError,
    balanced_indices,
    fetch,
    load_data_pickle,
    load_dataset,
    read_idx,
    tokenize,
)

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


# ----------------------------------------------------------------------------- bad files
def _one_line_naming(exc: pytest.ExceptionInfo, path: Path) -> str:
    msg = str(exc.value)
    assert str(path) in msg and "\n" not in msg
    return msg


@pytest.mark.parametrize("gz", [False, True])
def test_idx_header_only_and_truncated_header(tmp_path, gz):
    p = tmp_path / ("h.idx.gz" if gz else "h.idx")
    pack = gzip.compress if gz else bytes
    for blob, what in ((bytes([0, 0, 8, 3]), "truncated IDX header"),            # no dims
                       (bytes([0, 0, 8, 3]) + struct.pack(">2I", 5, 6), "truncated"),
                       (idx_bytes(np.zeros((4, 2, 2), np.uint8))[:16], "expected 16 values"),
                       (idx_bytes(np.zeros(3, ">i4"))[:-2], "expected 3 values")):
        p.write_bytes(pack(blob))
        with pytest.raises(DatasetError) as exc:
            read_idx(p)
        assert what in _one_line_naming(exc, p)


def test_corrupt_gzip_is_one_line(tmp_path):
    X, _ = write_idx_set(tmp_path, gz=True)
    f = tmp_path / "train-images-idx3-ubyte.gz"
    blob = f.read_bytes()
    for bad in (blob[: len(blob) // 2], blob[:10] + bytes(len(blob) - 10)):  # truncated, garbage
        f.write_bytes(bad)
        with pytest.raises(DatasetError) as exc:
            load_dataset("mnist", root=tmp_path)
        assert "corrupt gzip" in _one_line_naming(exc, f)


def test_label_out_of_range_names_the_file(tmp_path):
    write_idx_set(tmp_path)
    f = tmp_path / "train-labels-idx1-ubyte"
    y = read_idx(f).copy()
    y[7] = 200
    f.write_bytes(idx_bytes(y))
    with pytest.raises(DatasetError) as exc:
        load_dataset("mnist", root=tmp_path, n_per_class=3)
    msg = _one_line_naming(exc, f)
    assert "label 200 at position 7 is outside 0..9" in msg and "n_per_class" not in msg


class _Hostile:
    """Unpickling calls open(path, "w"): it would create a file."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_hostile_cifar_batch_runs_no_code(tmp_path, protocol):
    write_cifar(tmp_path)
    target = tmp_path / "pwned.txt"
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    with open(batch, "wb") as f:
        pickle.dump({b"labels": [0], b"data": np.zeros((1, 3072), np.uint8),
                     b"x": _Hostile(target)}, f, protocol=protocol)
    with pytest.raises(DatasetError) as exc:
        load_dataset("cifar10", root=tmp_path)
    msg = _one_line_naming(exc, batch)
    assert "io.open" in msg and "nothing in the file was run" in msg
    assert not target.exists()
    # the same object is created by a plain pickle.load: the test's hostile file is real
    with open(batch, "rb") as f:
        pickle.load(f).get(b"x").close()
    assert target.exists()


@pytest.mark.parametrize("payload", [
    lambda p: (__import__("os").system, (f"touch {p}",)),
    lambda p: (eval, (f"open({str(p)!r}, 'w')",)),
])
def test_restricted_unpickler_refuses_other_callables(tmp_path, payload):
    target = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return payload(target)

    f = tmp_path / "blob"
    f.write_bytes(pickle.dumps([Evil()], protocol=2))
    with pytest.raises(DatasetError, match="refused to unpickle"):
        load_data_pickle(f)
    assert not target.exists()


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_restricted_unpickler_reads_data(tmp_path, protocol):
    arrays = {"u8": np.arange(12, dtype=np.uint8).reshape(3, 4), "f4": np.ones(3, "<f4"),
              "i8": np.arange(4, dtype=">i8")[::2]}
    obj = {b"k": [1, 2.5, b"x", "s", None, True], "t": (1, 2), "n": [np.int64(7)], **arrays}
    f = tmp_path / "blob"
    f.write_bytes(pickle.dumps(obj, protocol=protocol))
    back, want = load_data_pickle(f), pickle.loads(f.read_bytes())  # the standard unpickler
    assert back[b"k"] == obj[b"k"] and back["t"] == (1, 2)
    assert type(back["n"][0]) is np.int64 and back["n"] == [7]
    for k, a in arrays.items():
        assert back[k].dtype == want[k].dtype and np.array_equal(back[k], a)
    f.write_bytes(pickle.dumps(np.array([object(), 1], dtype=object), protocol=protocol))
    with pytest.raises(DatasetError, match="refused"):  # object arrays are not data
        load_data_pickle(f)
    f.write_bytes(pickle.dumps(obj, protocol=protocol)[:-5])
    with pytest.raises(DatasetError, match="not a readable data pickle"):
        load_data_pickle(f)


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

    try:  # an error message and exit code 2, whether argparse or the command refuses the name
        code = main(["data", "download", "svhn", "--dir", str(tmp_path)])
    except SystemExit as exc:
        code = exc.code
    assert code == 2 and "svhn" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["header-only", "corrupt-gz", "label-200", "hostile-cifar"])
def test_cli_bad_data_file_exit_2_one_line(tmp_path, capsys, damage):
    from gufm.cli import main

    name, target = "mnist", tmp_path / "pwned"
    if damage == "header-only":
        write_idx_set(tmp_path)
        bad = tmp_path / "train-images-idx3-ubyte"
        bad.write_bytes(idx_bytes(read_idx(bad))[:16])
    elif damage == "corrupt-gz":
        write_idx_set(tmp_path, gz=True)
        bad = tmp_path / "train-labels-idx1-ubyte.gz"
        bad.write_bytes(bad.read_bytes()[:20])
    elif damage == "label-200":
        write_idx_set(tmp_path)
        bad = tmp_path / "train-labels-idx1-ubyte"
        bad.write_bytes(idx_bytes(np.full(30, 200, np.uint8)))
    else:
        name = "cifar10"
        write_cifar(tmp_path)
        bad = tmp_path / "cifar-10-batches-py" / "data_batch_1"
        bad.write_bytes(pickle.dumps({b"x": _Hostile(target)}, protocol=2))
    code = main(["train", "--dataset", name, "--data-root", str(tmp_path), "--arch", "rn1",
                 "--depth", "1", "--width", "4", "--epochs", "1", "--n-per-class", "2"])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and not target.exists()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "Traceback" not in err
