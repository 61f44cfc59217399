"""`dp-sgd`: the client trains its part with DP-SGD (Opacus), per-example clipping plus Gaussian noise.

Papers: Abadi et al., "Deep learning with differential privacy" (CCS 2016) — DP-SGD and the moments
accountant; Yousefpour et al., "Opacus: user-friendly differential privacy library in PyTorch"
(2021); for split learning, Titcombe et al. 2021 and the UnSplit paper's discussion (§5) of
differentially private client training.

What it protects: the *client's front weights* — the layers before the cut, the ones Opacus wraps.
Each update of them is the clipped per-example gradients, summed, plus N(0, (noise_multiplier·
max_grad_norm)²) noise, so the sequence of front weights is (ε, δ)-DP with respect to the private
examples. Relation: Opacus's *add/remove-one* (neighbouring datasets differ by one example being
present or absent) with Poisson sampling of each batch at rate q; sensitivity max_grad_norm.

What it does not cover: the activations the client sends (computed from raw inputs, no noise on
them) and, in the U-shaped setup, the client's own tail (the label owner's last layers), which
trains with plain Adam while the server sees its per-example tail gradients. So its ε is not the
same guarantee as `noise`'s: it is reported as ``epsilon_weights`` (never plain ``epsilon``) with
``epsilon_weights_scope`` and ``epsilon_weights_relation`` beside it.

What the server still sees: everything it saw before — the exact smashed data of every example
in every step (computed by the DP-trained client, with no noise on it), the labels in the vanilla
setup, the cut gradients it sends or receives. DP-SGD does not bound what a single activation
reveals about its own input, so `removes` is empty and the matrix measures how much (if at all)
the noisier, more slowly trained client changes what inversion attacks recover.

Protocol fit: the client's backward is ``(a·g).sum().backward()`` where g is the gradient of the
server's *mean* cross-entropy at the cut, i.e. 1/B of each example's loss gradient. Opacus's
``loss_reduction="mean"`` multiplies the backpropagated values by the batch size before forming
per-sample gradients, so they are exactly each example's own loss gradient (a test checks this
against the non-private gradient). With Poisson sampling (the default, which the accountant
assumes) a batch may be empty; the protocol skips it. ModuleValidator fixes incompatible layers
(e.g. BatchNorm → GroupNorm) in place; the paper models need no fix. A client-side loss term that
couples the examples of a batch (`nopeek`'s distance correlation) breaks the per-example
sensitivity: the ε reported for that combination does not hold.

Setups: vanilla and u-shaped. In label-only the server owns the inputs and front layers, so
there is no client activation to act on: a clear error, not a silent no-op.

Strength zero: ``noise_multiplier = 0`` skips Opacus entirely (no clipping, no Poisson sampling),
so it reproduces `none` bit for bit; Opacus with zero noise would not (Poisson sampling draws
other batches), and clipping without noise buys no privacy.

``poisson = false`` trains on the protocol's shuffled batches instead; the ε reported then assumes
a sampling that did not happen (common practice, not a guarantee).

Reported: ``epsilon_weights`` at ``delta`` from the Privacy Engine's own accountant (RDP or PRV)
over the optimizer steps actually taken (``dp_steps``), with Opacus's sample rate 1/⌈n/B⌉ (≈ B/n,
``sample_rate``); ``epsilon_weights_scope`` and ``epsilon_weights_relation`` say what it covers
and under which relation (and, with ``poisson = false``, that the sampling was assumed).
"""
from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import nn

from ..params import check_choice, check_positive_float
from .privacy import ACCOUNTANTS, check_delta
from ..protocol.train import SplitSetup
from .base import Defense, register_defense
from .noise import require_client_activations

SCOPE = ("the client's front weights (DP-SGD), not the activations it sends, nor a U-shaped client's own tail "
         "(trained without DP; the server sees its per-example tail gradients)")


def _opacus():
    try:
        import opacus
    except ImportError as e:  # pragma: no cover - opacus is a declared extra
        raise ImportError("the dp-sgd defense needs opacus: pip install 'opacus>=1.4'") from e
    return opacus


