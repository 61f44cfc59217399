"""Experiment specs: TOML files loaded into frozen dataclasses (no dicts of hyperparameters passed deep).

A spec file looks like::

    [experiment]
    datasets = ["fashion-mnist"]
    depths = [1, 2]
    seeds = [0, 1]
    n_train = 5000        # private training samples per run (deterministic subset by seed); "all" = every one
    n_test = 1000
    n_aux = 1000          # disjoint auxiliary samples, only for attacks that require aux data

    [train]               # TrainConfig fields
    epochs = 1

    [[attacks]]
    name = "unsplit"
    params = { rounds = 20 }
    grid = { lambda_tv = [0.1, 1.0] }   # every combination becomes its own cell
    setup = "vanilla"                    # optional: override the attack's default setup
    depths = [1, 2, 3]                   # optional: this entry's own split depths (attacks: else [experiment]
                                         # depths; defenses: else every depth an attack runs at)
    datasets = ["mnist"]                 # optional: only these of the experiment's datasets
    setups = ["u-shaped"]                # optional (defenses): only the cells of these setups
    defenses = ["none", "splitguard"]    # optional (attacks): only against these defense entries (by name)
    model = "lenet"                      # optional (attacks): another model than [experiment] models
    record_steps = 8                     # optional (attacks): steps the transcript keeps at each end of
                                         # training for this entry's runs (more targets for label attacks)
    train = { epochs = 13, lr = 1e-5 }   # optional (attacks): [train] settings of this entry's own runs
                                         # (FSHA's paper budget: a malicious server's run of its length)

    [[defenses]]
    name = "deeper-split"
    grid = { k = [1, 2] }

    [[defenses]]
    name = "noise+dp-sgd"                # a stack: members apply in the order written
    params = { noise = { scale = 0.5 }, "dp-sgd" = { noise_multiplier = 1.0 } }   # one table per member
    grid = { noise = { scale = [0.1, 0.5] } }                                     # per member parameter

    [threat]              # optional: assumptions this experiment does not grant any attack
    deny = ["client_weights", "query"]   # cells whose attack needs one are `blocked`, with that reason
"""
from __future__ import annotations

import dataclasses
import itertools
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..records import SETUPS, Capability, TrainConfig
from ..registry import STACK_SEPARATOR, stack_members


class SpecError(ValueError):
    """A malformed experiment file; the message names the file and the offending entry."""


@dataclass(frozen=True)
class Entry:
    """One attack or defense with fixed parameters (after grid expansion)."""

    name: str
    params: tuple[tuple[str, Any], ...] = ()
    setup: str | None = None
    label_layers: int | None = None
    depths: tuple[int, ...] | None = None  # None: the experiment's depths
    datasets: tuple[str, ...] | None = None  # None: every dataset of the experiment
    model: str | None = None  # None: the experiment's model for the dataset (attacks only)
    record_steps: int | None = None  # None: [train] record_steps (attacks only)
    train: tuple[tuple[str, Any], ...] = ()  # [train] overrides for this entry's runs (attacks only)
    setups: tuple[str, ...] | None = None  # defenses: only the cells of these setups (None: every one)
    defenses: tuple[str, ...] | None = None  # attacks: only against these defenses (None: every one)

    @property
    def kwargs(self) -> dict[str, Any]:
        """The parameters as keyword arguments; a stack's are one table (dict) per member."""
        if stack_members(self.name) and all(isinstance(v, tuple) for _, v in self.params):
            return {m: dict(p) for m, p in self.params}
        return dict(self.params)

    def applies(self, dataset: str, depth: int, default_depths: tuple[int, ...] | None) -> bool:
        """Whether this entry runs at (dataset, depth); without its own depths it runs at
        ``default_depths`` (None: at any depth)."""
        depths = default_depths if self.depths is None else self.depths
        return (self.datasets is None or dataset in self.datasets) and (depths is None or depth in depths)


