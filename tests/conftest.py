"""Shared fixtures: tiny, fast setups on scikit-learn's digits (no files needed)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# Tests never write to the user's cache: the per-user cache (datasets, trained models) points at a
# throwaway folder, and the trained-model cache (on by default for users) is off unless a test asks.
os.environ["ARENA_CACHE"] = tempfile.mkdtemp(prefix="arena-test-cache-")
os.environ["ARENA_MODEL_CACHE"] = "off"


def real_data_dir() -> Path | None:
    """Where the real MNIST/Fashion-MNIST files are for tests: $ARENA_DATA, else ../shared/data."""
    env = os.environ.get("ARENA_DATA")
    if env and Path(env).is_dir():
        return Path(env)
    return SHARED_DATA if SHARED_DATA.is_dir() else None


@pytest.fixture(scope="session")
def tiny_data():
    """A small digits split: 600 private, 200 test, 200 auxiliary samples (1×28×28)."""
    from arena.records import Scenario
    from arena.run.runner import load_data

    return load_data(Scenario("digits", "lenet", 1, n_train=600, n_test=200), n_aux=200, data_dir=None)


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module's tests (request it with ``pytestmark``): CI has two
    shared cores, and a second OpenMP thread only spins against the other processes."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def run_matrix(tmp_path):
    """``run_matrix(toml, *flags)``: write the experiment, run `python -m arena.matrix` on it quietly
    into ``tmp_path / "run"`` (it must exit 0) and return the recorded cells as dicts, in order."""
    import json

    from arena.matrix import main
    from arena.run.store import CELLS

    def run(toml: str, *flags: str) -> list[dict]:
        spec = tmp_path / "experiment.toml"
        spec.write_text(toml)
        out = tmp_path / "run"
        assert main(["-e", str(spec), "--out", str(out), "-q", *flags]) == 0
        return [json.loads(line) for line in (out / CELLS).read_text().splitlines()]

    return run
