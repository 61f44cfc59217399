"""Attacks: each module registers its attacks in ATTACKS on import."""
from .base import ATTACKS, KINDS, Attack, PolicyContext, register_attack

from . import baseline  # noqa: F401,E402  (registers)

__all__ = ["ATTACKS", "KINDS", "Attack", "PolicyContext", "register_attack"]