def make_private(client: nn.Module, optimizer: torch.optim.Optimizer, loader, *, noise_multiplier: float,
                 max_grad_norm: float, poisson: bool = True, accountant: str = "rdp",
                 loss_reduction: str = "mean", noise_seed: int | None = None):
    """Opacus's PrivacyEngine on (client, optimizer, loader); returns them wrapped and the engine.

    Layers Opacus cannot handle are replaced in place by ModuleValidator's fixes (the caller's
    references to ``client`` stay valid) and the optimizer is rebuilt on the new parameters.
    """
    opacus = _opacus()
    from opacus.validators import ModuleValidator

    if ModuleValidator.validate(client, strict=False):
        fixed = ModuleValidator.fix(client)
        client._modules.clear()
        client._modules.update(fixed._modules)
        ModuleValidator.validate(client, strict=True)
        optimizer = type(optimizer)(client.parameters(), **optimizer.defaults)
    gen = None
    if noise_seed is not None:
        gen = torch.Generator(device=next(client.parameters()).device)
        gen.manual_seed(noise_seed)
    # Poisson sampling draws from the loader's own generator (Opacus's default outside secure mode)
    with warnings.catch_warnings():  # "secure RNG turned off": intended, every draw is seeded
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = opacus.PrivacyEngine(accountant=accountant)
        module, optimizer, loader = engine.make_private(
            module=client, optimizer=optimizer, data_loader=loader, noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm, poisson_sampling=poisson, loss_reduction=loss_reduction,
            noise_generator=gen)
    return module, optimizer, loader, engine


@register_defense
class DPSGD(Defense):
    name = "dp-sgd"
    label_owner_neutral = True  # acts on the client front only: one run serves vanilla and u-shaped
    setups = ("vanilla", "u-shaped")
    covers = "the client's front weights (DP-SGD)"
    train_cost = 2.0  # per-sample gradients (scheduling hint, see Defense.train_cost)
    paper = "Abadi et al. 2016 (DP-SGD); Opacus (Yousefpour et al. 2021)"

    def __init__(self, noise_multiplier: float = 1.0, max_grad_norm: float = 1.0, delta: float = 1e-5,
                 accountant: str = "rdp", poisson: bool = True, **rest: Any) -> None:
        super().__init__(**rest)
        self.noise_multiplier = check_positive_float("noise_multiplier", noise_multiplier, allow_zero=True)
        self.max_grad_norm = check_positive_float("max_grad_norm", max_grad_norm)
        self.delta = check_delta(delta)
        self.accountant = check_choice("accountant", accountant, ACCOUNTANTS)
        if not isinstance(poisson, bool):
            raise ValueError(f"poisson must be true or false, got {poisson!r}")
        self.poisson = poisson
        self._engine: Any = None
        self._module: Any = None
        self._info: dict[str, Any] = {}

    def params(self) -> dict[str, Any]:
        return {"noise_multiplier": self.noise_multiplier, "max_grad_norm": self.max_grad_norm,
                "delta": self.delta, "accountant": self.accountant, "poisson": self.poisson}

    def apply(self, setup: SplitSetup, generator: torch.Generator) -> SplitSetup:
        self._engine = self._module = None
        self._info = {}
        if self.noise_multiplier == 0:
            return setup  # strength zero: plain training, Opacus never touches it
        require_client_activations(setup, self.name)  # label-only: the front layers are the server's
        _opacus()  # fail now, before any training, if it is missing
        noise_seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        inner = setup.wrap_client  # another defense's wrapper runs first

        def wrap(client, optimizer, loader, n_train):
            if inner is not None:
                client, optimizer, loader = inner(client, optimizer, loader, n_train)
            module, optimizer, loader, engine = make_private(
                client, optimizer, loader, noise_multiplier=self.noise_multiplier,
                max_grad_norm=self.max_grad_norm, poisson=self.poisson, accountant=self.accountant,
                noise_seed=noise_seed)
            self._engine, self._module = engine, module
            return module, optimizer, loader

        return setup.replace(wrap_client=wrap)

    def report(self) -> dict[str, Any]:
        relation = "add/remove-one (Opacus), Poisson sampling at sample_rate" + (
            "" if self.poisson else " assumed: the batches were shuffled, not Poisson-sampled (not a guarantee)")
        out: dict[str, Any] = {"noise_multiplier": self.noise_multiplier, "max_grad_norm": self.max_grad_norm,
                               "delta": self.delta, "accountant": f"opacus {self.accountant}",
                               "epsilon_weights_scope": SCOPE, "epsilon_weights_relation": relation}
        if self.noise_multiplier == 0:
            out["epsilon_weights"] = math.inf
        return out | self._info

    def after_training(self, result: Any) -> None:
        if self._engine is None:
            return
        acc = self._engine.accountant
        self._info["epsilon_weights"] = float(acc.get_epsilon(delta=self.delta))
        self._info["dp_steps"] = int(sum(h[2] for h in acc.history))
        if acc.history:  # Opacus's rate: 1 / batches per epoch (≈ B/n)
            self._info["sample_rate"] = float(acc.history[-1][1])
        self._module.cleanup()  # the trained client is a plain module again (no Opacus hooks)
        self._engine = self._module = None
