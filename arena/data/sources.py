"""Datasets: where they come from, how they are checked, and deterministic subsets.

``load_dataset(name)`` looks for the files in this order and uses the first complete copy:

1. the ``data_dir`` argument (``--data-dir``),
2. the ``ARENA_DATA`` environment variable,
3. the per-user cache, :func:`cache_dir`,
4. system locations (Debian's ``dataset-fashion-mnist`` installs /usr/share/datasets/fashion-mnist),
5. a download from the canonical mirrors into the cache (skipped with ``download=False``).

Inside a root directory, ``<root>/<name>/raw/``, ``<root>/<name>/`` and ``<root>/`` are accepted
(CIFAR-10: ``cifar-10-batches-py/`` or ``cifar-10-python.tar.gz``). Contents are verified against
the canonical md5s (MNIST-style files: md5 of the *decompressed* bytes, because re-packaged
copies such as Debian's rewrite the gzip headers but not the data). If nothing is found, one
:class:`DataError` lists every place searched and every way to provide the data.

A dataset name is registered in :data:`DATASETS` with a loader
``f(*, seed, data_dir, download, verify) -> RawData`` that returns the full, unsubsetted data;
:func:`load_dataset` takes the subsets and converts to float tensors.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
import torch

from .formats import (DataError, check_md5, download as _download, extract_cifar_tar, md5_bytes, md5_file,
                      parse_idx, read_bytes, read_cifar_batch, read_cifar_meta)
from ..registry import Registry
from ..seeding import numpy_rng

__all__ = ["DATASETS", "DataError", "Dataset", "RawData", "cache_dir", "load_dataset",
           "search_paths"]

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
# md5 of the decompressed IDX bytes (re-gzipped copies, e.g. Debian's, differ only in their gzip headers);
# identical for every faithful copy.
IDX_MD5 = {
    "mnist": dict(zip(IDX_FILES, ("6bbc9ace898e44ae57da46a324031adb", "a25bea736e30d166cdddb491f175f624",
                                  "2646ac647ad5339dbf082846283269ea", "27ae3e4e09519cfbb04c329615203637"))),
    "fashion-mnist": dict(zip(IDX_FILES, (
        "f4a8712d7a061bf5bd6d2ca38dc4d50a", "9018921c3c673c538a1fc5bad174d6f9",
        "8181f5470baa50b63fa0f6fddb340f0a", "15d484375f8d13e6eb1aabb0c3f46965"))),
}
# md5 of the canonical .gz files, checked on download only (mirrors serve these exact bytes).
GZ_MD5 = {
    "mnist": dict(zip(IDX_FILES, ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
                                  "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"))),
    "fashion-mnist": dict(zip(IDX_FILES, (
        "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
        "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"))),
}
MIRRORS = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}
CIFAR_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f", "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751", "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb", "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}
CIFAR_DIR, CIFAR_TAR = "cifar-10-batches-py", "cifar-10-python.tar.gz"
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR_TAR_MD5 = "c58f30108f718f92721af3b95e74349a"
SYSTEM_ROOTS = (Path("/usr/share/datasets"),)
T = TypeVar("T")
_KNOWN_MD5 = {m: f"{ds}'s {f}" for ds, t in IDX_MD5.items() for f, m in t.items()}


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """A loaded dataset: float32 N×C×H×W images in [0, 1] and int64 labels."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    classes: tuple[str, ...]

    @property
    def shape(self) -> tuple[int, int, int]:
        c, h, w = self.x_train.shape[1:]
        return (int(c), int(h), int(w))

    def __repr__(self) -> str:  # the default would print every pixel
        return (f"Dataset({self.name!r}, train={len(self.y_train)}, test={len(self.y_test)}, "
                f"shape={self.shape}, classes={self.num_classes})")


