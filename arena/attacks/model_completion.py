"""Model completion: label inference from the server's own features and a few known labels.

Paper: C. Fu, X. Zhang, S. Ji, J. Chen, J. Wu, S. Guo, J. Zhou, A. X. Liu, T. Wang, "Label Inference
Attacks Against Vertical Federated Learning", USENIX Security 2022 (the passive "model completion"
attack; authors' code FuChong-cyber/label-inference-attacks, read, not copied).

Threat model (honest-but-curious server, ``u-shaped`` setup; ``label-only`` works too): the server
keeps its own trained part, whose outputs it sends the label owner (SERVER_OUT: Fu et al.'s "bottom
model" output), and knows the labels of ``known_per_class`` observed examples of each class
(KNOWN_LABELS; Fu et al.: 40 labels in all on CIFAR-10, hence the default 4 per class). It never reads
the cut gradient: it works whatever the label owner does to its gradients. A defense that perturbs the
gradients still changes it, through the features the server part learned from them: that is the
measured effect. A defense that hides the server's output (``he``) blocks it.

The attack completes the server's model with a small inference head (``layers`` BatchNorm → ReLU →
Linear blocks, the last one to the classes, as Fu et al.'s head) trained on the server's outputs of the
window's observations: the known examples labelled, every other observed example unlabelled, with Fu
et al.'s simplified MixMatch: the head's guesses on the unlabelled batch sharpened with temperature
``temperature`` (0.8), labelled and unlabelled examples mixed up with λ ~ Beta(``alpha``, ``alpha``),
λ ← max(λ, 1 − λ), cross-entropy on the labelled part plus ``lambda_u`` (50, ramped up linearly over
the run) × squared error on the unlabelled part, Adam (``lr`` 2e-3, batch ``batch_size`` 16 labelled
+ 16 unlabelled), the authors' weight decay of 0.02·lr per step, and an exponential moving average of
the weights (``ema`` 0.999) that labels the targets. The targets are the window's observed examples
that are not known ones; the output is each one's label and its N×K class probabilities.

What differs from the authors' code, and why: (1) the server part is not fine-tuned, only the head
(as the authors do for Criteo): the server's view holds its part's outputs, and fine-tuning the part
would need SMASHED as well; (2) no data augmentation (the authors' image pipeline has none in its
MixMatch loop either; features cannot be augmented); (3) the mixed batch goes through the head in one
pass, so BatchNorm sees it whole (the authors interleave labelled and unlabelled chunks for the same
purpose); (4) the average warms up as in TensorFlow's ExponentialMovingAverage (decay min(``ema``,
(1 + t)/(10 + t))), since this run is ``steps`` long (default 1000), not the authors' ≥ 5 × 1024 steps,
and a 0.999 average of 1000 steps would still weigh the random initial head by e⁻¹.

Randomness: one seed drawn from the attack's generator drives the head's initialisation, the batches
and the mixup draws. ``steps`` (default 1000) is the run's length, whatever the number of observed
examples: 1-2 s on one idle core. Measured on Fashion-MNIST (LeNet, 10k images, 3 epochs, 464 observed
examples at ``record_steps`` 8, 40 known): label accuracy 0.74 / 0.72 / 0.69 at 300 / 1000 / 3000
steps; the unlabelled term adds nothing measurable there (λ_u = 0 also gives 0.72).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..params import check_choice, check_positive_float, check_positive_int
from ..protocol.view import ServerView
from ..records import AttackOutput, Capability
from .base import Attack, register_attack
from .label_leak import WINDOWS, known_examples


def inference_head(width: int, num_classes: int, layers: int) -> nn.Sequential:
    """Fu et al.'s head: (BatchNorm → ReLU → Linear) × ``layers``; the last Linear maps to the classes."""
    mods: list[nn.Module] = []
    for k in range(layers):
        mods += [nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, num_classes if k == layers - 1 else width)]
    return nn.Sequential(*mods)


def sharpen(p: torch.Tensor, temperature: float) -> torch.Tensor:
    """MixMatch's sharpening: p^(1/T), renormalised over the classes."""
    q = p ** (1.0 / temperature)
    return q / q.sum(dim=1, keepdim=True)


