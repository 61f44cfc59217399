"""Execution: serial, --workers N and Ray give the same numbers; kill -9 / Ctrl-C lose no finished
cell and leave no corrupt line; a failing cell or a dying worker is an `error` cell and the run
goes on; progress; per-entry depths.

The plugin attack `test-fingerprint` reports sums of the trained client's weights and of the
smashed data at full float precision, so "same numbers" compares the trained models themselves.
"""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from arena.run.config import experiment_from_dict
from arena.matrix import main
from arena.run.progress import Progress, fmt_seconds
from arena.run.runner import plan
from arena.run.store import CELLS, read_cells

REPO = Path(__file__).resolve().parents[1]

PLUGIN = '''
import os, signal, time
import torch
from arena.attacks import Attack, register_attack
from arena.records import AttackOutput, Capability


@register_attack
class Fingerprint(Attack):
    name = "test-fingerprint"
    kind = "baseline"
    requires = frozenset({Capability.CLIENT_WEIGHTS, Capability.SMASHED})

    def run(self, view, generator):
        time.sleep(float(os.environ.get("ARENA_TEST_SLEEP", "0")))  # room to interrupt a subprocess run
        view.report_progress(1, 2)
        w = torch.cat([p.detach().flatten() for p in view.client_weights.parameters()]).double()
        _, smashed = view.stacked("smashed")
        view.report_progress(2, 2)
        fresh = torch.cat([p.detach().flatten() for p in view.client_arch().parameters()]).double()
        return AttackOutput(extra={"weight_sum": float(w.sum()), "weight_sq": float((w * w).sum()),
                                   "smashed_sum": float(smashed.double().sum()),
                                   "fresh_init_sum": float(fresh.sum())})  # the global RNG after training


@register_attack
class Boom(Attack):
    name = "test-boom"
    requires = frozenset({Capability.SMASHED})

    def run(self, view, generator):
        raise RuntimeError("boom on purpose")


@register_attack
class Die(Attack):
    name = "test-die"
    requires = frozenset({Capability.SMASHED})

    def run(self, view, generator):
        if view.client_depth == 1:  # undefended; deeper-split(k=1) survives
            os.kill(os.getpid(), signal.SIGKILL)  # a worker killed mid-cell (out of memory, say)
        return AttackOutput(extra={"survived": 1.0})
'''

TINY = """
[experiment]
datasets = ["digits"]
depths = [1]
seeds = [0, 1]
n_train = 120
n_test = 60
n_aux = 40

[train]
epochs = 1
batch_size = 16
record_steps = 1
max_steps = 4

[[attacks]]
name = "test-fingerprint"

[[defenses]]
name = "none"

[[defenses]]
name = "deeper-split"
params = { k = 1 }
"""
N_CELLS = 4  # 2 seeds x 2 defenses: 4 training runs


@pytest.fixture(scope="session")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("exec")
    (d / "fingerprint_plugin.py").write_text(PLUGIN)
    (d / "tiny.toml").write_text(TINY)
    return d


def _args(env, out, *more):
    return ["-e", str(env / "tiny.toml"), "--out", str(out), "-q", "--no-report",
            "--plugin", str(env / "fingerprint_plugin.py"), *more]


@pytest.fixture(scope="session")
def serial(env):
    out = env / "serial"
    assert main(_args(env, out)) == 0
    return {c.key: c for c in read_cells(out)}


def _same_numbers(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k].status, a[k].metrics, a[k].utility) == (b[k].status, b[k].metrics, b[k].utility), a[k].attack
        assert a[k].cost["client_flops"] == b[k].cost["client_flops"]


def _lines(out: Path) -> list[dict]:
    raw = (out / CELLS).read_bytes()
    assert raw.endswith(b"\n")
    return [json.loads(line) for line in raw.decode().splitlines()]  # every line whole and valid


def test_serial_run_is_complete(serial):
    assert len(serial) == N_CELLS and {c.status for c in serial.values()} == {"ok"}
    by = {(c.seed, c.defense): c.metrics for c in serial.values()}
    for seed in (0, 1):  # common random numbers: deeper-split(k=1) (a max-pool more) trains the same weights
        assert by[seed, "none"]["weight_sum"] == by[seed, "deeper-split"]["weight_sum"]
        assert by[seed, "none"]["smashed_sum"] != by[seed, "deeper-split"]["smashed_sum"]
    assert by[0, "none"]["weight_sum"] != by[1, "none"]["weight_sum"]


