"""A user's own defense, run in the matrix without touching arena's code: the README's example
as written, through --plugin (module name and .py path) and through an installed entry point."""
from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

from arena.defenses import DEFENSES
from arena.matrix import main
from arena.run.store import read_cells

README = Path(__file__).resolve().parents[1] / "README.md"

TINY = """
[experiment]
datasets = ["digits"]
depths = [1]
seeds = [0]
n_train = 120
n_test = 60
n_aux = 40

[train]
epochs = 1
batch_size = 16
record_steps = 1
max_steps = 6

[[attacks]]
name = "mean-image"

[[defenses]]
name = "none"
"""


def readme_example() -> str:
    text = README.read_text()
    m = re.search(r"<!-- extending-example[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert m, "README's Extending section lost its tested example"
    return m.group(1)


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    (tmp_path / "tiny.toml").write_text(TINY)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    DEFENSES.unregister("quantize")
    DEFENSES.unregister("ep-quantize")
    for mod in ("my_defenses", "arena_plugin_my_defenses", "ep_pkg_defenses"):
        sys.modules.pop(mod, None)  # the next test imports (and registers) afresh


def _run(d: Path, out: str, *more: str) -> list:
    assert main(["-e", str(d / "tiny.toml"), "--out", str(d / out), "-q", "--no-report", *more]) == 0
    return read_cells(d / out)


def test_readme_defense_via_plugin_module(plugin_dir, capsys):
    (plugin_dir / "my_defenses.py").write_text(readme_example())
    assert "quantize" not in DEFENSES
    assert main(["--plugin", "my_defenses", "--list"]) == 0
    assert "quantize" in capsys.readouterr().out
    cells = _run(plugin_dir, "run", "--plugin", "my_defenses", "--defenses", "none", "quantize")
    by = {(c.defense, c.defense_params.get("step")): c for c in cells}
    assert set(by) == {("none", None), ("quantize", None)}
    q = by["quantize", None]
    assert q.status == "ok" and q.cost["quantize_step"] == 0.25
    assert 0 <= q.utility["test_acc"] <= 1 and "ssim" in q.metrics


def test_readme_defense_via_py_path_and_toml_grid(plugin_dir):
    path = plugin_dir / "elsewhere" / "my_defenses.py"
    path.parent.mkdir()
    path.write_text(readme_example())
    toml = (plugin_dir / "tiny.toml").read_text() + '\n[[defenses]]\nname = "quantize"\ngrid = { step = [0.0, 0.5] }\n'
    (plugin_dir / "tiny.toml").write_text(toml)
    cells = {(c.defense, c.defense_params.get("step")): c for c in _run(plugin_dir, "run", "--plugin", str(path))}
    assert set(cells) == {("none", None), ("quantize", 0.0), ("quantize", 0.5)}
    assert all(c.status == "ok" for c in cells.values())
    # strength zero is the identity: the same model and the same numbers as no defense
    assert cells["quantize", 0.0].utility == cells["none", None].utility
    assert cells["quantize", 0.0].metrics == cells["none", None].metrics


def test_bad_plugin_and_bad_parameter_are_clear_errors(plugin_dir, capsys):
    assert main(["--plugin", "no_such_module_xyz", "--list"]) == 2
    assert "no module named 'no_such_module_xyz'" in capsys.readouterr().err
    (plugin_dir / "my_defenses.py").write_text(readme_example())
    toml = plugin_dir / "tiny.toml"
    toml.write_text(toml.read_text() + '\n[[defenses]]\nname = "quantize"\nparams = { step = -1 }\n')
    assert main(["-e", str(toml), "--out", str(plugin_dir / "r"), "--plugin", "my_defenses"]) == 2
    assert "step must be a number >= 0" in capsys.readouterr().err


def test_installed_entry_point(plugin_dir, monkeypatch):
    """An installed package's `arena.defenses` entry point is found with no --plugin."""
    (plugin_dir / "ep_pkg_defenses.py").write_text(
        readme_example().replace('name = "quantize"', 'name = "ep-quantize"').replace("@register_defense\n", ""))
    real = metadata.entry_points
    fake = metadata.EntryPoint(name="ep-quantize", value="ep_pkg_defenses:Quantize", group="arena.defenses")

    def entry_points(**kw):
        return [fake] if kw.get("group") == "arena.defenses" else real(**kw)

    monkeypatch.setattr("arena.registry.metadata.entry_points", entry_points)
    monkeypatch.setattr(DEFENSES, "_plugins_loaded", False)
    cells = _run(plugin_dir, "run", "--defenses", "none", "ep-quantize")
    q = next(c for c in cells if c.defense == "ep-quantize")
    assert q.status == "ok" and q.cost["quantize_step"] == 0.25
