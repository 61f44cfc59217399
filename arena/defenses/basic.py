"""`none` (the undefended protocol) and `deeper-split` (move the cut k layers deeper).

deeper-split — the defense every split-learning paper mentions first (UnSplit §5, He et al. §6):
more client layers make the smashed data a more non-linear function of the input. The server
still sees the smashed data and knows the (now deeper) client architecture; the price is client
compute, reported in FLOPs per sample and measured seconds.
"""
from __future__ import annotations

from typing import Any

import torch

from ..params import check_positive_int
from ..protocol.cost import flops_per_sample
from ..protocol.train import SplitSetup
from ..protocol.split import split
from .base import Defense, register_defense


@register_defense
class NoDefense(Defense):
    name = "none"
    label_owner_neutral = True  # nothing changes: one run serves vanilla and u-shaped
    paper = "undefended split learning (Gupta & Raskar 2018; Vepakomma et al. 2018)"
    covers = "nothing (the undefended protocol)"

    def apply(self, setup: SplitSetup, generator: torch.Generator) -> SplitSetup:
        return setup


@register_defense
class DeeperSplit(Defense):
    name = "deeper-split"
    label_owner_neutral = True  # acts on the client front only: one run serves vanilla and u-shaped
    paper = "UnSplit (Erdogan et al. 2022) §5.2; He et al. 2019 §6"
    covers = "the inputs, behind k more client layers (the smashed data is still sent)"

    def __init__(self, k: int = 2, **rest: Any) -> None:
        super().__init__(**rest)
        self.k = check_positive_int("k", k, minimum=0)
        self._report: dict[str, Any] = {}

    def params(self) -> dict[str, Any]:
        return {"k": self.k}

    def apply(self, setup: SplitSetup, generator: torch.Generator) -> SplitSetup:
        if self.k == 0:
            self._report = {"depth": setup.depth, "extra_client_flops": 0}
            return setup
        new_depth = setup.depth + self.k
        deeper = split(setup.model, new_depth, setup.label_layers)  # clear error naming the valid range
        base = split(setup.model, setup.depth, setup.label_layers)
        extra = flops_per_sample(deeper.client, setup.input_shape) - flops_per_sample(base.client, setup.input_shape)
        self._report = {"depth": new_depth, "extra_client_flops": extra}
        return setup.replace(depth=new_depth)

    def report(self) -> dict[str, Any]:
        return dict(self._report)