def test_ray_gives_identical_numbers(env, serial):
    pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'arena[ray]')")
    out = env / "ray"
    assert main(_args(env, out, "--executor", "ray", "--workers", "2")) == 0
    _same_numbers(serial, {c.key: c for c in read_cells(out)})


def _start(env, out, *more):
    # Each attack sleeps 2 s, so after the first cell lands there are seconds of work left for the
    # signal to interrupt, even when a loaded machine starves the test process for a while.
    cmd = [sys.executable, "-m", "arena.matrix", *_args(env, out, *more)]
    # A shell starts background jobs with SIGINT ignored and children inherit that (then Python installs
    # no KeyboardInterrupt handler): give the run the default disposition, as a terminal would.
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, "ARENA_TEST_SLEEP": "2"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for_first_cell(proc, out: Path, timeout: float = 120) -> None:
    t0 = time.monotonic()
    while not ((out / CELLS).exists() and (out / CELLS).stat().st_size > 0):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < timeout, "no cell appeared"
        time.sleep(0.05)


def test_kill_9_then_rerun_completes_every_cell_once(env, serial):
    out = env / "killed"
    proc = _start(env, out)
    _wait_for_first_cell(proc, out)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close(), proc.stderr.close()
    n_at_kill = len(read_cells(out))
    assert 0 < n_at_kill < N_CELLS
    assert main(_args(env, out)) == 0  # the same command resumes
    keys = [d["key"] for d in _lines(out)]
    assert len(keys) == N_CELLS == len(set(keys))
    _same_numbers(serial, {c.key: c for c in read_cells(out)})


def test_ctrl_c_with_workers_stops_cleanly_and_resumes(env, serial):
    out = env / "interrupted"
    proc = _start(env, out, "--workers", "2")
    _wait_for_first_cell(proc, out)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground process group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "run the same command to resume" in err and "Traceback" not in err
    before = _lines(out)
    assert 0 < len(before) < N_CELLS
    assert main(_args(env, out)) == 0
    keys = [d["key"] for d in _lines(out)]
    assert len(keys) == N_CELLS == len(set(keys))
    assert [d["key"] for d in before] == keys[:len(before)]  # nothing rewritten
    _same_numbers(serial, {c.key: c for c in read_cells(out)})


def test_workers_identical_to_serial_and_failures_are_error_cells(env, serial):
    """--workers 2 with an attack that raises and one that kills its worker (undefended runs only):
    both are `error` cells with their reason, the run goes on with fresh workers, and the cells
    computed by workers (some sent just before their worker died) equal the serial run's."""
    out = env / "workers"
    assert main(_args(env, out, "--workers", "2", "--attacks", "test-boom", "test-fingerprint", "test-die")) == 1  # error cells: a non-zero exit
    cells = read_cells(out)
    assert len(cells) == 3 * N_CELLS == len(_lines(out))
    by = {(c.attack, c.defense, c.seed): c for c in cells}
    for seed in (0, 1):
        for defense in ("none", "deeper-split"):
            boom = by["test-boom", defense, seed]
            assert boom.status == "error" and "boom on purpose" in boom.error
        die = by["test-die", "none", seed]
        assert die.status == "error" and "worker process died (exit code -9)" in die.error
        assert by["test-die", "deeper-split", seed].status == "ok"
    _same_numbers(serial, {c.key: c for c in cells if c.attack == "test-fingerprint"})


def test_model_cache_reuses_training_with_the_same_numbers(env, serial):
    cache = env / "models"
    first, second = env / "cache1", env / "cache2"
    assert main(_args(env, first, "--model-cache", str(cache))) == 0
    assert len(list(cache.glob("*.pt"))) == N_CELLS  # one training run per cell here
    assert main(_args(env, second, "--model-cache", str(cache))) == 0
    hits = read_cells(second)
    assert all(c.cost.get("train_cached") is True for c in hits)
    assert not any("train_cached" in c.cost for c in read_cells(first))
    _same_numbers(serial, {c.key: c for c in read_cells(first)})
    _same_numbers(serial, {c.key: c for c in hits})  # incl. draws from the global RNG after training


