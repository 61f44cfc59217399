"""The matrix CLI end to end on a tiny digits experiment: cells, resume, clear errors."""
from __future__ import annotations

import json

import pytest

from arena.matrix import main
from arena.run.store import CELLS, read_cells

TINY = """
[experiment]
datasets = ["digits"]
depths = [1]
seeds = [0]
n_train = 300
n_test = 100
n_aux = 100

[train]
epochs = 1
batch_size = 32
record_steps = 1

[[attacks]]
name = "mean-image"

[[defenses]]
name = "none"

[[defenses]]
name = "deeper-split"
grid = { k = [1, 2] }
"""

REQUIRED = {"schema", "dataset", "model", "depth", "setup", "attack", "defense", "attack_params",
            "defense_params", "seed", "status", "metrics", "utility", "cost", "wall_s", "error"}


@pytest.fixture
def spec(tmp_path):
    p = tmp_path / "tiny.toml"
    p.write_text(TINY)
    return p


def _lines(out):
    return [json.loads(l) for l in (out / CELLS).read_text().splitlines()]


def test_run_writes_cells_manifest_summary_and_resumes(spec, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["-e", str(spec), "--out", str(out), "-q"]) == 0
    lines = _lines(out)
    assert len(lines) == 3
    for d in lines:
        assert REQUIRED <= set(d), REQUIRED - set(d)
        assert d["status"] == "ok", d["error"]
        assert {"mse", "psnr", "ssim"} <= set(d["metrics"])
        assert 0 <= d["utility"]["test_acc"] <= 1
    assert sorted(d["defense_params"].get("k", 0) for d in lines) == [0, 1, 2]
    deeper = [d for d in lines if d["defense"] == "deeper-split"]
    extra = {d["defense_params"]["k"]: d["cost"]["extra_client_flops"] for d in deeper}
    assert extra == {1: 0, 2: 2 * 16 * 8 * 25 * 8 * 8}  # depth 1->2 adds a max-pool, ->3 the second conv
    assert (out / "manifest.json").exists() and (out / "summary.csv").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["packages"]["torch"].startswith("2.13")
    assert "mean-image" in capsys.readouterr().out
    # the same command again: nothing re-run, nothing duplicated
    capsys.readouterr()
    assert main(["-e", str(spec), "--out", str(out), "-q"]) == 0
    assert len(_lines(out)) == 3
    assert "warning" not in capsys.readouterr().err
    # cells from another code version are kept, with a warning, and the manifest lists both versions
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps(manifest | {"code_version": "v0-old", "code_versions": ["v0-old"]}))
    assert main(["-e", str(spec), "--out", str(out), "-q"]) == 0
    assert len(_lines(out)) == 3
    assert "3 finished cells" in capsys.readouterr().err and "v0-old" in (out / "manifest.json").read_text()
    assert json.loads((out / "manifest.json").read_text())["code_versions"][0] == "v0-old"


def test_interrupted_run_resumes_without_duplicates(spec, tmp_path):
    out = tmp_path / "run"
    assert main(["-e", str(spec), "--out", str(out), "-q", "--defenses", "none"]) == 0
    first = _lines(out)
    # simulate a kill in the middle of writing the next line
    with (out / CELLS).open("a") as f:
        f.write('{"key": "half-writ')
    assert len(read_cells(out)) == 1
    assert main(["-e", str(spec), "--out", str(out), "-q"]) == 0
    lines = _lines(out)
    assert len(lines) == 3 and len({d["key"] for d in lines}) == 3
    assert lines[0] == first[0]


@pytest.mark.parametrize("flag,value,needle", [
    ("--attacks", "unsplitt", "unknown attack 'unsplitt'"),
    ("--defenses", "noize", "unknown defense 'noize'"),
    ("--datasets", "mnits", "unknown dataset 'mnits'"),
])
def test_unknown_names_fail_before_any_work(spec, tmp_path, capsys, flag, value, needle):
    out = tmp_path / "run"
    assert main(["-e", str(spec), "--out", str(out), flag, value]) == 2
    err = capsys.readouterr().err
    assert needle in err and "known" in err
    assert not out.exists()


def test_impossible_depth_is_a_clear_error(spec, tmp_path, capsys):
    assert main(["-e", str(spec), "--out", str(tmp_path / "r"), "--depths", "12"]) == 2
    assert "valid depths are 0..9" in capsys.readouterr().err


def test_bad_attack_parameter_fails_before_work(tmp_path, capsys):
    p = tmp_path / "bad.toml"
    p.write_text(TINY.replace('name = "mean-image"', 'name = "mean-image"\nparams = { value = "pink" }'))
    assert main(["-e", str(p), "--out", str(tmp_path / "r")]) == 2
    assert "value must be one of" in capsys.readouterr().err


def test_deeper_split_past_the_model_is_an_error_cell(spec, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["-e", str(spec), "--out", str(out), "-q", "--depths", "8"]) == 1  # a failed cell: non-zero exit
    err = capsys.readouterr().err
    assert "1 of 3 cells failed" in err and "--retry-errors" in err
    by_k = {d["defense_params"].get("k", 0): d for d in _lines(out)}
    assert by_k[0]["status"] == "ok"
    assert by_k[2]["status"] == "error" and "valid depths are" in by_k[2]["error"]


def test_list_and_help(capsys):
    assert main(["--list"]) == 0
    text = capsys.readouterr().out
    for name in ("digits", "fashion-mnist", "cifar10", "lenet", "cifar-cnn", "mean-image", "none", "deeper-split"):
        assert name in text
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    assert "--experiment" in capsys.readouterr().out


def test_default_experiment_is_planned(capsys):
    assert main(["--dry-run"]) == 0
    assert "cells ->" in capsys.readouterr().out


def test_an_attack_entry_may_set_its_own_train_settings():
    from arena.run.config import SpecError, experiment_from_dict
    from arena.run.runner import plan

    exp = experiment_from_dict({"train": {"epochs": 3, "lr": 2e-3},
                                "attacks": [{"name": "fsha", "train": {"epochs": 13, "lr": 1e-5}},
                                            {"name": "mean-image"}]})
    by = {s.attack.name: s.scenario.train for s in plan(exp)}
    assert (by["fsha"].epochs, by["fsha"].lr) == (13, 1e-5) and (by["mean-image"].epochs, by["mean-image"].lr) == (3, 2e-3)
    for bad, msg in (({"epochz": 1}, "unknown train settings ['epochz']"), ({"epochs": -1}, "epochs must be a positive"),
                     ({"record_steps": 2}, "record_steps is the entry's own key"), (5, "must be a table")):
        with pytest.raises(SpecError, match=msg.replace("[", r"\[").replace("]", r"\]")):
            experiment_from_dict({"attacks": [{"name": "fsha", "train": bad}]})
