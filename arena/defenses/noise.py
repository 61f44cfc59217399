"""`noise`: clip each example's activation, then add Gaussian or Laplace noise before sending it.

Papers: He et al., "Attacking and protecting data privacy in edge-cloud collaborative inference
systems" (IEEE IoTJ 2020) — Gaussian/Laplace noise on the split output; Titcombe et al., "Practical
defences against model inversion attacks for split neural networks" (2021) — Laplacian noise on
the intermediate data. The clipping step makes the noise a (local) Gaussian/Laplace mechanism
with a known sensitivity, so the release can be given an (ε, δ).

What the server still sees: the noisy, clipped smashed data of every example in every step (so
`removes` is empty: every inversion attack still runs, against noisier data), the labels in the
vanilla setup, and in the label-protecting setups the exact cut gradients (noise is added only on
the way up).

Mechanism, per example (the client side, inside the smash hook, before anything leaves it):
``a ← a·min(1, clip/‖a‖)`` (L2 norm for Gaussian, L1 for Laplace), then ``a ← a + noise`` with
N(0, scale²) or Laplace(0, scale) per coordinate, drawn from the hook's generator (the cell's seed).
Gradients flow through both steps, so the client trains on what it actually sent.

Privacy figures (`report()`): every ε key starts with ``epsilon_activations`` and comes with
``epsilon_activations_scope`` and ``epsilon_activations_relation`` saying what it covers. They are
not the same guarantee as `dp-sgd`'s ``epsilon_weights`` (another object, another relation) and
must not be compared with it as if they were.

- Scope: the activations of one example, each release of them, with the client network taken as
  given (fixed, public). Not an end-to-end guarantee for the training run: the client's weights
  are trained on the raw data without noise, and every later release depends on them (combine with
  `dp-sgd` for those).
- Relation: *replace-one*. The server ties every row it receives to one example (each row is
  one example's, it arrives with its id, and whether it was sent is never hidden), so
  add/remove-one is not a meaningful relation here; neighbouring datasets differ in one example's content, whose clipped activation can move
  anywhere in the clip ball: sensitivity ``2·clip`` (L2 for Gaussian, L1 for Laplace).
- ``noise_multiplier`` (reported) = noise std / sensitivity = ``scale / (2·clip)``, the convention
  of `arena.defenses.privacy`; ``sensitivity`` = 2·clip. (The ratio ``scale/clip`` is twice it.)
  Example: scale = clip (scale/clip = 1, noise_multiplier 0.5) gives ε ≈ 10.0 per release at
  δ = 1e-5 (the analytic Gaussian), where the add/remove reading (sensitivity clip) said 4.38.

Fields:

- ``epsilon_activations_release``: one release. Gaussian: the analytic Gaussian mechanism (Balle &
  Wang 2018; exact) at ``noise_multiplier``; Laplace: 2·clip/scale (δ = 0).
  ``epsilon_activations_release_classic`` (Gaussian): Dwork & Roth's bound, for comparison.
- ``epsilon_activations`` (after training): the composition over the releases of each example. The
  protocol shuffles and sends every example once per epoch, so each example is released
  ``releases_per_example = ⌈steps / ⌈n/B⌉⌉`` times, every time in full: Opacus's accountant (RDP by
  default, or PRV) at sample rate 1 for that many releases; Laplace: basic composition.
  ``epsilon_activations_exact``: the same composition computed exactly — k Gaussian releases with
  noise multiplier z are one Gaussian release with z/√k (Dong, Roth & Su 2019) — tighter than RDP.

There is no subsampled figure (an earlier ``epsilon_if_subsampled`` is gone). Amplification by
subsampling needs the adversary not to know whether an example took part in a step; here the
server sees every example's row, tied to it, once per epoch, whatever the batch. The DP-SGD-style
bookkeeping (sample rate B/n over all steps) therefore bounds nothing for this mechanism, and at
small noise it even exceeded the composed ε while being called optimistic (16,301 vs 2,084 at
scale 0.5, clip 30, n = 3000, B = 64, one epoch, both with the old sensitivity clip), since
subsampled RDP at tiny noise multipliers is loose. A correct subsampled figure would need a
different protocol (examples hidden from the server, sampled in secret), not other bookkeeping.

Parameters: ``scale`` (σ or b per coordinate), ``clip`` (the norm bound; default 30 ≈ the median
L2 norm of LeNet's depth-1 activations after one epoch on Fashion-MNIST — set it for your model
and depth: a bound far below the typical norm shrinks the signal, one far above weakens ε),
``distribution``, ``delta``, ``accountant`` ("rdp" or "prv").

Setups: vanilla and u-shaped. In label-only the server owns the inputs and front layers, so
there is no client activation to act on: a clear error, not a silent no-op.

Strength zero: ``scale = 0`` is the identity — no clipping either, no random numbers drawn — so it
reproduces `none` bit for bit (a test proves it). ``clip = inf`` means no clipping (no finite ε).
"""
from __future__ import annotations

