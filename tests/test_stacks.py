"""Stacked defenses (``a+b``): strength-zero members equal `none` bit for bit; removed capabilities,
declarations and cost figures are the members' (no figure lost to a key collision); conflicting
stacks fail before any training; a stack runs through the matrix CLI and the report under its
stacked name, with each member's ε and scope; TOML params and grid per member."""
from __future__ import annotations

import json

import pytest
import torch

from arena.defenses import DEFENSES, Defense
from arena.matrix import main
from arena.models import build_model
from arena.protocol.channel import PlainChannel
from arena.protocol.train import make_setup, train
from arena.records import Capability, Scenario, TrainConfig
from arena.registry import UnknownNameError
from arena.run.config import SpecError, experiment_from_dict
from arena.run.runner import plan
from arena.seeding import seed_everything, torch_generator
from cellruns import assert_same_transcript

C = Capability
CFG = TrainConfig(epochs=1, batch_size=16, record_steps=2, max_steps=5)
pytestmark = pytest.mark.usefixtures("one_thread")


# --- test-local plug-in defenses -------------------------------------------------------------------

class _StripOut(Defense):
    name = "test-strip-out"
    removes = frozenset({C.SERVER_OUT})
    covers = "the server's output (test)"

    def apply(self, setup, generator):
        return setup.replace(removes=setup.removes | self.removes)

    def report(self):
        return {"epsilon_x": 1.0, "epsilon_x_scope": "scope of strip-out", "delta": 1e-5, "only_out": 1}


class _StripTail(Defense):
    name = "test-strip-tail"
    removes = frozenset({C.TAIL_GRADIENTS})

    def apply(self, setup, generator):
        return setup.replace(removes=setup.removes | self.removes)

    def report(self):
        return {"epsilon_x": 2.0, "epsilon_x_scope": "scope of strip-tail", "delta": 1e-6}


class _DeclaredChannel(Defense):
    name = "test-declared-channel"
    owns = frozenset({"channel"})

    def apply(self, setup, generator):
        return setup.replace(channel=PlainChannel())


class _UndeclaredChannel(_DeclaredChannel):
    name = "test-undeclared-channel"
    owns = frozenset()


class _TrainOnly(Defense):
    """Transforms what it sends in training only: fixes the test-time transform (inference_hooks)."""
    name = "test-train-only"

    def hook(self, a, gen):
        return a * 1.0

    def apply(self, setup, generator):
        return setup.replace(smash_hooks=setup.smash_hooks + (self.hook,), inference_hooks=setup.test_hooks())


class _DropsTest(_TrainOnly):
    name = "test-drops-test"

    def apply(self, setup, generator):
        return setup.replace(inference_hooks=())


class _Replaces(_TrainOnly):
    name = "test-replaces"

    def apply(self, setup, generator):
        return setup.replace(smash_hooks=(self.hook,))


class _TenClassesOnly(Defense):
    name = "test-ten-only"

    def not_applicable(self, setup, num_classes):
        return None if num_classes == 10 else "defined for 10 classes only"

    def apply(self, setup, generator):
        return setup


LOCAL = (_StripOut, _StripTail, _DeclaredChannel, _UndeclaredChannel, _TrainOnly, _DropsTest, _Replaces,
         _TenClassesOnly)


@pytest.fixture
def local():
    for cls in LOCAL:
        DEFENSES.register(cls.name, cls)
    yield
    for cls in LOCAL:
        DEFENSES.unregister(cls.name)


def _setup(data, setup="vanilla"):
    sc = Scenario("digits", "lenet", 1, setup=setup, seed=0, train=CFG)
    seed_everything(0, "init")
    return make_setup(sc, build_model("lenet", data.shape, data.num_classes), data.shape)


def _run(data, name, setup, **params):
    base = _setup(data, setup)
    d = DEFENSES.create(name, **params)
    defended = d.apply(base, torch_generator(0, "defense", name))
    seed_everything(0, "train")
    res = train(defended, data, torch_generator(0, "train"))
    d.after_training(res)
    return base, defended, res


# --- strength zero ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,params,setup", [
    ("noise+batching", {"noise": {"scale": 0.0}, "batching": {"b": 1}}, "u-shaped"),
    ("noise+dp-sgd+nopeek", {"noise": {"scale": 0.0}, "dp-sgd": {"noise_multiplier": 0.0},
                             "nopeek": {"alpha": 0.0}}, "vanilla"),
])
def test_stack_of_strength_zero_members_reproduces_none_exactly(tiny_data, name, params, setup):
    base, defended, res = _run(tiny_data, name, setup, **params)
    assert defended is base  # every member returned the setup it got
    _, _, ref = _run(tiny_data, "none", setup)
    assert res.test_acc == ref.test_acc
    assert_same_transcript(res, ref)
    assert all(torch.equal(p, q) for p, q in zip(res.model.client.parameters(), ref.model.client.parameters()))
    assert all(torch.equal(p, q) for p, q in zip(res.model.tail.parameters(), ref.model.tail.parameters()))


