"""Defenses: each module registers its defenses in DEFENSES on import."""
from .base import DEFENSES, Defense, register_defense

from . import basic  # noqa: F401,E402  (registers)

__all__ = ["DEFENSES", "Defense", "register_defense"]
