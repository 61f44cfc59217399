"""Stacked defenses: ``noise+dp-sgd`` applies `noise`, then `dp-sgd`, to one protocol.

Paper: none of its own; each member's module names its paper. Real deployments combine defenses
and the members' docstrings advise it (`noise`: combine with `dp-sgd` for the client's weights;
`batching` leaves the cut gradient to a gradient defense).

Threat model: the server sees what the stacked protocol sends: everything no member removes,
transformed by every member that transforms it. ``removes`` is the union of the members' (the
class declares the union of their declarations; the applied setup carries what each member really
removed, and that decides a cell's `blocked`). What the client does at test time is what the
members do, in order (see "Composition" below), so the cell's test accuracy is the deployed
stacked pipeline's, measured once; the client's time and the bytes on the wire are measured on
that one run (the client's time of every member adds up there; the bytes are what the one channel
sends).

Naming and parameters: the name is the member names joined by ``+`` in the order they apply
(order is part of the name: ``dp-sgd+noise`` is another defense); ``Stack(**params)`` takes one
table per member keyed by its name (``noise={"scale": 0.5}``), members left out take their
defaults, and ``params()`` is ``{member: member.params()}``. ``DEFENSES.get("noise+dp-sgd")``
builds (once per name and member classes) a subclass of `Stack` whose class declarations combine
the members' (`arena.registry` resolves ``+`` names through `stack_class`), so every reader of a
defense class (planner, runner, ``--list``) handles stacks without knowing of them.

Declarations, decided from the member classes when the name is resolved (before any work):

- ``setups``: the setups in which the chain applies: member 1 accepts the cell's setup, member 2
  the setup member 1 turns it into (`converts_setups`, he: vanilla -> u-shaped), and so on. An
  empty chain is a conflict (e.g. splitguard, vanilla only, + batching, label-only/u-shaped).
  ``not_applicable`` walks the same chain with the member *instances* (a member may be undefined for
  a task, e.g. binary-only) and gives the first member's reason, naming the member.
- ``converts_setups``: declared only when the first member converts the setup and no later member
  converts any (then every later member sees the same setup either way and the two setups' cells
  can share one training run); otherwise nothing is declared and the cells train apart (safe).
- ``train_cost`` (a scheduling hint): 1 + the sum of the members' extra costs (c - 1).
- ``covers``: the members' ``covers`` in words, each tagged with its member, e.g. "each release of
  the activations (clipped, noised) [noise] and the client's front weights (DP-SGD) [dp-sgd]".
- Conflicts, each a ValueError naming the members: a member twice; ``none`` as a member (it adds
  nothing; write the other members alone); setups with no overlap (above); two members that own the
  same SplitSetup field (`Defense.owns`: he's channel, splitguard's client monitor).

Composition at apply: each member's ``apply`` gets the setup the previous member returned and its
own generator, derived from the stack's by position and member name (``derived_generator``, which
draws nothing from the stack's); a member therefore draws from a stream of its own, not the one
it would draw from alone (the training-time hooks share the run's defense stream in any case).
Checked after each member, with a clear error naming it: a member must extend the hook tuples,
``removes`` and ``derivable`` of the earlier members, never drop them; the channel, the client
monitor and the train config may be set by one member only (what ``owns`` could not declare, e.g.
a plug-in's channel, is caught here, still before training); a member that sets
``inference_hooks`` must keep the earlier members' test-time transform as its prefix. A member that
adds activation transforms (smash hooks) and leaves ``inference_hooks`` alone does at test time
what it does in training (SplitSetup's default); if an earlier member already fixed the test-time
transform, the stack appends the new hooks to it, so each member keeps its own test-time meaning.
``wrap_client`` may be set by several members only if each calls the one before it (as `dp-sgd`
does); that cannot be checked and is the member's contract.

Report: the members' figures, each under its own key; a key that two members report (e.g.
``noise_multiplier``, ``delta`` for noise+dp-sgd) is kept for each, prefixed with its member's
name (``noise.delta``, ``dp-sgd.delta``), with that member's qualifier keys (``<key>_scope``,
``<key>_relation``, ...) prefixed alike, so nothing is overwritten or summed and each ε keeps its
scope beside it (noise's ``epsilon_activations`` and dp-sgd's ``epsilon_weights`` are different
guarantees and stay apart). Clashes are decided on the keys reported at the time: a key a member
adds only after training (noise's ``accountant``) is prefixed in a finished cell's cost and may not
be in a blocked cell's. ``stack_members`` lists the members, ``stack_covers`` says in words what
the stack covers. ``after_training`` runs every member's.

Strength zero: a stack of members at strength zero is the identity: each returns the setup it
was given, so the stack returns the very setup it got and reproduces `none` bit for bit (a test).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any, Callable, ClassVar

import torch

from ..protocol.train import SplitSetup, derived_generator
from ..records import SETUPS
from ..registry import STACK_SEPARATOR
from .base import DEFENSES, Defense

# SplitSetup fields one member at most may set (an extension of hook tuples never conflicts)
SINGLE = {"channel": "channel (the wire)", "client_monitor": "client monitor", "train_config": "train config"}
EXTENDED = ("smash_hooks", "client_loss_terms", "cut_grad_hooks", "derivable")


def _decl(factory: Any, attr: str, default: Any) -> Any:
    """A member's class declaration (a plug-in factory that is not a Defense class: the default)."""
    return getattr(factory, attr, default)


