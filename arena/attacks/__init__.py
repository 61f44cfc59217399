"""Attacks: every module in this package is imported and registers its attacks in ATTACKS."""
import importlib
import pkgutil

from .base import ATTACKS, KINDS, Attack, PolicyContext, register_attack

for _m in pkgutil.iter_modules(__path__):
    if _m.name != "base" and not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["ATTACKS", "KINDS", "Attack", "PolicyContext", "register_attack"]