# --- declarations, removed capabilities, figures ----------------------------------------------------

def test_declarations_combine_the_members():
    he, nopeek = DEFENSES.get("he"), DEFENSES.get("nopeek")
    s = DEFENSES.get("he+nopeek")
    assert DEFENSES.get("he+nopeek") is s and s.name == "he+nopeek" and "he+nopeek" in DEFENSES
    assert s.removes == he.removes | nopeek.removes and s.setups == ("vanilla", "u-shaped")
    assert s.converts_setups == {"vanilla": "u-shaped"}  # he first: every later member sees u-shaped
    assert DEFENSES.get("nopeek+he").converts_setups == {}  # nopeek saw vanilla: no shared run claimed
    assert DEFENSES.get("he+batching").setups == ("vanilla", "u-shaped")  # batching sees he's u-shaped
    assert DEFENSES.get("he+dp-sgd").train_cost == 1 + 3 + 1  # the extra costs add up
    assert s.covers == f"{he.covers} [he] and {nopeek.covers} [nopeek]"
    inst = DEFENSES.create("noise+dp-sgd", noise={"scale": 0.3})
    assert inst.params() == {"noise": DEFENSES.create("noise", scale=0.3).params(),
                             "dp-sgd": DEFENSES.create("dp-sgd").params()}


def test_removes_is_the_union_and_blocks_by_the_stack(tiny_data, local):
    from arena.attacks import ATTACKS
    from arena.run.grants import blocked_reason

    s = DEFENSES.create("test-strip-out+test-strip-tail")
    assert s.removes == type(s).removes == frozenset({C.SERVER_OUT, C.TAIL_GRADIENTS})
    base = _setup(tiny_data, "u-shaped")
    defended = s.apply(base, torch_generator(0, "defense"))
    assert defended.removes == frozenset({C.SERVER_OUT, C.TAIL_GRADIENTS})
    attack = ATTACKS.create("unsplit-label")  # needs server_out and tail_gradients
    why = blocked_reason(base.scenario, (), attack, s, defended, 10)
    assert why == "unsplit-label requires server_out, tail_gradients, which defense test-strip-out+test-strip-tail removes"


def test_report_keeps_every_members_figures(local):
    s = DEFENSES.create("test-strip-out+test-strip-tail")
    r = s.report()
    # clashing keys are kept per member, each ε with its own scope beside it; nothing summed
    assert r["test-strip-out.epsilon_x"] == 1.0 and r["test-strip-tail.epsilon_x"] == 2.0
    assert r["test-strip-out.epsilon_x_scope"] == "scope of strip-out"
    assert r["test-strip-tail.epsilon_x_scope"] == "scope of strip-tail"
    assert r["test-strip-out.delta"] == 1e-5 and r["test-strip-tail.delta"] == 1e-6
    assert r["only_out"] == 1 and "epsilon_x" not in r and "delta" not in r
    assert r["stack_members"] == ["test-strip-out", "test-strip-tail"]
    assert r["stack_covers"] == "the server's output (test) [test-strip-out] and what it protects is not stated [test-strip-tail]"
    n, d = DEFENSES.create("noise"), DEFENSES.create("dp-sgd")
    r = DEFENSES.create("noise+dp-sgd").report()
    n_r, d_r = n.report(), d.report()
    for k in set(n_r) | set(d_r):  # every member figure survives, under its name or prefixed
        if k in n_r and k in d_r:
            assert r[f"noise.{k}"] == n_r[k] and r[f"dp-sgd.{k}"] == d_r[k] and k not in r
        else:
            assert r[k] == (n_r | d_r)[k]


def test_not_applicable_is_the_first_members_reason(local):
    s = DEFENSES.create("splitguard+noise")
    assert s.not_applicable("vanilla", 10) is None
    assert "member splitguard" in s.not_applicable("u-shaped", 10)
    t = DEFENSES.create("noise+test-ten-only")
    assert t.not_applicable("vanilla", 10) is None
    assert t.not_applicable("vanilla", 2) == "in stack noise+test-ten-only, member test-ten-only: defined for 10 classes only"