@dataclass(frozen=True, eq=False)
class RawData:
    """What a registered loader returns: full splits as numpy, N×C×H×W.

    Images are uint8 (0..255, divided by 255 on conversion) or float32 already in [0, 1]; keeping
    them compact lets :func:`load_dataset` subset before converting, and lets caches share them.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...]


DATASETS: Registry[RawData] = Registry("dataset")


def cache_dir() -> Path:
    """Per-user cache: $ARENA_CACHE, else $XDG_CACHE_HOME/arena, else ~/.cache/arena (not created)."""
    if os.environ.get("ARENA_CACHE"):
        return Path(os.environ["ARENA_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "arena"


def _roots(data_dir: str | os.PathLike | None) -> list[tuple[Path, bool]]:
    """(root, flat layout allowed) in lookup order.

    System roots hold several datasets side by side, so files directly in them are not accepted.
    """
    roots = [Path(data_dir).expanduser()] if data_dir is not None else []
    if os.environ.get("ARENA_DATA"):
        roots.append(Path(os.environ["ARENA_DATA"]).expanduser())
    roots.append(cache_dir())
    out: list[tuple[Path, bool]] = []
    for r in [*roots, *SYSTEM_ROOTS]:
        if all(r != seen for seen, _ in out):
            out.append((r, r not in SYSTEM_ROOTS))
    return out


def search_paths(name: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Every place ``load_dataset(name)`` looks, in order (directories; CIFAR also its archive).

    Empty for datasets that need no files; an unknown name raises the registry's UnknownNameError.
    """
    DATASETS.check([name])
    places: list[Path] = []
    for root, flat in _roots(data_dir):
        if name == "cifar10" and flat:
            places += [root / "cifar10" / CIFAR_DIR, root / CIFAR_DIR, root / CIFAR_TAR,
                       root / "cifar10" / CIFAR_TAR]
        elif name == "cifar10":
            places += [root / "cifar10" / CIFAR_DIR, root / "cifar10" / CIFAR_TAR]
        elif name in IDX_MD5:
            places += [root / name / "raw", root / name] + ([root] if flat else [])
    return places


def _how_to_provide(name: str, needs: str, places: list[Path], notes: list[str], download: bool,
                    download_error: str | None) -> DataError:
    layouts = (f"DIR/{name}/raw/, DIR/{name}/ or DIR/" if name in IDX_MD5 else
               f"DIR/cifar10/{CIFAR_DIR}/ or DIR/{CIFAR_DIR}/, or {CIFAR_TAR} in DIR/ or DIR/cifar10/")
    sub = "raw" if name in IDX_MD5 else CIFAR_DIR
    lines = [f"dataset {name!r} not found; it needs {needs}.", "Searched, in order:"]
    lines += [f"  {p}" for p in places] + [f"  note: {n}" for n in notes]
    if download_error:
        lines.append(f"Download failed: {download_error}")
    elif not download:
        lines.append("Download was disabled (download=False).")
    lines += [
        "Ways to provide it:",
        f"  - pass --data-dir DIR (data_dir=DIR) with the files in {layouts}",
        "  - or set the environment variable ARENA_DATA=DIR (same layouts)",
        f"  - or copy the files into the cache: {cache_dir() / name / sub}",
    ]
    if name == "fashion-mnist":
        lines.append("  - or install Debian's package: apt install dataset-fashion-mnist")
    urls = MIRRORS.get(name, (CIFAR_URL,))
    lines.append(f"  - or download (download=True, needs network access) from {', '.join(urls)}")
    return DataError("\n".join(lines))


# ----------------------------------------------------------------------------- MNIST / Fashion


def _idx_files(d: Path) -> list[Path | None]:
    return [next((p for p in (d / f, d / f"{f}.gz") if p.is_file()), None) for f in IDX_FILES]


def _locate_idx(name: str, data_dir: str | os.PathLike | None, download: bool) -> list[Path]:
    places, notes = search_paths(name, data_dir), []
    for d in places:
        found = _idx_files(d)
        if all(found):
            return [p for p in found if p is not None]
        if any(found):
            missing = [f for f, p in zip(IDX_FILES, found) if p is None]
            notes.append(f"{d} is incomplete, missing {', '.join(missing)}")
    error = None
    if download:
        dest = cache_dir() / name / "raw"
        try:
            for f in IDX_FILES:
                if not (dest / f"{f}.gz").is_file():
                    _download([m + f + ".gz" for m in MIRRORS[name]], dest / f"{f}.gz", GZ_MD5[name][f])
            return [dest / f"{f}.gz" for f in IDX_FILES]
        except DataError as e:
            error = str(e)
    needs = ", ".join(f"{f}[.gz]" for f in IDX_FILES)
    raise _how_to_provide(name, needs, places, notes, download, error)


