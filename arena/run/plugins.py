"""User modules that register attacks or defenses (`--plugin MODULE`).

A plugin is an ordinary Python module whose import runs ``@register_attack`` /
``@register_defense``. It is named either as an importable module (``my_pkg.my_defense``, found on
``sys.path``/``PYTHONPATH``) or as a path to a ``.py`` file. Parallel workers are fresh processes,
so they import the same plugins again before running anything (see `arena.run.executors`).
Installed packages can instead expose an ``arena.attacks`` / ``arena.defenses`` entry point;
those are loaded automatically (see `arena.registry`).
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Iterable


class PluginError(ImportError):
    """A --plugin module could not be imported; the message says what to check."""


def import_plugin(name: str) -> ModuleType:
    """Import one plugin by module name or by the path of a .py file (idempotent)."""
    path = Path(name)
    if name.endswith(".py"):
        if not path.is_file():
            raise PluginError(f"--plugin {name}: no such file")
        mod_name = f"arena_plugin_{path.stem}"
        existing = sys.modules.get(mod_name)
        if existing is not None and Path(getattr(existing, "__file__", "")).resolve() == path.resolve():
            return existing
        spec = importlib.util.spec_from_file_location(mod_name, path)
        if spec is None or spec.loader is None:
            raise PluginError(f"--plugin {name}: not a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[mod_name]
            raise
        return module
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and name.startswith(e.name):
            raise PluginError(f"--plugin {name}: no module named {e.name!r}; put its folder on PYTHONPATH, "
                              f"install it, or pass the path of the .py file") from None
        raise


def import_plugins(names: Iterable[str]) -> list[ModuleType]:
    return [import_plugin(n) for n in names]
