"""Tests for arena.data (sources, formats) on tiny hand-written files in the official formats,
plus the real MNIST / Fashion-MNIST files when they are available (ARENA_DATA)."""
from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import arena.data.sources as data
from arena.data.sources import DATASETS, DataError, Dataset, cache_dir, load_dataset, search_paths
from arena.data.formats import check_md5, md5_bytes, read_cifar_batch, read_cifar_meta, read_idx
from arena.registry import UnknownNameError

IDX = data.IDX_FILES


def _real_data_dir() -> Path | None:
    """ARENA_DATA if set (CI), else the checkout's sibling shared/data when it exists."""
    env = os.environ.get("ARENA_DATA")
    if env:
        return Path(env)
    default = Path(__file__).resolve().parents[2] / "shared" / "data"
    return default if default.is_dir() else None


REAL_DATA = _real_data_dir()  # computed before the isolation fixture clears ARENA_DATA


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No test sees the user's cache, ARENA_DATA or system datasets, and none downloads."""
    monkeypatch.delenv("ARENA_DATA", raising=False)
    monkeypatch.setenv("ARENA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "SYSTEM_ROOTS", (tmp_path / "system",))


# ----------------------------------------------------------------------------- writers


def idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.asarray(arr, dtype=np.uint8)
    header = (0x0800 | arr.ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    return header + arr.tobytes()


def write_idx(path: Path, arr: np.ndarray, gz: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = idx_bytes(arr)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)
    return path


def write_mnist(d: Path, label: int, gz: bool = True, n_train: int = 12, n_test: int = 5) -> None:
    """Tiny MNIST-format files; every train label is ``label`` so tests can tell copies apart."""
    rng = np.random.default_rng(label)
    write_idx(d / IDX[0], rng.integers(0, 256, (n_train, 28, 28)), gz)
    write_idx(d / IDX[1], np.full(n_train, label), gz)
    write_idx(d / IDX[2], rng.integers(0, 256, (n_test, 28, 28)), gz)
    write_idx(d / IDX[3], np.arange(n_test) % 10, gz)


def write_cifar(d: Path, n: int = 4) -> None:
    """Tiny batches in the official format: protocol-2 pickles of dicts with bytes keys."""
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        x[0, :1024], x[0, 1024:2048], x[0, 2048:] = 10, 20, 30  # R, G, B planes
        batch = {b"batch_label": name.encode(), b"labels": [(i + j) % 10 for j in range(n)],
                 b"data": x, b"filenames": [b"f%d.png" % j for j in range(n)]}
        (d / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"label_names": [c.encode() for c in ("airplane", "automobile", "bird", "cat", "deer",
                                                   "dog", "frog", "horse", "ship", "truck")],
            b"num_cases_per_batch": n, b"num_vis": 3072}
    (d / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))


# ----------------------------------------------------------------------------- IDX reader


@pytest.mark.parametrize("gz", [True, False])
def test_idx_roundtrip_exact(tmp_path, gz):
    images = np.random.default_rng(1).integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = np.array([0, 9, 3, 3, 1, 5, 255], dtype=np.uint8)
    got_x = read_idx(write_idx(tmp_path / IDX[0], images, gz))
    got_y = read_idx(write_idx(tmp_path / IDX[1], labels, gz))
    assert got_x.dtype == np.uint8 and np.array_equal(got_x, images)
    assert np.array_equal(got_y, labels)
    assert not got_x.flags.writeable  # shared through caches


def test_idx_bad_magic(tmp_path):
    p = tmp_path / "bad-images"
    p.write_bytes(b"\x00\x00\x0d\x03" + idx_bytes(np.zeros((1, 2, 2)))[4:])
    with pytest.raises(DataError, match=r"bad-images.*magic"):
        read_idx(p)


def test_idx_truncated(tmp_path):
    p = write_idx(tmp_path / IDX[0], np.zeros((3, 28, 28)), gz=False)
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(DataError, match=rf"{IDX[0]}.*truncated"):
        read_idx(p)
    p.write_bytes(p.read_bytes()[:6])
    with pytest.raises(DataError, match=IDX[0]):
        read_idx(p)


def test_idx_trailing_bytes(tmp_path):
    p = write_idx(tmp_path / IDX[1], np.zeros(4), gz=False)
    p.write_bytes(p.read_bytes() + b"xx")
    with pytest.raises(DataError, match="trailing"):
        read_idx(p)


def test_idx_bad_gzip(tmp_path):
    p = write_idx(tmp_path / IDX[0], np.random.default_rng(0).integers(0, 256, (20, 28, 28)), gz=True)
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    with pytest.raises(DataError, match=rf"{IDX[0]}\.gz.*decompress"):
        read_idx(p)
    p.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=rf"{IDX[0]}\.gz.*not gzip"):
        read_idx(p)