@register_attack
class ModelCompletion(Attack):
    name = "model-completion"
    kind = "label"
    requires = frozenset({Capability.SERVER_OUT, Capability.KNOWN_LABELS})
    default_setup = "u-shaped"
    paper = "Fu et al. Label Inference Attacks Against Vertical Federated Learning. USENIX Security 2022"

    def __init__(self, known_per_class: int = 4, steps: int = 1000, batch_size: int = 16, lr: float = 2e-3,
                 temperature: float = 0.8, alpha: float = 0.75, lambda_u: float = 50.0, ema: float = 0.999,
                 layers: int = 1, window: str = "after", **rest: Any) -> None:
        super().__init__(**rest)
        self.known_per_class = check_positive_int("known_per_class", known_per_class)  # read by the view builder
        self.steps = check_positive_int("steps", steps)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.lr = check_positive_float("lr", lr)
        self.temperature = check_positive_float("temperature", temperature)
        self.alpha = check_positive_float("alpha", alpha)
        self.lambda_u = check_positive_float("lambda_u", lambda_u, allow_zero=True)
        self.ema = check_positive_float("ema", ema, allow_zero=True)
        if self.ema >= 1:
            raise ValueError(f"ema must be a number in [0, 1), got {ema!r}")
        self.layers = check_positive_int("layers", layers)
        self.window = check_choice("window", window, WINDOWS)

    def params(self) -> dict[str, Any]:
        return {"known_per_class": self.known_per_class, "steps": self.steps, "batch_size": self.batch_size,
                "lr": self.lr, "temperature": self.temperature, "alpha": self.alpha, "lambda_u": self.lambda_u,
                "ema": self.ema, "layers": self.layers, "window": self.window}

    def run(self, view: ServerView, generator: torch.Generator) -> AttackOutput:
        ids, h = view.stacked("server_out", self.window)
        h = h.flatten(1).float()
        pos, y_known = known_examples(view, self.window, ids, self.known_per_class, self.name)
        unknown = torch.ones(len(ids), dtype=torch.bool)
        unknown[pos] = False
        if not bool(unknown.any()):
            raise RuntimeError("model-completion: every observed example is a known one; nothing to label")
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the head's initialisation, the batches, the mixup draws
            head = self._fit(h[pos], y_known, h[unknown], view.num_classes)
        with torch.no_grad():
            probs = torch.softmax(head(h[unknown]), dim=1)
        return AttackOutput(ids=ids[unknown], labels=probs.argmax(1), label_scores=probs,
                            extra={"n_known": float(len(pos))})

    def _fit(self, x_l: torch.Tensor, y_l: torch.Tensor, x_u: torch.Tensor, k: int) -> nn.Module:
        """Fu et al.'s simplified MixMatch on the head; returns the averaged head, in eval mode."""
        model = inference_head(x_l.shape[1], k, self.layers)
        avg = inference_head(x_l.shape[1], k, self.layers)
        avg.load_state_dict(model.state_dict())
        for p in avg.parameters():
            p.requires_grad_(False)
        opt = torch.optim.Adam(model.parameters(), lr=self.lr, foreach=True)
        beta = torch.distributions.Beta(torch.tensor(self.alpha), torch.tensor(self.alpha))
        t_l = F.one_hot(y_l, k).float()
        b, n = self.batch_size, self.steps
        # every draw up front (one call each, not one per step): batches, mixup weights, mixing partners
        il, iu = torch.randint(0, len(x_l), (n, b)), torch.randint(0, len(x_u), (n, b))
        lams = beta.sample((n,))
        lams = torch.maximum(lams, 1.0 - lams)  # the mixed example stays closer to its own half (labelled or not)
        partners = torch.argsort(torch.rand(n, 2 * b), dim=1)
        params, avg_params = list(model.parameters()), list(avg.parameters())
        model.train()
        for step in range(n):
            xl, tl, xu = x_l[il[step]], t_l[il[step]], x_u[iu[step]]
            with torch.no_grad():  # guessed labels (no augmentation: one guess per example)
                tu = sharpen(torch.softmax(model(xu), dim=1), self.temperature)
            x, t = torch.cat([xl, xu]), torch.cat([tl, tu])
            lam, perm = float(lams[step]), partners[step]
            x_mix, t_mix = lam * x + (1 - lam) * x[perm], lam * t + (1 - lam) * t[perm]
            logits = model(x_mix)  # one pass: BatchNorm sees the whole mixed batch
            loss_x = -(F.log_softmax(logits[:b], dim=1) * t_mix[:b]).sum(1).mean()
            loss_u = ((torch.softmax(logits[b:], dim=1) - t_mix[b:]) ** 2).mean()
            ramp = (step + 1) / n
            loss = loss_x + self.lambda_u * ramp * loss_u
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                decay = min(self.ema, (1.0 + step) / (10.0 + step))
                torch._foreach_mul_(avg_params, decay)
                torch._foreach_add_(avg_params, params, alpha=1.0 - decay)
                torch._foreach_mul_(params, 1.0 - 0.02 * self.lr)  # the authors' weight decay, with the average
                for ba, bm in zip(avg.buffers(), model.buffers()):
                    ba.copy_(bm)  # BatchNorm statistics: the model's own running estimates
        return avg.eval()
