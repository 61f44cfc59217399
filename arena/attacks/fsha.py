"""FSHA, the feature-space hijacking attack (Pasquini, Ateniese, Bernaschi, "Unleashing the Tiger:
Inference Attacks on Split Learning", CCS 2021; authors' code github.com/pasquini-dario/SplitNN_FSHA).

Threat model: a *malicious* server (vanilla or u-shaped setup) that controls the gradient it sends
back (CONTROL_GRADIENT), sees the smashed data (SMASHED), knows the client's architecture and owns
public data of the client's domain (AUX_DATA: arena's auxiliary split, disjoint from the private
training set by construction in `runner.load_data`). It never trains the task. Each step it

1. trains a pilot encoder f̃ and a decoder f̃⁻¹ as an autoencoder on a public batch
   (MSE(x_pub, f̃⁻¹(f̃(x_pub)))),
2. trains a WGAN-GP critic D to tell the client's smashed data f(x_priv) from f̃(x_pub)
   (mean D(f̃(x_pub)) − mean D(f(x_priv)) + λ·GP; the paper's λ is 500),
3. sends the client ∂ mean(D(f(x_priv))) / ∂f(x_priv) instead of the task gradient, so the client's
   own optimiser pulls f into f̃'s feature space, where f̃⁻¹ inverts it.

`run()` decodes the smashed data of the last recorded steps with the final decoder. The policy also
decodes the batch it receives at checkpoint steps (with the decoder of that moment, as the authors'
"attack validation" does) and returns them as ``extra["curve"]``; the scorer turns that into
``mse@<step>`` (pixels in [0,1]; the paper's [−1,1] MSE is 4× these).

Utility in an fsha cell: ``test_acc`` is the accuracy of the model the client ends up with (its
hijacked part followed by a server part that was never trained for the task), so ≈ chance: the
task damage of the attack.

Defaults are tuned for arena's training regime (client Adam lr 1e-3, tens to hundreds of steps):
lr 3e-3 for f̃/f̃⁻¹, 1e-3 for D, gradient-penalty weight 10 (Gulrajani et al.'s). The paper's
(1e-5, 1e-4, 500) go with a client at lr 1e-5 over 10k iterations (benchmarks/fsha_paper.py).
Measured on digits (LeNet depth 1, client lr 1e-3, 95 steps; grey image: 0.144): defaults MSE 0.021,
GP 500 with our learning rates 0.085, the paper's three settings 0.261.
Networks: see fsha_nets.py (``pilot = "paper"``: the authors' linear pilot and decoder). Fidelity
switches for benchmarks/fsha_paper.py (defaults keep arena's fast regime): ``critic="paper"`` with
``critic_blocks=6`` (the authors' critic), ``gp_norm="channel"`` (the authors' penalty: gradient
norm per channel over the spatial axes), ``init="keras"`` (Glorot-uniform, zero biases for f̃, f̃⁻¹,
D), ``pilot_input="signed"`` (f̃ sees pixels on [−1,1], like the authors' data pipeline).
The client's optimiser and learning rate are the scenario's [train] settings, not the attacker's.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..records import AttackOutput, Capability
from ..seeding import derive_seed
from ..protocol.transcript import WINDOWS
from ..protocol.view import ServerView
from . import fsha_nets as nets
from ..params import check_choice, check_positive_float, check_positive_int
from .base import Attack, PolicyContext, register_attack


def _int_list(name: str, value: Any) -> tuple[int, ...]:
    vals = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(vals, (list, tuple)) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in vals):
        raise ValueError(f"{name} must be a list of non-negative integers, got {value!r}")
    if len(set(vals)) != len(vals):
        raise ValueError(f"{name} has duplicates: {value!r}")
    return tuple(sorted(vals))


@register_attack
class FSHA(Attack):
    name = "fsha"
    kind = "hijack"
    requires = frozenset({Capability.SMASHED, Capability.CONTROL_GRADIENT, Capability.AUX_DATA,
                          Capability.ARCHITECTURE})
    malicious = True
    paper = "Pasquini et al., CCS 2021: malicious server hijacks the client's training (FSHA)"

    def __init__(self, lr_tilde: float = 3e-3, lr_d: float = 1e-3, gp_weight: float = 10.0,
                 pilot: str = "same", public: str = "aux", n_public: int | None = None,
                 missing_classes: Any = (), checkpoints: int = 10, curve_steps: Any = (),
                 pretrain_steps: int = 0, window: str = "after", critic: str = "fast", critic_blocks: int = 1,
                 gp_norm: str = "sample", init: str = "torch", pilot_input: str = "unit", **rest: Any) -> None:
        super().__init__(**rest)
        self.lr_tilde = check_positive_float("lr_tilde", lr_tilde)
        self.lr_d = check_positive_float("lr_d", lr_d)
        self.gp_weight = check_positive_float("gp_weight", gp_weight, allow_zero=True)
        self.pilot = check_choice("pilot", pilot, ("same", "paper"))
        self.public = check_choice("public", public, ("aux",))
        self.n_public = None if n_public is None else check_positive_int("n_public", n_public)
        self.missing_classes = _int_list("missing_classes", missing_classes)
        self.checkpoints = check_positive_int("checkpoints", checkpoints, minimum=0)
        self.curve_steps = _int_list("curve_steps", curve_steps)
        self.pretrain_steps = check_positive_int("pretrain_steps", pretrain_steps, minimum=0)
        self.window = check_choice("window", window, ("before", "after"))
        self.critic = check_choice("critic", critic, ("fast", "paper"))
        self.critic_blocks = check_positive_int("critic_blocks", critic_blocks)
        self.gp_norm = check_choice("gp_norm", gp_norm, ("sample", "channel"))
        self.init = check_choice("init", init, ("torch", "keras"))
        self.pilot_input = check_choice("pilot_input", pilot_input, ("unit", "signed"))
        if self.pilot_input == "signed" and self.pilot == "same":
            raise ValueError("pilot_input='signed' goes with pilot='paper': a pilot that copies the client's "
                             "architecture must see the client's own pixels (pilot_input='unit')")
        self.policy: FSHAPolicy | None = None

    def params(self) -> dict[str, Any]:
        return {"lr_tilde": self.lr_tilde, "lr_d": self.lr_d, "gp_weight": self.gp_weight, "pilot": self.pilot,
                "public": self.public, "n_public": self.n_public, "missing_classes": list(self.missing_classes),
                "checkpoints": self.checkpoints, "curve_steps": list(self.curve_steps),
                "pretrain_steps": self.pretrain_steps, "window": self.window, "critic": self.critic,
                "critic_blocks": self.critic_blocks, "gp_norm": self.gp_norm, "init": self.init,
                "pilot_input": self.pilot_input}

    def server_policy(self, ctx: PolicyContext) -> "FSHAPolicy":
        self.policy = FSHAPolicy(self, ctx)
        return self.policy

    def run(self, view: ServerView, generator: torch.Generator) -> AttackOutput:
        p = self.policy
        if p is None:
            raise RuntimeError("fsha.run() needs the policy it imposed on training: call server_policy() "
                               "first (the runner does, and gives fsha a training run of its own)")
        ids, smashed = view.stacked("smashed", self.window)
        recon = p.decode(smashed)
        seen = {o.step: o for w in WINDOWS for o in view.observations(w) if o.ids is not None}
        curve = [(s, seen[s].ids, r) for s, r in sorted(p.curve.items()) if s in seen]
        return AttackOutput(ids=ids, reconstructions=recon, extra={
            "curve": curve, "public_ae_mse": p.last_ae_mse, "critic_gap": p.last_gap,
            "n_public": float(len(p.x_pub)), "policy_steps": float(p.steps_seen)})


class FSHAPolicy:
    """The malicious server's training behaviour; protocol.train calls `step` in place of the server."""

    def __init__(self, attack: FSHA, ctx: PolicyContext) -> None:
        self.a, self.device = attack, ctx.device
        x, y = ctx.aux
        bad = [k for k in attack.missing_classes if k >= ctx.num_classes]
        if bad:
            raise ValueError(f"missing_classes {bad} are not classes of this dataset (0..{ctx.num_classes - 1})")
        keep = ~torch.isin(y, torch.tensor(attack.missing_classes, dtype=y.dtype))
        x, y = x[keep], y[keep]
        if attack.n_public is not None:
            x, y = x[:attack.n_public], y[:attack.n_public]
        if len(x) == 0:
            raise ValueError("fsha has no public data left (aux set empty after removing missing_classes)")
        self.x_pub, self.y_pub = x.to(ctx.device), y
        seed = derive_seed(ctx.generator.initial_seed(), "fsha-policy")
        self.gen = torch.Generator().manual_seed(seed)  # own stream: the training generator is untouched
        act = nets.activation_shape(ctx.client_arch, ctx.input_shape)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            pilot = ctx.client_arch() if attack.pilot == "same" else nets.paper_pilot(ctx.input_shape, act)
            decoder = nets.decoder(act, ctx.input_shape, relu=attack.pilot == "same")
            critic = nets.discriminator(act, attack.critic, attack.critic_blocks)
            if attack.init == "keras":  # the authors' TensorFlow defaults (Glorot-uniform, zero biases)
                pilot, decoder, critic = (nets.glorot_init(m) for m in (pilot, decoder, critic))
            if attack.pilot_input == "signed":  # the pilot sees pixels on [-1,1], as the authors' data
                pilot = nn.Sequential(nets.Signed(), pilot)
            self.pilot = pilot.to(ctx.device).train()
            self.decoder = decoder.to(ctx.device)
            self.critic = critic.to(ctx.device)
        self.opt_ae = torch.optim.Adam([*self.pilot.parameters(), *self.decoder.parameters()], lr=attack.lr_tilde)
        self.opt_d = torch.optim.Adam(self.critic.parameters(), lr=attack.lr_d)
        t = ctx.total_steps
        steps = set(attack.curve_steps) if attack.curve_steps else (
            {round(i * t / attack.checkpoints) for i in range(attack.checkpoints)} | {t - 1}
            if attack.checkpoints else set())
        self.record_steps = tuple(sorted(s for s in steps if 0 <= s < t))  # protocol.train records these
        self.curve: dict[int, torch.Tensor] = {}
        self.last_ae_mse, self.last_gap, self.steps_seen = float("nan"), float("nan"), 0
        self._perm, self._pos = torch.empty(0, dtype=torch.long), 0
        for _ in range(attack.pretrain_steps):  # the server may fit its autoencoder before training starts
            self._train_autoencoder(self._public_batch(64))

    def _public_batch(self, n: int) -> torch.Tensor:
        if self._pos + n > len(self._perm):
            self._perm, self._pos = torch.randperm(len(self.x_pub), generator=self.gen), 0
        idx = self._perm[self._pos:self._pos + n]
        self._pos += n
        return self.x_pub[idx.to(self.x_pub.device)]

    def _train_autoencoder(self, x_pub: torch.Tensor) -> torch.Tensor:
        z_pub = self.pilot(x_pub)
        loss = F.mse_loss(self.decoder(z_pub), x_pub)
        self.opt_ae.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_ae.step()
        self.last_ae_mse = float(loss.detach())
        return z_pub.detach()

    def step(self, smashed: torch.Tensor, labels: torch.Tensor | None, step: int) -> torch.Tensor:
        self.steps_seen += 1
        if step in self.record_steps:  # the decoder of this moment on the batch it just received
            self.curve[step] = self.decode(smashed)
        # gradient for the client: push its features to where the critic scores f̃'s features
        d_priv = self.critic(smashed)
        (grad,) = torch.autograd.grad(d_priv.mean(), smashed, retain_graph=True)
        z_pub = self._train_autoencoder(self._public_batch(len(smashed)))
        z_priv = smashed.detach()
        d_pub = self.critic(z_pub)
        gap = d_pub.mean() - d_priv.mean()
        loss = gap + self.a.gp_weight * nets.gradient_penalty(self.critic, z_priv, z_pub, self.gen, self.a.gp_norm) \
            if self.a.gp_weight else gap
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward(inputs=list(self.critic.parameters()))
        self.opt_d.step()
        self.last_gap = float(-gap.detach())
        return grad.detach()

    @torch.no_grad()
    def decode(self, smashed: torch.Tensor) -> torch.Tensor:
        """Reconstructions in [0,1] of observed smashed data, on the CPU."""
        out = [self.decoder(smashed[i:i + 256].detach().to(self.device)).clamp(0, 1).cpu()
               for i in range(0, len(smashed), 256)]
        return torch.cat(out)