import math
from typing import Any

import torch

from ..params import check_choice, check_positive_float
from .privacy import (ACCOUNTANTS, analytic_gaussian_epsilon, check_delta, classic_gaussian_epsilon,
                      composed_epsilon, releases_per_example)
from ..protocol.train import SplitSetup
from .base import Defense, register_defense

DISTRIBUTIONS = ("gaussian", "laplace")
SCOPE = ("the activations of one example, each release of them, client network given (not the client's "
         "weights, which train on the raw data)")
RELATION = "replace-one (the server ties each row to its example): sensitivity 2·clip"


def check_bound(name: str, value: Any) -> float:
    """A norm bound: a number > 0, where inf means unbounded (no clipping)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number > 0 (inf: no clipping), got {value!r}") from None
    if isinstance(value, bool) or math.isnan(v) or v <= 0:
        raise ValueError(f"{name} must be a number > 0 (inf: no clipping), got {value!r}")
    return v


def require_client_activations(setup: SplitSetup, name: str) -> None:
    """Defenses on the client's activations have nothing to act on in the label-only setup."""
    if setup.scenario.setup == "label-only":
        raise ValueError(f"{name} acts on the activations the client computes and sends, but in the label-only "
                         f"setup the server owns the inputs and the front layers (the client only holds labels "
                         f"and the tail): use the vanilla or u-shaped setup")


def clip_rows(a: torch.Tensor, bound: float, p: int = 2) -> torch.Tensor:
    """Scale each example (first dimension) so that its Lp norm is at most ``bound``."""
    if math.isinf(bound):
        return a
    norms = a.flatten(1).norm(p=p, dim=1).clamp_min(1e-12)
    factor = (bound / norms).clamp(max=1.0)
    return a * factor.view(-1, *([1] * (a.dim() - 1)))


def draw_noise(shape: torch.Size, distribution: str, scale: float, gen: torch.Generator,
               like: torch.Tensor) -> torch.Tensor:
    """Noise of the given shape from ``gen`` (drawn on the generator's device, moved to ``like``'s)."""
    dev = gen.device
    if distribution == "gaussian":
        z = torch.randn(shape, generator=gen, device=dev)
    else:  # Laplace(0, 1) = difference of two independent Exp(1)
        e = torch.empty((2, *shape), device=dev).exponential_(1.0, generator=gen)
        z = e[0] - e[1]
    return (scale * z).to(device=like.device, dtype=like.dtype)


