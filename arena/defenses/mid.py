"""`mid`: a variational information bottleneck at the label owner's input (mutual information regularization).

Paper: T. Zou, Y. Liu, Z. Li, Y. Zhang, J. Zhou, Y.-Q. Zhang, "Mutual Information Regularization for
Vertical Federated Learning" (MID), arXiv 2301.01142, 2023; implemented here as VFLAIR
(FLAIR-THU/VFLAIR, `MID_model`, applied by the active party to each passive party's embedding) and
SecretFlow (secretflow/sfl, `MIDModel` in the fuse model against label inference) do. Against label
inference the label owner passes what it receives from the server, h (d features), through

    encoder Linear(d → 2d) → ReLU → split into μ and s;  σ = softplus(s − shift)
    z = μ + σ·ε,  ε ~ N(0, I) from the label owner's own stream ("tail-noise" of the run)
    decoder Linear(d → 5d) → ReLU → Linear(5d → d) → ReLU,  then its own tail (the last layer(s))

and trains on loss = CE + λ·KL(N(μ, σ²) ‖ N(0, I)), the KL summed over the d coordinates and
averaged over the batch (both references' normalisation). The ReLUs after the encoder and the
decoder are both references' (so μ ≥ 0 and σ ≥ softplus(−shift)). shift = 5, VFLAIR's value for
MNIST/CIFAR/NUS-WIDE (SecretFlow's default 0.5 is VFLAIR's for the other datasets). The bottleneck
trains in the label owner's Adam at its own rate ``lr`` = 1e-4, as VFLAIR's shipped MID configs set
it (its code falls back to the main lr when a config gives none: ``lr=None`` here).

Threat model: the server is honest-but-curious and knows the defense (Kerckhoffs). It still receives
every per-example cut gradient (``CUT_GRADIENT``), now ∂(CE + λ·KL)/∂h through the noisy bottleneck:
``removes`` is empty and the matrix measures what still leaks. Under UnSplit's stronger threat model
(``TAIL_GRADIENTS``) the observed parameter gradients are the label owner's, so the bottleneck's
parameters are among them (its full loss's gradients, KL included). The view's ``tail_arch`` is
the defended tail (bottleneck + last layer(s)), so `unsplit-label` builds the same architecture the
label owner trains; a fresh copy has no noise stream and runs the bottleneck at its mean.

At test time the label owner draws ε too, as VFLAIR and SecretFlow do (their forward pass always
samples), from the run's "test-tail-noise" stream; the cell's test accuracy is that pipeline's.
Using z = μ instead is not free accuracy: the decoder is trained on noisy codes (Fashion-MNIST
below, seed 0, λ = 1e-3: one draw 0.674, z = μ 0.645).

Strength: ``lam`` = λ ≥ 0, default 1e-3 (VFLAIR's default; it sweeps 0 and 1e-8 … 1e4). λ's scale
depends on d, since the KL is summed over the d coordinates: VFLAIR's MNIST embeddings have d = 10,
LeNet's h here has d = 84. λ = 0 is NOT the identity: it still adds the bottleneck layers and their
noise, so a λ = 0 cell differs from `none` by the added layers only; compare mid with `none`, and
read λ = 0 as the architecture's own effect (``report()`` says so in ``mid_note``). Measured on
Fashion-MNIST (u-shaped LeNet, depth 1, 10k training images, 3 epochs at lr 2e-3, the full test
set; mean of seeds 0–2, cosine-label's label accuracy / test accuracy): none 1.00 / 0.785,
λ = 0 0.77 / 0.728, λ = 1e-3 0.54 / 0.724, λ = 3e-3 0.41 / 0.605, λ = 1e-2 (seed 0) 0.15 / 0.111
(the codes collapse to the prior within 470 steps). The deeper, noisy label-owner tail alone
scatters the cut gradients' directions; λ adds to it. `unsplit-label` under UnSplit's threat model
stays at 1.00: the last layer's weight gradient (p − e_y)·aᵀ shows the label whatever sits before it.

Setups: label-only and u-shaped (a label owner receives h). In vanilla the server computes the loss
itself: n/a.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..params import check_positive_float
from ..protocol.train import SplitSetup
from .base import Defense, register_defense

NOTE = "λ = 0 still adds the bottleneck layers; compare with none"


class Bottleneck(nn.Module):
    """The label owner's variational bottleneck in front of its tail (VFLAIR's ``MID_model``).

    Draws ε only while the protocol has handed it a ``noise_generator`` (`protocol.train`: in
    training and in the test-accuracy evaluation); otherwise (a fresh copy, the trained model
    handed back) it passes the mean μ, deterministically."""

    def __init__(self, shape: tuple[int, ...], std_shift: float, lr: float | None = None) -> None:
        super().__init__()
        self.shape, self.std_shift = tuple(shape), float(std_shift)
        if lr is not None:
            self.lr = float(lr)  # the protocol gives this layer its own rate in the label owner's Adam
        d = self.d = math.prod(self.shape)
        self.encoder = nn.Linear(d, 2 * d)
        self.decoder = nn.Sequential(nn.Linear(d, 5 * d), nn.ReLU(), nn.Linear(5 * d, d), nn.ReLU())
        self.noise_generator: torch.Generator | None = None

    def encode(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = F.relu(self.encoder(h.flatten(1)))
        return out[:, :self.d], F.softplus(out[:, self.d:] - self.std_shift)

    def kl(self, h: torch.Tensor) -> torch.Tensor:
        """KL(N(μ, σ²) ‖ N(0, I)) of each example, summed over coordinates, averaged over the batch."""
        mu, sigma = self.encode(h)
        return (-0.5 * (1 + 2 * torch.log(sigma) - mu ** 2 - sigma ** 2)).sum(1).mean()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        mu, sigma = self.encode(h)
        z, g = mu, self.noise_generator
        if g is not None:
            eps = torch.randn(mu.shape, generator=g, device=g.device).to(device=mu.device, dtype=mu.dtype)
            z = mu + sigma * eps
        return self.decoder(z).reshape(h.shape)


def check_finite(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return v


def bottleneck_of(tail: nn.Module) -> Bottleneck:
    first = tail[0] if isinstance(tail, nn.Sequential) and len(tail) else None
    if not isinstance(first, Bottleneck):
        raise RuntimeError("mid: the label owner's tail does not start with its bottleneck")
    return first


@register_defense
class MID(Defense):
    name = "mid"
    paper = "Zou et al. Mutual Information Regularization for Vertical Federated Learning. arXiv 2301.01142 (2023)"
    setups = ("label-only", "u-shaped")
    covers = ("the labels in the cut gradient and the label owner's parameter gradients (a noisy learned "
              "bottleneck on what the label owner receives)")
    train_cost = 1.2

    def __init__(self, lam: float = 1e-3, std_shift: float = 5.0, lr: float | None = 1e-4, **rest: Any) -> None:
        super().__init__(**rest)
        self.lam = check_positive_float("lam", lam, allow_zero=True)
        self.std_shift = check_finite("std_shift", std_shift)
        self.lr = None if lr is None else check_positive_float("lr", lr)
        self._layout: dict[str, Any] = {}
        self._after: dict[str, Any] = {}

    def params(self) -> dict[str, Any]:
        return {"lam": self.lam, "std_shift": self.std_shift, "lr": self.lr}

    def term(self, tail: nn.Module, h: torch.Tensor) -> torch.Tensor:
        """The label owner's extra loss: λ·KL of its bottleneck on what it received."""
        return self.lam * bottleneck_of(tail).kl(h)

    def apply(self, setup: SplitSetup, generator: torch.Generator) -> SplitSetup:
        sc = setup.scenario
        if sc.setup not in self.setups:
            raise ValueError(f"mid puts a bottleneck in front of the label owner's tail, but in the {sc.setup} "
                             f"setup the server computes the loss (no label owner): use label-only or u-shaped")
        self._after = {}
        layers = list(setup.model)
        cut = len(layers) - setup.label_layers
        with torch.no_grad():  # the shape of h, on a copy (no layer's state may change)
            shape = tuple(copy.deepcopy(nn.Sequential(*layers[:cut])).eval()(
                torch.zeros(2, *setup.input_shape)).shape[1:])
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):  # the bottleneck's initial weights from the defense's stream
            torch.manual_seed(seed)
            bottleneck = Bottleneck(shape, self.std_shift, self.lr)
        self._layout = {"mid_bottleneck_dim": bottleneck.d,
                        "mid_bottleneck_params": sum(p.numel() for p in bottleneck.parameters())}
        model = nn.Sequential(*layers[:cut], bottleneck, *layers[cut:])
        terms = (self.term,) if self.lam > 0 else ()
        return setup.replace(model=model, scenario=dataclasses.replace(sc, label_layers=sc.label_layers + 1),
                             label_loss_terms=setup.label_loss_terms + terms)

    def after_training(self, result: Any) -> None:
        """How much the trained bottleneck keeps: its KL and mean σ on the last recorded batch."""
        obs = [o for o in result.transcript.observations("after") if o.server_out is not None]
        if not obs:
            return
        b = bottleneck_of(result.model.tail)
        h = obs[-1].server_out.to(next(b.parameters()).device)
        with torch.no_grad():
            _, sigma = b.encode(h)
            self._after = {"mid_kl_after": float(b.kl(h)), "mid_sigma_after": float(sigma.mean())}

    def report(self) -> dict[str, Any]:
        return {"mid_lambda": self.lam, "mid_std_shift": self.std_shift,
                "mid_lr": self.lr if self.lr is not None else "the run's lr",
                "mid_test_time": "z = mu + sigma*eps (one draw)", "mid_note": NOTE, **self._layout, **self._after}