@dataclass(frozen=True)
class Experiment:
    name: str = "custom"
    datasets: tuple[str, ...] = ("fashion-mnist",)
    models: tuple[tuple[str, str], ...] = ()  # (dataset, model) overrides of the default model
    depths: tuple[int, ...] = (1,)
    seeds: tuple[int, ...] = (0,)
    n_train: int | None = 5000
    n_test: int | None = 1000
    n_aux: int = 1000
    label_layers: int = 1
    workers: int | None = None  # default local worker processes (--workers overrides)
    train: TrainConfig = field(default_factory=TrainConfig)
    attacks: tuple[Entry, ...] = ()
    defenses: tuple[Entry, ...] = (Entry("none"),)
    deny: tuple[str, ...] = ()  # capability values no attack is granted ([threat] deny, --deny)
    source: str = ""

    def model_for(self, dataset: str) -> str:
        from ..data.binary import binary_base
        from ..models import default_model

        # a binary task (one class against the rest) trains its base dataset's network
        return dict(self.models).get(dataset, default_model(binary_base(dataset) or dataset))

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _freeze(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    return v


def expand_entries(raw: list[dict[str, Any]], what: str, where: str) -> tuple[Entry, ...]:
    out: list[Entry] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or "name" not in item:
            raise SpecError(f"{where}: [[{what}]] entry {i + 1} needs a name")
        unknown = set(item) - {"name", "params", "grid", "setup", "label_layers", "depths", "datasets", "model",
                               "record_steps", "train"} - ({"setups"} if what == "defenses" else set()) \
            - ({"defenses"} if what == "attacks" else set())
        if unknown:
            raise SpecError(f"{where}: [[{what}]] {item['name']!r} has unknown keys {sorted(unknown)}")
        if item.get("setup") is not None and item["setup"] not in SETUPS:
            raise SpecError(f"{where}: [[{what}]] {item['name']!r}: setup must be one of {SETUPS}")
        depths, datasets = item.get("depths"), item.get("datasets")
        if depths is not None and (not isinstance(depths, list) or not depths or not all(
                isinstance(x, int) and not isinstance(x, bool) for x in depths)):
            raise SpecError(f"{where}: [[{what}]] {item['name']!r}: depths must be a non-empty list of integers")
        if datasets is not None and (not isinstance(datasets, list) or not datasets
                                     or not all(isinstance(x, str) for x in datasets)):
            raise SpecError(f"{where}: [[{what}]] {item['name']!r}: datasets must be a non-empty list of names")
        setups = item.get("setups")
        if setups is not None and (not isinstance(setups, list) or not setups or not set(setups) <= set(SETUPS)):
            raise SpecError(f"{where}: [[{what}]] {item['name']!r}: setups must be a non-empty list of {SETUPS}")
        only = item.get("defenses")
        if only is not None and (not isinstance(only, list) or not only or not all(isinstance(x, str) for x in only)):
            raise SpecError(f"{where}: [[{what}]] {item['name']!r}: defenses must be a non-empty list of defense names")
        rs = item.get("record_steps")
        if rs is not None and (isinstance(rs, bool) or not isinstance(rs, int) or rs < 1):
            raise SpecError(f"{where}: [[{what}]] {item['name']!r}: record_steps must be an integer >= 1")
        train = item.get("train", {})
        if not isinstance(train, dict):
            raise SpecError(f"{where}: [[{what}]] {item['name']!r}: train must be a table of [train] settings")
        bad = set(train) - {f.name for f in dataclasses.fields(TrainConfig)} | ({"record_steps"} & set(train))
        if bad:
            raise SpecError(f"{where}: [[{what}]] {item['name']!r}: unknown train settings {sorted(bad)} (record_steps "
                            f"is the entry's own key); known: {sorted(f.name for f in dataclasses.fields(TrainConfig))}")
        try:
            TrainConfig(**train)
        except (ValueError, TypeError) as e:
            raise SpecError(f"{where}: [[{what}]] {item['name']!r}: train: {e}") from None
        if what == "defenses" and stack_members(item["name"]):
            combos = _stack_params(item, f"{where}: [[{what}]] {item['name']!r}")
        else:
            combos = _grid_params(item, f"{where}: [[{what}]] {item['name']!r}")
        for p in combos:
            out.append(Entry(item["name"], tuple(sorted((k, _freeze(v)) for k, v in p.items())),
                             item.get("setup"), item.get("label_layers"),
                             None if depths is None else tuple(depths),
                             None if datasets is None else tuple(datasets), item.get("model"), rs,
                             tuple(sorted(train.items())), None if setups is None else tuple(setups),
                             None if only is None else tuple(only)))
    return tuple(out)


def _table(v: Any, what: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise SpecError(f"{what} must be a table, got {v!r}")
    return dict(v)


def _grid_params(item: dict[str, Any], entry: str) -> list[dict[str, Any]]:
    """Every parameter combination of an entry: ``params`` with each ``grid`` combination over it."""
    params = _table(item.get("params", {}), f"{entry}: params")
    grid = _table(item.get("grid", {}), f"{entry}: grid")
    for k, vals in grid.items():
        if not isinstance(vals, list) or not vals:
            name = ".".join(k) if isinstance(k, tuple) else k  # a stack's (member, parameter)
            raise SpecError(f"{entry}: grid.{name} must be a non-empty list")
    keys = sorted(grid)
    return [params | dict(zip(keys, combo)) for combo in (itertools.product(*(grid[k] for k in keys)) if keys
                                                          else [()])]


def _stack_params(item: dict[str, Any], entry: str) -> list[dict[str, dict[str, Any]]]:
    """A stacked defense's combinations: ``params`` and ``grid`` are tables keyed by member name
    (``params = { noise = { scale = 0.5 } }``, ``grid = { noise = { scale = [0.1, 0.5] } }``); the
    grid expands per member parameter. Members left out take their defaults."""
    members = stack_members(item["name"]) or ()
    if not all(members):
        raise SpecError(f"{entry}: a stacked defense joins member names with {STACK_SEPARATOR!r}, e.g. "
                        f"'noise+dp-sgd'; this one has an empty member")
    per: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for part in ("params", "grid"):
        table = _table(item.get(part, {}), f"{entry}: {part}")
        for m, sub in table.items():
            if m not in members:
                raise SpecError(f"{entry}: {part} has a table for {m!r}, which is not a member of the stack "
                                f"(members: {', '.join(members)}); a stack's {part} is a table of tables keyed by "
                                f"member name, e.g. {part} = {{ {members[0]} = {{ ... }} }}")
            if not isinstance(sub, dict):
                raise SpecError(f"{entry}: {part}.{m} must be a table of {m}'s parameters, got {sub!r}")
        per[part] = table
    combos = _grid_params({"params": {(m, k): v for m, t in per["params"].items() for k, v in t.items()},
                           "grid": {(m, k): v for m, t in per["grid"].items() for k, v in t.items()}}, entry)
    out = []
    for flat in combos:
        nested: dict[str, dict[str, Any]] = {}
        for (m, k), v in flat.items():
            nested.setdefault(m, {})[k] = v
        out.append(nested)
    return out


def load_experiment(path: str | Path) -> Experiment:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SpecError(f"experiment file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"experiment file {path} is not valid TOML: {e}") from None
    return experiment_from_dict(raw, str(path))


def experiment_from_dict(raw: dict[str, Any], where: str = "<dict>") -> Experiment:
    unknown = set(raw) - {"experiment", "train", "attacks", "defenses", "threat"}
    if unknown:
        raise SpecError(f"{where}: unknown tables {sorted(unknown)}; use experiment, train, attacks, defenses, threat")
    threat = dict(raw.get("threat", {}))
    if set(threat) - {"deny"}:
        raise SpecError(f"{where}: unknown [threat] keys {sorted(set(threat) - {'deny'})}; known: deny")
    try:
        deny = check_deny(threat.get("deny", []))
    except ValueError as e:
        raise SpecError(f"{where}: [threat] {e}") from None
    exp = dict(raw.get("experiment", {}))
    fields = {f.name for f in dataclasses.fields(Experiment)} - {"train", "attacks", "defenses", "source", "deny"}
    bad = set(exp) - fields
    if bad:
        raise SpecError(f"{where}: unknown [experiment] keys {sorted(bad)}; known: {sorted(fields)}")
    try:
        train = TrainConfig(**raw.get("train", {}))
    except TypeError as e:
        raise SpecError(f"{where}: bad [train] table: {e}") from None
    except ValueError as e:
        raise SpecError(f"{where}: [train]: {e}") from None
    kw: dict[str, Any] = {}
    for k, v in exp.items():
        if k == "models":
            kw[k] = tuple(sorted(dict(v).items()))
        elif isinstance(v, list):
            kw[k] = tuple(v)
        else:
            kw[k] = v
    for k in ("n_train", "n_test"):  # "all": the dataset's whole split (TOML has no null)
        if kw.get(k) == "all":
            kw[k] = None
        elif k in kw and (isinstance(kw[k], bool) or not isinstance(kw[k], int) or kw[k] < 1):
            raise SpecError(f"{where}: [experiment] {k} must be a positive integer or \"all\", got {kw[k]!r}")
    for k in ("depths", "seeds"):
        if k in kw and not all(isinstance(x, int) and not isinstance(x, bool) for x in kw[k]):
            raise SpecError(f"{where}: [experiment] {k} must be a list of integers")
    attacks = expand_entries(raw.get("attacks", []), "attacks", where)
    defenses = expand_entries(raw.get("defenses", [{"name": "none"}]), "defenses", where)
    known = kw.get("datasets", Experiment.datasets)
    for e in attacks + defenses:
        if e.datasets is not None and not set(e.datasets) <= set(known):
            raise SpecError(f"{where}: {e.name!r} lists datasets {sorted(set(e.datasets) - set(known))} that "
                            f"[experiment] datasets ({', '.join(known)}) does not")
    return Experiment(**kw, train=train, attacks=attacks, defenses=defenses, deny=deny, source=where)


def check_deny(names: Any) -> tuple[str, ...]:
    """Denied capabilities as sorted values; a clear error for anything that is not one."""
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"deny must be a list of capability names, got {names!r}")
    known = {c.value for c in Capability}
    bad = [n for n in names if n not in known or n == Capability.ARCHITECTURE.value]
    if bad:
        raise ValueError(f"cannot deny {bad}: deny takes capability names other than architecture: "
                         f"{', '.join(sorted(known - {Capability.ARCHITECTURE.value}))}")
    return tuple(sorted(set(names)))


def all_depths(exp: Experiment) -> tuple[int, ...]:
    """The experiment's depths followed by any further depths its entries ask for (stable order)."""
    extra = [d for e in exp.attacks + exp.defenses for d in (e.depths or ())]
    return tuple(dict.fromkeys([*exp.depths, *extra]))


def without_entry_limits(entries: tuple[Entry, ...], depths: bool, datasets: bool) -> tuple[Entry, ...]:
    """Drop per-entry depth/dataset limits (a command-line --depths/--datasets overrides them)."""
    return tuple(dataclasses.replace(e, depths=None if depths else e.depths,
                                     datasets=None if datasets else e.datasets) for e in entries)


def select(entries: tuple[Entry, ...], names: list[str] | None) -> tuple[Entry, ...]:
    """Keep the experiment's entries for these names; a name it does not list runs with defaults."""
    if not names:
        return entries
    out: list[Entry] = []
    for n in names:
        mine = [e for e in entries if e.name == n]
        out.extend(mine or [Entry(n)])
    return tuple(out)
