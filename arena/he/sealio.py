"""SEAL's ciphertext bytes and exact arithmetic modulo its prime (< 2^60), in numpy (coefficient packing).

The coefficient packing (coeff.py) has the server compute on the ciphertexts' numbers itself
instead of through SEAL's evaluator: a ciphertext-plaintext product in SEAL's NTT form is an
element-wise product modulo the ciphertext prime q, so the server's whole linear layer is a batch
of exact modular matrix products, which BLAS does far faster than one SEAL call per product.
This module holds what that needs and nothing about the packing itself:

- ``SealFormat``: SEAL 4's serialisation of a one-prime CKKS ``Ciphertext`` (header, metadata, the
  polynomials). Reads what SEAL wrote (zstd or zlib as SEAL chose; zstd through the copy bundled
  with TenSEAL's own binary, else the system's libzstd), writes uncompressed bytes that SEAL loads.
  The format is checked against bytes SEAL itself wrote when a ``SealFormat`` is made.
- ``ntt_convention``: SEAL's NTT (which root psi, which order), read off SEAL's own transform of X.
- ``modmatmul``: exact (A @ B) mod q for q < 2^60 with float64 BLAS (through torch, which runs the
  thread count the caller set): 20-bit limbs keep every partial sum below 2^53.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import math
import os
import struct
import zlib
from typing import Any

import numpy as np
import torch

from .ckks import Wire, import_tenseal

U64 = np.uint64
_MAGIC = 0xA15E
_HEADER = struct.Struct("<HBBBBHQ")  # magic, header size, version major, minor, compression, reserved, size
_CT_META = struct.Struct("<4QBQQQdQ")  # parms_id, is_ntt_form, size, poly degree, primes, scale, correction
LIMB = 20  # bits per limb: 3 * 2^20 * 2^20 * K < 2^50 for inner dimensions K <= 256


def _zstd() -> Any:
    """ZSTD_decompress from the zstd that TenSEAL's binary bundles (it exports the symbol), else
    the system's libzstd; None when neither exists."""
    ts = import_tenseal()
    site = os.path.dirname(os.path.dirname(ts.__file__))
    for path in sorted(glob.glob(os.path.join(site, "_sealapi_cpp*.so"))) + [ctypes.util.find_library("zstd") or ""]:
        try:
            lib = ctypes.CDLL(path)
            fn = lib.ZSTD_decompress
        except (OSError, AttributeError):
            continue
        fn.restype = ctypes.c_size_t
        fn.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t]
        lib.ZSTD_isError.restype = ctypes.c_uint
        lib.ZSTD_isError.argtypes = [ctypes.c_size_t]
        return lib
    return None


class SealFormat:
    """Read and write one-prime CKKS ciphertexts in SEAL's serialisation (SEAL 4.x)."""

    def __init__(self, seal_context: Any, wire: Wire) -> None:
        from tenseal import sealapi

        self._sc = seal_context
        self._wire = wire
        self._zstd = _zstd()
        data = seal_context.first_context_data()
        self.n = data.parms().poly_modulus_degree()
        primes = data.parms().coeff_modulus()
        if len(primes) != 1:
            raise ValueError(f"the coefficient packing computes modulo one ciphertext prime; the data level has "
                             f"{len(primes)}")
        self.q = primes[0].value()
        self.parms_id = tuple(seal_context.first_parms_id())
        # SEAL's version bytes from an object SEAL wrote; then a round trip through SEAL checks the layout
        blob = wire.dump(sealapi.Ciphertext())
        if _HEADER.unpack_from(blob)[0] != _MAGIC or blob[3] != 4:
            raise RuntimeError("unexpected SEAL serialisation header: the coefficient packing needs SEAL 4.x")
        self.version = blob[3:5]
        polys = (np.arange(2 * self.n, dtype=U64) * U64(7919)).reshape(2, self.n) % U64(self.q)
        back = wire.load(self.write(polys), seal_context)
        if back.data(1) != int(polys[1, 0]) or not np.array_equal(self.read(wire.dump(back)), polys):
            raise RuntimeError("SEAL's ciphertext layout is not the one the coefficient packing writes")

    def _body(self, blob: bytes) -> bytes:
        magic, hsize, _, _, compression, _, size = _HEADER.unpack_from(blob)
        if magic != _MAGIC or hsize != _HEADER.size or size != len(blob):
            raise ValueError("not a SEAL object: bad header")
        body = blob[_HEADER.size:]
        if compression == 0:
            return body
        if compression == 1:
            return zlib.decompress(body)
        if compression == 2:
            if self._zstd is None:
                raise ImportError("the coefficient packing reads SEAL's zstd-compressed bytes, but no zstd library "
                                  "was found (TenSEAL's binary or libzstd): use packing='batch'")
            cap = 64 + 8 * (4 + 2 * self.n)  # metadata and two polynomials, with room to spare
            out = ctypes.create_string_buffer(cap * 2)
            got = self._zstd.ZSTD_decompress(out, len(out), body, len(body))
            if self._zstd.ZSTD_isError(got):
                raise ValueError("corrupt zstd stream in a SEAL object")
            return out.raw[:got]
        raise ValueError(f"unknown SEAL compression mode {compression}")

    def read(self, blob: bytes) -> np.ndarray:
        """A ciphertext's polynomials (2 x n, NTT form, values < q) from SEAL's bytes."""
        raw = self._body(blob)
        *pid, ntt, size, n, primes, _scale, _corr = _CT_META.unpack_from(raw)
        if tuple(pid) != self.parms_id or not ntt or size != 2 or n != self.n or primes != 1:
            raise ValueError(f"expected a fresh two-polynomial ciphertext in NTT form at the data level "
                             f"(n={self.n}); got size {size}, n {n}, {primes} prime(s), NTT {bool(ntt)}")
        count = size * n
        return np.frombuffer(raw, dtype=U64, count=count, offset=len(raw) - 8 * count).reshape(size, n)

    def write(self, polys: np.ndarray, ntt: bool = True, scale: float = 1.0) -> bytes:
        """SEAL bytes (uncompressed) for a ciphertext with these polynomials."""
        data = np.ascontiguousarray(polys, dtype=U64)
        array = struct.pack("<Q", data.size) + data.tobytes()
        array = self._header(len(array)) + array
        body = _CT_META.pack(*self.parms_id, int(ntt), data.shape[0], data.shape[1], 1, scale, 1) + array
        return self._header(len(body)) + body

    def _header(self, body: int) -> bytes:
        return _HEADER.pack(_MAGIC, _HEADER.size, self.version[0], self.version[1], 0, 0, _HEADER.size + body)


