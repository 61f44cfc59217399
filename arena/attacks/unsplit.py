"""UnSplit model inversion and model stealing.

Paper: E. Erdogan, A. Küpçü, A. E. Çiçek, "UnSplit: Data-Oblivious Model Inversion, Model Stealing,
and Label Inference Attacks Against Split Learning", WPES 2022 (arXiv:2108.09033); reference values
in ALGORITHMS.md. The label-inference attack of the same paper is in unsplit_label.py.

Threat model: an honest-but-curious server in the vanilla setup (Fig. 1a). It sees the smashed data
the client sends and knows the client part's architecture, never its weights; it needs no auxiliary
data and no query access. Targets are the private training samples whose smashed data the server
observed in a transcript window (``window="before"``: the first recorded steps, client at its
initialisation; ``"after"``: the last steps, trained client). The paper's targets are the first test
image of each class; ours are the ones the protocol actually exposes.

Algorithm (paper Alg. 1 / authors' code): a random clone f̃ of the client part and input estimates x̂
(constant 0.5). Each round: ``input_steps`` Adam steps on x̂ minimising
``MSE(f̃(x̂), f(x)) + λ_TV·TV(x̂) + λ_2·mean(x̂²)`` (TV = mean squared neighbour differences along H
and W, as in the authors' code), then ``clone_steps`` Adam steps on f̃'s parameters minimising the MSE.
Adam lr 1e-3 with amsgrad; λ_TV 0.1 for depths ≤ 3 and 1 deeper (paper §5.1); λ_2 = 1.

Our choices, each a parameter:
- Batched: all targets are one tensor with one Adam (element-wise, so each x̂ gets exactly the update
  it would get alone: the loss is the mean of per-target losses) and *one shared clone* fitted to
  all targets jointly — the threat model has one client model. The authors attack one image at a
  time (their clone carries over from image to image); ``benchmarks/unsplit_paper.py`` times both.
- Box: x̂ is projected onto the pixel range [0,1] after every step (the authors leave it free).
- Gauge (``rescale``): smashed data fix x̂ only up to a global affine map — the clone's first
  layer absorbs any scale and offset (x̂ → a·x̂ + b, W → W/a). The L2 prior then drifts x̂ towards
  dark, low-contrast images round after round; that, not a failure to recover the shapes, is why the
  authors' reconstructions are dim (ALGORITHMS.md). At the end we fix the gauge with the one thing
  the attacker knows about pixels, their range: ``"image"`` maps each x̂ to [0,1] by its min and max
  (the authors' own ``normalize``, which they apply to their CIFAR results), ``"batch"`` applies one
  map to all targets (its 0.1%/99.9% quantiles), ``"none"`` returns x̂ as optimised. For the image
  and batch modes the batch map is also folded into the clone's first layer (exact for a linear or
  unpadded conv first layer), so the clone expects real-range inputs, as the real client does.
  Then, whatever the mode, ``polish_steps`` clone steps fit the clone to the final estimates (Eq. 2
  once more; +2–4 points of clone accuracy on Fashion-MNIST at depths 1–2, neutral on MNIST).
- Dead units (``relu_slope``): a clone ReLU that is off on every target gets no gradient and never
  comes back, and its share of the smashed data is never fitted (measured: 3 of 3 seeds lost a
  depth-1 channel on Fashion-MNIST, clone accuracy 47–81%). Forward hooks give the clone's ReLUs a
  gradient of ``relu_slope`` below zero during the attack; forward values, hence the objective, are
  unchanged (``relu_slope=0``: plain gradients).
- Early stop: after each round the data loss (the clone-step MSE) is compared with its value
  ``patience`` rounds earlier; a relative improvement below ``tol`` ends the attack (``tol=0``: run
  all ``rounds``). One host sync per round, none inside the steps. On CPU the input steps run
  without oneDNN, whose input-gradient kernel for one-channel images is ~4× slower than ATen's.

Known limit: from depth 3 on (two conv layers in the client part) the joint problem has wrong basins
the clone's random start falls into — on Fashion-MNIST, 8 clone seeds at depth 3 gave MSE
0.074–0.171 and clone accuracy 10–69% after 15 rounds, with the data fit only loosely tracking the
quality (so restarts picked by fit did not help; neither did stronger TV, coarse-to-fine or smooth
starts). The cell's seed picks the start; report several seeds for deep splits.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..records import AttackOutput, Capability
from ..protocol.view import ServerView
from .unsplit_solver import (RESCALES, InversionConfig, InversionResult, default_lambda_tv, invert, rescale,
                             total_variation)
from ..params import check_choice, check_positive_float, check_positive_int
from .base import Attack, register_attack

__all__ = ["UnSplit", "InversionConfig", "InversionResult", "default_lambda_tv", "invert", "rescale",
           "total_variation"]

WINDOWS = ("before", "after")


@register_attack
class UnSplit(Attack):
    name = "unsplit"
    kind = "inversion"  # it also returns a clone: the scorer adds clone_acc (model stealing)
    requires = frozenset({Capability.SMASHED})  # the architecture is always granted
    default_setup = "vanilla"
    paper = "UnSplit (Erdogan et al. 2022) Alg. 1: model inversion + stealing"

    PARAMS = ("rounds", "input_steps", "clone_steps", "lr", "lambda_tv", "lambda_l2", "window", "max_targets",
              "tol", "patience", "rescale", "relu_slope", "polish_steps")

    def __init__(self, rounds: int = 50, input_steps: int = 100, clone_steps: int = 100, lr: float = 1e-3,
                 lambda_tv: float | None = None, lambda_l2: float = 1.0, window: str = "after",
                 max_targets: int | None = 64, tol: float = 2e-2, patience: int = 5, rescale: str = "image",
                 relu_slope: float = 0.01, polish_steps: int = 300, **rest: Any) -> None:
        super().__init__(**rest)
        self.rounds = check_positive_int("rounds", rounds)
        self.input_steps = check_positive_int("input_steps", input_steps)
        self.clone_steps = check_positive_int("clone_steps", clone_steps, minimum=0)
        self.lr = check_positive_float("lr", lr)
        self.lambda_tv = None if lambda_tv is None else check_positive_float("lambda_tv", lambda_tv, allow_zero=True)
        self.lambda_l2 = check_positive_float("lambda_l2", lambda_l2, allow_zero=True)
        self.window = check_choice("window", window, WINDOWS)
        self.max_targets = None if max_targets is None else check_positive_int("max_targets", max_targets)
        self.tol = check_positive_float("tol", tol, allow_zero=True)
        self.patience = check_positive_int("patience", patience)
        self.rescale = check_choice("rescale", rescale, RESCALES)
        self.relu_slope = check_positive_float("relu_slope", relu_slope, allow_zero=True)
        self.polish_steps = check_positive_int("polish_steps", polish_steps, minimum=0)

    def params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.PARAMS}

    def config(self, depth: int) -> InversionConfig:
        tv = default_lambda_tv(depth) if self.lambda_tv is None else self.lambda_tv
        return InversionConfig(self.rounds, self.input_steps, self.clone_steps, self.lr, tv, self.lambda_l2,
                               self.tol, self.patience, self.rescale, self.relu_slope, self.polish_steps)

    def targets(self, view: ServerView) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, smashed) of the targets: the first ``max_targets`` observed in the window."""
        ids, smashed = view.stacked("smashed", self.window)
        if self.max_targets is not None:
            ids, smashed = ids[: self.max_targets], smashed[: self.max_targets]
        return ids, smashed.float()

    @staticmethod
    def clone_from(view: ServerView, seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the clone's random initialisation comes from the cell's seed
            return view.client_arch().to(view.device)

    def reconstruct(self, view: ServerView, generator: torch.Generator) -> tuple[torch.Tensor, InversionResult]:
        """Run the attack; returns the target ids and the full result (raw x̂ included)."""
        ids, smashed = self.targets(view)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        clone = self.clone_from(view, seed)
        return ids, invert(clone, smashed.to(view.device), view.input_shape, self.config(view.client_depth))

    def output(self, ids: torch.Tensor, res: InversionResult) -> AttackOutput:
        clone = res.clone.eval()
        for p in clone.parameters():
            p.requires_grad_(False)
        return AttackOutput(ids=ids, reconstructions=res.reconstructions.cpu(), clone=clone,
                            extra={"rounds_run": res.rounds_run, "fit_loss": res.fit_loss,
                                   "attack_images_per_s": len(ids) / max(res.seconds, 1e-9)})

    def run(self, view: ServerView, generator: torch.Generator) -> AttackOutput:
        return self.output(*self.reconstruct(view, generator))
