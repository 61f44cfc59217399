"""`he` - the client's activations travel CKKS-encrypted and the server computes on ciphertext.

Paper: Khan, Nguyen, Michalas et al., "Split Ways: Privacy-Preserving Training of Encrypted Data
Using Split Learning" (2023) and "Split Without a Leak: Reducing Privacy Leakage in Split Learning"
(2023): U-shaped split learning, the client encrypts its activation maps with CKKS (TenSEAL), the
server applies a linear layer on ciphertext, the client decrypts, finishes the network and
computes the loss; gradients travel in plaintext.

How a scenario maps onto it. CKKS only adds and multiplies, so the server part must be linear
layers (and Square activations within the multiplicative depth). The defense moves the cut to
the layer before the first linear layer after the scenario's cut (LeNet at any depth <= 5: the
client runs layers 0..5, 256 features), gives the server ``server_layers`` layers from there
(default 1: Linear(256->120)), and turns the setup into U-shaped with the client keeping every
later layer as its tail (LeNet: 4 layers) and its labels. The cell's cost records the effective
``depth``, ``he_label_layers`` and ``he_server_layers``. The label-only setup (the server owns the
inputs) cannot be defended this way: a clear error.

What the server still sees, exactly (protocol/train.py puts these and nothing else in the transcript):
- no plaintext smashed data (obs.smashed None), and not its own output (obs.server_out None,
  capability SERVER_OUT removed, so label attacks that simulate the label owner on it are `blocked`);
- the cut gradient g_h = dL/dh the client returns (obs.cut_grad, capability CUT_GRADIENT), and,
  with ``train_server`` (default), its layer's gradients dL/dW = g_h^T a and dL/db sent in
  plaintext (obs.server_grads, with CUT_GRADIENT). Together they pin down a batch's activations a
  by least squares when the batch is no larger than the layer's outputs. So with ``train_server``
  SMASHED is *not* removed: it is `derivable`, and the view rebuilds it (`arena.protocol.leak`, the
  attacker's computation on (g_h, dL/dW); issue 17): every inversion attack that takes smashed data runs
  against `he` at its effective cut, and the cell records ``derived``. LeNet's batch of 64 against 120
  outputs: exact. With more than one server layer the weight gradient pairs g_h with an intermediate
  activation, and those cells are "not evaluated" (never a defense that works). ``train_server=False``
  freezes the server layer and sends no dL/dW: then SMASHED is removed and those cells are `blocked`,
  correctly;
- no answer to a query in plaintext (QUERY removed: the client's output is ciphertext);
- the label owner's tail gradients as in any U-shaped run (TAIL_GRADIENTS);
- from a vanilla scenario the labels no longer travel (LABELS removed too).
What is simulated: the backward pass runs through a plaintext copy of the server's forward,
which yields exactly the plaintext gradients listed above (arena/he/channel.py says how).

Parameters: packing ("coeff", default: activations as polynomial coefficients, no rotations and
no Galois keys, one linear server layer, ~4x the training throughput of "batch" for LeNet;
"batch": slots, many samples per ciphertext, two per slot when the server part is linear, with
levels for Square activations; "batch-real": one sample per slot; "sample": one TenSEAL vector per
sample, the slow baseline); poly_modulus_degree, coeff_mod_bit_sizes, scale_bits (each left out
takes its packing's default, all at 128-bit security: coeff n = 2048, [54] (one prime, no key
switching: the most n = 2048 allows), 2^22 for activations and weights, ~1e-5 error; the slot
packings n = 8192, [60, 40, 40, 60], 2^40, ~1e-7 error. The paper's
[40, 21, 21, 21, 40] with 2^21 was measured at ~18%), server_layers (1), train_server (True). All
are checked against the model before any key is made.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch

from ..params import check_positive_int
from ..he.channel import PACKINGS, HEChannel, _linear_of, describe_server
from ..he.ckks import CKKSParams
from ..protocol.train import SplitSetup
from ..records import Capability
from .base import Defense, register_defense


def he_layout(model: torch.nn.Sequential, depth: int, server_layers: int) -> tuple[int, int, int]:
    """(client depth, first server layer, label-owner layers) for an encrypted server part."""
    layers = list(model)
    start = next((i for i in range(depth + 1, len(layers)) if _linear_of(layers[i]) is not None), None)
    if start is None:
        raise ValueError(f"he: no linear layer after split depth {depth} for the server to run on ciphertext")
    tail = len(layers) - start - server_layers
    if tail < 1:
        raise ValueError(f"he: the server part would be layers {start}..{start + server_layers - 1} of a "
                         f"{len(layers)}-layer model, leaving the client no layer to finish the network on "
                         f"(U-shaped): use a smaller server_layers or an earlier split depth")
    describe_server(layers[start:start + server_layers], first_index=start)
    return start - 1, start, tail


# (poly_modulus_degree, coeff_mod_bit_sizes, scale_bits) per packing, all at 128-bit security.
# coeff: one 54-bit prime and no key switching, the 128-bit bound at n = 2048; weights and
# activations at 2^22, results at 2^44. The slot packings need a level per multiplication, a
# key-switching prime and Galois keys: n = 8192, [60, 40, 40, 60], 2^40.
PACKING_DEFAULTS = {"coeff": (2048, (54,), 22), "batch": (8192, (60, 40, 40, 60), 40),
                    "batch-real": (8192, (60, 40, 40, 60), 40), "sample": (8192, (60, 40, 40, 60), 40)}


@register_defense
class HomomorphicEncryption(Defense):
    name = "he"
    setups = ("vanilla", "u-shaped")
    converts_setups = {"vanilla": "u-shaped"}  # the client keeps the labels: one training run serves both
    covers = ("the activations on the wire and the server's output (CKKS-encrypted; gradients stay "
              "plaintext)")
    owns = frozenset({"channel"})  # one wire: a stack cannot have two channels
    train_cost = 4.0  # the encrypted step (scheduling hint, see Defense.train_cost)
    # and SMASHED when the server layer is frozen, LABELS in the vanilla setup (see apply)
    removes = frozenset({Capability.SERVER_OUT, Capability.QUERY})
    paper = "Khan et al. 2023, Split Ways / Split Without a Leak (U-shaped SL on CKKS-encrypted activations)"

    def __init__(self, poly_modulus_degree: int | None = None, coeff_mod_bit_sizes: Any = None,
                 scale_bits: int | None = None, server_layers: int = 1, packing: str = "coeff",
                 train_server: bool = True, **rest: Any) -> None:
        super().__init__(**rest)
        if packing not in PACKINGS:
            raise ValueError(f"packing must be one of {', '.join(PACKINGS)}; got {packing!r}")
        n, bits, sb = PACKING_DEFAULTS[packing]  # each parameter left out takes its packing's default
        bits = coeff_mod_bit_sizes if coeff_mod_bit_sizes is not None else bits
        self.ckks = CKKSParams(poly_modulus_degree if poly_modulus_degree is not None else n,
                               tuple(bits) if isinstance(bits, (list, tuple)) else bits,
                               scale_bits if scale_bits is not None else sb)
        self.server_layers = check_positive_int("server_layers", server_layers)
        if not isinstance(train_server, bool):
            raise ValueError(f"train_server must be true or false, got {train_server!r}")
        self.packing, self.train_server = packing, train_server
        self.channel: HEChannel | None = None
        self._layout: dict[str, Any] = {}

    def params(self) -> dict[str, Any]:
        return {"poly_modulus_degree": self.ckks.poly_modulus_degree,
                "coeff_mod_bit_sizes": list(self.ckks.coeff_mod_bit_sizes), "scale_bits": self.ckks.scale_bits,
                "server_layers": self.server_layers, "packing": self.packing, "train_server": self.train_server}

    def apply(self, setup: SplitSetup, generator: torch.Generator) -> SplitSetup:
        sc = setup.scenario
        if sc.setup == "label-only":
            raise ValueError("he: in the label-only setup the server owns the inputs, so there are no client "
                             "activations to encrypt; use the vanilla or u-shaped setup")
        depth, start, tail = he_layout(setup.model, setup.depth, self.server_layers)
        server = list(setup.model)[start:start + self.server_layers]
        # validates packing/CKKS against the server part before any key exists, then makes the keys
        self.channel = HEChannel(self.ckks, server, self.packing, server_grads=self.train_server)
        model = setup.model
        if not self.train_server:  # a frozen server layer: no weight gradient ever goes to the server
            model = copy.deepcopy(model)
            for layer in list(model)[start:start + self.server_layers]:
                for p in layer.parameters():
                    p.requires_grad_(False)
        removes = {Capability.SERVER_OUT, Capability.QUERY} | ({Capability.LABELS} if sc.setup == "vanilla" else set())
        derivable: tuple[tuple[Capability, str], ...] = ()
        if self.train_server:  # dL/dW = g_h^T a and g_h in plaintext give back the activations a
            derivable = ((Capability.SMASHED, "with train_server=true the server receives g_h and dL/dW = g_h^T a "
                          "in plaintext, which give back the batch's activations by least squares"),)
        else:
            removes.add(Capability.SMASHED)
        self._layout = {"depth": depth, "he_server_layers": [start, start + self.server_layers - 1],
                        "he_label_layers": tail, "he_setup": "u-shaped",
                        "he_samples_per_ciphertext": self.channel.samples_per_ciphertext,
                        "he_levels": self.channel.plan["depth"],
                        "he_public_context_bytes": self.channel.public_context_bytes}
        return setup.replace(scenario=dataclasses.replace(sc, setup="u-shaped", label_layers=tail), depth=depth,
                             model=model, channel=self.channel, removes=setup.removes | frozenset(removes),
                             derivable=setup.derivable + derivable)

    def report(self) -> dict[str, Any]:
        out = {"he_packing": self.packing, "he_poly_modulus_degree": self.ckks.poly_modulus_degree,
               "he_coeff_mod_bit_sizes": list(self.ckks.coeff_mod_bit_sizes), "he_scale_bits": self.ckks.scale_bits,
               "he_train_server": self.train_server, **self._layout}
        if self.channel is not None and self.channel.stats.samples:
            out |= self.channel.stats.as_dict()
        return out
