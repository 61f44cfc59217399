"""fsha-stealth: a feature-space hijacker that hides from SplitGuard (new here; the hijack is FSHA,
Pasquini, Ateniese, Bernaschi, CCS 2021, `fsha.py`; the detector it evades is SplitGuard, Erdogan,
Küpçü, Çiçek, WPES 2022, `defenses/splitguard.py`). Adaptive: ``adapts_to = ("splitguard",)``.

Threat model: FSHA's (a malicious server in the vanilla setup with SMASHED, CONTROL_GRADIENT,
AUX_DATA, ARCHITECTURE) plus Kerckhoffs knowledge of the defense: that the client runs SplitGuard
and its public parameters ``p_fake`` and ``start`` (``ctx.defense.params_of("splitguard")``). Never its randomness: which batches are
fake is what the attacker has to judge.

Why it can hide. SplitGuard's test is that an honest server's answer to a fake batch (every label
replaced by a random wrong one) differs from its answer to a regular batch, and FSHA's answers do
not (they ignore the labels). In the vanilla setup the server sees the labels, so it can judge which
batches are fake: it keeps an *honest* classifier head on the smashed data (``head_width`` hidden
units, Adam ``lr_head``), trained with the task loss on the batches it judges regular, and counts on
each batch how many labels agree with the head's predictions. A regular batch agrees at the head's
accuracy a, a fake one at b = (1 − a)/(k − 1) (every fake label is wrong, uniformly among the
wrong classes); with a estimated on the batches judged regular (an exponential average), the
posterior log-odds of "fake" is the binomial likelihood ratio of the agreement count plus the prior
log(p_fake / (1 − p_fake)). Before ``start`` the client never fakes, so every batch is regular and
trains the head. A batch judged fake gets the head's honest task gradient on the (fake) labels,
scaled to ``fake_scale`` × the norm of the hijack gradient FSHA would have sent on it (None: the
honest gradient's own norm); every other batch is hijacked exactly as FSHA does. FSHA's own state
(autoencoder, critic, checkpoints) trains on every batch: only the answer to a fake batch differs.

What the answer must look like: SplitGuard scores the angle between fake and regular gradients
weighted by the gap in their norms against the gap between two regular ones. The hijack's
regular answers swing in norm from batch to batch, so an honest answer of its own natural size
can land inside that swing (d(F,R) small against d(R1,R2)) and score low; scaling it to a multiple
of the hijack's norm makes d(F,R) dominate, and the honest direction (the labels' gradient) is
far from the critic's, so θ(F,R) is large. A fake batch never updates the client (SplitGuard's
protocol), so the scaled answer costs the hijack nothing; a regular batch misjudged as fake gets
one scaled honest step. ``answer = "mirror"`` sends −``fake_scale`` × the hijack gradient instead
(no head needed for the answer, only for the judgement): θ(F,R) near π while the hijack's
consecutive directions agree.

Where the client runs no SplitGuard (``ctx.defense``: none, or other defenses) the policy is plain
FSHA: nothing to hide from (it answers exactly as FSHA would with its own initialisation stream). Outside the vanilla setup (no labels) it is plain FSHA too.
Parameters beyond FSHA's: ``answer`` ("honest"), ``fake_scale`` (4.0; None or "natural": the honest norm),
``lr_head`` (1e-3), ``head_width`` (128), ``ema`` (0.9, the decay of the accuracy estimate),
``p_fake``/``start`` (None: SplitGuard's public parameters; set, they override: a mis-informed attacker).
Records ``extra["judged_fake"]`` (batches answered as fake) and ``extra["head_acc"]``.

Measured at the default experiment's scale (Fashion-MNIST, LeNet depth 1, 55,000 private images,
3 epochs of 64, n_aux 5000; FSHA's quick.toml entry {checkpoints 4, steps 600} for both; SplitGuard
at its defaults p_fake 0.1, start 10), seeds 0 / 1 / 2, ``python -m arena.matrix -e fsha-stealth``:
plain FSHA is stopped at steps 73 / 49 / 73 (SSIM 0.035 / 0.000 / 0.293; the mean image 0.070 / 0.088
/ 0.094); fsha-stealth is never stopped in its 600 steps (SplitGuard's mean score 0.921 / 0.956 /
0.924, an honest server's 0.955 / 0.968 / 0.985), answers 67 / 56 / 50 batches as fake, as many as
the client sent (head accuracy 0.79 / 0.81 / 0.80), and decodes at SSIM 0.560 / 0.575 / 0.533
(undefended: FSHA 0.536 / 0.333 / 0.354, fsha-stealth 0.233 / 0.556 / 0.494, the same hijack under
another initialisation stream: WGAN noise). With ``fake_scale = "natural"`` (seed 0) it is not
stopped either (mean score 0.952). On tiny digits (test_fsha_stealth.py,
p_fake 0.3) it judged every fake batch and no regular one on seeds 0–2.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..params import check_choice, check_positive_float, check_positive_int
from ..protocol.view import ServerView
from ..records import AttackOutput
from ..seeding import derive_seed
from . import fsha_nets as nets
from .base import PolicyContext, register_attack
from .fsha import FSHA, FSHAPolicy

SG_DEFAULTS = {"p_fake": 0.1, "start": 10}  # SplitGuard's defaults, if its public parameters omit them


@register_attack
class FSHAStealth(FSHA):
    name = "fsha-stealth"
    adapts_to = ("splitguard",)
    paper = ("new here: FSHA (Pasquini et al., CCS 2021) that answers the batches it judges fake "
             "(SplitGuard, Erdogan et al., WPES 2022) with an honest task gradient")

    def __init__(self, answer: str = "honest", fake_scale: float | None = 4.0, lr_head: float = 1e-3,
                 head_width: int = 128, ema: float = 0.9, p_fake: float | None = None,
                 start: int | None = None, **rest: Any) -> None:
        super().__init__(**rest)
        self.answer = check_choice("answer", answer, ("honest", "mirror"))
        # None or "natural" (what a TOML file can say): the honest gradient's own norm
        self.fake_scale = None if fake_scale in (None, "natural") else check_positive_float("fake_scale", fake_scale)
        if self.answer == "mirror" and self.fake_scale is None:
            raise ValueError("fake_scale must be a positive number with answer='mirror' (it scales the "
                             "mirrored hijack gradient)")
        self.lr_head = check_positive_float("lr_head", lr_head)
        self.head_width = check_positive_int("head_width", head_width)
        self.ema = check_positive_float("ema", ema, allow_zero=True)
        if self.ema >= 1:
            raise ValueError(f"ema must be in [0, 1), got {ema!r}")
        self.p_fake = None if p_fake is None else check_positive_float("p_fake", p_fake)
        if self.p_fake is not None and self.p_fake >= 1:
            raise ValueError(f"p_fake must be in (0, 1), got {p_fake!r}")
        self.start = None if start is None else check_positive_int("start", start, minimum=0)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "answer": self.answer, "fake_scale": self.fake_scale, "lr_head": self.lr_head,
                "head_width": self.head_width, "ema": self.ema, "p_fake": self.p_fake, "start": self.start}

    def server_policy(self, ctx: PolicyContext) -> "StealthPolicy":
        self.policy = StealthPolicy(self, ctx)
        return self.policy

    def run(self, view: ServerView, generator: torch.Generator) -> AttackOutput:
        out = super().run(view, generator)
        p = self.policy
        out.extra.update({"judged_fake": float(p.judged_fake), "hides": float(p.hides),
                          "head_acc": float(p.acc)})
        return out


class StealthPolicy(FSHAPolicy):
    """FSHA's policy that answers the batches it judges fake honestly (see the module docstring)."""

    def __init__(self, attack: FSHAStealth, ctx: PolicyContext) -> None:
        super().__init__(attack, ctx)
        known = ctx.defense  # Kerckhoffs: the defense's names and public parameters
        self.hides = known.has("splitguard")
        public = known.params_of("splitguard") or SG_DEFAULTS
        self.p_fake = attack.p_fake if attack.p_fake is not None else float(public.get("p_fake", 0.1))
        self.start = attack.start if attack.start is not None else int(public.get("start", 10))
        self.hides = self.hides and self.p_fake > 0
        self.k = ctx.num_classes
        act = nets.activation_shape(ctx.client_arch, ctx.input_shape)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(ctx.generator.initial_seed(), "fsha-stealth-head"))
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(act), attack.head_width), nn.ReLU(),
                                      nn.Linear(attack.head_width, self.k)).to(ctx.device)
        self.opt_head = torch.optim.Adam(self.head.parameters(), lr=attack.lr_head)
        self.acc = 1.0 / self.k  # the head's estimated accuracy on regular batches
        self.judged_fake = 0
        self.fake_steps: list[int] = []

    def _log_odds_fake(self, agree: int, n: int) -> float:
        """Posterior log-odds that a batch with ``agree`` of ``n`` labels matching the head is fake."""
        a = min(max(self.acc, 1e-3), 1 - 1e-3)
        b = min(max((1 - a) / (self.k - 1), 1e-3), 1 - 1e-3)
        prior = math.log(self.p_fake / (1 - self.p_fake)) if self.p_fake < 1 else math.inf
        return prior + agree * math.log(b / a) + (n - agree) * math.log((1 - b) / (1 - a))

    def step(self, smashed: torch.Tensor, labels: torch.Tensor | None, step: int) -> torch.Tensor:
        g_hijack = super().step(smashed, labels, step)  # FSHA's state learns from every batch
        if not self.hides or labels is None:
            return g_hijack
        x = smashed.detach().requires_grad_(True)
        logits = self.head(x)
        agree = int((logits.detach().argmax(1) == labels).sum())
        fake = step >= self.start and self._log_odds_fake(agree, len(labels)) > 0
        loss = F.cross_entropy(logits, labels)
        if fake:
            self.judged_fake += 1
            self.fake_steps.append(step)
            if self.a.answer == "mirror":
                return -self.a.fake_scale * g_hijack
            (g,) = torch.autograd.grad(loss, [x])  # the honest answer; the head does not learn wrong labels
            if self.a.fake_scale is not None:
                g = g * (self.a.fake_scale * g_hijack.norm() / g.norm().clamp_min(1e-12))
            return g
        self.acc = self.a.ema * self.acc + (1 - self.a.ema) * agree / len(labels)
        self.opt_head.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_head.step()
        return g_hijack
