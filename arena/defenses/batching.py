"""`batching`: the label owner only ever exposes parameter updates aggregated over B examples.

Paper: UnSplit (Erdogan et al. 2022, §4.2 and §5): its label-inference attack compares the label
owner's last-layer parameter gradients with the gradient each candidate label would produce, and
assumes they are per example (SGD with batch size 1); the authors name larger batches as the
obvious mitigation. Li et al. 2022 ("Label leakage and protection in two-party split learning")
show why that is not the end of the story: their norm and direction attacks use the cut-layer
gradient instead.

Mechanism: ``SplitSetup.label_batch = B``; the label owner's parameter gradients the server can
observe (``TAIL_GRADIENTS``, the UnSplit paper's stronger threat model) are means over groups of B
consecutive examples of a batch (`protocol.tail_gradients`). Training is unchanged: the label
owner's update is already the batch mean, so B costs no accuracy here.

What the server still sees: everything — ``removes`` is empty. In particular the gradient the
label owner returns at the cut (``CUT_GRADIENT``) is per example whatever B is (each example's
activation gets its own row of ∂L/∂a), which is exactly why Li et al.'s attacks still work; the
matrix measures it. In the vanilla setup the labels travel in clear and there is no label owner
to batch: the defense declares only the label-only and u-shaped setups, vanilla cells are n/a.

Strength zero: B = 1 (per-example gradients, the undefended protocol) is the identity.
"""
from __future__ import annotations

from typing import Any

import torch

from ..params import check_positive_int
from ..protocol.train import SplitSetup
from .base import Defense, register_defense


@register_defense
class Batching(Defense):
    name = "batching"
    paper = "UnSplit (Erdogan et al. 2022) §5; Li et al. 2022 (cut-gradient label leakage)"
    setups = ("label-only", "u-shaped")
    covers = "the label owner's tail parameter gradients (means over b examples; not the cut gradient)"

    def __init__(self, b: int = 8, **rest: Any) -> None:
        super().__init__(**rest)
        self.b = check_positive_int("b", b)
        self._report: dict[str, Any] = {"label_batch": self.b}

    def params(self) -> dict[str, Any]:
        return {"b": self.b}

    def apply(self, setup: SplitSetup, generator: torch.Generator) -> SplitSetup:
        if self.b == 1:
            return setup
        batch, group = setup.config.batch_size, setup.label_batch * self.b
        if group > batch:
            raise ValueError(f"batching: b={self.b} makes groups of {group}, more than the training batch size "
                             f"{batch}; the label owner can only aggregate within one step")
        self._report = {"label_batch": group, "tail_grads_per_step": -(-batch // group)}
        return setup.replace(label_batch=group)

    def report(self) -> dict[str, Any]:
        return dict(self._report)
