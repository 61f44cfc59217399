"""Defenses: every module in this package is imported and registers its defenses in DEFENSES.

Heavy optional dependencies (opacus, tenseal) are imported inside the code that needs them, so
importing this package never requires them.
"""
import importlib
import pkgutil

from .base import DEFENSES, Defense, register_defense

for _m in pkgutil.iter_modules(__path__):
    if _m.name != "base" and not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["DEFENSES", "Defense", "register_defense"]
