"""Frozen records that cross module borders: capabilities, scenarios, attack outputs, cells.

The JSON form of a `Cell` is the on-disk schema (see `SCHEMA`); bump it when a field changes meaning.
"""
from __future__ import annotations

import dataclasses
import enum
import math
import re
from dataclasses import dataclass, field
from typing import Any

import torch

# 2: cells record the split that ran (`effective`), the capabilities granted to the attack (`granted`);
# test accuracy is the deployed pipeline's; "not evaluated" reasons; ids in attack outputs are opaque.
SCHEMA = 2

STATUSES = ("ok", "blocked", "error")
SETUPS = ("vanilla", "label-only", "u-shaped")
"""The three setups of the UnSplit paper's Figure 1:

- ``vanilla`` (a): the client holds inputs and labels, runs layers 0..depth and sends the smashed
  data *and the labels* to the server, which runs the rest and computes the loss.
- ``label-only`` (b): the server holds the inputs and runs every layer but the last
  ``label_layers``; the client holds only the labels and those last layers (the label owner).
- ``u-shaped`` (c): the client runs layers 0..depth and the last ``label_layers`` layers and
  keeps its labels; the server runs the middle and sees the smashed data and the gradient the
  client returns at the server's output.
"""


# Reason prefix of a blocked cell whose defense is not defined for its setup (as opposed to one
# whose defense removes a capability the attack needs); the report tells the two apart.
NOT_APPLICABLE = "not applicable: "
# Reason prefix of a blocked cell whose attack needs a quantity the defense does not send in plaintext
# but that the server can still rebuild from what it sees (HE's dL/dW gives back the activations),
# while no attack that rebuilds it ran: the defense is *not* credited, the cell is simply not evaluated.
NOT_EVALUATED = "not evaluated: "
# Reason prefix of a cell whose attack found at run time that it cannot read the cell (`AttackNotApplicable`):
# not evaluated (never a defense's credit, never "the defense does not apply").
ATTACK_CANNOT_RUN = NOT_EVALUATED + "the attack cannot read this cell: "
# Reason prefix of a blocked cell whose attack needs an assumption the experiment denies ([threat] deny).
DENIED = "denied by the threat model: "


class AttackNotApplicable(Exception):
    """Raised by an attack's ``run`` when it is not defined for this cell (e.g. the label owner's layers are
    not of the form the attack reads: mid's bottleneck before the last layer). The runner records the cell
    as blocked, "not evaluated" (`ATTACK_CANNOT_RUN`), with this message: never an error, never a
    defense's credit, never "the defense does not apply"."""


def not_applicable(reason: str | None) -> bool:
    """Is a blocked cell's reason "the defense does not apply to this setup"? (Also recognises the
    wording of cells recorded before the prefix existed.)"""
    r = reason or ""
    return r.startswith(NOT_APPLICABLE) or bool(re.search(r"applies to the .* setup\(s\) only", r))


class Capability(str, enum.Enum):
    """What a server may observe or do. Setups grant some; defenses remove some; attacks require some."""

    ARCHITECTURE = "architecture"  # the client part's architecture (never its weights)
    SMASHED = "smashed"  # plaintext activations at the cut
    LABELS = "labels"  # the labels, sent in clear (setup a)
    INPUTS = "inputs"  # the raw inputs (setup b: the server owns them)
    CUT_GRADIENT = "cut_gradient"  # per-example gradient returned by the label owner at the cut
    TAIL_GRADIENTS = "tail_gradients"  # label owner's parameter gradients (UnSplit paper's stronger threat)
    SERVER_OUT = "server_out"  # the server part's own output in plaintext (what it sends the label owner)
    CONTROL_GRADIENT = "control_gradient"  # malicious: choose the gradient sent back to the client
    AUX_DATA = "aux_data"  # auxiliary public data of the same domain
    QUERY = "query"  # black-box query access to the client part
    CLIENT_WEIGHTS = "client_weights"  # white-box: the client part's trained weights
    TRAIN_DATA = "train_data"  # He et al.'s "known training set": the private training samples, minus every observed target
    KNOWN_LABELS = "known_labels"  # Li et al.'s known examples: the labels of a few observed samples per class
    SAMPLE_IDS = "sample_ids"  # the server can link releases of one example (vertical SL: aligned sample ids)

    def __str__(self) -> str:
        return self.value


def capabilities(*names: str | Capability) -> frozenset[Capability]:
    out = set()
    for n in names:
        try:
            out.add(Capability(n))
        except ValueError:
            known = ", ".join(c.value for c in Capability)
            raise ValueError(f"unknown capability {n!r}; known: {known}") from None
    return frozenset(out)