def test_executor_errors_are_actionable(env, capsys, monkeypatch):
    assert main(_args(env, env / "x", "--address", "auto")) == 2
    assert "--address is for --executor ray" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)
    assert main(_args(env, env / "y", "--executor", "ray")) == 2
    assert "pip install 'arena[ray]'" in capsys.readouterr().err
    assert not (env / "y").exists()  # refused before any output
    assert main(_args(env, env / "z", "--workers", "0")) == 2


def test_progress_bar_and_time_left():
    s = io.StringIO()
    p = Progress(4, stream=s, log_every=0.0)
    assert p.eta() is None
    p.inner("train digits", 5, 10)
    p.cell("a", "ok")
    p.cell("b", "blocked")
    p.inner("unsplit digits", 1, 4, worker=1)
    p.close()
    text = s.getvalue()
    assert "[2/4] blocked b" in text.replace("  ", " ").replace("  ", " ")
    assert "unsplit digits: 25%" in text and "left" in text
    assert "2/4 cells" in text and "1 blocked" in text and "1 ok" in text
    assert fmt_seconds(3725) == "1h02m" and fmt_seconds(65) == "1m05s" and fmt_seconds(None) == "?"


def test_attack_progress_reaches_the_matrix(env):
    from arena.run.executors import execute
    from arena.run.workers import RunOptions
    from arena.run.plugins import import_plugin
    from arena.run.runner import groups

    import_plugin(str(env / "fingerprint_plugin.py"))
    exp = experiment_from_dict({"experiment": {"datasets": ["digits"], "n_train": 60, "n_test": 20, "n_aux": 20},
                                "train": {"epochs": 1, "batch_size": 30, "record_steps": 1},
                                "attacks": [{"name": "test-fingerprint"}]})
    seen = []

    class Recorder:
        def inner(self, what, i, n, worker=0):
            seen.append((what, i, n))

    cells = []
    execute(groups(plan(exp)), RunOptions(), lambda c, w: cells.append(c), Recorder())
    assert cells[0].status == "ok"
    assert any(w.startswith("train ") for w, _, _ in seen)
    assert [(i, n) for w, i, n in seen if "test-fingerprint vs none" in w and not w.startswith("train")] \
        == [(1, 2), (2, 2)]


def test_per_attack_depths_and_datasets():
    exp = experiment_from_dict({
        "experiment": {"datasets": ["digits", "mnist"], "depths": [1]},
        "attacks": [{"name": "mean-image", "depths": [0, 4], "datasets": ["mnist"]},
                    {"name": "mean-image", "params": {"value": "black"}}]})
    got = sorted((s.scenario.dataset, s.scenario.depth, s.attack.kwargs.get("value", "grey")) for s in plan(exp))
    assert got == [("digits", 1, "black"), ("mnist", 0, "grey"), ("mnist", 1, "black"), ("mnist", 4, "grey")]
    with pytest.raises(ValueError, match="datasets"):
        experiment_from_dict({"experiment": {"datasets": ["digits"]},
                              "attacks": [{"name": "mean-image", "datasets": ["mnsit"]}]})
    with pytest.raises(ValueError, match="depths must be"):
        experiment_from_dict({"attacks": [{"name": "mean-image", "depths": "1"}]})


def test_model_cache_is_on_by_default_in_the_user_cache_and_can_be_inspected_and_cleared(env, capsys,
                                                                                         monkeypatch):
    monkeypatch.delenv("ARENA_MODEL_CACHE", raising=False)  # conftest turns it off for the other tests
    monkeypatch.setenv("ARENA_CACHE", str(env / "user-cache"))
    assert main(_args(env, env / "default-cache")) == 0
    models = env / "user-cache" / "models"
    assert len(list(models.glob("*.pt"))) == N_CELLS
    capsys.readouterr()
    assert main(["--model-cache-info"]) == 0
    assert f"model cache {models}: {N_CELLS} trained models" in capsys.readouterr().out
    assert main(_args(env, env / "no-cache", "--no-model-cache")) == 0
    assert not any("train_cached" in c.cost for c in read_cells(env / "no-cache"))
    assert main(["--clear-model-cache"]) == 0
    assert "deleted" in capsys.readouterr().out and not list(models.glob("*.pt"))


