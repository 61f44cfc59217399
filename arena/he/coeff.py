"""Coefficient packing: the server's linear layer as polynomial products, with no rotation at all.

CKKS encrypts a polynomial; in the slot packings (ckks.py) the client's numbers are its values at
the roots of unity, so summing over features needs rotations (key switches) and the server must
encode its weights anew every step (an FFT and an NTT per diagonal). Here the numbers are the
polynomial's *coefficients* (Cheetah's packing: Huang et al., USENIX Security 2022), and a
ciphertext-plaintext product, being a product of polynomials, sums over features by itself.

Layout (S samples per ciphertext, F features per input ciphertext, O outputs per product, with
S * O * F = n, the ring degree; LeNet's 256 -> 120 layer at n = 2048 and a batch of 64: S = 64,
F = 16, O = 2). With M = n / S:

- input ciphertext f holds feature j of sample b of feature block f at coefficient b + S*j (j < F);
- the weight plaintext of output block o and feature block f holds w[o*O + i, f*F + j] at
  coefficient S*(i*F + F-1-j): a polynomial in X^S, so its NTT is one M-point transform, tiled;
- in the product, coefficient b + S*(i*F + F-1) is the dot product of sample b's features with
  output i's weights (every other coefficient is a cross term, never one of these: they sit at
  S*(i*F + F-1 + d) + b with 0 < |d| < F). Summing over the feature blocks completes the layer;
  the bias is one more plaintext, times the public (sum_b X^b, 0).

So one step is nf = ceil(d/F) ciphertexts up, no = ceil(m/O) down and nf * no products, and the
products are exact element-wise products modulo the ciphertext prime in SEAL's NTT form: the
server computes them all as one batched modular matrix product (sealio.modmatmul) on the
ciphertexts' numbers, parsed from the bytes it received, and writes SEAL ciphertexts back.

Parameters: one ciphertext prime and no key but the client's secret key: nothing is rotated or
relinearised, so there is no key-switching prime, no Galois or relinearisation key, and the
server receives the encryption parameters only. That lets n = 2048 carry a 54-bit prime, the
most the HomomorphicEncryption.org table allows at 128-bit security (SEAL enforces it). The
client encrypts at scale 2^s, the weights are scaled by 2^s, so results carry 2^(2s) and need
2s + 10 bits of the prime (s = 22); coefficient encoding rounds each number once, so the error is
about 2^-s times the activations' norm (no sqrt(n) from an FFT, as the slot encoding has).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .ckks import CKKSParams, Wire, import_tenseal
from .sealio import U64, SealFormat, modmatmul, ntt_convention, ntt_of

FEATURES_PER_CIPHERTEXT = 16  # F: 16 ciphertexts up for 256 features; more would mean more down


@dataclass(frozen=True)
class CoeffLayout:
    """Where the numbers sit (public: both parties use it; the server learns S from the client)."""

    n: int
    samples: int  # S, a power of two
    features: int  # d (input width)
    outputs: int  # m (output width)

    def __post_init__(self) -> None:
        if self.n // self.samples < FEATURES_PER_CIPHERTEXT:
            raise ValueError(f"coefficient packing: {self.samples} samples per ciphertext leave fewer than "
                             f"{FEATURES_PER_CIPHERTEXT} coefficients per sample at poly_modulus_degree {self.n}")

    @property
    def F(self) -> int:
        return FEATURES_PER_CIPHERTEXT

    @property
    def M(self) -> int:
        return self.n // self.samples

    @property
    def O(self) -> int:
        return self.M // self.F

    @property
    def nf(self) -> int:
        return math.ceil(self.features / self.F)

    @property
    def no(self) -> int:
        return math.ceil(self.outputs / self.O)

    def result_positions(self) -> np.ndarray:
        """S x O: the coefficient holding (sample b, output i of a block)."""
        S, F = self.samples, self.F
        return np.arange(S)[:, None] + S * (np.arange(self.O)[None, :] * F + F - 1)

    @staticmethod
    def samples_for(n_rows: int, n: int) -> int:
        """S for a batch: the next power of two, at most n / F (one output per product) and at least
        n / 256 (the weights' M-point transforms are exact modular matrix products for M <= 256)."""
        s = 1 << max(0, math.ceil(math.log2(max(n_rows, 1))))
        return max(min(s, n // FEATURES_PER_CIPHERTEXT), n // 256)

    @staticmethod
    def max_samples(n: int) -> int:
        return n // FEATURES_PER_CIPHERTEXT


def seal_context(parms: bytes, wire: Wire) -> Any:
    """A SEAL context from serialised encryption parameters; SEAL itself refuses parameters below
    128-bit security (HomomorphicEncryption.org's table)."""
    from tenseal import sealapi

    params = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS)
    open(wire.path, "wb").write(parms)
    params.load(wire.path)
    sc = sealapi.SEALContext(params, True, sealapi.SEC_LEVEL_TYPE.TC128)
    if not sc.parameters_set():
        raise ValueError(f"SEAL rejects the CKKS parameters: {sc.parameters_error_message()}")
    return sc


class CoeffClient:
    """The data owner: secret key; packs coefficients, encrypts, decrypts."""

    def __init__(self, params: CKKSParams, features: int, outputs: int) -> None:
        import_tenseal()
        from tenseal import sealapi

        p = self.params = params
        self.features, self.outputs = features, outputs
        # SEAL directly: TenSEAL's contexts insist on a key-switching prime this packing never uses
        parms = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS)
        parms.set_poly_modulus_degree(p.poly_modulus_degree)
        parms.set_coeff_modulus(sealapi.CoeffModulus.Create(p.poly_modulus_degree, list(p.coeff_mod_bit_sizes)))
        self.wire = Wire()
        self._parms = self.wire.dump(parms)
        sc = self._sc = seal_context(self._parms, self.wire)
        self.fmt = SealFormat(sc, self.wire)
        self.n, self.q = self.fmt.n, self.fmt.q
        secret = sealapi.KeyGenerator(sc).secret_key()
        self._encoder = sealapi.CKKSEncoder(sc)
        # secret-key encryption: the client holds the key (the server never encrypts anything)
        self._encryptor = sealapi.Encryptor(sc, secret)
        self._decryptor = sealapi.Decryptor(sc, secret)
        self._pid = sc.first_parms_id()
        n = self.n
        self._slot_roots = np.array([pow(3, t, 2 * n) for t in range(n // 2)])  # slot t <-> zeta^(3^t)
        self._twist = np.exp(1j * np.pi * np.arange(n) / n)
        self._check_embedding()

    def public_context(self) -> bytes:
        """What the server receives once: the encryption parameters, and nothing else (no key at
        all: the server never encrypts, rotates or relinearises)."""
        return self._parms

    def holds_secret_key(self) -> bool:
        return True

    # CKKS's encoder takes slot values p(zeta^(3^t)), zeta = exp(i pi / n); the coefficients we want
    # are their inverse transform. Only odd powers of zeta occur, so both are n-point FFTs with a twist.
    def _embed(self, polys: np.ndarray) -> np.ndarray:
        n = self.n
        values = np.fft.ifft(polys * self._twist, axis=1) * n  # at zeta^(2s+1), s = 0..n-1
        return values[:, (self._slot_roots - 1) // 2]

    def _coefficients(self, slots: np.ndarray) -> np.ndarray:
        n = self.n
        a = np.zeros((len(slots), n), dtype=complex)
        a[:, (self._slot_roots - 1) // 2] = slots
        a[:, (2 * n - self._slot_roots - 1) // 2] = np.conj(slots)
        return (np.fft.fft(a, axis=1) * np.conj(self._twist)).real / n

    def _check_embedding(self) -> None:
        """The encoder turns our slot values back into exactly the intended integer coefficients."""
        from tenseal import sealapi

        psi, e = ntt_convention(self._sc, self.fmt, self.wire)
        poly = np.random.default_rng(0).integers(-1000, 1000, self.n)
        pt = sealapi.Plaintext()
        self._encoder.encode(self._embed(poly[None])[0].tolist(), self._pid, 1.0, pt)
        got = [pt.data(k) for k in (0, 1, self.n // 2)]
        want = [sum(int(c) * pow(psi, int(e[k]) * i, self.q) for i, c in enumerate(poly)) % self.q
                for k in (0, 1, self.n // 2)]
        if got != want:
            raise RuntimeError("SEAL's CKKS encoder does not use the slot order the coefficient packing assumes")

    def encrypt(self, a: np.ndarray) -> tuple[list[bytes], CoeffLayout]:
        from tenseal import sealapi

        lay = CoeffLayout(self.n, CoeffLayout.samples_for(len(a), self.n), self.features, self.outputs)
        S, F, nf = lay.samples, lay.F, lay.nf
        x = np.zeros((S, nf * F))
        x[:len(a), :a.shape[1]] = a
        polys = np.zeros((nf, self.n))
        polys[:, :S * F] = np.round(x.reshape(S, nf, F).transpose(1, 2, 0).reshape(nf, S * F)
                                    * 2.0 ** self.params.scale_bits)  # coefficient b + S*j
        out = []
        for slots in self._embed(polys):
            pt, ct = sealapi.Plaintext(), sealapi.Ciphertext()
            self._encoder.encode(slots.tolist(), self._pid, 1.0, pt)
            self._encryptor.encrypt_symmetric(pt, ct)
            out.append(self.wire.dump(ct))
        return out, lay

    def decrypt(self, blobs: list[bytes], lay: CoeffLayout, n_rows: int) -> np.ndarray:
        from tenseal import sealapi

        slots = []
        for blob in blobs:
            pt = sealapi.Plaintext()
            self._decryptor.decrypt(self.wire.load(blob, self._sc), pt)
            slots.append(self._encoder.decode_complex(pt))
        coeffs = self._coefficients(np.asarray(slots))[:, lay.result_positions()]  # no x S x O
        h = coeffs.transpose(1, 0, 2).reshape(lay.samples, lay.no * lay.O) / 2.0 ** (2 * self.params.scale_bits)
        return h[:n_rows, :self.outputs]


class CoeffServer:
    """The server: a public context only. Evaluates one linear layer on the ciphertexts' numbers."""

    def __init__(self, public_context: bytes, scale_bits: int) -> None:
        import_tenseal()

        self.wire = Wire()
        self._sc = seal_context(public_context, self.wire)  # parameters only: nothing secret can arrive here
        self.fmt = SealFormat(self._sc, self.wire)
        self.n, self.q = self.fmt.n, self.fmt.q
        self.scale_bits = scale_bits
        self._psi, self._e = ntt_convention(self._sc, self.fmt, self.wire)
        self._tables_by_m: dict[int, dict[str, Any]] = {}

    def holds_secret_key(self) -> bool:
        return False

    def _tables(self, lay: CoeffLayout) -> dict[str, Any]:
        """Per M = n / S: NTT position k holds p(psi^e[k]); for p in Z[X^S], p(psi^(S e)) depends
        only on u = ((e - 1) / 2) mod M, so a weight plaintext's NTT is its M-point transform at u(k)."""
        M, S, q, n = lay.M, lay.samples, self.q, self.n
        if M not in self._tables_by_m:
            u = ((self._e - 1) // 2) % M
            perm = np.argsort(u, kind="stable").reshape(M, n // M)  # perm[u, t]: the positions in class u
            omega = pow(self._psi, S, q)  # a primitive 2M-th root
            powers = [1]
            for _ in range(2 * M - 1):
                powers.append(powers[-1] * omega % q)
            r, j = np.arange(M)[:, None], np.arange(M)[None, :]
            v = np.array(powers, dtype=U64)[((2 * r + 1) * j) % (2 * M)]  # v[r, j] = omega^((2r+1) j)
            ones = np.zeros((2, n), dtype=U64)
            ones[0, :S] = 1  # (sum_b X^b, 0): the bias repeated for every sample, as a trivial ciphertext
            ones[0] = ntt_of(ones[0], self._sc, self.fmt, self.wire)
            self._tables_by_m[M] = {"perm": perm, "inv": np.argsort(perm.reshape(-1)), "vt": v.T.copy(), "ones": ones}
        return self._tables_by_m[M]

    def evaluate(self, blobs: list[bytes], lay: CoeffLayout, weight: np.ndarray, bias: np.ndarray | None) -> list[bytes]:
        """Ciphertexts of x (lay) in, ciphertexts of W x + b out."""
        if len(blobs) != lay.nf or weight.shape != (lay.outputs, lay.features):
            raise ValueError(f"coefficient packing: expected {lay.nf} ciphertexts and a {lay.outputs}x{lay.features} "
                             f"weight, got {len(blobs)} and {weight.shape}")
        q, M, F, O, nf, no, sb = self.q, lay.M, lay.F, lay.O, lay.nf, lay.no, self.scale_bits
        tab = self._tables(lay)
        xs = np.stack([self.fmt.read(blob) for blob in blobs])  # nf x 2 x n, NTT form
        # weight polynomials in X^S (coefficient i*F + F-1-j of W'), and the bias as one more
        w = np.zeros((no * O, nf * F))
        w[:weight.shape[0], :weight.shape[1]] = weight
        wi = np.round(w * 2.0 ** sb).astype(np.int64)
        polys = np.zeros((no * nf + no, M), dtype=np.int64)
        polys[:no * nf] = wi.reshape(no, O, nf, F).transpose(0, 2, 1, 3)[..., ::-1].reshape(no * nf, O * F)
        if bias is not None:  # row no*nf + o: the bias of output block o at coefficients i*F + F-1
            bp = np.zeros(no * O)
            bp[:len(bias)] = bias
            polys[no * nf:, F - 1::F] = np.round(bp.reshape(no, O) * 2.0 ** (2 * sb)).astype(np.int64)
        small = modmatmul((polys % np.int64(q)).view(U64), tab["vt"], q)  # M-point NTTs
        # the products: in NTT class u, out[o, c, t] = sum_f W_of(u) * x_f,c(t) -- a matrix product per
        # class. The bias enters as one more block: its plaintext times the public (sum_b X^b, 0).
        a = np.concatenate([small[:no * nf].reshape(no, nf, M), small[no * nf:, None]], axis=1)  # no x (nf+1) x M
        xs = np.concatenate([xs, tab["ones"][None]])
        xu = xs[:, :, tab["perm"]].transpose(2, 0, 1, 3).reshape(M, nf + 1, -1)  # M x (nf+1) x (2 * n/M)
        out = modmatmul(np.ascontiguousarray(a.transpose(2, 0, 1)), np.ascontiguousarray(xu), q)  # M x no x 2n/M
        out = out.reshape(M, no, 2, -1).transpose(1, 2, 0, 3).reshape(no, 2, self.n)[:, :, tab["inv"]]
        return [self.fmt.write(ct) for ct in out]
