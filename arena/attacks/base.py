"""The Attack interface and its registry.

An attack is a server (honest-but-curious or malicious). It declares its threat model in
``requires`` (checked up front: a cell whose defense removes one of them is `blocked`), reads a
`ServerView` and returns an `AttackOutput`. It never imports the client model, private data or
the scorer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch

from ..records import AttackOutput, Capability
from ..registry import Registry
from ..protocol.knowledge import DefenseKnowledge
from ..protocol.transcript import Coverage
from ..protocol.view import ServerView

KINDS = ("inversion", "stealing", "label", "hijack", "baseline")


class Attack:
    name: ClassVar[str] = "abstract"
    kind: ClassVar[str] = "inversion"  # one of KINDS; an attack may produce several kinds of output
    requires: ClassVar[frozenset[Capability]] = frozenset()
    default_setup: ClassVar[str] = "vanilla"
    paper: ClassVar[str] = ""
    # A baseline (kind "baseline") names the attack kinds whose headline metric it is the no-knowledge
    # reference for; the report pairs every attack of those kinds with it, seed by seed.
    baseline_of: ClassVar[tuple[str, ...]] = ()
    # An adaptive attack names the defenses it is built against (it reads their public parameters from
    # ``view.defense``, Kerckhoffs). It runs in every cell like any other; `--list` and the report mark it.
    adapts_to: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **params: Any) -> None:
        if params:
            raise ValueError(f"attack {self.name!r} got unknown parameter(s) {sorted(params)}")

    def params(self) -> dict[str, Any]:
        """The parameters that define this attack instance (recorded in every cell)."""
        return {}

    def coverage(self) -> Coverage:
        """What this attack needs the transcript to hold (steps at each end, tracked examples); the run
        records the union over its group's attacks. Default: the experiment's ``record_steps``."""
        return Coverage()

    malicious: ClassVar[bool] = False  # True: imposes a server policy, so it needs its own training run

    def server_policy(self, ctx: "PolicyContext") -> Any:
        """None for honest attacks; a malicious attack returns the `ServerPolicy` it imposes on training."""
        return None

    def run(self, view: ServerView, generator: torch.Generator) -> AttackOutput:
        raise NotImplementedError


@dataclass(frozen=True)
class PolicyContext:
    """What a malicious server knows when training starts: no client weights, no private data."""

    input_shape: tuple[int, int, int]
    num_classes: int
    client_arch: Callable[[], torch.nn.Sequential]
    aux: tuple[torch.Tensor, torch.Tensor] | None  # only when the attack declared AUX_DATA
    generator: torch.Generator
    device: str
    total_steps: int
    defense: DefenseKnowledge = DefenseKnowledge()  # the defense's names and public parameters (Kerckhoffs)


ATTACKS: Registry[Attack] = Registry("attack", entry_point_group="arena.attacks")


def register_attack(cls: type[Attack]) -> type[Attack]:
    """Class decorator: ``@register_attack`` on an Attack subclass with a ``name``."""
    ATTACKS.register(cls.name, cls)
    return cls