def test_anytime_passes_write_a_report_per_seed_and_ctrl_c_keeps_a_valid_one(env, monkeypatch, capsys):
    """One pass per seed: after the first, every pairing has an answer and the report exists; Ctrl-C
    in the second pass leaves that report (rewritten from what finished) and the same command resumes."""
    import arena.matrix as matrix

    out = env / "anytime"
    args = [a for a in _args(env, out) if a != "--no-report"]
    calls = []
    real = matrix.execute

    def interrupting(groups, *a, **k):
        calls.append({s.scenario.seed for g in groups for s in g})
        if len(calls) == 2:
            assert (out / "report.md").exists()  # written after the first pass, before the second
            raise KeyboardInterrupt
        return real(groups, *a, **k)

    monkeypatch.setattr(matrix, "execute", interrupting)
    assert main(args) == 130
    assert calls == [{0}, {1}]
    assert {c.seed for c in read_cells(out)} == {0}
    assert "Seeds in this report: 0; still to run: 1" in (out / "report.md").read_text()
    monkeypatch.setattr(matrix, "execute", real)
    assert main(args) == 0
    assert {c.seed for c in read_cells(out)} == {0, 1} and len(read_cells(out)) == N_CELLS
    assert "Seeds in this report: 0, 1." in (out / "report.md").read_text()


def test_attacks_that_record_different_steps_share_one_training_run(tmp_path):
    """record_steps is the attack's observation budget, not part of the training run: entries that
    differ only in it train once, on one data order, and each sees the steps it asked for."""
    from arena.run.runner import GroupContext, groups, run_group

    exp = experiment_from_dict({
        "experiment": {"datasets": ["digits"], "depths": [1], "seeds": [0], "n_train": 120, "n_test": 60,
                       "n_aux": 40},
        "train": {"epochs": 1, "batch_size": 16, "record_steps": 1},
        "attacks": [{"name": "mean-image", "params": {"window": "before"}},
                    {"name": "mean-image", "params": {"window": "before", "value": "black"}, "record_steps": 3}],
        "defenses": [{"name": "none"}]})
    specs = plan(exp)
    assert len(specs) == 2 and len(groups(specs)) == 1
    cells = {c.attack_params.get("value", "grey"): c for c in run_group(specs, GroupContext())}
    assert cells["grey"].metrics["n_targets"] == 16 and cells["black"].metrics["n_targets"] == 48


def test_a_setup_converting_defense_trains_once_for_both_setups():
    """he turns vanilla into u-shaped: the vanilla and the u-shaped attacks' cells under he are one
    training run (one group); so are they undefended (a defense that leaves the label owner alone trains
    the same weights in both setups: tests/test_shared_runs.py), but not under splitguard (vanilla only)
    nor for a malicious attack (its own run)."""
    from arena.run.runner import groups

    exp = experiment_from_dict({
        "experiment": {"datasets": ["digits"], "depths": [1], "seeds": [0]},
        "attacks": [{"name": "mean-image"}, {"name": "unsplit-label", "setup": "u-shaped", "record_steps": 8}],
        "defenses": [{"name": "none"}, {"name": "he"}, {"name": "splitguard"}]})
    by_defense: dict[str, int] = {}
    for g in groups(plan(exp)):
        by_defense[g[0].defense.name] = by_defense.get(g[0].defense.name, 0) + 1
        assert len({s.defense.name for s in g}) == 1
    assert by_defense == {"none": 1, "he": 1, "splitguard": 2}


def test_a_defense_entry_may_run_in_some_setups_only():
    """`setups` on a defense entry keeps only the cells of those setups (label DP's vanilla cells carry
    no label attack in the default experiment); anything but a list of known setups is a SpecError."""
    from arena.run.config import SpecError

    raw = {"experiment": {"datasets": ["digits"], "depths": [1], "seeds": [0]},
           "attacks": [{"name": "mean-image"}, {"name": "cosine-label"}],
           "defenses": [{"name": "none"}, {"name": "label-dp", "setups": ["u-shaped"]}]}
    cells = {(s.attack.name, s.defense.name, s.scenario.setup) for s in plan(experiment_from_dict(raw))}
    assert cells == {("mean-image", "none", "vanilla"), ("cosine-label", "none", "u-shaped"),
                     ("cosine-label", "label-dp", "u-shaped")}
    for bad in (["sideways"], [], "u-shaped"):
        raw["defenses"][1]["setups"] = bad
        with pytest.raises(SpecError, match="setups must be a non-empty list of"):
            experiment_from_dict(raw)
    raw["defenses"][1]["setups"] = ["u-shaped"]
    raw["attacks"][0]["setups"] = ["vanilla"]
    with pytest.raises(SpecError, match="unknown keys"):
        experiment_from_dict(raw)
