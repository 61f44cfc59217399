"""The Defense interface and its registry.

A defense is a client-side change to the protocol: ``apply(setup, generator)`` returns a *new*
`SplitSetup` (never mutates), declares the server capabilities it removes, and ``report()``
returns its own cost figures (epsilon, depth, bytes, ...) for the cell. At strength zero a
defense is the identity (tested for every defense).

The declarations (``removes``, ``setups``, ``converts_setups``, ``train_cost``, ``covers``,
``owns``) are read from the class before any instance exists (planning, ``--list``, the runner's
grouping). A stacked defense (``noise+dp-sgd``, `arena.defenses.stack`) is a class made per
stacked name whose declarations combine its members'; an instance may still narrow its own
``removes`` (a stack's is the union of its member instances'). What a cell's attack is denied is
read from the applied setup (``SplitSetup.removes``), never from these declarations.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch

from ..protocol.train import SplitSetup
from ..records import SETUPS, Capability
from ..registry import Registry


class Defense:
    name: ClassVar[str] = "abstract"
    removes: ClassVar[frozenset[Capability]] = frozenset()
    # The setups this defense means something in; a cell of another setup is `blocked` up front.
    setups: ClassVar[tuple[str, ...]] = SETUPS
    paper: ClassVar[str] = ""
    # Training time relative to an undefended run (a scheduling hint only: the runner starts the
    # longest training runs first so that no core ends the run alone on one long job).
    train_cost: ClassVar[float] = 1.0
    # Setups this defense turns into another one (he: vanilla -> u-shaped). Cells of both setups
    # then train the same defended model, and the runner trains it once for them.
    converts_setups: ClassVar[dict[str, str]] = {}
    # True: the defense changes nothing the label owner does (no cut-gradient, label or tail change), so a
    # vanilla and a u-shaped run of it train the same weights bit for bit (tests/test_shared_runs.py) and
    # the runner trains once, u-shaped, for the cells of both (`protocol.derive`). False is always safe.
    label_owner_neutral: ClassVar[bool] = False
    # What the defense protects, in words, for the report (a stack lists its members' ``covers``):
    # e.g. noise: "each release of the activations"; dp-sgd: "the client's front weights".
    covers: ClassVar[str] = ""
    # SplitSetup fields this defense sets outright instead of extending them (he: "channel",
    # splitguard: "client_monitor"): two members of a stack that own the same field conflict, and
    # the stack says so at construction. Hooks and removed capabilities extend and never conflict.
    owns: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, **params: Any) -> None:
        if params:
            raise ValueError(f"defense {self.name!r} got unknown parameter(s) {sorted(params)}")

    def params(self) -> dict[str, Any]:
        return {}

    def not_applicable(self, setup: str, num_classes: int) -> str | None:
        """Why this defense means nothing in a cell (None: it applies). Decided up front from the
        cell's setup and its task's number of classes (Marvell is defined for binary labels only);
        such a cell is shown as n/a with this reason, never as a defense result."""
        if setup not in self.setups:
            return f"defense {self.name} applies to the {' and '.join(self.setups)} setup(s) only"
        return None

    def apply(self, setup: SplitSetup, generator: torch.Generator) -> SplitSetup:
        raise NotImplementedError

    def report(self) -> dict[str, Any]:
        """Cost figures known after apply()/training (merged into the cell's ``cost``)."""
        return {}

    def after_training(self, result: Any) -> None:
        """Hook for defenses whose figures depend on the finished run (e.g. the privacy accountant)."""


DEFENSES: Registry[Defense] = Registry("defense", entry_point_group="arena.defenses", stacks=True)


def register_defense(cls: type[Defense]) -> type[Defense]:
    """Class decorator: ``@register_defense`` on a Defense subclass with a ``name``."""
    DEFENSES.register(cls.name, cls)
    return cls
