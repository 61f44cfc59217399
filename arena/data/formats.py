"""File-format readers, checksums and downloads for arena's datasets.

Kept apart from :mod:`arena.data.sources` (which decides *where* data comes from) so each reader can be
tested on tiny hand-written files: the readers validate structure only, and checksum checking is
the separate :func:`check_md5`, because test files cannot match the canonical md5s.

Every problem with a file becomes a :class:`DataError` that names the file and says what is
wrong, never a bare numpy/pickle/gzip traceback.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import pickle
import shutil
import sys
import tarfile
import tempfile
import urllib.request
import zlib
from pathlib import Path

import numpy as np

IDX_UBYTE_1D = 0x00000801  # labels
IDX_UBYTE_3D = 0x00000803  # images
_GZIP_MAGIC = b"\x1f\x8b"
DOWNLOAD_TIMEOUT_S = 20.0


class DataError(RuntimeError):
    """A dataset is missing, corrupt or not what it claims to be; the message says how to fix it."""


# ----------------------------------------------------------------------------- checksums


def md5_bytes(data: bytes | memoryview) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def md5_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_md5(actual: str, expected: str, source: str | os.PathLike, hint: str = "") -> None:
    """Raise DataError if ``actual`` != ``expected``; ``hint`` may say what the file really is."""
    if actual != expected:
        raise DataError(
            f"{source}: md5 {actual} does not match the expected {expected}"
            f"{'; ' + hint if hint else ''}. The file is corrupt, truncated or a different "
            "file; delete it and provide the official file again (or re-download)."
        )


# ----------------------------------------------------------------------------- IDX (MNIST)


def read_bytes(path: str | os.PathLike) -> bytes:
    """Whole file contents, gunzipped when the file is gzip data (detected by content)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read file: {e}") from e
    if raw[:2] != _GZIP_MAGIC:
        if path.suffix == ".gz":
            raise DataError(f"{path}: named .gz but is not gzip data; replace it with the official file")
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        raise DataError(
            f"{path}: gzip data cannot be decompressed ({e}); the file is corrupt or truncated, "
            "delete it and provide the official file again"
        ) from e


def parse_idx(data: bytes, source: str | os.PathLike = "<bytes>") -> np.ndarray:
    """Parse an unsigned-byte IDX file (magic 0x801 or 0x803) into a read-only uint8 array."""
    if len(data) < 8:
        raise DataError(f"{source}: only {len(data)} bytes, too short for an IDX header (truncated?)")
    magic = int.from_bytes(data[:4], "big")
    if magic not in (IDX_UBYTE_1D, IDX_UBYTE_3D):
        raise DataError(
            f"{source}: bad IDX magic 0x{magic:08x}; expected 0x{IDX_UBYTE_1D:08x} (labels) or "
            f"0x{IDX_UBYTE_3D:08x} (images). Not an uncompressed MNIST-style IDX file."
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{source}: truncated IDX header ({len(data)} bytes, need {header})")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise DataError(
            f"{source}: {what}: {len(data)} bytes but the header's dims {dims} need {expected}"
        )
    arr = np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)
    arr.flags.writeable = False  # shared via caches; callers copy before changing
    return arr


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file, gzipped or not. Structure is validated; checksums are not (see check_md5)."""
    return parse_idx(read_bytes(path), path)


# ----------------------------------------------------------------------------- CIFAR-10 pickles

# The official batches are Python 2 pickles of dicts holding lists, bytes and one numpy array.
# Unpickling runs arbitrary callables, so only what those files need is allowed.
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle API
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (not a CIFAR batch)")
        if module.startswith("numpy.core."):  # numpy 2 renamed numpy.core -> numpy._core
            module = "numpy._core." + module.split(".", 2)[2]
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _SafeUnpickler(f, encoding="bytes").load()
    except OSError as e:
        raise DataError(f"{path}: cannot read file: {e}") from e
    except Exception as e:  # unpickling garbage raises a zoo of types
        raise DataError(
            f"{path}: not a readable CIFAR-10 python pickle ({type(e).__name__}: {e}); the file "
            "is corrupt or truncated, provide the official cifar-10-batches-py files again"
        ) from e
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}


def read_cifar_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> (uint8 N×3×32×32 images, int64 N labels).

    Each row of ``data`` is 1024 red, then 1024 green, then 1024 blue bytes, each plane row-major,
    so a plain reshape gives channel-first images.
    """
    path = Path(path)
    d = _unpickle(path)
    missing = [k for k in ("data", "labels") if k not in d]
    if missing:
        raise DataError(f"{path}: CIFAR batch lacks key(s) {missing}; keys present: {sorted(d)}")
    data, labels = d["data"], d["labels"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3072):
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' must be a uint8 array of shape N×3072, got {desc}")
    try:
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as e:
        raise DataError(f"{path}: 'labels' is not a list of integers ({e})") from e
    if y.shape != (data.shape[0],):
        raise DataError(f"{path}: {y.size} labels for {data.shape[0]} images")
    if y.size and (y.min() < 0 or y.max() > 9):
        raise DataError(f"{path}: labels must be in 0..9, found {y.min()}..{y.max()}")
    return data.reshape(-1, 3, 32, 32), y


def read_cifar_meta(path: str | os.PathLike) -> tuple[str, ...]:
    """Class names from ``batches.meta``."""
    path = Path(path)
    names = _unpickle(path).get("label_names")
    if not isinstance(names, list) or len(names) != 10:
        raise DataError(f"{path}: 'label_names' must be a list of 10 class names")
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def extract_cifar_tar(archive: Path, dest: Path) -> Path:
    """Extract ``cifar-10-batches-py/`` from the official archive into ``dest``, atomically."""
    final = dest / "cifar-10-batches-py"
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = [m for m in tar.getmembers() if m.isfile()
                       and m.name.startswith("cifar-10-batches-py/") and ".." not in m.name]
            if not members:
                raise DataError(f"{archive}: contains no cifar-10-batches-py/ files")
            for m in members:
                src = tar.extractfile(m)
                assert src is not None
                out = tmp / m.name
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(src.read())
        if final.exists():  # a concurrent or earlier extraction; keep it
            return final
        os.replace(tmp / "cifar-10-batches-py", final)
        return final
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{archive}: cannot extract ({e}); delete it and download it again") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------- downloads


def download(urls: list[str], dest: Path, md5: str | None) -> Path:
    """Fetch the first mirror that works into ``dest`` (temp file + os.replace), checking md5.

    Raises DataError listing each mirror's failure; a missing network fails within the timeout.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in urls:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                _fetch(url, out)
            if md5 is not None:
                check_md5(md5_file(tmp_name), md5, url)
            os.replace(tmp_name, dest)
            return dest
        except (OSError, http.client.HTTPException, DataError) as e:  # URLError is an OSError
            errors.append(f"{url}: {getattr(e, 'reason', None) or e}")
            print(f"arena: download failed: {errors[-1]}", file=sys.stderr)
        finally:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)
    raise DataError(f"could not download {dest.name}:\n    " + "\n    ".join(errors))


def _fetch(url: str, out) -> None:  # noqa: ANN001 - binary file object
    print(f"arena: downloading {url}", file=sys.stderr)
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
        total = int(resp.headers.get("Content-Length") or 0)
        done, next_report = 0, 0.1
        while block := resp.read(1 << 20):
            out.write(block)
            done += len(block)
            if total and done / total >= next_report:
                print(f"arena:   {done / 1e6:.1f}/{total / 1e6:.1f} MB", file=sys.stderr)
                next_report += 0.1
