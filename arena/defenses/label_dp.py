"""`label-dp`: randomized response on the training labels, once, before training (label DP).

Paper: B. Ghazi, N. Golowich, R. Kumar, P. Manurangsi, C. Zhang, "Deep Learning with Label
Differential Privacy", NeurIPS 2021 (google-research/label-dp). Mechanism RR_ε: each training
label is kept with probability e^ε/(e^ε + K − 1) and otherwise replaced by one of the other K − 1
classes uniformly; the label owner then trains on the randomized labels only. Every label is
randomized exactly once, before training, from the defense's own stream (`SplitSetup.label_transform`,
the "labels" stream of the run): re-drawing it every epoch would hand the server several independent
noisy copies of each label, whose majority gives the label back (averaging), and the ε below would
no longer hold.

Threat model and what the server still sees: everything the undefended protocol sends (``removes``
is empty), computed from the randomized labels. In u-shaped and label-only the cut gradients and
tail gradients reflect the noisy label of each example, so Li et al.'s attacks recover the *noisy*
labels; the matrix scores them against the TRUE labels (the truth and ``KNOWN_LABELS`` keep the real
ones: the private information is the true label), so their accuracy falls as ε falls. In vanilla
the labels themselves travel to the server in clear, and they are the randomized ones: RR protects
each label from whoever receives it, so the defense applies there too (a label-inference attack on a
vanilla server reads the noisy labels). Test accuracy is measured on the true test labels with the
model trained on noisy ones: that is the defense's utility cost. At test time nothing changes.

Guarantee (`report()`): ``epsilon_labels`` = ε, pure (δ = 0), for each training example's label
(label DP: neighbouring datasets differ in one example's label), with ``epsilon_labels_scope``
saying what it does not cover (the inputs, the activations and the client's weights, which still
train on the raw inputs). By post-processing, everything computed from the randomized labels
(gradients, weights, the transcript) is ε-label-DP, however many epochs run. It is not comparable
with `noise`'s ``epsilon_activations`` or `dp-sgd`'s ``epsilon_weights`` (other objects).

RR-with-prior (Ghazi et al.'s better mechanism, LP-2ST) is not implemented: it needs a prior per
example from a model trained on the inputs in a first stage. In label-only the label owner has no
inputs at all; in u-shaped the first stage would be a second split-training run on half the data,
exposed to the server like the first (its cut gradients leak the first half's RR labels), with the
data partition, stage budgets and the prior's model to choose; a class-frequency prior is the same
for every example and on balanced data reduces to RR on an arbitrary subset of classes. Not honest
to fake, so only RR.

Parameter: ``epsilon`` > 0; ``epsilon = inf`` is the identity (the setup unchanged, no random
numbers drawn, bit for bit `none`). The flip probability for K classes is (K − 1)/(e^ε + K − 1):
for K = 10, ε = 1: 0.76, ε = 2: 0.55, ε = 4: 0.16, ε = 8: 0.003.

Measured on Fashion-MNIST (u-shaped LeNet, depth 1, 10k training images, 3 epochs at lr 2e-3, the
full test set; label accuracy against the true labels, cosine-label / unsplit-label, then test
accuracy; none: 1.00 / 1.00 / 0.785): ε = 2 (seeds 0–2) 0.23 / 0.44 / 0.749; ε = 4 (seeds 0–2)
0.66 / 0.87 / 0.787; seed 0 only: ε = 1 0.15 / 0.20 / 0.610, ε = 8 1.00 / 1.00 / 0.789.
`unsplit-label` reads the label the owner trained on, so it lands on RR's keep probability
(0.45 at ε = 2, 0.86 at ε = 4): the randomization, not the gradients, is what protects here.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from ..protocol.train import SplitSetup
from .base import Defense, register_defense

SCOPE = ("each training example's label (label DP, Ghazi et al. 2021): not its input, the activations "
         "or the client's weights")
RELATION = "neighbouring datasets differ in one example's label; pure ε (δ = 0), once for the whole run"


def check_epsilon(value: Any) -> float:
    """ε > 0, where inf means no randomization."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"epsilon must be a number > 0 (inf: no randomization), got {value!r}") from None
    if isinstance(value, bool) or math.isnan(v) or v <= 0:
        raise ValueError(f"epsilon must be a number > 0 (inf: no randomization), got {value!r}")
    return v


def keep_probability(epsilon: float, num_classes: int) -> float:
    """RR_ε's probability of keeping the true label: e^ε/(e^ε + K − 1), computed without overflow."""
    return 1.0 / (1.0 + (num_classes - 1) * math.exp(-epsilon))


def randomized_response(y: torch.Tensor, num_classes: int, epsilon: float, gen: torch.Generator) -> torch.Tensor:
    """RR_ε on integer labels: keep each with `keep_probability`, else one of the other K − 1 uniformly."""
    if num_classes < 2:
        raise ValueError(f"randomized response needs at least 2 classes, got {num_classes}")
    n, dev = len(y), gen.device
    keep = torch.rand(n, generator=gen, device=dev) < keep_probability(epsilon, num_classes)
    shift = torch.randint(1, num_classes, (n,), generator=gen, device=dev)  # 1..K-1: never the true label
    other = (y.to(dev) + shift) % num_classes
    return torch.where(keep, y.to(dev), other).to(device=y.device, dtype=y.dtype)


@register_defense
class LabelDP(Defense):
    name = "label-dp"
    paper = "Ghazi et al. Deep Learning with Label Differential Privacy. NeurIPS 2021 (randomized response)"
    covers = "each training example's label (randomized once before training; label DP)"

    def __init__(self, epsilon: float = 2.0, **rest: Any) -> None:
        super().__init__(**rest)
        self.epsilon = check_epsilon(epsilon)
        self._after: dict[str, Any] = {}

    def params(self) -> dict[str, Any]:
        return {"epsilon": self.epsilon}

    def transform(self, y: torch.Tensor, num_classes: int, gen: torch.Generator) -> torch.Tensor:
        """The label transform: RR_ε once over the whole training set (the label owner, before training)."""
        noisy = randomized_response(y, num_classes, self.epsilon, gen)
        self._after = {"rr_keep_probability": keep_probability(self.epsilon, num_classes),
                       "labels_flipped": float((noisy != y).float().mean()) if len(y) else 0.0}
        return noisy

    def apply(self, setup: SplitSetup, generator: torch.Generator) -> SplitSetup:
        self._after = {}
        if math.isinf(self.epsilon):
            return setup  # the identity: no randomization, no draws
        prev = setup.label_transform
        if prev is None:
            return setup.replace(label_transform=self.transform)
        return setup.replace(label_transform=lambda y, k, g: self.transform(prev(y, k, g), k, g))

    def report(self) -> dict[str, Any]:
        return {"epsilon_labels": self.epsilon, "epsilon_labels_scope": SCOPE,
                "epsilon_labels_relation": RELATION, "delta_labels": 0.0} | self._after