def _chain(setup: str, members: list[tuple[str, Any]],
           why: Callable[[Any, str], str | None]) -> tuple[str | None, str | None]:
    """Walk ``setup`` through the members: (the final setup, None), or (None, the first reason)."""
    cur = setup
    for name, m in members:
        reason = why(m, cur)
        if reason is not None:
            return None, f"member {name}: {reason}"
        cur = dict(_decl(m, "converts_setups", {})).get(cur, cur)
    return cur, None


def _declared_reason(factory: Any, setup: str) -> str | None:
    setups = tuple(_decl(factory, "setups", SETUPS))
    return None if setup in setups else f"applies to the {' and '.join(setups)} setup(s) only, not {setup}"


def _in_words(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def stack_covers(members: list[tuple[str, Any]]) -> str:
    """What a stack protects, in words: each member's ``covers`` tagged with its name."""
    return _in_words([f"{_decl(m, 'covers', '') or 'what it protects is not stated'} [{n}]" for n, m in members])


class Stack(Defense):
    """A stacked defense; `stack_class` makes one subclass per stacked name."""

    name = "stack"
    member_names: ClassVar[tuple[str, ...]] = ()
    member_classes: ClassVar[tuple[Any, ...]] = ()

    def __init__(self, **params: Any) -> None:
        unknown = [k for k in params if k not in self.member_names]
        if unknown:
            raise ValueError(f"defense stack {self.name!r} has no member(s) {unknown}; its parameters are tables "
                             f"keyed by member name: {', '.join(self.member_names)} (e.g. "
                             f"{self.member_names[0]}={{...}})")
        self.members: list[Defense] = []
        for n, factory in zip(self.member_names, self.member_classes):
            p = params.get(n, {})
            if not isinstance(p, Mapping):
                raise ValueError(f"defense stack {self.name!r}: the parameters of member {n} must be a table of "
                                 f"its parameters (e.g. {n} = {{ ... }}), got {p!r}")
            try:
                self.members.append(factory(**dict(p)))
            except (ValueError, TypeError) as e:
                raise type(e)(f"defense stack {self.name!r}, member {n}: {e}") from None
        self.removes = frozenset().union(*(m.removes for m in self.members))  # type: ignore[misc]

    def params(self) -> dict[str, Any]:
        return {n: m.params() for n, m in zip(self.member_names, self.members)}

    def not_applicable(self, setup: str, num_classes: int) -> str | None:
        _, reason = _chain(setup, list(zip(self.member_names, self.members)),
                           lambda m, s: m.not_applicable(s, num_classes))
        return None if reason is None else f"in stack {self.name}, {reason}"

    def apply(self, setup: SplitSetup, generator: torch.Generator) -> SplitSetup:
        cur, owner = setup, {}
        for i, (n, m) in enumerate(zip(self.member_names, self.members)):
            new = m.apply(cur, derived_generator(generator, f"stack member {i}: {n}"))
            cur = self._compose(cur, new, n, owner)
        return cur

    def _compose(self, before: SplitSetup, after: SplitSetup, member: str, owner: dict[str, str]) -> SplitSetup:
        """``after`` (member's output) checked against ``before``; test-time hooks kept per member."""
        if after is before:
            return after

        def conflict(what: str) -> ValueError:
            return ValueError(f"defense stack {self.name!r}: member {member} {what}; the members cannot be stacked")

        for f, label in SINGLE.items():
            if getattr(after, f) is not getattr(before, f):
                if f in owner:
                    raise conflict(f"sets the protocol's {label}, which member {owner[f]} already set: a stack "
                                   f"has one")
                owner[f] = member
        for f in EXTENDED:
            old, new = tuple(getattr(before, f)), tuple(getattr(after, f))
            if new[:len(old)] != old:
                raise conflict(f"replaces the {f} of the earlier members instead of extending them")
        if not after.removes >= before.removes:
            raise conflict("gives back a capability an earlier member removed")
        old_test = tuple(before.test_hooks())
        if after.inference_hooks is not before.inference_hooks:
            if after.inference_hooks is not None and tuple(after.inference_hooks)[:len(old_test)] != old_test:
                raise conflict("sets a test-time transform (inference_hooks) that drops the earlier members'")
        elif before.inference_hooks is not None and len(after.smash_hooks) > len(before.smash_hooks):
            # the test-time transform was fixed by an earlier member: this member's new activation
            # transforms run at test time too, as they would alone (SplitSetup's default)
            added = tuple(after.smash_hooks[len(before.smash_hooks):])
            after = after.replace(inference_hooks=tuple(before.inference_hooks) + added)
        return after

    def report(self) -> dict[str, Any]:
        reports = [(n, m.report()) for n, m in zip(self.member_names, self.members)]
        counts = Counter(k for _, r in reports for k in r)
        out: dict[str, Any] = {}
        for n, r in reports:
            clash = [k for k in r if counts[k] > 1]
            for k, v in r.items():
                mine = any(k == c or k.startswith(c + "_") for c in clash)  # a clashing key and its qualifiers
                out[f"{n}.{k}" if mine else k] = v
        return out | {"stack_members": list(self.member_names), "stack_covers": self.covers}

    def after_training(self, result: Any) -> None:
        for m in self.members:
            m.after_training(result)


def stack_class(name: str, members: tuple[str, ...], factories: tuple[Any, ...]) -> type[Stack]:
    """The Stack subclass of a stacked name, its declarations combined from the member classes;
    ValueError for members that cannot be stacked (the registry calls this when resolving ``name``)."""
    twice = [m for m, k in Counter(members).items() if k > 1]
    if twice:
        raise ValueError(f"defense stack {name!r} lists {', '.join(twice)} more than once; a member applies once "
                         f"(set its strength instead)")
    if "none" in members:
        raise ValueError(f"defense stack {name!r} has member none, which adds nothing: write "
                         f"{STACK_SEPARATOR.join(m for m in members if m != 'none')!r} alone")
    chain = list(zip(members, factories))
    setups = tuple(s for s in SETUPS if _chain(s, chain, _declared_reason)[0] is not None)
    if not setups:
        said = "; ".join(f"{n}: {', '.join(_decl(f, 'setups', SETUPS))}" + "".join(
            f", turning {x} into {y}" for x, y in dict(_decl(f, "converts_setups", {})).items()) for n, f in chain)
        raise ValueError(f"defense stack {name!r}: its members' setups do not overlap in any setup ({said}), "
                         f"so it applies nowhere")
    for i, (a, fa) in enumerate(chain):
        for b, fb in chain[i + 1:]:
            both = set(_decl(fa, "owns", ())) & set(_decl(fb, "owns", ()))
            if both:
                raise ValueError(f"defense stack {name!r}: members {a} and {b} both set the protocol's "
                                 f"{', '.join(SINGLE.get(x, x) for x in sorted(both))}: a stack has one")
    converts: dict[str, str] = {}
    if not any(_decl(f, "converts_setups", {}) for f in factories[1:]):
        for s, t in dict(_decl(factories[0], "converts_setups", {})).items():
            if s in setups:
                converts[s] = t
    costs = [float(_decl(f, "train_cost", 1.0)) for f in factories]
    attrs = {
        "name": name, "member_names": members, "member_classes": factories, "setups": setups,
        "removes": frozenset().union(*(_decl(f, "removes", frozenset()) for f in factories)),
        "converts_setups": converts, "train_cost": max(0.1, 1.0 + sum(c - 1.0 for c in costs)),
        "covers": stack_covers(chain),
        # one run serves vanilla and u-shaped only if no member touches the label owner
        "label_owner_neutral": all(bool(_decl(f, "label_owner_neutral", False)) for f in factories),
        "owns": frozenset().union(*(_decl(f, "owns", frozenset()) for f in factories)),
        "paper": "a stack of " + ", ".join(members) + " (each member's paper in its module)",
        "__module__": __name__, "__qualname__": f"Stack[{name}]",
        "__doc__": f"The stacked defense {name}: " + " then ".join(members) + ".",
    }
    return type(f"Stack[{name}]", (Stack,), attrs)


DEFENSES.set_combiner(stack_class)
