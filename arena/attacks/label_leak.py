"""Label leakage from the gradient returned at the cut: norm and direction (cosine) scoring.

Paper: O. Li, J. Sun, X. Yang, W. Gao, H. Zhang, J. Xie, V. Smith, C. Wang, "Label leakage and
protection in two-party split learning", ICLR 2022. Setup: the label party holds the labels and the
top layers (our ``u-shaped`` setup; ``label-only`` works too); the server receives, per example,
the gradient of the loss with respect to what it sent. Both attacks read only that gradient
(CUT_GRADIENT) and the sample ids; the scorer computes ``leak_auc`` and ``label_acc``.

- ``norm-label`` (CUT_GRADIENT only): score ‖g_i‖₂. Li et al.'s attack is binary: in an
  imbalanced binary task the rare positive class gets larger gradients. That rule is the attack's
  direction, fixed before it sees anything: **the larger the norm, the more likely positive**
  (scores are the norms themselves; the predicted positives are the upper 2-means cluster). The
  scorer and the report never flip it, so where the rule is wrong (e.g. an easy class whose
  examples end training with small gradients) the AUC is below 0.5 and shown as such. On K-class
  data the attacker asks the one-vs-rest question "is the label ``positive``?" (a parameter); the
  output carries ``positive_class`` so the scorer compares with that binary truth (and records
  ``n_positive``). Predicted labels split the norms in two by 1-D 2-means (no label knowledge
  needed). On balanced multi-class data the norm carries little class information (the measured
  AUC says how little). The targets are every example of the window: ``record_steps`` batches of
  the transcript (one batch at ``record_steps = 1``, about 1/classes of them positive).
- ``cosine-label`` (CUT_GRADIENT + KNOWN_LABELS): Li et al.'s direction score: the cosine of g_i
  with the gradient of a known example of a class. The attacker is assumed to know the labels of
  ``known_per_class`` observed examples per class (Li et al.: one known positive); the view hands
  exactly those over (the first observed ones of each class) and the attack averages their unit
  gradients into one reference per class. Scores are N×K cosines (classes without a known example
  score −2), labels their argmax; the known examples are left out of the output.
  ``sign = "abs"`` scores |cos| instead (known examples of one class sign-aligned before averaging):
  the attacker who knows `max-norm` (Kerckhoffs), whose scalar N(0,1) factor 1 + σξ flips the sign
  of whole rows, so a flipped row's signed cosine points at no class. Undefended it is a little
  weaker (a class and its opposite direction are no longer told apart); on a binary task, whose two
  classes' gradients point in opposite directions, it carries nothing.

The cross-entropy is a batch mean, so each example's gradient is scaled by 1/batch; the server
knows each batch's size and undoes the scaling before scoring norms.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..records import AttackOutput, Capability
from ..protocol.view import ServerView
from ..params import check_choice, check_positive_int
from .base import Attack, register_attack

WINDOWS = ("before", "after")
SIGNS = ("signed", "abs")


def cut_gradients(view: ServerView, window: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, per-example gradients × their batch size, flattened) over a transcript window."""
    ids, g = view.stacked("cut_grad", window)
    sizes = torch.cat([torch.full((len(o.ids),), float(len(o.ids)))
                       for o in view.observations(window) if o.cut_grad is not None])
    return ids, g.flatten(1).double() * sizes[:, None]