@register_defense
class Noise(Defense):
    name = "noise"
    label_owner_neutral = True  # acts on the client front only: one run serves vanilla and u-shaped
    setups = ("vanilla", "u-shaped")
    covers = "each release of the activations (clipped, noised)"
    paper = "He et al. 2020 (IoTJ) noise on the split output; Titcombe et al. 2021; Balle & Wang 2018"

    def __init__(self, scale: float = 0.5, clip: float = 30.0, distribution: str = "gaussian",
                 delta: float = 1e-5, accountant: str = "rdp", **rest: Any) -> None:
        super().__init__(**rest)
        self.distribution = check_choice("distribution", distribution, DISTRIBUTIONS)
        self.scale = check_positive_float("scale", scale, allow_zero=True)
        self.clip = check_bound("clip", clip)
        self.delta = check_delta(delta)
        self.accountant = check_choice("accountant", accountant, ACCOUNTANTS)
        self._after: dict[str, Any] = {}
        self._batch = 0

    def params(self) -> dict[str, Any]:
        return {"distribution": self.distribution, "scale": self.scale, "clip": self.clip,
                "delta": self.delta, "accountant": self.accountant}

    @property
    def sensitivity(self) -> float:
        """How far one example's clipped activation can move when the example is replaced: 2·clip."""
        return 2 * self.clip

    @property
    def noise_multiplier(self) -> float:
        """Noise std / sensitivity = scale / (2·clip), the replace-one noise multiplier the ε use."""
        return self.scale / self.sensitivity  # 0 when clip is inf: no finite ε

    def hook(self, a: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The smash hook: clip per example, then add noise (the client does this before sending)."""
        a = clip_rows(a, self.clip, p=2 if self.distribution == "gaussian" else 1)
        return a + draw_noise(a.shape, self.distribution, self.scale, gen, a)

    def apply(self, setup: SplitSetup, generator: torch.Generator) -> SplitSetup:
        self._after, self._batch = {}, setup.config.batch_size
        if self.scale == 0:
            return setup  # strength zero: the identity (no clipping, no draws)
        require_client_activations(setup, self.name)
        return setup.replace(smash_hooks=setup.smash_hooks + (self.hook,))

    def epsilon_release(self) -> float:
        """ε of one release of one example's activation, replace-one relation (sensitivity 2·clip)."""
        if self.scale == 0 or math.isinf(self.clip):
            return math.inf
        if self.distribution == "laplace":
            return self.sensitivity / self.scale
        return analytic_gaussian_epsilon(self.noise_multiplier, self.delta)

    def report(self) -> dict[str, Any]:
        laplace = self.distribution == "laplace"
        out: dict[str, Any] = {
            "noise_distribution": self.distribution, "noise_scale": self.scale, "clip": self.clip,
            "sensitivity": self.sensitivity, "noise_multiplier": self.noise_multiplier,
            "delta": 0.0 if laplace else self.delta,
            "epsilon_activations_scope": SCOPE, "epsilon_activations_relation": RELATION,
            "epsilon_activations_release": self.epsilon_release(),
            "epsilon_activations_release_method":
                "pure (2·clip_L1/b)" if laplace else "analytic Gaussian (Balle & Wang 2018)",
        }
        if not laplace and self.scale > 0 and not math.isinf(self.clip):
            out["epsilon_activations_release_classic"] = classic_gaussian_epsilon(self.noise_multiplier,
                                                                                  self.delta)
        return out | self._after

    def after_training(self, result: Any) -> None:
        steps, n = int(result.cost["train_steps"]), int(result.cost["n_train"])
        k = releases_per_example(steps, self._batch, n)
        after: dict[str, Any] = {"releases_per_example": k}
        if k == 0:
            after |= {"epsilon_activations": 0.0, "accountant": "nothing released"}
        elif self.scale == 0 or math.isinf(self.clip):
            after |= {"epsilon_activations": math.inf, "accountant": "none (no noise or no clipping)"}
        elif self.distribution == "laplace":
            after |= {"epsilon_activations": k * self.epsilon_release(),
                      "accountant": "basic composition (pure ε)"}
        else:
            z = self.noise_multiplier
            after |= {"epsilon_activations": composed_epsilon(z, 1.0, k, self.delta, self.accountant),
                      "epsilon_activations_exact": analytic_gaussian_epsilon(z / math.sqrt(k), self.delta),
                      "accountant": f"opacus {self.accountant} at sample rate 1 (every release in full)"}
        self._after = after
