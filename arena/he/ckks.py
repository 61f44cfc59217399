"""CKKS machinery for the `he` defense: parameter checks and the slot packings' client (keys, packing,
en/decryption). The server's slot evaluation is in server.py; the coefficient packing (the
default, no rotations) is in coeff.py.

Batch packing. A ciphertext has S = N/2 slots. Each sample's activation vector is zero-padded to
a block of D slots (D: the next power of two >= the widest layer of the server part) and P = S/D
samples are *interleaved*: slot ``j*P + b`` holds feature j of sample b. A rotation by ``i*P``
then rotates every sample's feature vector cyclically by i at once, so one ciphertext-plaintext
matrix product serves P samples (256-feature LeNet activations at N = 8192: P = 16). When the
server part is linear, the slots' imaginary parts carry P more samples (a real matrix maps real
and imaginary parts separately): 32 samples per ciphertext. The product uses Halevi-Shoup
diagonals in GAZELLE's hybrid form (m' = the next power of two >= the m outputs diagonals, then
log2(D/m') rotate-and-add folds) with baby-step giant-step rotations. Every rotation step is a
power of two, so TenSEAL's default Galois keys serve and each rotation is one key switch
(LeNet's 256->120 layer: 22 rotations and 128 plaintext multiplications per ciphertext).

The client encrypts at the lowest level the server part needs (one level per linear layer and
per square), so the ciphertexts it sends carry no unused primes. Ciphertexts cross between the
parties as SEAL's own serialisation (bytes, counted); the server deserialises them against its
*public* TenSEAL context, which holds the public, relinearisation and Galois keys and never the
secret key.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

# SEAL's largest total coefficient-modulus size per polynomial degree at 128-bit security
# (HomomorphicEncryption.org standard; seal::CoeffModulus::MaxBitCount).
MAX_COEFF_BITS = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
HEADROOM_BITS = 10  # bits above the scale left for the integer part of a value (|x| < 2^10)
MIN_SCALE_BITS = 10  # below this, CKKS results carry less than ~3 significant digits


def import_tenseal() -> Any:
    try:
        import tenseal
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the `he` defense needs TenSEAL: pip install tenseal (or pip install 'arena[he]')") from e
    return tenseal


@dataclass(frozen=True)
class CKKSParams:
    """CKKS parameters, checked on construction; ``check_circuit`` checks them against a server part."""

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 40, 40, 60)
    scale_bits: int = 40

    def __post_init__(self) -> None:
        n, bits, sb = self.poly_modulus_degree, self.coeff_mod_bit_sizes, self.scale_bits
        if isinstance(n, bool) or n not in MAX_COEFF_BITS:
            raise ValueError(f"poly_modulus_degree must be one of {sorted(MAX_COEFF_BITS)}, got {n!r}")
        if not isinstance(bits, (tuple, list)) or not all(isinstance(b, int) and not isinstance(b, bool)
                                                         for b in bits):
            raise ValueError(f"coeff_mod_bit_sizes must be a list of integers, got {bits!r}")
        object.__setattr__(self, "coeff_mod_bit_sizes", tuple(bits))
        if len(bits) < 1:
            raise ValueError("coeff_mod_bit_sizes needs at least one prime")
        if not all(20 <= b <= 60 for b in bits):
            raise ValueError(f"every prime of coeff_mod_bit_sizes must have 20..60 bits (SEAL), got {list(bits)}")
        if sum(bits) > MAX_COEFF_BITS[n]:
            raise ValueError(f"coeff_mod_bit_sizes {list(bits)} total {sum(bits)} bits, but poly_modulus_degree {n} "
                             f"allows at most {MAX_COEFF_BITS[n]} bits at 128-bit security: drop primes or raise "
                             f"poly_modulus_degree")
        if isinstance(sb, bool) or not isinstance(sb, int) or not MIN_SCALE_BITS <= sb <= 60:
            raise ValueError(f"scale_bits (global scale 2^scale_bits) must be an integer in "
                             f"{MIN_SCALE_BITS}..60, got {sb!r}")
        if sb + HEADROOM_BITS > bits[0]:
            raise ValueError(f"scale 2^{sb} does not fit the first (decryption) prime of {bits[0]} bits with "
                             f"{HEADROOM_BITS} bits for the values: use scale_bits <= {bits[0] - HEADROOM_BITS} "
                             f"or a larger first prime")

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def levels(self) -> int:
        """Rescalings available: the primes between the decryption prime and the key-switching prime."""
        return len(self.coeff_mod_bit_sizes) - 2

    def check_circuit(self, kinds: Sequence[str], width: int) -> dict[str, int]:
        """Check the server part (``kinds``: "linear"/"square" in order; ``width``: its widest layer)
        against these parameters for a slot packing, before any key exists. Returns the packing plan."""
        if len(self.coeff_mod_bit_sizes) < 3:
            raise ValueError(f"coeff_mod_bit_sizes needs at least 3 primes (decryption prime, one level per "
                             f"multiplication, key-switching prime), got {list(self.coeff_mod_bit_sizes)}")
        depth = len(kinds)
        if depth > self.levels:
            raise ValueError(
                f"the encrypted server part needs {depth} multiplicative level(s) ({' -> '.join(kinds)}), but "
                f"coeff_mod_bit_sizes {list(self.coeff_mod_bit_sizes)} gives {self.levels}: add "
                f"{depth - self.levels} prime(s) of {self.scale_bits} bits before the last one")
        block = 1 << max(0, math.ceil(math.log2(max(width, 1))))
        if block > self.slots:
            need = 2 * block
            raise ValueError(f"a sample needs {block} slots (widest server layer: {width}), but poly_modulus_degree "
                             f"{self.poly_modulus_degree} gives {self.slots}: use poly_modulus_degree >= {need}")
        # Follow the scale through the circuit, as SEAL will: this is where TenSEAL's
        # "scale out of bounds" would otherwise surface in the middle of training.
        chain = list(self.coeff_mod_bit_sizes[: depth + 1])  # the client encrypts at exactly this level
        s = self.scale_bits
        for i, kind in enumerate(kinds):
            s = s + self.scale_bits if kind == "linear" else 2 * s
            if s + HEADROOM_BITS > sum(chain):
                raise ValueError(f"scale out of bounds at server op {i} ({kind}): the scale reaches 2^{s} but the "
                                 f"remaining coefficient modulus is 2^{sum(chain)} (needs {HEADROOM_BITS} bits "
                                 f"more): use intermediate primes of about scale_bits={self.scale_bits} bits")
            s -= chain.pop()
            if s < MIN_SCALE_BITS:
                raise ValueError(f"after rescaling at server op {i} ({kind}) the scale is 2^{s}: the intermediate "
                                 f"primes must have about scale_bits={self.scale_bits} bits, got "
                                 f"{list(self.coeff_mod_bit_sizes)}")
        return {"depth": depth, "block": block, "samples_per_ciphertext": self.slots // block,
                "result_scale_bits": s}


    def check_coeff(self, kinds: Sequence[str], in_features: int) -> dict[str, int]:
        """Check the server part against these parameters for the coefficient packing (coeff.py):
        one linear layer of at most 4080 inputs (255 ciphertexts of 16 features), and results at
        scale 2^(2 scale_bits) within the first prime."""
        if list(kinds) != ["linear"]:
            raise ValueError(f"the coefficient packing evaluates exactly one linear layer on ciphertext; the server "
                             f"part is {' -> '.join(kinds)}: use packing='batch' (slots, with levels for squares)")
        if len(self.coeff_mod_bit_sizes) > 2:
            raise ValueError(f"the coefficient packing computes modulo one ciphertext prime (a second one would be "
                             f"the unused key-switching prime); got coeff_mod_bit_sizes {list(self.coeff_mod_bit_sizes)}")
        if in_features > 4080:
            raise ValueError(f"the coefficient packing takes at most 4080 input features (its exact modular products "
                             f"sum 255 ciphertexts and the bias), got {in_features}: use packing='batch'")
        s, q = 2 * self.scale_bits, self.coeff_mod_bit_sizes[0]
        if s + HEADROOM_BITS > q:
            raise ValueError(f"coefficient packing: results carry scale 2^{s} (2 x scale_bits), which with "
                             f"{HEADROOM_BITS} bits for the values needs a first prime of {s + HEADROOM_BITS} bits; "
                             f"got {q}: use scale_bits <= {(q - HEADROOM_BITS) // 2}")
        return {"depth": 1, "result_scale_bits": s}


class Wire:
    """Ciphertexts cross between the parties as bytes (SEAL's serialisation, which the Python
    binding only writes to files: a private temporary folder, in memory where /dev/shm exists)."""

    def __init__(self) -> None:
        shm = "/dev/shm"
        folder = tempfile.mkdtemp(prefix="arena-he-", dir=shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None)
        weakref.finalize(self, shutil.rmtree, folder, True)
        self._path = str(Path(folder) / "ct.bin")

    @property
    def path(self) -> str:
        return self._path

    def dump(self, ct: Any) -> bytes:
        ct.save(self._path)
        return Path(self._path).read_bytes()

    def load(self, data: bytes, seal_context: Any) -> Any:
        from tenseal import sealapi

        Path(self._path).write_bytes(data)
        ct = sealapi.Ciphertext()
        ct.load(seal_context, self._path)
        return ct


@dataclass
class CKKSClient:
    """The data owner: holds the secret key; encrypts, packs, decrypts."""

    params: CKKSParams
    depth: int
    block: int
    complex_slots: bool = False  # two samples per slot (real and imaginary part): linear server parts only
    ts_context: Any = field(init=False, repr=False)
    wire: Wire = field(default_factory=Wire, repr=False)

    def __post_init__(self) -> None:
        ts = import_tenseal()
        from tenseal import sealapi

        p = self.params
        ctx = ts.context(ts.SCHEME_TYPE.CKKS, p.poly_modulus_degree, coeff_mod_bit_sizes=list(p.coeff_mod_bit_sizes))
        ctx.global_scale = 2.0 ** p.scale_bits
        ctx.generate_galois_keys()
        self.ts_context = ctx
        sc = ctx.seal_context().data
        self._sc = sc
        self._encoder = sealapi.CKKSEncoder(sc)
        self._encryptor = sealapi.Encryptor(sc, ctx.public_key().data)
        self._decryptor = sealapi.Decryptor(sc, ctx.secret_key().data)
        level = sc.first_context_data()
        for _ in range(p.levels - self.depth):  # drop the primes the server part will not use
            level = level.next_context_data()
        self._parms = level.parms_id()
        self.per_ct = (p.slots // self.block) * (2 if self.complex_slots else 1)  # samples per ciphertext

    def public_context(self) -> bytes:
        """What the server receives once: public, relinearisation and Galois keys; no secret key."""
        return self.ts_context.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=True,
                                         save_relin_keys=True)

    def encrypt_packed(self, a: np.ndarray) -> list[bytes]:
        from tenseal import sealapi

        n, d = a.shape
        P = self.params.slots // self.block
        out = []
        for s in range(0, n, self.per_ct):
            chunk = a[s:s + self.per_ct]
            slots = np.zeros((self.block, P), dtype=complex if self.complex_slots else float)
            slots[:d, :min(P, len(chunk))] = chunk[:P].T  # slot j*P + b = feature j of sample b
            if len(chunk) > P:  # complex packing: samples P..2P-1 in the imaginary parts
                slots[:d, :len(chunk) - P] += 1j * chunk[P:].T
            pt, ct = sealapi.Plaintext(), sealapi.Ciphertext()
            self._encoder.encode(slots.ravel().tolist(), self._parms, 2.0 ** self.params.scale_bits, pt)
            self._encryptor.encrypt(pt, ct)
            out.append(self.wire.dump(ct))
        return out

    def decrypt_packed(self, blobs: list[bytes], n: int, m: int) -> np.ndarray:
        from tenseal import sealapi

        P = self.params.slots // self.block
        rows = []
        for i, blob in enumerate(blobs):
            ct, pt = self.wire.load(blob, self._sc), sealapi.Plaintext()
            self._decryptor.decrypt(ct, pt)
            k = min(self.per_ct, n - i * self.per_ct)
            if self.complex_slots:
                v = np.asarray(self._encoder.decode_complex(pt)).reshape(self.block, P)[:m]
                rows.append(np.concatenate([v.real.T, v.imag.T])[:k])
            else:
                v = np.asarray(self._encoder.decode_double(pt)).reshape(self.block, P)
                rows.append(v[:m, :k].T)
        return np.concatenate(rows, axis=0)

    def encrypt_each(self, a: np.ndarray) -> list[bytes]:
        """One ciphertext per sample (TenSEAL's CKKSVector): the unpacked baseline."""
        ts = import_tenseal()
        return [ts.ckks_vector(self.ts_context, row.tolist()).serialize() for row in a]

    def decrypt_each(self, blobs: list[bytes]) -> np.ndarray:
        ts = import_tenseal()
        return np.asarray([ts.ckks_vector_from(self.ts_context, b).decrypt() for b in blobs])
