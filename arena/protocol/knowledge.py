"""What an attacker knows of the defense: Kerckhoffs's principle made explicit.

The attacker knows which defense (or stack) the client runs and its *public* parameters (sigma and clip
of the noise, b of batching, p of dropout, the HE protocol and its CKKS parameters, SplitGuard's p_fake
...): exactly what `Defense.params()` returns, member by member. It never knows the defense's
randomness (its generator streams) or the client's secrets. Every view and every malicious policy gets
this knowledge; it is not a capability (an attacker who did not know the defense is the weaker,
defense-oblivious one, and every attack may simply ignore it).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DefenseKnowledge:
    """The defense's name(s) and public parameters. ``members``: one (name, params) per stacked member;
    ``(("none", {}),)`` when the client runs no defense."""

    members: tuple[tuple[str, dict[str, Any]], ...] = (("none", {}),)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.members)

    def has(self, name: str) -> bool:
        return name in self.names

    def params_of(self, name: str) -> dict[str, Any] | None:
        """A copy of member ``name``'s public parameters (None: the client does not run it)."""
        for n, p in self.members:
            if n == name:
                return copy.deepcopy(p)
        return None

    def __str__(self) -> str:
        return "+".join(self.names)


def knowledge_of(defense: Any) -> DefenseKnowledge:
    """The public knowledge of a `Defense` instance (a stack: of each member)."""
    names = getattr(defense, "member_names", None)
    members = getattr(defense, "members", None)
    if names is not None and members is not None:
        return DefenseKnowledge(tuple((str(n), copy.deepcopy(m.params())) for n, m in zip(names, members)))
    return DefenseKnowledge(((str(defense.name), copy.deepcopy(defense.params())),))
