"""The server side of the `he` defense: evaluates its layers on batch-packed CKKS ciphertexts.

It is built from the *public* context only (public, relinearisation and Galois keys). The
packing and the matrix-product algorithm are described in ckks.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .ckks import Wire, import_tenseal


@dataclass
class LinearPlan:
    """One plaintext layer encoded as rotated diagonals for one ciphertext level."""

    baby: int
    giant: list[list[tuple[int, Any]]]  # per giant step: (baby index, encoded diagonal)
    folds: list[int]  # rotation steps of the rotate-and-add folds
    bias: np.ndarray | None  # slot vector, encoded at the result's level and scale


class CKKSServer:
    """The server: only a public context. Evaluates linear layers and squares on ciphertexts."""

    def __init__(self, public_context: bytes, block: int, complex_slots: bool = False) -> None:
        ts = import_tenseal()
        from tenseal import sealapi

        self.ts_context = ts.context_from(public_context)
        if self.ts_context.is_private():  # the protocol's whole point; never let it slip
            raise RuntimeError("the server's CKKS context holds a secret key")
        self._sc = self.ts_context.seal_context().data
        self._ev = sealapi.Evaluator(self._sc)
        self._encoder = sealapi.CKKSEncoder(self._sc)
        self._galois = self.ts_context.galois_keys().data
        self._relin = self.ts_context.relin_keys().data
        self.block = block
        self.complex_slots = complex_slots
        self.per_ct = self._encoder.slot_count() // block  # P: slots per feature
        self.wire = Wire()

    def _slotvec(self, v: np.ndarray) -> list[float]:
        """A per-feature vector (length block) as a slot vector: each entry repeated for the P samples."""
        return np.repeat(v, self.per_ct).tolist()

    def _plan(self, w: np.ndarray, b: np.ndarray | None, parms_id: Any, scale: float) -> LinearPlan:
        from tenseal import sealapi

        D, (m, d) = self.block, w.shape
        mp = min(D, 1 << max(0, math.ceil(math.log2(m))))  # m': outputs padded to a power of two
        wp = np.zeros((D, D))
        wp[:m, :d] = w
        j = np.arange(D)
        baby = 1 << math.ceil(math.log2(mp) / 2)
        giant = []
        for g in range(0, mp, baby):
            row = []
            for t in range(min(baby, mp - g)):
                i = g + t
                # extended diagonal i, pre-rotated by -g: entry j is diag_i[(j - g) mod D]
                jj = (j - g) % D
                diag = wp[jj % mp, (jj + i) % D]
                if np.any(diag):
                    pt = sealapi.Plaintext()
                    self._encoder.encode(self._slotvec(diag), parms_id, scale, pt)
                    row.append((t, pt))
            giant.append(row)
        folds = []
        r = mp
        while r < D:
            folds.append(r * self.per_ct)
            r *= 2
        bias = None
        if b is not None:
            bias = np.zeros(D)
            bias[:m] = b
        return LinearPlan(baby, giant, folds, bias)

    def _linear(self, ct: Any, plan: LinearPlan) -> Any:
        from tenseal import sealapi

        ev, P = self._ev, self.per_ct
        babies = [ct]
        for _ in range(1, plan.baby):
            nxt = sealapi.Ciphertext()
            ev.rotate_vector(babies[-1], P, self._galois, nxt)
            babies.append(nxt)
        acc = None
        for row in reversed(plan.giant):  # Horner over the giant steps: acc = rot(acc, baby*P) + inner
            if acc is not None:
                ev.rotate_vector_inplace(acc, plan.baby * P, self._galois)
            for t, pt in row:
                term = sealapi.Ciphertext()
                ev.multiply_plain(babies[t], pt, term)
                if acc is None:
                    acc = term
                else:
                    ev.add_inplace(acc, term)
        if acc is None:
            raise ValueError("the server layer's weights are all zero: CKKS cannot return a transparent ciphertext")
        for step in plan.folds:
            rot = sealapi.Ciphertext()
            ev.rotate_vector(acc, step, self._galois, rot)
            ev.add_inplace(acc, rot)
        ev.rescale_to_next_inplace(acc)
        if plan.bias is not None:
            pt = sealapi.Plaintext()
            bias = self._slotvec(plan.bias)
            if self.complex_slots:  # the same bias for the samples in the imaginary parts
                bias = [complex(v, v) for v in bias]
            self._encoder.encode(bias, acc.parms_id(), acc.scale, pt)
            ev.add_plain_inplace(acc, pt)
        return acc

    def evaluate_packed(self, blobs: list[bytes], program: list[tuple]) -> list[bytes]:
        """Run ``program`` (("linear", W, b) / ("square",)) on every packed ciphertext."""
        cts = [self.wire.load(b, self._sc) for b in blobs]
        scale = self.ts_context.global_scale  # the diagonals' scale; the product's is ct.scale * this
        for op in program:
            if op[0] == "linear":
                plan = self._plan(op[1], op[2], cts[0].parms_id(), scale)
                cts = [self._linear(ct, plan) for ct in cts]
            else:
                if self.complex_slots:
                    raise ValueError("complex slot packing only carries linear layers (a square mixes the parts)")
                for ct in cts:
                    self._ev.square_inplace(ct)
                    self._ev.relinearize_inplace(ct, self._relin)
                    self._ev.rescale_to_next_inplace(ct)
        return [self.wire.dump(ct) for ct in cts]

    def evaluate_each(self, blobs: list[bytes], program: list[tuple]) -> list[bytes]:
        """The unpacked baseline: TenSEAL's own vector-matrix product, one ciphertext per sample."""
        ts = import_tenseal()
        out = []
        for blob in blobs:
            v = ts.ckks_vector_from(self.ts_context, blob)
            for op in program:
                if op[0] == "linear":
                    v = v.mm(op[1].T.tolist())
                    if op[2] is not None:
                        v = v + op[2].tolist()
                else:
                    v = v.square()
            out.append(v.serialize())
        return out
