"""Defenses: every module in this package is imported and registers its defenses in DEFENSES.

May import protocol, he, models and the vocabulary; never attacks, scoring or run. Privacy
accounting (`privacy`) lives here beside the defenses that use it. Heavy optional dependencies
(opacus, tenseal) are imported inside the code that needs them, so importing this package never
requires them. The public names a plug-in author needs are re-exported here.
"""
import importlib
import pkgutil

from ..protocol.train import SplitSetup
from ..records import Capability
from .base import DEFENSES, Defense, register_defense

for _m in pkgutil.iter_modules(__path__):
    if _m.name != "base" and not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["DEFENSES", "Capability", "Defense", "SplitSetup", "register_defense"]
