"""On-disk cache of trained split models (`--model-cache DIR`), so a resumed run, a re-run with a
new attack, or another experiment with the same scenario does not train the same model again.

Training dominates a cell (DESIGN.md, "Where the time goes"). An entry is keyed by a hash of
everything that shaped the training run: the scenario (dataset, model, depth, setup, seed, subset
sizes, train config), the defense and its parameters, the auxiliary-set size, the device, the torch
thread count and version, and the source code that trains (arena's modules except the attacks and
the reporting side, plus the defense's own module, so an edited plugin misses the cache). It holds
the `TrainResult`, the cell cost (with the defense's report) and the global random states after
training, which are restored on a hit so that the attacks draw exactly what they would have drawn
after a fresh training run: cached or not, the same numbers.

On by default, in ``<user cache>/models`` (`resolve_dir`: ``$ARENA_MODEL_CACHE``, else
``$ARENA_CACHE/models``, else ``~/.cache/arena/models``); `python -m arena.matrix --no-model-cache`
turns it off, ``--model-cache-info`` shows its size and ``--clear-model-cache`` empties it.

Malicious attacks (FSHA) impose their own training and keep state from it: never cached. A cache
entry that cannot be written (an unpicklable transcript) or read (a corrupt file) is skipped with
a warning; the run goes on by training.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import random
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

# What shapes a training run, by path under arena/ (a folder ends in "/"): editing one of these
# invalidates the cache. NOT_TRAINING is what does not (attacks run after training; scoring, the view,
# execution and reporting only read its result; it wins over TRAINING). Every module must match one
# of the two (tests/test_layout.py), so a new or moved file is a decision, not an accident of its name; a file
# that matches neither counts as training (a needless retraining is safe, a stale model is not).
TRAINING = ("__init__.py", "records.py", "registry.py", "seeding.py", "params.py", "data/", "models/",
            "protocol/", "he/", "defenses/", "run/__init__.py", "run/config.py", "run/plan.py",
            "run/runner.py")
NOT_TRAINING = ("attacks/", "scoring/", "report/", "matrix.py", "protocol/view.py", "run/executors.py",
                "run/workers.py", "run/ray.py", "run/progress.py", "run/plugins.py", "run/store.py",
                "run/model_cache.py", "run/artifacts.py", "run/grants.py")


OFF = ("off", "none", "0", "false", "no")  # $ARENA_MODEL_CACHE / --model-cache values that turn it off


def resolve_dir(value: str | None = None) -> Path | None:
    """The cache's folder for a ``--model-cache`` value (None: ``$ARENA_MODEL_CACHE``, else the
    user cache's ``models``); None when the value turns it off (`OFF`). Not created here."""
    value = value if value is not None else os.environ.get("ARENA_MODEL_CACHE") or None
    if value is not None:
        return None if value.strip().lower() in OFF else Path(value).expanduser()
    from ..data.sources import cache_dir

    return cache_dir() / "models"


def info(cache_dir: str | os.PathLike) -> tuple[int, int]:
    """(entries, bytes) of the cache at ``cache_dir`` (0, 0 if it does not exist)."""
    files = list(Path(cache_dir).glob("*.pt")) if Path(cache_dir).is_dir() else []
    return len(files), sum(f.stat().st_size for f in files)


def clear(cache_dir: str | os.PathLike) -> tuple[int, int]:
    """Delete every entry (and stale temporary file) of the cache; returns what `info` said before."""
    before = info(cache_dir)
    if Path(cache_dir).is_dir():
        for f in [*Path(cache_dir).glob("*.pt"), *Path(cache_dir).glob("*.tmp")]:
            f.unlink(missing_ok=True)
    return before


def _matches(rel: str, patterns: tuple[str, ...]) -> bool:
    return any(rel.startswith(p) if p.endswith("/") else rel == p for p in patterns)


def shapes_training(rel: str) -> bool:
    """Whether arena/<rel> (a POSIX path) is part of the code that trains a model."""
    return not _matches(rel, NOT_TRAINING)


@lru_cache(maxsize=None)
def _file_hash(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    root = Path(__file__).resolve().parents[1]  # arena/
    files = sorted(p for p in root.rglob("*.py") if shapes_training(p.relative_to(root).as_posix()))
    h = hashlib.sha256()
    for p in files:
        h.update(p.relative_to(root).as_posix().encode() + _file_hash(str(p)).encode())
    return h.hexdigest()


def _source_hash(cls: Any) -> str:
    try:
        return _file_hash(inspect.getsourcefile(cls) or "")
    except (TypeError, OSError):
        return "?"


def cache_key(spec: Any, defense_cls: type, device: str) -> str:
    # a stacked defense's class lives in arena; its members' modules (plug-ins too) shaped the run
    defense_src = "+".join(_source_hash(c) for c in (defense_cls, *getattr(defense_cls, "member_classes", ())))
    # the training run (CellSpec.train_key: scenario without record_steps, setup as the defense turns
    # it, defense, n_aux) and how many steps its transcript keeps
    ident = {"run": spec.train_key, "record_steps": spec.scenario.train.record_steps,
             "track": spec.scenario.train.track, "device": device, "threads": torch.get_num_threads(),
             "torch": torch.__version__, "code": code_fingerprint(), "defense_code": defense_src}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "random": random.getstate(), "numpy": np.random.get_state()}


def _set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate(s["random"])
    np.random.set_state(s["numpy"])


def cached_training(cache_dir: str | os.PathLike | None, key: str | None,
                    train: Callable[[], tuple[Any, dict[str, Any]]]) -> tuple[Any, dict[str, Any]]:
    """``train()`` -> (result, cost), through the cache at ``cache_dir`` (None: no cache)."""
    if cache_dir is None or key is None:
        return train()
    path = Path(cache_dir) / f"{key}.pt"
    if path.exists():
        try:
            blob = torch.load(path, weights_only=False)
            _set_rng_state(blob["rng"])
            return blob["result"], {**blob["cost"], "train_cached": True}
        except Exception as e:  # noqa: BLE001 - a bad entry costs a retraining, not the cell
            warnings.warn(f"model cache entry {path} unreadable ({type(e).__name__}: {e}); training again")
    result, cost = train()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save({"result": result, "cost": cost, "rng": _rng_state()}, tmp)
        os.replace(tmp, path)
    except Exception as e:  # noqa: BLE001
        warnings.warn(f"model cache: could not store {path.name} ({type(e).__name__}: {e})")
        Path(str(path.with_suffix(f".{os.getpid()}.tmp"))).unlink(missing_ok=True)
    return result, cost
