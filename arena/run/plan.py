"""The plan: every cell of an experiment (`plan`), the cells that share one training run (`groups`), the
order they run in (`seed_passes`, `longest_first`), and impossible split depths found before any work
(`validate_depths`). A `CellSpec` names one cell and derives the keys of its training run: the
scenario it trains (`training_scenario`, `training_setup`: a defense may turn one setup into another or
leave the label owner alone, `protocol.derive`), its data order and its attack's random stream.
`arena.run.runner` runs the groups; it re-exports these names.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from typing import Any

from ..attacks import ATTACKS
from .config import Entry, Experiment, all_depths
from ..data.binary import BINARY
from ..defenses import DEFENSES
from ..models import build_model
from ..records import Scenario


@dataclass(frozen=True)
class CellSpec:
    scenario: Scenario
    attack: Entry
    defense: Entry
    n_aux: int = 1000
    deny: tuple[str, ...] = ()  # capabilities the experiment's threat model denies (sorted values)

    def training_scenario(self) -> dict[str, Any]:
        """The scenario of the training run: without record_steps (what an attack observes, not how
        the model trains), and in the setup the defense turns this one into (he: vanilla -> u-shaped)."""
        k = self.scenario.training_key()
        k["setup"] = self.training_setup()
        return k

    def data_order_key(self) -> str:
        """What keys the training run's data order: the same in every setup of a scenario (so one run can
        serve several, `protocol.derive`, and the setups of one scenario are paired too) and under every
        defense (common random numbers)."""
        return json.dumps({k: v for k, v in self.training_scenario().items() if k != "setup"},
                          sort_keys=True, default=str)

    def training_setup(self) -> str:
        """The setup the training run uses: the one the defense turns this cell's into (he: vanilla ->
        u-shaped), or u-shaped for a vanilla cell whose defense leaves the label owner alone (the same
        weights bit for bit: `protocol.derive`), unless a malicious attack imposes its own training."""
        cls = DEFENSES.get(self.defense.name)
        setup = self.scenario.setup
        converted = getattr(cls, "converts_setups", {}).get(setup)
        if converted is not None:
            return converted
        if (setup == "vanilla" and getattr(cls, "label_owner_neutral", False) and "u-shaped" in cls.setups
                and not getattr(ATTACKS.get(self.attack.name), "malicious", False)):
            return "u-shaped"
        return setup

    def _ident(self, with_attack: bool) -> str:
        d: dict[str, Any] = {"scenario": self.scenario.key() if with_attack else self.training_scenario(),
                             "defense": [self.defense.name, self.defense.params], "n_aux": self.n_aux}
        if with_attack:
            d["attack"] = [self.attack.name, self.attack.params]
            if self.deny:  # a denial changes what the attack may use, not the training run
                d["deny"] = list(self.deny)
        return _digest(d)

    @property
    def key(self) -> str:
        return self._ident(True)

    @property
    def train_key(self) -> str:
        return self._ident(False)

    @property
    def attack_stream(self) -> str:
        """What keys the attack's random draws: the cell without its defense (common random numbers:
        under every defense the attack starts from the same draws, so a paired difference is the
        defense's, not the attack's luck)."""
        return _digest({"scenario": self.scenario.key(), "attack": [self.attack.name, self.attack.params],
                        "n_aux": self.n_aux, "deny": list(self.deny)})

    def label(self) -> str:
        s = self.scenario
        return (f"{s.dataset}/d{s.depth}/{s.setup} {self.attack.name}{_fmt(self.attack.kwargs)} "
                f"vs {self.defense.name}{_fmt(self.defense.kwargs)} seed {s.seed}")


def _digest(d: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _fmt(params: dict[str, Any]) -> str:
    return "(" + ",".join(f"{k}={v}" for k, v in params.items()) + ")" if params else ""


def plan(exp: Experiment) -> list[CellSpec]:
    """Every cell of an experiment, in a stable order. Constructs each attack/defense once to
    validate its parameters before any work starts."""
    for e in exp.attacks:
        ATTACKS.create(e.name, **e.kwargs)
    for e in exp.defenses:
        DEFENSES.create(e.name, **e.kwargs)
    names = {d.name for d in exp.defenses}
    members = names | {m for n in names for m in n.split("+")}
    for e in exp.attacks:  # a limit naming a defense this experiment does not run (a typo?): say so now
        unknown = sorted(set(e.defenses or ()) - members)
        if unknown:
            raise ValueError(f"attack {e.name!r} is limited to defenses {unknown}, which this experiment does not "
                             f"run (its defenses: {', '.join(sorted(names))})")
    specs = []
    for dataset in exp.datasets:
        for depth in all_depths(exp):  # per-entry `depths` may add depths; Entry.applies filters
            for seed in exp.seeds:
                for d in exp.defenses:
                    if not d.applies(dataset, depth, None):
                        continue
                    for a in exp.attacks:
                        if not a.applies(dataset, depth, exp.depths) or (
                                a.defenses is not None  # the defense, or a stack with it as a member
                                and not ({d.name} | set(d.name.split("+"))) & set(a.defenses)):
                            continue
                        cls = ATTACKS.get(a.name)
                        setup = a.setup or d.setup or getattr(cls, "default_setup", "vanilla")
                        if d.setups is not None and setup not in d.setups:
                            continue  # the experiment runs this defense in those setups only
                        sc = Scenario(dataset=dataset, model=a.model or exp.model_for(dataset), depth=depth, setup=setup,
                                      seed=seed, n_train=exp.n_train, n_test=exp.n_test,
                                      label_layers=a.label_layers or exp.label_layers,
                                      train=_entry_train(exp, a))
                        specs.append(CellSpec(sc, a, d, exp.n_aux, exp.deny))
    return specs


def groups(specs: list[CellSpec]) -> list[list[CellSpec]]:
    """Cells that can share one training run; malicious attacks get their own."""
    out: dict[str, list[CellSpec]] = {}
    for s in specs:
        malicious = getattr(ATTACKS.get(s.attack.name), "malicious", False)
        out.setdefault(s.key if malicious else s.train_key, []).append(s)
    return list(out.values())


def _entry_train(exp: Experiment, a: Entry):
    """The [train] settings of an attack entry's runs: the experiment's, with the entry's overrides."""
    over = dict(a.train)
    cov = ATTACKS.create(a.name, **a.kwargs).coverage()  # what the attack declared it needs observed
    if a.record_steps is not None:  # the experiment's entry overrides the attack's declaration
        over["record_steps"] = a.record_steps
    elif cov.steps is not None:
        over["record_steps"] = cov.steps
    if cov.tracked:
        over["track"] = cov.tracked
    return replace(exp.train, **over) if over else exp.train