def ntt_convention(seal_context: Any, fmt: SealFormat, wire: Wire) -> tuple[int, np.ndarray]:
    """(psi, e): SEAL's NTT form of a polynomial p holds p(psi^e[k]) at position k. Read off SEAL's
    own transform of X (a public operation), and checked at a sample of positions."""
    from tenseal import sealapi

    n, q = fmt.n, fmt.q
    x = np.zeros((2, n), dtype=U64)
    x[:, 1] = 1  # (X, X): SEAL refuses to transform a ciphertext whose second polynomial is zero
    ct = wire.load(fmt.write(x, ntt=False), seal_context)
    sealapi.Evaluator(seal_context).transform_to_ntt_inplace(ct)
    values = fmt.read(wire.dump(ct))[0]
    bits = int(math.log2(n))
    rev = np.array([int(format(k, f"0{bits}b")[::-1], 2) for k in range(n)])
    e = 2 * rev + 1  # Harvey's negacyclic NTT: bit-reversed odd powers of a primitive 2n-th root
    psi = int(values[0])
    if pow(psi, n, q) != q - 1 or any(int(values[k]) != pow(psi, int(e[k]), q) for k in range(0, n, max(1, n // 61))):
        raise RuntimeError("SEAL's NTT is not the bit-reversed negacyclic transform the coefficient packing assumes")
    return psi, e


def ntt_of(poly: np.ndarray, seal_context: Any, fmt: SealFormat, wire: Wire) -> np.ndarray:
    """SEAL's NTT form of one public polynomial (coefficients < q), by SEAL's own transform."""
    from tenseal import sealapi

    two = np.stack([poly, poly]).astype(U64)
    ct = wire.load(fmt.write(two, ntt=False), seal_context)
    sealapi.Evaluator(seal_context).transform_to_ntt_inplace(ct)
    return fmt.read(wire.dump(ct))[0].copy()


# ---- exact arithmetic modulo q (q < 2^60) --------------------------------------------------------

def _limbs(x: np.ndarray) -> list[torch.Tensor]:
    mask = U64((1 << LIMB) - 1)
    return [torch.from_numpy(((x >> U64(LIMB * i)) & mask).astype(np.float64)) for i in range(3)]


def modmatmul(a: np.ndarray, b: np.ndarray, q: int) -> np.ndarray:
    """(a @ b) mod q, exactly, for uint64 arrays with entries < q < 2^60 (batched like torch.matmul:
    a is (..., m, k), b is (..., k, n)). Each operand is cut into three 20-bit limbs; the sums of limb
    products of equal weight 2^(20 s) come out of five float64 matmuls, exact because they stay
    below 2^50 (k <= 256); they are then recombined modulo q. Runs on torch's CPU BLAS with the
    caller's thread setting (numpy's BLAS would start its own threads)."""
    k = a.shape[-1]
    if k > 256 or q >= 1 << 60:
        raise ValueError(f"modmatmul: inner dimension {k} > 256 or a prime of more than 60 bits")
    la, lb = _limbs(a), _limbs(b)
    out = None
    for s in range(5):  # weight 2^(20 s): the limb pairs (i, s - i)
        pairs = [(i, s - i) for i in range(3) if 0 <= s - i < 3]
        h = torch.matmul(torch.cat([la[i] for i, _ in pairs], dim=-1), torch.cat([lb[j] for _, j in pairs], dim=-2))
        h = h.numpy()  # exact integers < 3 * 2^40 * k <= 2^50, in float64
        if s == 0:
            term = h.astype(U64)
        else:  # (h * 2^(20 s)) mod q, left in [0, 3q): the float64 quotient is off by at most one
            c = pow(2, LIMB * s, q)  # and the remainder is exact in wrapping uint64 arithmetic
            qhat = (h * (c / q)).astype(U64)
            term = h.astype(U64) * U64(c)
            term -= qhat * U64(q)
            term += U64(q)
        if out is None:
            out = term
        else:
            out += term  # < 12 q + 2^50 < 2^64 for q < 2^60
    return out % U64(q)
