"""The CKKS-encrypted wire of the `he` defense (defenses/he.py): a `Channel` whose server part runs on
ciphertext.

Packings (``packing``): "coeff" (default, coeff.py): the activations are the coefficients of the
plaintext polynomials, so a ciphertext-plaintext product sums over features by itself and the
server needs no rotation and no Galois key; one linear layer. "batch"/"batch-real" (ckks.py,
server.py): activations in the slots, baby-step giant-step diagonals with rotations; linear layers
and squares. "sample": one TenSEAL vector per sample, the slow baseline.

What is real and what is simulated, per training step (U-shaped setup):

- real: the client encrypts its activations (SEAL, with its secret key), the bytes cross to a
  server object that holds only public material (the slot packings: TenSEAL's public context with
  public, relinearisation and Galois keys; "coeff": the encryption parameters and no key at all),
  the server evaluates its layers on the
  ciphertexts with its current plaintext weights, the bytes come back, the client decrypts. The
  decrypted output (CKKS noise included) is what the client's tail trains on. With "coeff" the
  server does not call SEAL's evaluator: it parses the ciphertexts' numbers (RNS/NTT form) from
  the bytes and computes the ciphertext-plaintext products and sums itself, as exact arithmetic
  modulo the ciphertext prime (the same arithmetic SEAL's multiply_plain and add perform), then
  writes SEAL ciphertexts that the client's SEAL decrypts. The layout (samples per ciphertext)
  travels with the ciphertexts as public metadata.
- simulated in plaintext, with the values the real protocol sends: the backward pass. The client
  returns g_h = dL/dh in plaintext; the server computes dL/d(activation) = g_h W (its own weights,
  no ciphertext needed) and receives its weight gradients dL/dW = g_h^T a, dL/db = sum g_h in
  plaintext (the client can compute them: it knows a and g_h). Here autograd through a plaintext
  copy of the server's forward produces exactly these numbers; the plaintext forward is never
  shown to the server. With a square between two layers the real protocol would also need the
  client to decrypt the intermediate pre-activations to form those gradients (one more round
  trip); the simulation does not count it.

So the server observes: ciphertexts (nothing in plaintext: ``observed`` and ``observed_output``
are None), the cut gradient g_h (obs.cut_grad), and its parameter gradients (obs.server_grads).
Note what that implies: dL/dW = g_h^T a with g_h known determines the batch's activations a by
least squares whenever the batch is no larger than the server layer's outputs (B <= 120 for
LeNet); ``train_server=False`` (a frozen server layer) sends no weight gradient.

CKKS encryption draws its noise from SEAL's own generator, which TenSEAL does not let us seed:
two runs with the same seed agree to the CKKS error (~1e-7 on the server output), not bit for bit.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..protocol.channel import Channel
from .ckks import CKKSClient, CKKSParams
from .coeff import CoeffClient, CoeffLayout, CoeffServer
from .server import CKKSServer

PACKINGS = ("coeff", "batch", "batch-real", "sample")


class Square(nn.Module):
    """x -> x^2: the polynomial activation a CKKS server part can carry (one multiplicative level)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


def _linear_of(layer: nn.Module) -> nn.Linear | None:
    if isinstance(layer, nn.Linear):
        return layer
    inner = getattr(layer, "linear", None)  # models.FlattenLinear: flatten, then this Linear
    return inner if isinstance(inner, nn.Linear) and len(list(layer.children())) == 1 else None


def describe_server(layers: list[nn.Module], first_index: int = 0) -> tuple[list[str], int]:
    """The ops ("linear"/"square") a server part needs and its widest layer; a clear error for any
    layer CKKS cannot evaluate (it only adds and multiplies)."""
    kinds, width = [], 0
    for i, layer in enumerate(layers, start=first_index):
        lin = _linear_of(layer)
        if lin is not None:
            kinds.append("linear")
            width = max(width, lin.in_features, lin.out_features)
        elif isinstance(layer, Square):
            if not kinds:
                raise ValueError(f"layer {i} (Square) comes before any linear layer of the encrypted server part")
            kinds.append("square")
        elif isinstance(layer, (nn.Flatten, nn.Identity)):
            continue
        else:
            raise ValueError(f"layer {i} ({type(layer).__name__}) cannot run on CKKS ciphertext: the encrypted "
                             f"server part may hold only Linear layers and Square activations "
                             f"(a polynomial within the multiplicative depth)")
    if not kinds or kinds[0] != "linear":
        raise ValueError("the encrypted server part must start with a linear layer")
    return kinds, width


