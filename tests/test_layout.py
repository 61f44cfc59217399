"""The package's layout as DESIGN.md draws it: imports run one way, down the layers, with no cycle
between files, and the model cache's idea of "code that trains" is an explicit, pinned decision."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from arena.run import model_cache

ROOT = Path(__file__).resolve().parents[1] / "arena"

# layer of each top-level room; an import may only go to the same or a lower number
LAYER = {"records": 0, "registry": 0, "seeding": 0, "params": 0, "": 0,
         "data": 1, "models": 1,
         "protocol": 2, "he": 2.5, "scoring": 2.5,
         "attacks": 3, "defenses": 3,
         "run": 4, "report": 5, "matrix": 6}
FORBIDDEN = {("defenses", "attacks"), ("attacks", "defenses"), ("he", "scoring"), ("scoring", "he")}


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imports(mod: str, path: Path, known: set[str]) -> set[str]:
    """Every arena module `mod` imports, anywhere in the file (function-level imports included)."""
    out = set()
    pkg = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.ImportFrom):
            if n.level:
                base = ".".join(pkg[:len(pkg) - n.level + 1] + ([n.module] if n.module else []))
            else:
                base = n.module or ""
            if not base.startswith("arena"):
                continue
            for a in n.names:  # `from . import x` names a module when x is one
                out.add(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base)
        elif isinstance(n, ast.Import):
            out |= {a.name for a in n.names if a.name.startswith("arena")}
    out.discard(mod)
    return {m for m in out if m in known}


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(m, p, set(mods)) for m, p in mods.items()}


def _room(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_the_import_walk_sees_real_edges():
    g = _graph()
    assert "arena.protocol.split" in g["arena.protocol.train"]
    assert "arena.run.ray" in g["arena.run.executors"]  # a function-level import counts too
    assert "arena.models.resnet" in g["arena.models"]


def test_no_import_cycle_between_files():
    g = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(g[m]):
            if state.get(d) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)


def test_imports_run_down_the_layers():
    bad = []
    for m, deps in _graph().items():
        src = _room(m)
        assert src in LAYER, f"{m}: a new top-level room; give it a layer in tests/test_layout.py"
        for d in deps:
            dst = _room(d)
            if d == "arena" or dst == src:
                continue
            if LAYER[dst] > LAYER[src] or (src, dst) in FORBIDDEN:
                bad.append(f"{m} imports {d}")
    assert not bad, "imports against the layer order:\n" + "\n".join(sorted(bad))


def test_every_subpackage_says_what_it_holds_and_may_import():
    for init in ROOT.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and "import" in doc.lower(), f"{init.relative_to(ROOT.parent)}: docstring must say what it may import"


# Which modules do NOT shape a training run: pinned, so that moving or adding a file is a decision
# recorded here, never a silent change of what invalidates a cached model. This is the set the cache
# excluded before the package was grouped into subpackages (then by file name), at its new paths.
NOT_TRAINING = {
    "matrix.py", "protocol/view.py", "scoring/metrics.py", "scoring/score.py", "scoring/__init__.py",
    "run/executors.py", "run/workers.py", "run/ray.py", "run/progress.py", "run/plugins.py",
    "run/store.py", "run/model_cache.py", "run/artifacts.py", "run/grants.py",
    "report/__init__.py", "report/__main__.py", "report/cli.py", "report/conclusions.py",
    "report/document.py", "report/html.py", "report/plots.py", "report/statistics.py", "report/tables.py",
    "report/headline.py", "report/paired.py", "report/coverage.py",
    "report/scorecard.py", "report/scorecard_doc.py", "report/scorecard_plot.py", "report/compare.py",
}


def test_model_cache_classifies_every_module_as_pinned():
    files = sorted(p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*.py"))
    unclassified = [f for f in files if not (model_cache._matches(f, model_cache.TRAINING)
                                             or model_cache._matches(f, model_cache.NOT_TRAINING))]
    assert not unclassified, f"add these to model_cache.TRAINING or NOT_TRAINING: {unclassified}"
    not_training = {f for f in files if not model_cache.shapes_training(f)}
    attacks = {f for f in not_training if f.startswith("attacks/")}
    assert attacks == {f for f in files if f.startswith("attacks/")}  # attacks run after training
    assert not_training - attacks == NOT_TRAINING
    for f in ("protocol/train.py", "defenses/noise.py", "defenses/privacy.py", "he/channel.py",
              "data/sources.py", "models/resnet.py", "run/runner.py", "run/config.py", "records.py"):
        assert model_cache.shapes_training(f), f
