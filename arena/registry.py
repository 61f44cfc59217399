"""Name -> factory registries with loud errors.

Names are the strings that appear on the command line and in results. Users add entries
without editing arena: ``@ATTACKS.register("my-attack")`` in their own module, or an installed
package exposing an ``arena.attacks`` / ``arena.defenses`` entry point.
"""
from __future__ import annotations

import difflib
from importlib import metadata
from typing import Callable, Generic, Iterable, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """Raised for a name no registry entry has; the message lists the known names."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it readable
        return str(self.args[0])


class Registry(Generic[T]):
    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = {}
        self._group = entry_point_group
        self._plugins_loaded = entry_point_group is None

    def register(self, name: str, factory: Callable[..., T] | None = None):
        """Register ``factory`` under ``name``; usable as a decorator."""
        if not name or name != name.strip() or " " in name:
            raise ValueError(f"{self.kind} name {name!r} must be a non-empty word without spaces")

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
                self._entries[ep.name] = obj

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return name in self._entries

    def get(self, name: str) -> Callable[..., T]:
        self._load_plugins()
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self._unknown_message(name)) from None

    def create(self, name: str, **params) -> T:
        return self.get(name)(**params)

    def check(self, names: Iterable[str]) -> None:
        """Raise one error naming every unknown name, before any work starts."""
        bad = [n for n in names if n not in self]
        if bad:
            raise UnknownNameError(self._unknown_message(*bad))

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
