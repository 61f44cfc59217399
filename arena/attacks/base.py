"""The Attack interface and its registry.

An attack is a server (honest-but-curious or malicious). It declares its threat model in
``requires`` (checked up front: a cell whose defense removes one of them is `blocked`), reads a
`ServerView` and returns an `AttackOutput`. It never imports the client model, private data or
the scorer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch

from ..records import AttackOutput, Capability
from ..registry import Registry
from ..protocol.view import ServerView

KINDS = ("inversion", "stealing", "label", "hijack", "baseline")


class Attack:
    name: ClassVar[str] = "abstract"
    kind: ClassVar[str] = "inversion"  # one of KINDS; an attack may produce several kinds of output
    requires: ClassVar[frozenset[Capability]] = frozenset()
    default_setup: ClassVar[str] = "vanilla"
    paper: ClassVar[str] = ""

    def __init__(self, **params: Any) -> None:
        if params:
            raise ValueError(f"attack {self.name!r} got unknown parameter(s) {sorted(params)}")

    def params(self) -> dict[str, Any]:
        """The parameters that define this attack instance (recorded in every cell)."""
        return {}

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
    aux: tuple[torch.Tensor, torch.Tensor]
    generator: torch.Generator
    device: str
    total_steps: int


ATTACKS: Registry[Attack] = Registry("attack", entry_point_group="arena.attacks")


def register_attack(cls: type[Attack]) -> type[Attack]:
    """Class decorator: ``@register_attack`` on an Attack subclass with a ``name``."""
    ATTACKS.register(cls.name, cls)
    return cls


def check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_positive_float(name: str, value: Any, allow_zero: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return v


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value