def known_examples(view: ServerView, window: str, ids: torch.Tensor, per_class: int,
                   attack: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The view's known examples among ``ids``: (positions in ``ids``, their labels). Raises if the
    view did not grant KNOWN_LABELS or granted more than ``per_class`` per class (the threat model)."""
    if view.known_labels is None or window not in view.known_labels:
        raise RuntimeError(f"{attack} needs known labels; the view did not grant them")
    known_ids, known_y = view.known_labels[window]
    if len(known_ids) > per_class * view.num_classes:
        raise RuntimeError("the view granted more known labels than this attack's threat model allows")
    pos = {int(i): k for k, i in enumerate(ids.tolist())}
    missing = [int(i) for i in known_ids.tolist() if int(i) not in pos]
    if missing:
        raise RuntimeError(f"{attack}: {len(missing)} known example(s) are not among the observations used")
    return torch.tensor([pos[int(i)] for i in known_ids.tolist()], dtype=torch.long), known_y.long().clone()


def two_means_threshold(s: torch.Tensor, iterations: int = 50) -> float:
    """The 1-D 2-means split point of scores ``s`` (midpoint of the two cluster centres)."""
    lo, hi = float(s.min()), float(s.max())
    if lo == hi:
        return hi
    for _ in range(iterations):
        t = (lo + hi) / 2
        a, b = s[s <= t], s[s > t]
        if len(a) == 0 or len(b) == 0:
            break
        lo, hi = float(a.mean()), float(b.mean())
    return (lo + hi) / 2


@register_attack
class NormLabel(Attack):
    name = "norm-label"
    kind = "label"
    requires = frozenset({Capability.CUT_GRADIENT})
    default_setup = "u-shaped"
    paper = "Li et al. Label leakage and protection in two-party split learning. ICLR 2022 (norm scoring)"

    def __init__(self, positive: int = 1, window: str = "after", **rest: Any) -> None:
        super().__init__(**rest)
        self.positive = check_positive_int("positive", positive, minimum=0)
        self.window = check_choice("window", window, WINDOWS)

    def params(self) -> dict[str, Any]:
        return {"positive": self.positive, "window": self.window}

    def run(self, view: ServerView, generator: torch.Generator) -> AttackOutput:
        if self.positive >= view.num_classes:
            raise ValueError(f"positive={self.positive} but the task has {view.num_classes} classes")
        ids, g = cut_gradients(view, self.window)
        norms = g.norm(dim=1)  # Li et al.'s rule: positives have the larger norms (score = norm, never flipped)
        labels = (norms > two_means_threshold(norms)).long()
        return AttackOutput(ids=ids, labels=labels, label_scores=norms.float(), positive_class=self.positive)


@register_attack
class CosineLabel(Attack):
    name = "cosine-label"
    kind = "label"
    requires = frozenset({Capability.CUT_GRADIENT, Capability.KNOWN_LABELS})
    default_setup = "u-shaped"
    paper = "Li et al. Label leakage and protection in two-party split learning. ICLR 2022 (direction scoring)"

    def __init__(self, known_per_class: int = 1, window: str = "after", sign: str = "signed", **rest: Any) -> None:
        super().__init__(**rest)
        self.known_per_class = check_positive_int("known_per_class", known_per_class)  # read by the view builder
        self.window = check_choice("window", window, WINDOWS)
        self.sign = check_choice("sign", sign, SIGNS)

    def params(self) -> dict[str, Any]:
        out = {"known_per_class": self.known_per_class, "window": self.window}
        return out | ({"sign": self.sign} if self.sign != "signed" else {})  # older cells keep their keys

    def run(self, view: ServerView, generator: torch.Generator) -> AttackOutput:
        ids, g = cut_gradients(view, self.window)
        if view.known_labels is None or self.window not in view.known_labels:
            raise RuntimeError("cosine-label needs known labels; the view did not grant them")
        known_ids, known_y = view.known_labels[self.window]
        if len(known_ids) > self.known_per_class * view.num_classes:
            raise RuntimeError("the view granted more known labels than this attack's threat model allows")
        unit = F.normalize(g, dim=1)
        pos = {int(i): k for k, i in enumerate(ids.tolist())}
        refs = torch.zeros(view.num_classes, g.shape[1], dtype=unit.dtype)
        have = torch.zeros(view.num_classes, dtype=torch.bool)
        for i, c in zip(known_ids.tolist(), known_y.tolist()):
            u = unit[pos[i]]
            if self.sign == "abs" and float(refs[c] @ u) < 0:
                u = -u  # max-norm may have flipped this one: align it with the class's others
            refs[c] += u
            have[c] = True
        scores = unit @ F.normalize(refs, dim=1).T
        if self.sign == "abs":  # Kerckhoffs vs max-norm: its scalar noise flips whole rows, |cos| ignores that
            scores = scores.abs()
        scores[:, ~have] = -2.0  # below any cosine: no known example of that class
        known_set = set(known_ids.tolist())
        keep = torch.tensor([i not in known_set for i in ids.tolist()], dtype=torch.bool)
        s = scores[keep].float()
        return AttackOutput(ids=ids[keep], labels=s.argmax(1), label_scores=s,
                            extra={"n_known": float(len(known_ids))})