@lru_cache(maxsize=16)
def _read_idx_cached(path: str, size: int, mtime_ns: int, md5: str | None) -> np.ndarray:
    """Parsed IDX array keyed by resolved path and stat (so a replaced file is re-read)."""
    data = read_bytes(path)
    if md5 is not None:
        actual = md5_bytes(data)
        hint = f"these are the bytes of {_KNOWN_MD5[actual]}" if actual in _KNOWN_MD5 else ""
        check_md5(actual, md5, path + " (decompressed)", hint)
    return parse_idx(data, path)


def _cached(reader: Callable[[str, int, int, str | None], T], path: Path, md5: str | None) -> T:
    """Call an lru-cached reader keyed by resolved path, size and mtime."""
    p = path.resolve()
    st = p.stat()
    return reader(str(p), st.st_size, st.st_mtime_ns, md5)


def _idx_loader(name: str, classes: tuple[str, ...]) -> Callable[..., RawData]:
    def load(*, seed: int = 0, data_dir: str | os.PathLike | None = None, download: bool = True,
             verify: bool = True) -> RawData:
        paths = _locate_idx(name, data_dir, download)
        arrs = [_cached(_read_idx_cached, p, IDX_MD5[name][f] if verify else None)
                for p, f in zip(paths, IDX_FILES)]
        splits = []
        for (images, labels), (pi, pl) in zip((arrs[:2], arrs[2:]), (paths[:2], paths[2:])):
            if images.ndim != 3 or images.shape[1:] != (28, 28):
                raise DataError(f"{pi}: expected N×28×28 images, got shape {images.shape}")
            if labels.ndim != 1 or len(labels) != len(images):
                raise DataError(f"{pl}: expected {len(images)} labels, got shape {labels.shape}")
            if labels.size and labels.max() >= len(classes):
                raise DataError(f"{pl}: label {labels.max()} out of range 0..{len(classes) - 1}")
            splits += [images[:, None], labels.astype(np.int64)]
        return RawData(*splits, classes=classes)

    load.__doc__ = f"Load the full {name} (IDX files, 1×28×28)."
    return load


DATASETS.register("mnist", _idx_loader("mnist", tuple(str(i) for i in range(10))))
DATASETS.register("fashion-mnist", _idx_loader("fashion-mnist", (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
    "Ankle boot")))


# ----------------------------------------------------------------------------- CIFAR-10


def _complete_cifar(d: Path) -> bool:
    return all((d / f).is_file() for f in CIFAR_MD5)


def _extract(archive: Path, verify: bool) -> Path:
    extracted = cache_dir() / "cifar10" / CIFAR_DIR
    if _complete_cifar(extracted):
        return extracted
    if verify:
        check_md5(md5_file(archive), CIFAR_TAR_MD5, archive)
    return extract_cifar_tar(archive, cache_dir() / "cifar10")


def _locate_cifar(data_dir: str | os.PathLike | None, download: bool, verify: bool) -> Path:
    places, notes = search_paths("cifar10", data_dir), []
    for p in places:
        if p.name == CIFAR_TAR and p.is_file():
            return _extract(p, verify)
        if p.name == CIFAR_DIR and p.is_dir():
            if _complete_cifar(p):
                return p
            notes.append(f"{p} is incomplete, missing "
                         + ", ".join(f for f in CIFAR_MD5 if not (p / f).is_file()))
    error = None
    if download:
        try:
            archive = _download([CIFAR_URL], cache_dir() / "cifar10" / CIFAR_TAR, CIFAR_TAR_MD5)
            return _extract(archive, verify=False)  # download() already checked the md5
        except DataError as e:
            error = str(e)
    needs = f"{CIFAR_DIR}/ ({', '.join(CIFAR_MD5)}) or {CIFAR_TAR}"
    raise _how_to_provide("cifar10", needs, places, notes, download, error)