@dataclass(frozen=True)
class TrainConfig:
    """How the split model is trained (UnSplit: 10 epochs, batch 64, Adam 1e-3 amsgrad)."""

    epochs: float = 10.0
    batch_size: int = 64
    lr: float = 1e-3
    record_steps: int = 4  # steps kept in the transcript at the start and at the end of training
    max_steps: int | None = None  # cap for tiny runs (tests)
    amsgrad: bool = True  # Adam's amsgrad variant for every party (UnSplit's code); FSHA's authors use plain Adam
    # examples whose every release the transcript keeps (window "tracked"; `Attack.coverage`), 0: none
    track: int = 0

    def __post_init__(self) -> None:
        if not (self.epochs > 0 and math.isfinite(self.epochs)):
            raise ValueError(f"epochs must be a positive number, got {self.epochs}")
        for name in ("batch_size", "record_steps"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be positive and finite, got {self.lr}")
        if not isinstance(self.track, int) or self.track < 0:
            raise ValueError(f"track must be an integer >= 0, got {self.track!r}")
        if not isinstance(self.amsgrad, bool):
            raise ValueError(f"amsgrad must be true or false, got {self.amsgrad!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or None, got {self.max_steps}")


# TrainConfig fields added after cells were first recorded, with their defaults: omitted from a
# scenario's key at the default, so existing cells.jsonl files still resume.
_LATER_TRAIN_FIELDS = {"amsgrad": True, "track": 0}


@dataclass(frozen=True)
class Scenario:
    """Everything that shapes one training run apart from the defense."""

    dataset: str
    model: str
    depth: int
    setup: str = "vanilla"
    seed: int = 0
    n_train: int | None = None
    n_test: int | None = None
    label_layers: int = 1  # layers the label owner keeps in setups b and c
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.setup not in SETUPS:
            raise ValueError(f"unknown setup {self.setup!r}; known setups: {', '.join(SETUPS)}")
        if self.label_layers < 1:
            raise ValueError(f"label_layers must be >= 1, got {self.label_layers}")

    def key(self) -> dict[str, Any]:
        k = dataclasses.asdict(self)
        for name, default in _LATER_TRAIN_FIELDS.items():  # cells recorded before a field existed keep their keys
            if k["train"].get(name) == default:
                del k["train"][name]
        return k

    def training_key(self) -> dict[str, Any]:
        """``key()`` without ``train.record_steps`` and ``train.track``: runs that differ only in what
        the transcript keeps train the same model on the same data order, so they share one run."""
        k = self.key()
        del k["train"]["record_steps"]
        k["train"].pop("track", None)
        return k


@dataclass
class AttackOutput:
    """What an attack produced. The scorer compares it with the truth; attacks never score themselves.

    ``ids`` are opaque sample ids taken from the observations the attack used; they let the
    scorer find the true inputs/labels without the attack ever seeing them.
    """

    ids: torch.Tensor | None = None
    reconstructions: torch.Tensor | None = None  # N×C×H×W in [0,1]
    labels: torch.Tensor | None = None  # N predicted labels
    label_scores: torch.Tensor | None = None  # N×K scores (higher = more likely)
    clone: torch.nn.Module | None = None  # a stolen client part
    positive_class: int | None = None  # set: labels/label_scores answer the binary question "label == positive_class"
    clusters: torch.Tensor | None = None  # N cluster indices (a clustering, unnamed): scored by adjusted Rand index
    # label counts per group of examples (G×K), with ``groups`` (N: each row of ``ids``'s group index):
    # scored against the true counts of those ids as ``count_exact`` and ``count_l1``
    group_counts: torch.Tensor | None = None
    groups: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # attack-specific numbers (JSON-able)


@dataclass(frozen=True)
class Cell:
    """One matrix result. JSON form = one line of cells.jsonl."""

    key: str
    dataset: str
    model: str
    depth: int
    setup: str
    attack: str
    defense: str
    attack_params: dict[str, Any]
    defense_params: dict[str, Any]
    seed: int
    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    utility: dict[str, float] = field(default_factory=dict)
    cost: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    error: str | None = None
    reason: str | None = None  # why a cell is blocked
    label_layers: int = 1
    artifacts: dict[str, str] = field(default_factory=dict)  # relative paths (image grids)
    # the split that actually ran ({"depth", "setup", "label_layers"}): a defense may move the cut (he)
    effective: dict[str, Any] = field(default_factory=dict)
    granted: list[str] = field(default_factory=list)  # capabilities the attack was given (its threat model)
    adapts_to: list[str] = field(default_factory=list)  # the defenses the attack is built against (`Attack.adapts_to`)
    # capabilities the view rebuilt from what the server saw (he: smashed data from g_h and dL/dW) -> how
    derived: dict[str, str] = field(default_factory=dict)
    observed: dict[str, Any] = field(default_factory=dict)  # what the attack's transcript held (`Transcript.coverage`)
    schema: int = SCHEMA

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Cell":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
