"""SplitGuard: the client detects a server that hijacks its training (Erdogan, Küpçü, Çiçek,
"SplitGuard: Detecting and Mitigating Training-Hijacking Attacks in Split Learning", WPES 2022;
authors' code github.com/ege-erdogan/splitguard).

Setting: the vanilla setup, where the server computes the loss from the labels the client sends.
After batch ``start`` the client sends each batch, with probability ``p_fake``, as a *fake batch*:
every label replaced by a random wrong one. It never updates its part from a fake batch (the
server cannot tell and does train on it). It keeps the gradient each batch brings back (as in
the authors' code: the gradient of the client's first layer's weights) and, after each fake batch,
computes the SplitGuard score from a fake set F and two regular sets R1, R2:

    S  = θ(F̄, R̄)·d(F,R)/(d(F,R)+d(R1,R2)) − θ(R̄1, R̄2)·d(R1,R2)/(d(F,R)+d(R1,R2))
    SG = sigmoid(α·S)^β                    (α = 5, β = 2 in the authors' code)

with θ the angle between mean gradients, R̄ = (R̄1+R̄2)/2 and d the difference of mean norms. An
honest server's fake-batch gradients are larger and point elsewhere (SG near 1); a hijacker that
ignores the labels (FSHA) returns the same kind of gradient for both (SG low).

``reference = "all"`` is the authors' code: F = every fake batch so far, R1/R2 = every regular
batch since ``start``, split at random. ``reference = "local"`` (ours) scores each fake batch
against the two regular batches just before it (F, R1, R2 one batch each): a hijacker's
gradients swing by orders of magnitude while its critic trains (measured: first-layer gradient
norms from 0.04 to 68 and back to 13 within 90 steps on digits), and with every batch in the
reference the timing of the few fake batches, not their labels, decided the score (an FSHA run
scored 0.97–1.00, like an honest one); with neighbours only, F, R1 and R2 are exchangeable under
a label-blind server. ``reference = "fresh"`` (default, ours) is "local" with each regular batch
in one score at most (a fake batch is scored only once two regular batches have come since the
last score): at realistic scale an honest run meets pairs of regular batches that differ a lot,
and with "local" the fake batches near such a pair all scored low against it (an honest run:
0.00 at steps 1878, 1879 and 1881, against pairs sharing step 1877), a run of low scores that a
vote counts as a hijacking; "fresh" makes each low score cost a new pair (its scores are a
subset of the local ones).

The client raises an alarm when most of the last ``window`` scores are below ``threshold``
(``decision = "vote"``, ours; ``"mean"``: when their mean is) and, with ``action = "stop"``, stops
training there; the attacker keeps what it saw until then.

Calibration (benchmarks/splitguard_calibration.py; results/reference/splitguard_calibration.txt),
at the default experiment's scale: Fashion-MNIST, LeNet cut at depth 1, 55,000 private images,
3 epochs of batches of 64 (2,580 steps), Adam 2e-3 amsgrad; per setting 20 honest runs to the
end and 20 FSHA runs (quick.toml's entry) to 300 steps, every score recorded once (flag mode) and
each rule judged offline by `first_alarm`, the monitor's own decision:

* The toy-scale rule (local, 3 of 5 < 0.5; chosen on digits, 600 images, 95 steps, where honest
  scores were ≥ 0.64 but for isolated dips and FSHA's stayed in 0.18–0.46) raised false alarms
  in 2/20 honest runs at p_fake 0.1 (steps 1881, 2082) and 17/20 at p_fake 0.2 (from step 144).
* Honest scores are near 1 but fall below 0.5 for 2–3% of fake batches at p_fake 0.1 (7–8% at
  0.2), in clusters; FSHA's are below 0.4 for 75% and below 0.5 for 88%.
* Defaults: p_fake 0.1, start 10, "fresh", 4 of 7 < 0.4. On seeds 0–19: 0/20 honest false
  alarms (exact one-sided 95% upper bound of the rate: 0.139); FSHA detected 20/20 at steps
  44–122 (median 72). Held-out seeds 20–39: 0/20 false alarms (lowest honest critical value
  0.758), FSHA 20/20 at steps 35–83 (median 59); all 40: false-alarm rate ≤ 0.072, detection
  rate ≥ 0.928 (95%). The toy-scale rule on the same 40 seeds: 3/40 false alarms.
  The rule was chosen as the earliest-detecting one (median step, then latest) whose threshold
  is at least 0.25 below every honest run's lowest critical value (the threshold above which that
  run would have alarmed; here 0.685; 4 of 6 ties with it on both sets of seeds). Rules closer
  to the honest runs detect a little earlier (fresh, 3 of 5 < 0.4: median 57.5, but only 0.15
  below two honest runs), and the p_fake 0.2 runs show how heavy the honest tail is (stretches
  of low scores, critical values down to 0.06), so the margin is worth ~15 steps.
* p_fake 0.1, not 0.2: at 0.2 no rule keeps even 0.1 of margin while detecting FSHA, and the fake
  batches cost more accuracy.

Removes no capability: it detects and stops. Costs: fewer client updates (the fake batches) and
random-label batches in the honest server's training, so ``test_acc`` drops (the scale above,
paired over 40 seeds: 0.869 → 0.824 at p_fake 0.1, −0.0452 [−0.0509, −0.0395]; over 20 seeds
0.807 at 0.2); a false alarm against an honest server stops its training early (the matrix's
honest cells measure the false-alarm rate: ``sg_alarm``). ``p_fake = 0`` is the identity (the
`none` protocol exactly).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..params import check_choice, check_positive_float, check_positive_int
from ..protocol.train import SplitSetup
from .base import Defense, register_defense


class _Running:
    """Sum of vectors and of their norms: means without keeping every gradient."""

    def __init__(self) -> None:
        self.n, self.sum, self.norms = 0, None, 0.0

    def add(self, v: torch.Tensor) -> None:
        self.n += 1
        self.sum = v.clone() if self.sum is None else self.sum + v
        self.norms += float(v.norm())

    def mean(self) -> torch.Tensor:
        return self.sum / self.n

    def mean_norm(self) -> float:
        return self.norms / self.n


def _angle(u: torch.Tensor, v: torch.Tensor) -> float:
    cos = float(torch.dot(u, v) / (u.norm() * v.norm()).clamp_min(1e-300))
    return math.acos(max(-1.0, min(1.0, cos)))


def splitguard_score(fake: _Running, r1: _Running, r2: _Running, alpha: float = 5.0, beta: float = 2.0) -> float:
    """The SplitGuard score in [0, 1] (authors' formula); high: the fake batches look different."""
    r_mean, r_norm = (r1.mean() + r2.mean()) / 2, (r1.mean_norm() + r2.mean_norm()) / 2
    d_fr, d_rr = abs(fake.mean_norm() - r_norm), abs(r1.mean_norm() - r2.mean_norm())
    div = d_fr + d_rr
    s = 0.0 if div == 0 else (_angle(fake.mean(), r_mean) * d_fr - _angle(r1.mean(), r2.mean()) * d_rr) / div
    return (1.0 / (1.0 + math.exp(-alpha * s))) ** beta


def alarm(scores: list[float], threshold: float, window: int, decision: str) -> bool:
    """Whether the decision rule fires on a score sequence, judged at its last score."""
    recent = scores[-window:]
    if decision == "vote":  # most of the last `window` scores below the threshold
        return sum(x < threshold for x in recent) > window // 2
    # "mean": the mean of the last `window` scores below the threshold
    return len(recent) == window and sum(recent) / len(recent) < threshold


def first_alarm(scores: list[float], steps: list[int], threshold: float, window: int, decision: str) -> int | None:
    """The step at which a monitor with this rule raises its alarm, from the scores it recorded
    (``scores``/``score_steps``); None: never. Offline, so candidate rules need no new training run,
    and exactly the online monitor's decision (same function, tested)."""
    for i in range(len(scores)):
        if alarm(scores[max(0, i + 1 - window):i + 1], threshold, window, decision):
            return steps[i]
    return None


class SplitGuardMonitor:
    """The client-side state of one training run (protocol.ClientMonitor)."""

    def __init__(self, d: "SplitGuard", num_classes: int, gen: torch.Generator) -> None:
        self.d, self.k, self.gen = d, num_classes, gen
        self.stop = False
        self.fake, self.r1, self.r2 = _Running(), _Running(), _Running()
        self.last_regular: list[torch.Tensor] = []  # the two most recent regular gradients ("local", "fresh")
        self.scores: list[float] = []
        self.score_steps: list[int] = []
        self.fake_steps: list[int] = []  # every fake batch from `start` on, scored or not
        self.detected_at: int | None = None

    def labels(self, y: torch.Tensor, step: int) -> tuple[torch.Tensor, bool]:
        if step < self.d.start or float(torch.rand((), generator=self.gen)) >= self.d.p_fake:
            return y, False
        shift = torch.randint(1, self.k, tuple(y.shape), generator=self.gen).to(y.device)
        return (y + shift) % self.k, True  # every label wrong, uniformly among the wrong classes

    def observe(self, step: int, grad: torch.Tensor, client: nn.Module, fake: bool) -> None:
        if step < self.d.start:
            return
        first = next((p for p in client.parameters() if p.grad is not None), None)
        v = (first.grad if first is not None else grad.sum(0)).detach().flatten().double().cpu()
        if not fake:
            (self.r1 if float(torch.rand((), generator=self.gen)) < 0.5 else self.r2).add(v)
            self.last_regular = [*self.last_regular[-1:], v]
            return
        self.fake.add(v)
        self.fake_steps.append(step)
        if self.d.reference in ("fresh", "local"):  # this fake batch against the two regular batches just before it
            if len(self.last_regular) < 2:
                return
            f, r1, r2 = _Running(), _Running(), _Running()
            f.add(v), r1.add(self.last_regular[-1]), r2.add(self.last_regular[-2])
            if self.d.reference == "fresh":  # each regular batch in one score at most
                self.last_regular = []
        elif self.r1.n == 0 or self.r2.n == 0:
            return
        else:  # the authors' code: every fake batch so far against every regular batch, split at random
            f, r1, r2 = self.fake, self.r1, self.r2
        self.scores.append(splitguard_score(f, r1, r2, self.d.alpha, self.d.beta))
        self.score_steps.append(step)
        if self.detected_at is None and alarm(self.scores, self.d.threshold, self.d.window, self.d.decision):
            self.detected_at = step
            self.stop = self.d.action == "stop"


@register_defense
class SplitGuard(Defense):
    name = "splitguard"
    setups = ("vanilla",)
    covers = "the client's training against a hijacking server (fake-label batches: detect, then stop)"
    owns = frozenset({"client_monitor"})  # one monitor per run
    paper = "Erdogan, Küpçü, Çiçek, WPES 2022: SplitGuard detects training hijacking with fake-label batches"

    def __init__(self, p_fake: float = 0.1, start: int = 10, threshold: float = 0.4, window: int = 7,
                 decision: str = "vote", reference: str = "fresh", alpha: float = 5.0, beta: float = 2.0,
                 action: str = "stop", **rest: Any) -> None:
        super().__init__(**rest)
        self.p_fake = check_positive_float("p_fake", p_fake, allow_zero=True)
        if self.p_fake > 1:
            raise ValueError(f"p_fake must be a probability in [0, 1], got {p_fake!r}")
        self.start = check_positive_int("start", start, minimum=0)
        self.threshold = check_positive_float("threshold", threshold, allow_zero=True)
        if self.threshold > 1:
            raise ValueError(f"threshold must be in [0, 1] (the score's range), got {threshold!r}")
        self.window = check_positive_int("window", window)
        self.decision = check_choice("decision", decision, ("vote", "mean"))
        self.reference = check_choice("reference", reference, ("fresh", "local", "all"))
        self.alpha = check_positive_float("alpha", alpha)
        self.beta = check_positive_float("beta", beta)
        self.action = check_choice("action", action, ("stop", "flag"))
        self.monitor: SplitGuardMonitor | None = None

    def params(self) -> dict[str, Any]:
        return {"p_fake": self.p_fake, "start": self.start, "threshold": self.threshold, "window": self.window,
                "decision": self.decision, "reference": self.reference, "alpha": self.alpha, "beta": self.beta,
                "action": self.action}

    def apply(self, setup: SplitSetup, generator: torch.Generator) -> SplitSetup:
        if setup.scenario.setup != "vanilla":
            raise ValueError(f"splitguard needs the vanilla setup (the server computes the loss from the labels "
                             f"the client sends), not {setup.scenario.setup!r}")
        self.monitor = None
        if self.p_fake == 0:  # strength zero: no fake batch, nothing to compare, the plain protocol
            return setup
        model = setup.model
        was = model.training
        model.eval()
        with torch.no_grad():
            k = int(model(torch.zeros(1, *setup.input_shape)).shape[1])
        model.train(was)
        if k < 2:
            raise ValueError("splitguard needs at least two classes to send wrong labels")
        own = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        self.monitor = SplitGuardMonitor(self, k, own)  # one monitor per training run: apply() again for another
        return setup.replace(client_monitor=self.monitor)

    def report(self) -> dict[str, Any]:
        m = self.monitor
        if m is None:
            return {"sg_fake_batches": 0, "sg_alarm": 0, "sg_detected_at": None}
        s = m.scores
        return {"sg_fake_batches": m.fake.n, "sg_alarm": int(m.detected_at is not None),
                "sg_detected_at": m.detected_at, "sg_scores": len(s), "sg_score_last": s[-1] if s else None,
                "sg_score_mean": sum(s) / len(s) if s else None,
                "sg_below_frac": sum(x < self.threshold for x in s) / len(s) if s else None}
