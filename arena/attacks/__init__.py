"""Attacks: every module in this package is imported and registers its attacks in ATTACKS.

May import protocol (the view), models and the vocabulary; never defenses, scoring or run (an attack
sees only its ServerView). The public names a plug-in author needs are re-exported here.
"""
import importlib
import pkgutil

from ..protocol.view import ServerView
from ..records import AttackOutput, Capability
from .base import ATTACKS, KINDS, Attack, PolicyContext, register_attack

for _m in pkgutil.iter_modules(__path__):
    if _m.name != "base" and not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["ATTACKS", "KINDS", "Attack", "AttackOutput", "Capability", "PolicyContext", "ServerView",
           "register_attack"]