def server_program(server: nn.Module) -> list[tuple]:
    """The server's current plaintext weights as a program for the evaluator."""
    prog: list[tuple] = []
    for layer in server:
        lin = _linear_of(layer)
        if lin is not None:
            w = lin.weight.detach().double().cpu().numpy()
            b = None if lin.bias is None else lin.bias.detach().double().cpu().numpy()
            prog.append(("linear", w, b))
        elif isinstance(layer, Square):
            prog.append(("square",))
    return prog


@dataclass
class HEStats:
    batches: int = 0
    samples: int = 0
    ciphertexts: int = 0  # sent up
    ciphertexts_down: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    client_s: float = 0.0  # pack + encrypt + serialise, deserialise + decrypt + unpack
    server_s: float = 0.0  # deserialise, encode weights, evaluate, serialise
    max_abs_err: float = 0.0  # |HE output - plaintext output|, over every step
    max_abs_out: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        n = max(self.samples, 1)
        return {
            "he_samples": self.samples,
            "he_ciphertexts_up_per_batch": self.ciphertexts / max(self.batches, 1),
            "he_ciphertexts_down_per_batch": self.ciphertexts_down / max(self.batches, 1),
            "he_ct_bytes_up_per_sample": self.bytes_up / n,
            "he_ct_bytes_down_per_sample": self.bytes_down / n,
            "he_client_s_per_sample": self.client_s / n,
            "he_server_s_per_sample": self.server_s / n,
            "he_max_abs_err": self.max_abs_err,
            "he_rel_err": self.max_abs_err / self.max_abs_out if self.max_abs_out else 0.0,
        }