def test_test_time_transforms_compose(tiny_data, local):
    base = _setup(tiny_data)
    stack = DEFENSES.create("test-train-only+noise")
    out = stack.apply(base, torch_generator(0, "defense"))
    train_only, noise = stack.members
    assert out.smash_hooks == (train_only.hook, noise.hook)
    assert out.inference_hooks == (noise.hook,)  # noise acts at test time as it would alone; the other does not
    for bad, needle in (("noise+test-drops-test", "drops the earlier members'"),
                        ("noise+test-replaces", "replaces the smash_hooks of the earlier members")):
        with pytest.raises(ValueError, match=needle):
            DEFENSES.create(bad).apply(base, torch_generator(0, "defense"))


def test_model_cache_key_hashes_the_members_code(local, monkeypatch):
    from arena.run import model_cache

    seen = []
    monkeypatch.setattr(model_cache, "_file_hash", lambda p: seen.append(p) or "h")
    spec = plan(experiment_from_dict({"attacks": [{"name": "mean-image"}],
                                      "defenses": [{"name": "noise+test-strip-out"}]}))[0]
    model_cache.cache_key(spec, DEFENSES.get("noise+test-strip-out"), "cpu")
    assert any(p.endswith("stack.py") for p in seen) and any(p.endswith("noise.py") for p in seen)
    assert __file__ in seen  # a plug-in member's module


# --- conflicts: clear errors before any work ------------------------------------------------------

@pytest.mark.parametrize("name,needle", [
    ("noise+noise", "lists noise more than once"),
    ("he+he", "lists he more than once"),
    ("splitguard+batching", "setups do not overlap"),
    ("he+splitguard", "setups do not overlap"),
    ("he+test-declared-channel", "members he and test-declared-channel both set the protocol's channel"),
    ("none+noise", "has member none, which adds nothing"),
])
def test_conflicting_stacks_fail_at_resolution(local, name, needle):
    with pytest.raises(ValueError, match=needle):
        DEFENSES.check([name])
    with pytest.raises(ValueError, match=needle):
        DEFENSES.create(name)


def test_unknown_members_and_bad_parameters_are_clear_errors():
    with pytest.raises(UnknownNameError, match=r"in defense stack 'nosie\+dp-sgd': unknown defense 'nosie' "
                                                r"\(did you mean 'noise'\?\); known defenses: .*noise"):
        DEFENSES.check(["nosie+dp-sgd"])
    assert "nosie+dp-sgd" not in DEFENSES
    with pytest.raises(UnknownNameError, match="empty member"):
        DEFENSES.get("noise+")
    with pytest.raises(ValueError, match=r"has no member\(s\) \['scale'\]; its parameters are tables keyed by member"):
        DEFENSES.create("noise+dp-sgd", scale=0.5)
    with pytest.raises(ValueError, match="member noise: scale must be"):
        DEFENSES.create("noise+dp-sgd", noise={"scale": -1})
    with pytest.raises(ValueError, match="parameters of member noise must be a table"):
        DEFENSES.create("noise+dp-sgd", noise=0.5)
    with pytest.raises(ValueError, match=r"must not contain '\+'"):
        DEFENSES.register("a+b", _StripOut)


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
max_steps = 4

[[attacks]]
name = "mean-image"
"""


def _no_training(monkeypatch):
    import arena.run.runner as runner

    def refuse(*a, **k):
        raise AssertionError("trained")

    monkeypatch.setattr(runner, "train", refuse)


@pytest.mark.parametrize("name,needle", [("noise+noise", "more than once"), ("splitguard+batching", "do not overlap"),
                                         ("he+test-declared-channel", "both set the protocol's channel"),
                                         ("nosie+dp-sgd", "did you mean 'noise'")])
def test_the_cli_refuses_a_conflicting_stack_before_any_work(tmp_path, capsys, monkeypatch, local, name, needle):
    _no_training(monkeypatch)
    (tmp_path / "e.toml").write_text(TINY)
    assert main(["-e", str(tmp_path / "e.toml"), "--out", str(tmp_path / "run"), "-q",
                 "--defenses", "none", name]) == 2
    assert needle in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_an_undeclared_second_channel_fails_at_apply_before_training(tmp_path, monkeypatch, local):
    pytest.importorskip("tenseal")
    _no_training(monkeypatch)
    (tmp_path / "e.toml").write_text(TINY)
    out = tmp_path / "run"
    assert main(["-e", str(tmp_path / "e.toml"), "--out", str(out), "-q", "--no-report",
                 "--defenses", "he+test-undeclared-channel"]) == 1
    (cell,) = [json.loads(x) for x in (out / "cells.jsonl").read_text().splitlines()]
    assert cell["status"] == "error" and "AssertionError" not in cell["error"]
    assert "member test-undeclared-channel sets the protocol's channel (the wire), which member he already set" \
        in cell["error"]


# --- through the matrix CLI, the report and the TOML ---------------------------------------------------

STACK_ENTRY = """
[[defenses]]
name = "none"