@lru_cache(maxsize=8)
def _read_cifar_cached(path: str, size: int, mtime_ns: int,
                       md5: str | None) -> tuple[np.ndarray, np.ndarray] | tuple[str, ...]:
    if md5 is not None:
        check_md5(md5_file(path), md5, path)
    return read_cifar_meta(path) if path.endswith("batches.meta") else read_cifar_batch(path)


@DATASETS.register("cifar10")
def load_cifar10(*, seed: int = 0, data_dir: str | os.PathLike | None = None, download: bool = True,
                 verify: bool = True) -> RawData:
    """Load the full CIFAR-10 from the official python batches (3×32×32)."""
    d = _locate_cifar(data_dir, download, verify)
    read = {f: _cached(_read_cifar_cached, d / f, md5 if verify else None) for f, md5 in CIFAR_MD5.items()}
    train = [read[f"data_batch_{i}"] for i in range(1, 6)]
    x_test, y_test = read["test_batch"]
    return RawData(np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]),
                   x_test, y_test, classes=read["batches.meta"])


# ----------------------------------------------------------------------------- digits


@lru_cache(maxsize=1)
def _digits_28() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no files, no network

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    x = torch.nn.functional.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)
    out = x.clamp_(0.0, 1.0).numpy()
    out.flags.writeable = False
    return out, d.target.astype(np.int64)


@DATASETS.register("digits")
def load_digits28(*, seed: int = 0, data_dir: str | os.PathLike | None = None, download: bool = True,
                  verify: bool = True) -> RawData:
    """scikit-learn's 1797 8×8 digits, scaled from 0..16 to [0, 1] and bilinearly upsampled to
    1×28×28 so models built for MNIST (e.g. LeNet) run unchanged; a small dataset that needs no
    files. The 1437/360 train/test split is a permutation drawn from ``seed``."""
    x, y = _digits_28()
    perm = numpy_rng(seed, "digits", "split").permutation(len(y))
    test, train = np.sort(perm[:360]), np.sort(perm[360:])
    return RawData(x[train], y[train], x[test], y[test], classes=tuple(str(i) for i in range(10)))


# ----------------------------------------------------------------------------- public entry point


def _subset(n: int | None, size: int, seed: int, name: str, split: str) -> np.ndarray | None:
    if n is None:
        return None
    if n > size:
        raise DataError(f"asked for n_{split}={n} but {name} has only {size} {split} samples")
    return np.sort(numpy_rng(seed, name, split).choice(size, n, replace=False))


def _images(x: np.ndarray, idx: np.ndarray | None) -> torch.Tensor:
    sel = x if idx is None else x[idx]
    t = torch.from_numpy(sel.astype(np.float32))  # astype copies: cached arrays stay untouched
    return t.div_(255.0) if x.dtype == np.uint8 else t


def load_dataset(name: str, *, n_train: int | None = None, n_test: int | None = None, seed: int = 0,
                 data_dir: str | os.PathLike | None = None, download: bool = True,
                 verify: bool = True) -> Dataset:
    """Load ``name`` with optional deterministic subsets.

    ``n_train``/``n_test`` draw that many samples without replacement from
    ``numpy_rng(seed, name, split)`` (indices sorted, so order follows the files); None keeps all.
    ``verify=False`` skips md5 checks (structure is still validated), for hand-made test files.
    """
    for key, n in (("n_train", n_train), ("n_test", n_test)):
        if n is not None and n <= 0:
            raise ValueError(f"{key} must be positive or None, got {n}")
    raw = DATASETS.get(name)(seed=seed, data_dir=data_dir, download=download, verify=verify)
    i_train = _subset(n_train, len(raw.y_train), seed, name, "train")
    i_test = _subset(n_test, len(raw.y_test), seed, name, "test")
    ys = [torch.from_numpy(np.array(y if i is None else y[i], dtype=np.int64))
          for y, i in ((raw.y_train, i_train), (raw.y_test, i_test))]
    return Dataset(name, _images(raw.x_train, i_train), ys[0], _images(raw.x_test, i_test), ys[1],
                   num_classes=len(raw.classes), classes=tuple(raw.classes))