# ----------------------------------------------------------------------------- CIFAR-10 reader


def test_cifar_batch_reader(tmp_path):
    write_cifar(tmp_path)
    x, y = read_cifar_batch(tmp_path / "data_batch_2")
    assert x.shape == (4, 3, 32, 32) and x.dtype == np.uint8
    assert (x[0, 0] == 10).all() and (x[0, 1] == 20).all() and (x[0, 2] == 30).all()  # R first
    assert y.tolist() == [1, 2, 3, 4]
    assert read_cifar_meta(tmp_path / "batches.meta")[:2] == ("airplane", "automobile")


def test_cifar_load_dataset(tmp_path):
    write_cifar(tmp_path / "root" / "cifar-10-batches-py")
    ds = load_dataset("cifar10", data_dir=tmp_path / "root", verify=False, download=False)
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32)
    assert ds.shape == (3, 32, 32) and ds.x_train.dtype == torch.float32
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    assert ds.y_train.dtype == torch.int64
    assert ds.y_train.tolist() == [(i + j) % 10 for i in range(5) for j in range(4)]  # batch order
    assert torch.allclose(ds.x_train[0, 0], torch.full((32, 32), 10 / 255))
    assert ds.classes[-1] == "truck" and ds.num_classes == 10


def test_cifar_tarball_is_extracted_to_cache(tmp_path):
    src = tmp_path / "src" / "cifar-10-batches-py"
    write_cifar(src)
    root = tmp_path / "root" / "cifar10"
    root.mkdir(parents=True)
    with tarfile.open(root / data.CIFAR_TAR, "w:gz") as tar:
        tar.add(src, arcname="cifar-10-batches-py")
    ds = load_dataset("cifar10", data_dir=tmp_path / "root", verify=False, download=False)
    assert len(ds.y_train) == 20
    assert (cache_dir() / "cifar10" / "cifar-10-batches-py" / "test_batch").is_file()


@pytest.mark.parametrize("damage", ["truncate", "garble", "evil"])
def test_cifar_damaged_pickle(tmp_path, damage):
    write_cifar(tmp_path)
    p = tmp_path / "data_batch_3"
    if damage == "truncate":
        p.write_bytes(p.read_bytes()[:500])
    elif damage == "garble":
        p.write_bytes(b"\x80\x02garbage" * 10)
    else:  # unpickling must never run arbitrary callables
        p.write_bytes(b"cos\nsystem\n(S'echo pwned'\ntR.")
    with pytest.raises(DataError, match="data_batch_3"):
        read_cifar_batch(p)


def test_cifar_wrong_structure(tmp_path):
    p = tmp_path / "data_batch_1"
    p.write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, protocol=2))
    with pytest.raises(DataError, match="N×3072"):
        read_cifar_batch(p)
    p.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}, protocol=2))
    with pytest.raises(DataError, match="labels"):
        read_cifar_batch(p)


# ----------------------------------------------------------------------------- checksums


def test_md5_mismatch():
    check_md5(md5_bytes(b"abc"), hashlib.md5(b"abc").hexdigest(), "f")
    with pytest.raises(DataError, match=r"somefile.*md5"):
        check_md5(md5_bytes(b"abc"), "0" * 32, "somefile")


