"""The honest chance line: what an attacker learns from knowing nothing about the inputs.

`mean-image` ignores what the smashed data says and reconstructs every target as a constant image
(mid-grey 0.5, or black). It is not an attack; it is the baseline every inversion result must
beat to mean anything (an all-black image already scores MSE ≈ 0.11 on MNIST).
"""
from __future__ import annotations

from typing import Any

import torch

from ..records import AttackOutput, Capability
from ..protocol.view import ServerView
from ..params import check_choice
from .base import Attack, register_attack


@register_attack
class MeanImage(Attack):
    name = "mean-image"
    kind = "baseline"
    requires = frozenset({Capability.SMASHED})  # it needs to know which samples were sent
    paper = "baseline (no paper): constant reconstruction"

    def __init__(self, value: str = "grey", window: str = "after", **rest: Any) -> None:
        super().__init__(**rest)
        self.value = check_choice("value", value, ("grey", "black"))
        self.window = check_choice("window", window, ("before", "after"))

    def params(self) -> dict[str, Any]:
        return {"value": self.value, "window": self.window}

    def run(self, view: ServerView, generator: torch.Generator) -> AttackOutput:
        ids, smashed = view.stacked("smashed", self.window)
        fill = 0.5 if self.value == "grey" else 0.0
        recon = torch.full((len(ids), *view.input_shape), fill)
        return AttackOutput(ids=ids, reconstructions=recon)
