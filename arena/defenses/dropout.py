"""`dropout`: the client zeroes a random subset of its activation's coordinates before sending it.

Paper: Z. He, T. Zhang, R. B. Lee, "Attacking and protecting data privacy in edge-cloud
collaborative inference systems", IEEE Internet of Things Journal 2020: dropout on the split
output protects against their model inversion attacks better than Gaussian or Laplace noise at
equal accuracy (ALGORITHMS.md, He et al.). There the defense is applied at *inference*: the
deployed edge device keeps dropping.

Mechanism, per coordinate (a smash hook, on the client before anything leaves it): inverted
dropout ``a ← a·m/(1 − p)`` with ``m ~ Bernoulli(1 − p)`` drawn from the hook's generator (the
cell's defense stream; test-time draws come from the protocol's separate test stream). The mean
of every coordinate is kept; gradients flow through the mask, so the client trains on what it sent.

What the server still sees: the dropped-out activations of every example in every step (``removes``
is empty: every inversion attack still runs, against sparser data), the labels in vanilla and the
cut gradients in u-shaped. It protects each release of the activations; it has no privacy
accounting (no ε): the surviving coordinates are sent exactly.

Against an attacker who knows it (Kerckhoffs): a dropped coordinate arrives as an exact zero and a
kept one as a/(1 − p), so an inversion that fits only the non-zero coordinates of the scaled-back
activation loses little. Tiny digits, depth 1, p = 0.5: `he-whitebox` SSIM 0.997 undefended, 0.49
against dropout (it fits the zeros), 0.996 for the masked fit (a test shows it). Fashion-MNIST
(vanilla, depth 1, 10k examples, 3 epochs, seed 0): the default experiment's he-whitebox falls from
SSIM 0.98 to 0.47 at p = 0.5 at no accuracy cost (0.793 → 0.800), while the masked fit gets 0.99;
at p = 0.8 naive 0.35, masked 0.74. The non-adaptive white-box attack therefore overstates this
defense. `he-blackbox` partly adapts by itself when at_test = "drop": its queries come back
dropped, so its inverse network learns to invert dropped activations (SSIM 0.92 undefended, 0.68
at p = 0.5 with at_test "drop", 0.46 with "none").

Test time (``at_test``): what the deployed client does at inference, which is also what the cell's
test accuracy measures (`train.evaluate` applies the setup's test hooks) and what a querying server
gets back:

- ``"drop"`` (default, He et al.'s deployment): the client keeps dropping at inference, so what the
  server sees then is protected too, and the utility is that noisy pipeline's.
- ``"none"``: ordinary dropout practice, the client sends its activations unchanged at inference
  (inverted dropout needs no rescaling then). Inference releases are then unprotected: only the
  training transcript is.

Strength: the rate ``p`` ∈ [0, 1). ``p = 0`` is the identity: the setup is returned unchanged and no
random numbers are drawn, so it reproduces `none` bit for bit (tested).

Setups: vanilla and u-shaped. In label-only the server owns the inputs and the front layers, so
there is no client activation to act on: a clear error, as for `noise`.
"""
from __future__ import annotations

from typing import Any

import torch

from ..params import check_choice, check_float_in
from ..protocol.train import SplitSetup
from .base import Defense, register_defense
from .noise import require_client_activations

AT_TEST = ("drop", "none")


@register_defense
class Dropout(Defense):
    name = "dropout"
    setups = ("vanilla", "u-shaped")
    paper = "He et al. 2020 (IEEE IoTJ), Attacking and protecting data privacy in edge-cloud collaborative inference"
    label_owner_neutral = True  # acts on the client front only: one run serves vanilla and u-shaped
    covers = "each release of the activations (a random p of the coordinates zeroed); at inference too with at_test=drop"

    def __init__(self, p: float = 0.5, at_test: str = "drop", **rest: Any) -> None:
        super().__init__(**rest)
        self.p = check_float_in("p", p, 0.0, 1.0, high_open=True)
        self.at_test = check_choice("at_test", at_test, AT_TEST)

    def params(self) -> dict[str, Any]:
        return {"p": self.p, "at_test": self.at_test}

    def hook(self, a: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The smash hook: keep each coordinate with probability 1 − p, scaled by 1/(1 − p)."""
        u = torch.rand(a.shape, generator=gen, device=gen.device).to(a.device)
        return a * (u >= self.p).to(a.dtype) / (1 - self.p)

    def apply(self, setup: SplitSetup, generator: torch.Generator) -> SplitSetup:
        if self.p == 0:
            return setup  # strength zero: the identity (no draws)
        require_client_activations(setup, self.name)
        before = setup.test_hooks()  # what the client did at inference before this defense
        if self.at_test == "none":
            inference = before
        else:  # keep dropping: None already means "what it sends in training"
            inference = None if setup.inference_hooks is None else setup.inference_hooks + (self.hook,)
        return setup.replace(smash_hooks=setup.smash_hooks + (self.hook,), inference_hooks=inference)

    def report(self) -> dict[str, Any]:
        return {"dropout_p": self.p, "dropout_at_test": self.at_test}