def test_md5_verified_by_default(tmp_path):
    write_mnist(tmp_path / "mnist", label=1)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz \(decompressed\): md5"):
        load_dataset("mnist", data_dir=tmp_path, download=False)
    write_cifar(tmp_path / "cifar-10-batches-py")
    with pytest.raises(DataError, match="md5"):
        load_dataset("cifar10", data_dir=tmp_path, download=False)


# ----------------------------------------------------------------------------- lookup


def _label(**kw) -> int:
    kw = {"download": False, "verify": False, **kw}
    return int(load_dataset("mnist", **kw).y_train[0])


def test_lookup_order(tmp_path, monkeypatch):
    write_mnist(tmp_path / "arg" / "mnist" / "raw", label=1)
    write_mnist(tmp_path / "env" / "mnist", label=2, gz=False)
    write_mnist(cache_dir(), label=3)  # flat layout
    monkeypatch.setenv("ARENA_DATA", str(tmp_path / "env"))
    assert _label(data_dir=tmp_path / "arg") == 1
    assert _label() == 2
    monkeypatch.delenv("ARENA_DATA")
    assert _label() == 3
    write_mnist(tmp_path / "system" / "mnist", label=4)  # like Debian's /usr/share/datasets
    assert _label(data_dir=tmp_path / "nowhere") == 3
    for f in IDX:
        (cache_dir() / f"{f}.gz").unlink()
    assert _label() == 4


def test_layout_order_and_incomplete_dirs(tmp_path):
    write_mnist(tmp_path / "mnist" / "raw", label=5)
    write_mnist(tmp_path / "mnist", label=6)
    assert _label(data_dir=tmp_path) == 5
    (tmp_path / "mnist" / "raw" / f"{IDX[3]}.gz").unlink()  # incomplete: next layout wins
    assert _label(data_dir=tmp_path) == 6


def test_nothing_found_lists_everything(tmp_path, monkeypatch):
    monkeypatch.setenv("ARENA_DATA", str(tmp_path / "envdir"))
    (tmp_path / "given" / "fashion-mnist").mkdir(parents=True)
    write_idx(tmp_path / "given" / "fashion-mnist" / IDX[0], np.zeros((1, 28, 28)), gz=True)
    with pytest.raises(DataError) as e:
        load_dataset("fashion-mnist", data_dir=tmp_path / "given", download=False)
    msg = str(e.value)
    for p in search_paths("fashion-mnist", tmp_path / "given"):
        assert str(p) in msg
    assert str(tmp_path / "envdir") in msg and str(cache_dir()) in msg
    for hint in ("--data-dir", "ARENA_DATA", "dataset-fashion-mnist", "download=False",
                 "incomplete", "fashion-mnist.s3"):
        assert hint in msg


def test_search_paths_order(tmp_path, monkeypatch):
    monkeypatch.setenv("ARENA_DATA", str(tmp_path / "env"))
    paths = search_paths("mnist", tmp_path / "arg")
    assert paths[:3] == [tmp_path / "arg" / "mnist" / "raw", tmp_path / "arg" / "mnist", tmp_path / "arg"]
    assert paths[3] == tmp_path / "env" / "mnist" / "raw" and paths[6] == cache_dir() / "mnist" / "raw"
    assert paths[-1] == tmp_path / "system" / "mnist"  # no flat layout in shared system roots
    assert search_paths("digits") == []