[[defenses]]
name = "noise+dp-sgd"
params = { noise = { clip = 5.0 }, "dp-sgd" = { noise_multiplier = 1.0 } }
grid = { noise = { scale = [0.5, 2.0] } }
"""


def test_stack_runs_in_the_matrix_and_the_report_names_it(run_matrix, tmp_path, capsys):
    cells = run_matrix(TINY + STACK_ENTRY, "--defenses", "none", "noise+dp-sgd")
    assert [c["status"] for c in cells] == ["ok"] * 3, [c["error"] for c in cells]
    stacked = [c for c in cells if c["defense"] == "noise+dp-sgd"]
    assert sorted(c["defense_params"]["noise"]["scale"] for c in stacked) == [0.5, 2.0]
    for c in stacked:
        assert c["defense_params"]["noise"]["clip"] == 5.0 and c["defense_params"]["dp-sgd"] == {"noise_multiplier": 1.0}
        cost = c["cost"]
        assert cost["epsilon_activations"] > 0 and "activations of one example" in cost["epsilon_activations_scope"]
        assert cost["epsilon_weights"] > 0 and "front weights" in cost["epsilon_weights_scope"]
        assert cost["noise.noise_multiplier"] == c["defense_params"]["noise"]["scale"] / 10  # scale / (2·clip)
        assert cost["dp-sgd.noise_multiplier"] == 1.0 and cost["stack_members"] == ["noise", "dp-sgd"]
    assert len({c["key"] for c in cells}) == 3
    from arena.report.cli import main as report

    assert report([str(tmp_path / "run")]) == 0
    capsys.readouterr()
    text = (tmp_path / "run" / "report.md").read_text()
    assert "noise+dp-sgd(dp-sgd.noise_multiplier=1.0,noise.clip=5.0,noise.scale=0.5)" in text
    assert ("each release of the activations (clipped, noised) [noise] and the client's front weights (DP-SGD) "
            "[dp-sgd]") in text
    assert "`epsilon_weights`" in text and "`epsilon_activations`" in text


def test_cli_stack_members_take_their_defaults():
    exp = experiment_from_dict({"attacks": [{"name": "mean-image"}], "defenses": [{"name": "none"}]})
    from arena.matrix import _parser, apply_overrides

    exp = apply_overrides(exp, _parser().parse_args(["--defenses", "none", "batching+noise"]))
    assert [(e.name, e.kwargs) for e in exp.defenses] == [("none", {}), ("batching+noise", {})]
    specs = plan(exp)
    assert [s.defense.name for s in specs] == ["none", "batching+noise"]


@pytest.mark.parametrize("entry,needle", [
    ({"params": {"scale": 0.5}}, "params has a table for 'scale', which is not a member of the stack"),
    ({"params": {"noise": 0.5}}, "params.noise must be a table of noise's parameters"),
    ({"grid": {"nopeek": {"alpha": [1.0]}}}, "grid has a table for 'nopeek'"),
    ({"grid": {"noise": {"scale": []}}}, "grid.noise.scale must be a non-empty list"),
    ({"grid": {"noise": [0.1]}}, "grid.noise must be a table"),
])
def test_toml_stack_tables_are_checked(entry, needle):
    with pytest.raises(SpecError, match=needle):
        experiment_from_dict({"defenses": [{"name": "noise+dp-sgd", **entry}]})


def test_toml_grid_expands_per_member_parameter():
    exp = experiment_from_dict({"attacks": [{"name": "mean-image"}], "defenses": [{
        "name": "noise+dp-sgd", "params": {"dp-sgd": {"max_grad_norm": 2.0}, "noise": {}},
        "grid": {"noise": {"scale": [0.1, 0.5]}, "dp-sgd": {"noise_multiplier": [0.5, 1.0]}}}]})
    got = [e.kwargs for e in exp.defenses]
    assert len(got) == 4 and all(k["dp-sgd"]["max_grad_norm"] == 2.0 for k in got)
    assert {(k["noise"]["scale"], k["dp-sgd"]["noise_multiplier"]) for k in got} == {
        (0.1, 0.5), (0.1, 1.0), (0.5, 0.5), (0.5, 1.0)}
    specs = plan(exp)  # constructs each stack: every member's parameters are valid
    assert len({s.key for s in specs}) == 4 and specs[0].key == plan(exp)[0].key  # stable keys
    with pytest.raises(ValueError, match="member noise: defense 'noise' got unknown parameter"):
        plan(experiment_from_dict({"attacks": [{"name": "mean-image"}],
                                   "defenses": [{"name": "noise+dp-sgd", "params": {"noise": {"sclae": 1}}}]}))