class HEChannel(Channel):
    name = "ckks"

    def __init__(self, params: CKKSParams, server_layers: list[nn.Module], packing: str = "batch",
                 server_grads: bool = True) -> None:
        if packing not in PACKINGS:
            raise ValueError(f"packing must be one of {', '.join(PACKINGS)}; got {packing!r}")
        kinds, width = describe_server(server_layers)
        # checked before any key or ciphertext exists
        lins = [lin for lin in map(_linear_of, server_layers) if lin is not None]
        self.plan = (params.check_coeff(kinds, lins[0].in_features) if packing == "coeff"
                     else params.check_circuit(kinds, width))
        self.out_features = lins[-1].out_features
        self.n_server_params = sum(p.numel() for layer in server_layers for p in layer.parameters())
        self.params, self.packing, self.kinds = params, packing, list(kinds)
        self.client: CKKSClient | CoeffClient
        self.server: CKKSServer | CoeffServer
        if packing == "coeff":
            self.client = CoeffClient(params, lins[0].in_features, lins[0].out_features)
            public = self.client.public_context()  # the one message the server gets, at setup
            self.server = CoeffServer(public, params.scale_bits)
            self.samples_per_ciphertext = CoeffLayout.max_samples(params.poly_modulus_degree)
        else:
            complex_slots = packing == "batch" and set(kinds) == {"linear"}
            self.client = CKKSClient(params, self.plan["depth"], self.plan["block"], complex_slots=complex_slots)
            public = self.client.public_context()
            self.server = CKKSServer(public, self.plan["block"], complex_slots=complex_slots)
            self.samples_per_ciphertext = 1 if packing == "sample" else self.client.per_ct
        self.public_context_bytes = len(public)
        self.server_grads = server_grads
        self.stats = HEStats()

    # ---- what the server observes -------------------------------------------------------------
    def observed(self, smashed: torch.Tensor) -> None:
        return None  # ciphertext only

    def observed_output(self, out: torch.Tensor) -> None:
        return None  # the server's output leaves encrypted; only the client decrypts it

    def observed_server_grads(self, server: nn.Module) -> dict[str, torch.Tensor] | None:
        if not self.server_grads:
            return None
        grads = {n: p.grad.detach().clone() for n, p in server.named_parameters() if p.grad is not None}
        return grads or None

    # ---- the encrypted round trip -------------------------------------------------------------
    def encrypted_forward(self, a: np.ndarray, server: nn.Module, record: bool = True) -> np.ndarray:
        """Client encrypts ``a`` (n x features), server evaluates, client decrypts: n x outputs."""
        prog = server_program(server)
        if self.packing == "coeff":
            return self._coeff_forward(a, prog, record)
        m = self.out_features
        t0 = time.perf_counter()
        up = self.client.encrypt_each(a) if self.packing == "sample" else self.client.encrypt_packed(a)
        t1 = time.perf_counter()
        if self.packing == "sample":
            down = self.server.evaluate_each(up, prog)
        else:
            down = self.server.evaluate_packed(up, prog)
        t2 = time.perf_counter()
        out = self.client.decrypt_each(down) if self.packing == "sample" else self.client.decrypt_packed(down, len(a), m)
        t3 = time.perf_counter()
        if record:
            self._record(len(a), up, down, (t1 - t0) + (t3 - t2), t2 - t1)
        return out

    def _coeff_forward(self, a: np.ndarray, prog: list[tuple], record: bool) -> np.ndarray:
        _, weight, bias = prog[0]
        cap = self.samples_per_ciphertext
        client = self.client
        assert isinstance(client, CoeffClient) and isinstance(self.server, CoeffServer)
        outs, ups, downs, client_s, server_s = [], [], [], 0.0, 0.0
        for s in range(0, max(len(a), 1), cap):
            t0 = time.perf_counter()
            up, layout = client.encrypt(a[s:s + cap])  # the layout (S) travels with the ciphertexts
            t1 = time.perf_counter()
            down = self.server.evaluate(up, layout, weight, bias)
            t2 = time.perf_counter()
            outs.append(client.decrypt(down, layout, len(a[s:s + cap])))
            client_s += (time.perf_counter() - t2) + (t1 - t0)
            server_s += t2 - t1
            ups += up
            downs += down
        if record:
            self._record(len(a), ups, downs, client_s, server_s)
        return np.concatenate(outs)[:len(a)]

    def _record(self, n: int, up: list[bytes], down: list[bytes], client_s: float, server_s: float) -> None:
        st = self.stats
        st.batches += 1
        st.samples += n
        st.ciphertexts += len(up)
        st.ciphertexts_down += len(down)
        st.bytes_up += sum(map(len, up))
        st.bytes_down += sum(map(len, down))
        st.client_s += client_s
        st.server_s += server_s

    def server_forward(self, smashed: torch.Tensor, server: nn.Module) -> torch.Tensor:
        with torch.no_grad():
            h_he = self.encrypted_forward(smashed.detach().flatten(1).double().cpu().numpy(), server)
        h_plain = server(smashed)  # only for the backward simulation (see the module docstring)
        h_enc = torch.as_tensor(h_he, dtype=h_plain.dtype, device=h_plain.device).view_as(h_plain)
        err = float((h_enc - h_plain.detach()).abs().max()) if h_enc.numel() else 0.0
        self.stats.max_abs_err = max(self.stats.max_abs_err, err)
        self.stats.max_abs_out = max(self.stats.max_abs_out, float(h_plain.detach().abs().max()))
        # value: the decrypted HE result; gradient: the plaintext server's (what the protocol sends)
        return h_plain + (h_enc - h_plain).detach()

    def bytes_per_sample(self, activation: torch.Tensor) -> int:
        """Ciphertext up and down (measured) plus the plaintext gradients: g_h to the server, the
        activation gradient back, and the server's weight gradients (per batch, spread over it)."""
        st = self.stats
        if st.samples == 0:
            return 0
        grads = 4 * (self.out_features + activation.numel())
        if self.server_grads:
            grads += 4 * self.n_server_params * st.batches / st.samples
        return int(round((st.bytes_up + st.bytes_down) / st.samples + grads))


@torch.no_grad()
def he_accuracy(channel: HEChannel, model: Any, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> float:
    """Test accuracy of a trained split model with its server part evaluated through the channel
    (``model``: a SplitModel). Compare with ``protocol.evaluate`` for the plaintext accuracy."""
    parts = [model.client, model.server, model.tail]
    modes = [p.training for p in parts]
    for p in parts:
        p.eval()
    correct = 0
    try:
        for s in range(0, len(x), batch):
            a = model.client(x[s:s + batch])
            h = channel.encrypted_forward(a.flatten(1).double().cpu().numpy(), model.server, record=False)
            pred = model.tail(torch.as_tensor(h, dtype=a.dtype)).argmax(1)
            correct += int((pred == y[s:s + batch]).sum())
    finally:
        for p, mode in zip(parts, modes):
            p.train(mode)
    return correct / max(len(x), 1)