def test_cache_dir_env(tmp_path, monkeypatch):
    assert cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("ARENA_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "arena"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "arena"


def test_download_from_mirror(tmp_path, monkeypatch):
    """file:// mirror stands in for the network: files land in the cache, checked by md5."""
    mirror = tmp_path / "mirror"
    write_mnist(mirror, label=7)
    md5s = {f: hashlib.md5((mirror / f"{f}.gz").read_bytes()).hexdigest() for f in IDX}
    monkeypatch.setitem(data.MIRRORS, "mnist", (mirror.as_uri() + "/",))
    monkeypatch.setitem(data.GZ_MD5, "mnist", md5s)
    assert _label(download=True) == 7
    assert sorted(p.name for p in (cache_dir() / "mnist" / "raw").iterdir()) == sorted(f"{f}.gz" for f in IDX)

    for f in IDX:
        (cache_dir() / "mnist" / "raw" / f"{f}.gz").unlink()
    monkeypatch.setitem(data.GZ_MD5, "mnist", dict.fromkeys(IDX, "0" * 32))
    with pytest.raises(DataError, match="md5"):
        _label(download=True)
    assert list((cache_dir() / "mnist" / "raw").iterdir()) == []  # no partial files left


# ----------------------------------------------------------------------------- subsets


def test_subsets_deterministic_and_sorted(tmp_path):
    write_mnist(tmp_path, label=0, n_train=30)
    kw = dict(data_dir=tmp_path, download=False, verify=False)
    full = load_dataset("mnist", **kw)
    a = load_dataset("mnist", n_train=10, n_test=3, seed=1, **kw)
    b = load_dataset("mnist", n_train=10, n_test=3, seed=1, **kw)
    c = load_dataset("mnist", n_train=10, seed=2, **kw)
    assert torch.equal(a.x_train, b.x_train) and not torch.equal(a.x_train, c.x_train)
    assert len(a.y_test) == 3 and len(c.y_test) == 5
    idx = [int((full.x_train == x).flatten(1).all(1).nonzero()) for x in a.x_train]
    assert idx == sorted(idx)
    with pytest.raises(DataError, match="only 30 train"):
        load_dataset("mnist", n_train=31, **kw)
    with pytest.raises(ValueError):
        load_dataset("mnist", n_test=0, **kw)


def test_digits():
    a = load_dataset("digits", seed=0)
    assert a.x_train.shape == (1437, 1, 28, 28) and a.x_test.shape == (360, 1, 28, 28)
    assert a.x_train.dtype == torch.float32 and 0 <= a.x_train.min() and a.x_train.max() <= 1
    assert a.x_train.max() > 0.9 and set(a.y_train.tolist()) == set(range(10))
    b = load_dataset("digits", seed=0)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    s1, s2 = load_dataset("digits", n_train=100, seed=1), load_dataset("digits", n_train=100, seed=2)
    assert s1.x_train.shape[0] == 100 and not torch.equal(s1.x_train, s2.x_train)
    assert "digits" in repr(a) and "tensor" not in repr(a)


def test_unknown_name():
    with pytest.raises(UnknownNameError, match=r"mnist.*digits|digits.*mnist") as e:
        load_dataset("mnsit")
    assert "did you mean 'mnist'" in str(e.value)
    with pytest.raises(UnknownNameError):
        search_paths("nope")
    assert {"mnist", "fashion-mnist", "cifar10", "digits"} <= set(DATASETS.names())


# ----------------------------------------------------------------------------- real files


def _has_idx(root: Path | None, name: str) -> bool:
    return root is not None and any((d / f"{IDX[0]}{ext}").is_file() for d in
                                    (root / name / "raw", root / name, root) for ext in ("", ".gz"))


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_real_files(name, monkeypatch):
    if not _has_idx(REAL_DATA, name):
        pytest.skip(f"real {name} not available (set ARENA_DATA to a directory holding {name}/raw/)")
    monkeypatch.setenv("ARENA_DATA", str(REAL_DATA))
    ds = load_dataset(name, n_train=1000, download=False)  # verify=True: md5s checked
    assert isinstance(ds, Dataset) and ds.x_train.shape == (1000, 1, 28, 28)
    assert ds.x_test.shape == (10000, 1, 28, 28) and ds.shape == (1, 28, 28)
    assert ds.y_train.min() >= 0 and ds.y_train.max() <= 9 and len(ds.y_train.unique()) == 10
    assert 0 <= ds.x_train.min() and ds.x_train.max() == 1.0
    if name == "mnist":
        assert load_dataset(name, download=False).y_train[:5].tolist() == [5, 0, 4, 1, 9]
    else:
        assert ds.classes[0] == "T-shirt/top"