def seed_passes(specs: list[CellSpec], seeds: tuple[int, ...]) -> list[tuple[int, list[CellSpec]]]:
    """The cells split into passes, one per seed in the experiment's order: the first pass answers
    every pairing once, each further pass adds a seed (an anytime run: a report after each pass)."""
    order = {s: i for i, s in enumerate(dict.fromkeys(seeds))}
    out: dict[int, list[CellSpec]] = {}
    for s in specs:
        out.setdefault(s.scenario.seed, []).append(s)
    return sorted(out.items(), key=lambda kv: order.get(kv[0], len(order)))


def group_cost(group: list[CellSpec]) -> float:
    """A rough relative cost of a group, for scheduling only: its training run (a malicious attack's
    hijacked run counts as several; a defense declares its own `train_cost`) plus its attacks."""
    s = group[0]
    malicious = any(getattr(ATTACKS.get(x.attack.name), "malicious", False) for x in group)
    train_cost = float(getattr(DEFENSES.get(s.defense.name), "train_cost", 1.0)) * (3.0 if malicious else 1.0)
    return train_cost + 0.1 * len(group)


def longest_first(gs: list[list[CellSpec]]) -> list[list[CellSpec]]:
    """Groups by decreasing `group_cost` (stable): with several workers the long runs start first."""
    return sorted(gs, key=group_cost, reverse=True)


# Input shapes and class counts of the built-in datasets, so depths are checked before any data loads
# (a binary task, one class against the rest: its base's shape, 2 classes).
KNOWN_SHAPES = {"mnist": ((1, 28, 28), 10), "fashion-mnist": ((1, 28, 28), 10), "digits": ((1, 28, 28), 10),
                "cifar10": ((3, 32, 32), 10)}
KNOWN_SHAPES |= {name: (KNOWN_SHAPES[base][0], 2) for name, (base, _) in BINARY.items() if base in KNOWN_SHAPES}


def validate_depths(specs: list[CellSpec]) -> None:
    """Raise one clear error for any impossible split depth, before any work starts."""
    from ..protocol.split import split as _split

    seen = set()
    for s in specs:
        sc = s.scenario
        k = (sc.dataset, sc.model, sc.depth, sc.setup, sc.label_layers)
        if k in seen or sc.dataset not in KNOWN_SHAPES:
            continue
        seen.add(k)
        shape, classes = KNOWN_SHAPES[sc.dataset]
        model = build_model(sc.model, shape, classes)
        try:
            _split(model, sc.depth, 0 if sc.setup == "vanilla" else sc.label_layers)
        except ValueError as e:
            raise ValueError(f"{sc.dataset}/{sc.model}, setup {sc.setup}: {e}") from None
