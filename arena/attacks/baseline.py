"""Baselines: what an attacker gets without using anything the protocol sends it.

An attack result means something only where it beats what a server that ignores every message
would get. These "attacks" are those reference points; each names, in ``baseline_of``, the attack
kinds whose headline metric it is the baseline of, and the report pairs each attack with it, seed by
seed (an attack that does not beat its baseline undefended is flagged "under budget", and no
defense is credited with lowering it). They require no capability, so no defense can block them:
a baseline exists under every defense, HE included.

- ``mean-image`` (inversion, hijacking: SSIM) reconstructs every target as a constant image (mid-grey
  0.5, or black). It reads only which releases were targets: the observation handles, which every
  transcript holds whatever the defense (an all-black image already scores MSE ≈ 0.11 on MNIST).
- ``random-front`` (model stealing: clone accuracy) returns a randomly initialised client part: the
  architecture, which every server is granted, with fresh weights. The scorer composes it with the
  real server part (and tail), exactly as it scores a stolen clone (`arena.scoring.score.clone_accuracy`),
  so its clone accuracy is what the server's own trained layers give a stealer for free.

Label inference needs no baseline attack: its chance lines are per-seed baselines already. Label
accuracy's is ``label_chance``, the majority-class share of the very targets the attack labelled (no
constant guess does better, and a prior-guessing attack would have to estimate that prior);
leak AUC's is 0.5, what any score that ignores the messages gets in expectation.
"""
from __future__ import annotations

from typing import Any

import torch

from ..records import AttackOutput
from ..protocol.view import ServerView
from ..params import check_choice
from .base import Attack, register_attack


@register_attack
class MeanImage(Attack):
    name = "mean-image"
    kind = "baseline"
    baseline_of = ("inversion", "hijack")
    requires = frozenset()  # only the target handles, which every transcript holds under every defense
    paper = "baseline (no paper): constant reconstruction"

    def __init__(self, value: str = "grey", window: str = "after", **rest: Any) -> None:
        super().__init__(**rest)
        self.value = check_choice("value", value, ("grey", "black"))
        self.window = check_choice("window", window, ("before", "after"))

    def params(self) -> dict[str, Any]:
        return {"value": self.value, "window": self.window}

    def run(self, view: ServerView, generator: torch.Generator) -> AttackOutput:
        ids = [o.ids for o in view.observations(self.window) if o.ids is not None]
        if not ids:
            raise ValueError(f"no release observed in window {self.window!r}: nothing to reconstruct")
        ids = torch.cat(ids)
        fill = 0.5 if self.value == "grey" else 0.0
        recon = torch.full((len(ids), *view.input_shape), fill)
        return AttackOutput(ids=ids, reconstructions=recon)


@register_attack
class RandomFront(Attack):
    name = "random-front"
    kind = "baseline"
    baseline_of = ("stealing",)
    requires = frozenset()  # the architecture only, which every attack is granted
    paper = "baseline (no paper): randomly initialised client part as the stolen clone"

    def run(self, view: ServerView, generator: torch.Generator) -> AttackOutput:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the random front comes from the cell's seed, like UnSplit's clone start
            clone = view.client_arch().to(view.device).eval()
        for p in clone.parameters():
            p.requires_grad_(False)
        return AttackOutput(clone=clone)
