"""The split-learning protocol as data: `SplitSetup` (a possibly defended protocol, with the hooks a
defense may set), the private `Data`, what each setup hands the server (`SETUP_CAPABILITIES`), and
`TrainResult`. `protocol.train` runs a setup; this module only describes one, so defenses, the runner
and the view can name these types without the training loop. Hook semantics: `protocol.train`'s
module docstring.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch
from torch import nn

from .channel import Channel, PlainChannel
from ..records import Capability, Scenario, TrainConfig
from .split import SplitModel, split
from .transcript import Transcript, Truth

SmashHook = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
LossTerm = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (inputs, activations) -> scalar
GradHook = Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]  # (grad, labels, gen)
LabelTransform = Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]  # (y_train, classes, gen)
TailLossTerm = Callable[[nn.Module, torch.Tensor], torch.Tensor]  # (label owner's tail, its input h) -> scalar


class ServerPolicy(Protocol):
    """A malicious server's training behaviour (FSHA): it decides the gradient sent to the client.
    It may also expose ``record_steps`` (steps to keep in the transcript, window "checkpoints") and a
    boolean ``stop``: once true after a step, training ends there, as when a client monitor stops it
    (an attack's budget of hijacked steps)."""

    def step(self, smashed: torch.Tensor, labels: torch.Tensor | None, step: int) -> torch.Tensor: ...


class ClientMonitor(Protocol):
    """A client-side hijacking detector (SplitGuard): it may swap the labels of a batch before they
    are sent (a fake batch), sees the gradient every batch brings back and may stop training
    (``stop``). The client never updates its part from a fake batch."""

    stop: bool

    def labels(self, y: torch.Tensor, step: int) -> tuple[torch.Tensor, bool]: ...

    def observe(self, step: int, grad: torch.Tensor, client: nn.Module, fake: bool) -> None: ...


SETUP_CAPABILITIES: dict[str, frozenset[Capability]] = {
    "vanilla": frozenset({Capability.ARCHITECTURE, Capability.SMASHED, Capability.LABELS,
                          Capability.CONTROL_GRADIENT}),
    "label-only": frozenset({Capability.ARCHITECTURE, Capability.INPUTS, Capability.CUT_GRADIENT,
                             Capability.TAIL_GRADIENTS, Capability.SERVER_OUT}),
    "u-shaped": frozenset({Capability.ARCHITECTURE, Capability.SMASHED, Capability.CUT_GRADIENT,
                           Capability.TAIL_GRADIENTS, Capability.SERVER_OUT, Capability.CONTROL_GRADIENT}),
}
# Threat-model assumptions an attack may ask for (they are not protocol messages).
GRANTABLE_EXTRAS = frozenset({Capability.AUX_DATA, Capability.QUERY, Capability.CLIENT_WEIGHTS,
                              Capability.TRAIN_DATA, Capability.KNOWN_LABELS, Capability.SAMPLE_IDS})


@dataclass
class Data:
    """Private training data, evaluation data and a disjoint auxiliary set (for attacks that need one)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_aux: torch.Tensor
    y_aux: torch.Tensor
    num_classes: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]


@dataclass(frozen=True)
class SplitSetup:
    scenario: Scenario
    model: nn.Sequential  # the full initialised model; split at `depth` when training
    depth: int
    input_shape: tuple[int, int, int]
    smash_hooks: tuple[SmashHook, ...] = ()
    client_loss_terms: tuple[LossTerm, ...] = ()
    cut_grad_hooks: tuple[GradHook, ...] = ()
    wrap_client: Callable[..., Any] | None = None  # (client, optimizer, loader, n_train) -> same triple
    channel: Channel = field(default_factory=PlainChannel)
    label_batch: int = 1
    removes: frozenset[Capability] = frozenset()
    train_config: TrainConfig | None = None  # overrides scenario.train when a defense must
    client_monitor: ClientMonitor | None = None  # splitguard; None: the plain protocol
    # the client's activation transform at test time; None: the smash hooks (what it really sends)
    inference_hooks: tuple[SmashHook, ...] | None = None
    # (capability, how the server rebuilds it): not sent in plaintext, yet not removed
    derivable: tuple[tuple[Capability, str], ...] = ()
    # (y_train, num_classes, generator) -> the labels the label owner trains on; None: the true ones
    label_transform: LabelTransform | None = None
    label_loss_terms: tuple[TailLossTerm, ...] = ()  # (tail, h) -> scalar, added to the label owner's loss

    @property
    def config(self) -> TrainConfig:
        return self.train_config or self.scenario.train

    @property
    def label_layers(self) -> int:
        return 0 if self.scenario.setup == "vanilla" else self.scenario.label_layers

    def split(self) -> SplitModel:
        return split(self.model, self.depth, self.label_layers)

    def capabilities(self) -> frozenset[Capability]:
        """What the server is handed in this protocol (derivable quantities are not handed over)."""
        return (SETUP_CAPABILITIES[self.scenario.setup] | GRANTABLE_EXTRAS) - self.removes - self.derived()

    def derived(self) -> frozenset[Capability]:
        return frozenset(c for c, _ in self.derivable)

    def test_hooks(self) -> tuple[SmashHook, ...]:
        return self.smash_hooks if self.inference_hooks is None else self.inference_hooks

    def replace(self, **changes: Any) -> "SplitSetup":
        return dataclasses.replace(self, **changes)


def make_setup(scenario: Scenario, model: nn.Sequential, input_shape: tuple[int, int, int]) -> SplitSetup:
    setup = SplitSetup(scenario=scenario, model=model, depth=scenario.depth, input_shape=tuple(input_shape))
    setup.split()  # validates the depth now, with the valid range in the message
    return setup


@dataclass
class TrainResult:
    model: SplitModel
    transcript: Transcript
    truth: Truth
    test_acc: float
    cost: dict[str, Any]
    server_before: nn.Module  # server-owned layers as they were at the first recorded step
    tail_before: nn.Module | None = None  # the label owner's layers at the same step (None: no tail)
    test_positive_scores: torch.Tensor | None = None  # binary tasks: P(class 1) per test example (test AUC)
