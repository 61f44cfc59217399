"""Name -> factory registries with loud errors.

Names are the strings that appear on the command line and in results. Users add entries
without editing arena: ``@ATTACKS.register("my-attack")`` in their own module, or an installed
package exposing an ``arena.attacks`` / ``arena.defenses`` entry point.

A registry made with ``stacks=True`` (the defenses') also resolves *stacked* names, its entries
joined by ``+`` in the order they apply (``noise+dp-sgd``): `get` hands the member names and
factories to the combiner its owner installed (`set_combiner`; the defenses' is
`arena.defenses.stack`), so a stack resolves wherever a single name does (planner, runner,
config, CLI, report), plug-in members included. ``+`` is therefore refused in registered names.
An unknown member is the usual error listing the known names; a combination the combiner
refuses (a member twice, setups with no overlap, two channels) is its ValueError.
"""
from __future__ import annotations

import difflib
from importlib import metadata
from typing import Callable, Generic, Iterable, TypeVar

T = TypeVar("T")

STACK_SEPARATOR = "+"


def stack_members(name: str) -> tuple[str, ...] | None:
    """The member names of a stacked name ``a+b`` in order (None: not a stack). Empty members
    (``a+``) are kept as empty strings, for the caller to refuse with its own message."""
    return tuple(name.split(STACK_SEPARATOR)) if STACK_SEPARATOR in name else None


class UnknownNameError(KeyError):
    """Raised for a name no registry entry has; the message lists the known names."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it readable
        return str(self.args[0])


class Registry(Generic[T]):
    def __init__(self, kind: str, entry_point_group: str | None = None, stacks: bool = False) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = {}
        self._group = entry_point_group
        self._plugins_loaded = entry_point_group is None
        self._stacks = stacks
        self._combiner: Callable[[str, tuple[str, ...], tuple[Callable[..., T], ...]], Callable[..., T]] | None = None
        self._combined: dict[tuple, Callable[..., T]] = {}  # one factory per (name, member factories)

    def set_combiner(self, combine: Callable[[str, tuple[str, ...], tuple[Callable[..., T], ...]],
                                             Callable[..., T]]) -> None:
        """Install what turns (stack name, member names, member factories) into the stack's factory;
        it raises ValueError for members that cannot be combined."""
        if not self._stacks:
            raise ValueError(f"the {self.kind} registry does not resolve stacked names")
        self._combiner, self._combined = combine, {}

    def register(self, name: str, factory: Callable[..., T] | None = None):
        """Register ``factory`` under ``name``; usable as a decorator."""
        if not name or name != name.strip() or " " in name:
            raise ValueError(f"{self.kind} name {name!r} must be a non-empty word without spaces")
        if self._stacks and STACK_SEPARATOR in name:
            raise ValueError(f"{self.kind} name {name!r} must not contain {STACK_SEPARATOR!r}: it joins the members "
                             f"of a stacked {self.kind} (e.g. 'noise+dp-sgd')")

        def add(f: Callable[..., T]) -> Callable[..., T]:
            existing = self._entries.get(name)
            if existing is not None and existing is not f:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered by {_where(existing)}; pick another name"
                )
            self._entries[name] = f
            return f

        return add(factory) if factory is not None else add

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in metadata.entry_points(group=self._group):
            obj = ep.load()  # importing the module runs its @register decorators
            if callable(obj) and ep.name not in self._entries:
                self.register(ep.name, obj)  # the same name rules as the decorator

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._entries)

    def _is_stack(self, name: object) -> bool:
        return self._stacks and isinstance(name, str) and STACK_SEPARATOR in name

    def __contains__(self, name: object) -> bool:
        """Whether ``name`` resolves: a registered name, or a stack of registered names (whether the
        members can be combined is `get`'s to say)."""
        self._load_plugins()
        if self._is_stack(name):
            return all(m in self._entries for m in stack_members(name))  # type: ignore[arg-type, union-attr]
        return name in self._entries

    def get(self, name: str) -> Callable[..., T]:
        self._load_plugins()
        if self._is_stack(name):
            return self._get_stack(name)
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self._unknown_message(name)) from None

    def _get_stack(self, name: str) -> Callable[..., T]:
        members = stack_members(name) or ()
        if not all(members):
            raise UnknownNameError(f"{self.kind} stack {name!r} has an empty member: join {self.kind} names with "
                                   f"{STACK_SEPARATOR!r}, e.g. 'noise+dp-sgd'")
        bad = [m for m in dict.fromkeys(members) if m not in self._entries]
        if bad:
            raise UnknownNameError(f"in {self.kind} stack {name!r}: {self._unknown_message(*bad)}")
        if self._combiner is None:
            raise UnknownNameError(f"{self.kind} stacks cannot be resolved: nothing installed a combiner "
                                   f"(import arena.defenses)")
        factories = tuple(self._entries[m] for m in members)
        key = (name, factories)  # re-registering a member gives a new stack factory
        if key not in self._combined:
            self._combined[key] = self._combiner(name, members, factories)
        return self._combined[key]

    def create(self, name: str, **params) -> T:
        return self.get(name)(**params)

    def check(self, names: Iterable[str]) -> None:
        """Raise one error naming every unknown name, before any work starts; a stack whose members
        cannot be combined raises the combiner's ValueError."""
        names = list(names)
        bad = [n for n in names if not self._is_stack(n) and n not in self]
        if bad:
            raise UnknownNameError(self._unknown_message(*bad))
        for n in names:
            if self._is_stack(n):
                self.get(n)

    def _unknown_message(self, *names: str) -> str:
        known = self.names()
        parts = []
        for n in names:
            close = difflib.get_close_matches(n, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            parts.append(f"{n!r}{hint}")
        return (
            f"unknown {self.kind} {', '.join(parts)}; known {self.kind}s: {', '.join(known) or '(none)'}"
        )


def _where(obj: object) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
