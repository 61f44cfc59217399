"""Issue 17's shared ground: what an adaptive attacker knows (`view.defense`), what it sees (transcript
coverage, the "tracked" window), and HE's activations rebuilt from the plaintext gradients."""
from __future__ import annotations

import pytest
import torch

from arena.attacks.base import ATTACKS, Attack
from arena.defenses import DEFENSES
from arena.models import build_model
from arena.protocol.leak import derive_activations, derivation_unavailable, with_derived_smashed
from arena.protocol.train import make_setup, train
from arena.protocol.transcript import Coverage
from arena.records import AttackOutput, Capability, Scenario, TrainConfig
from arena.seeding import seed_everything, torch_generator

from test_verdicts import TINY


# 1. the least-squares derivation ---------------------------------------------------------------
def test_activations_are_exact_when_the_batch_fits_the_layer_and_min_norm_past_it():
    g = torch.Generator().manual_seed(0)
    m, d = 12, 20
    for b, exact in ((1, True), (8, True), (12, True), (16, False)):
        a = torch.randn(b, d, generator=g).relu()
        gh = torch.randn(b, m, generator=g, dtype=torch.float64).float()
        got, rank = derive_activations(gh, gh.T @ a)
        assert rank == min(b, m)
        err = float((got - a).norm() / a.norm())
        if exact:
            assert err < 1e-4, (b, err)
        else:  # under-determined: the weight gradient is reproduced, the activations are not
            assert err > 0.05 and float((gh.T @ got - gh.T @ a).norm() / (gh.T @ a).norm()) < 1e-4
    with pytest.raises(ValueError, match="B x m"):
        derive_activations(torch.zeros(4, 3), torch.zeros(5, 2))


def test_a_server_part_of_more_than_one_linear_layer_is_not_rebuilt():
    assert derivation_unavailable(torch.nn.Sequential(torch.nn.Linear(4, 3))) is None
    two = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    assert "single linear layer" in derivation_unavailable(two)


def test_he_run_gives_back_the_clients_activations_from_its_gradients(tiny_data):
    pytest.importorskip("tenseal")
    sc = Scenario("digits", "lenet", 1, seed=0, train=TrainConfig(epochs=1, batch_size=32, record_steps=1,
                                                                  max_steps=3))
    seed_everything(0, "init")
    setup = make_setup(sc, build_model("lenet", tiny_data.shape, tiny_data.num_classes), tiny_data.shape)
    he = DEFENSES.create("he").apply(setup, torch_generator(0, "d"))
    res = train(he, tiny_data, torch_generator(0, "t"))
    first = res.transcript.observations("before")[0]
    assert first.smashed is None  # nothing in plaintext
    windows, info = with_derived_smashed(res.transcript.windows, res.model.server, (16, 4, 4))
    got = windows["before"][0].smashed
    client0 = he.split().client  # the client at step 0 (before its first update)
    with torch.no_grad():
        true = client0(tiny_data.x_train[first.ids])
    assert info["exact"] == info["batches"] >= 2 and info["outputs"] == 120
    assert float((got - true).norm() / true.norm()) < 1e-3


# 2. what the attacker knows and sees ------------------------------------------------------------
SEEN: dict = {}


class _Probe(Attack):
    """Records its view's defense knowledge and tracked window (a test double)."""

    name = "probe-adaptive"
    kind = "inversion"
    requires = frozenset({Capability.SMASHED})
    adapts_to = ("noise",)
    tracked = 6

    def coverage(self) -> Coverage:
        return Coverage(steps=2, tracked=self.tracked)

    def run(self, view, generator):
        SEEN[self.name] = view
        ids, sm = view.stacked("smashed", "after")
        return AttackOutput(ids=ids[:2], reconstructions=torch.zeros(2, *view.input_shape))


class _ProbeIds(_Probe):
    name = "probe-adaptive-ids"
    requires = frozenset({Capability.SMASHED, Capability.SAMPLE_IDS})
    tracked = 3


@pytest.fixture
def probes():
    for cls in (_Probe, _ProbeIds):
        ATTACKS.register(cls.name, cls)
    yield
    for cls in (_Probe, _ProbeIds):
        ATTACKS._entries.pop(cls.name, None)


def test_views_know_the_defense_and_track_every_release(run_matrix, probes):
    SEEN.clear()
    toml = TINY.format(steps=21).replace("epochs = 1\n", "epochs = 3\nbatch_size = 32\n")
    cells = run_matrix(toml + """
[[attacks]]
name = "probe-adaptive"
[[attacks]]
name = "probe-adaptive-ids"
[[defenses]]
name = "noise+dropout"
params = { noise = { scale = 0.3, clip = 5.0 }, dropout = { p = 0.2 } }
""")
    assert {c["status"] for c in cells} == {"ok"}, [c.get("error") for c in cells]
    v, w = SEEN["probe-adaptive"], SEEN["probe-adaptive-ids"]
    # Kerckhoffs: names and public parameters, nothing else
    assert v.defense.names == ("noise", "dropout") and v.defense.has("dropout") and not v.defense.has("he")
    assert v.defense.params_of("noise")["scale"] == 0.3 and v.defense.params_of("dropout")["p"] == 0.2
    assert v.defense.params_of("he") is None
    # coverage: 2 steps at each end; every release of the tracked examples (3 epochs of 200 / 32 = 7 steps)
    assert len(v.observations("before")) == len(v.observations("after")) == 2
    tracked = v.observations("tracked")
    assert sum(len(o.ids) for o in tracked) == 6 * 3  # 6 examples, once per epoch
    assert all(o.smashed is not None and len(o.smashed) == len(o.ids) and o.cut_grad is None for o in tracked)
    assert len(set(torch.cat([o.ids for o in tracked]).tolist())) == 18  # handles: releases not linkable
    ids = torch.cat([o.ids for o in w.observations("tracked")])  # with SAMPLE_IDS: 3 examples, 3 releases each
    assert (ids >= 0).all() and sorted(torch.bincount(ids)[torch.unique(ids)].tolist()) == [3, 3, 3]
    by = {c["attack"]: c for c in cells}
    assert by["probe-adaptive"]["adapts_to"] == ["noise"]
    assert by["probe-adaptive"]["observed"] == {"before": 2, "after": 2, "tracked_examples": 6,
                                                "tracked_releases": 18}
    assert by["probe-adaptive-ids"]["observed"]["tracked_examples"] == 3


def test_tracked_examples_are_the_same_for_every_defense(tiny_data):
    sc = Scenario("digits", "lenet", 1, seed=0, train=TrainConfig(epochs=2, batch_size=32, record_steps=1, track=4))
    seed_everything(0, "init")
    setup = make_setup(sc, build_model("lenet", tiny_data.shape, tiny_data.num_classes), tiny_data.shape)
    runs = [train(d.apply(setup, torch_generator(0, "d")) if d else setup, tiny_data, torch_generator(0, "t"))
            for d in (None, DEFENSES.create("noise", scale=1.0))]
    assert runs[0].transcript.tracked == runs[1].transcript.tracked and len(runs[0].transcript.tracked) == 4
    t = runs[0].transcript.trimmed(1, 2)
    assert t.tracked == runs[0].transcript.tracked[:2]
    assert set(torch.cat([o.ids for o in t.windows["tracked"]]).tolist()) == set(t.tracked)
    assert "tracked" not in runs[0].transcript.trimmed(1, 0).windows
    with pytest.raises(ValueError, match="tracked"):
        Coverage(tracked=-1)
    with pytest.raises(ValueError, match="steps"):
        Coverage(steps=0)


def test_list_marks_adaptive_attacks(probes):
    from arena.matrix import list_everything

    out = list_everything()
    assert "ADAPTIVE: built against noise" in out


def test_inversion_through_rebuilt_activations_beats_the_grey_image_under_he(run_matrix):
    pytest.importorskip("tenseal")
    cells = run_matrix(TINY.format(steps=6) + """
[[attacks]]
name = "mean-image"
[[attacks]]
name = "he-whitebox"
params = { iterations = 150, fit = "relative", lambda_tv = 0.1, relu_slope = 0.01 }
[[defenses]]
name = "he"
grid = { train_server = [true, false] }
""")
    by = {(c["attack"], c["defense_params"]["train_server"]): c for c in cells}
    base, inv = by[("mean-image", True)], by[("he-whitebox", True)]
    assert inv["status"] == "ok", inv.get("error")
    assert inv["metrics"]["ssim"] > base["metrics"]["ssim"] + 0.3, (inv["metrics"], base["metrics"])
    assert "exact" in inv["derived"]["smashed"]
    assert by[("he-whitebox", False)]["status"] == "blocked"  # no dL/dW: nothing to rebuild from


def test_an_attack_entry_can_be_limited_to_some_defenses(tmp_path):
    from arena.run.config import SpecError, load_experiment
    from arena.run.plan import plan

    base = TINY.format(steps=2) + """
[[attacks]]
name = "mean-image"
[[attacks]]
name = "he-whitebox"
defenses = {only}
[[defenses]]
name = "none"
[[defenses]]
name = "noise"
"""
    f = tmp_path / "e.toml"
    f.write_text(base.format(only='["noise"]'))
    pairs = {(s.attack.name, s.defense.name) for s in plan(load_experiment(f))}
    assert pairs == {("mean-image", "none"), ("mean-image", "noise"), ("he-whitebox", "noise")}
    f.write_text(base.format(only='["noise", "dropout"]'))  # a name the experiment does not run: a typo?
    with pytest.raises(ValueError, match="which this experiment does not run"):
        plan(load_experiment(f))
    f.write_text(base.format(only='["noise"]').replace('name = "noise"', 'name = "noise+dropout"'))
    pairs = {(s.attack.name, s.defense.name) for s in plan(load_experiment(f))}
    assert ("he-whitebox", "noise+dropout") in pairs and ("he-whitebox", "none") not in pairs  # stack members
    f.write_text(base.format(only='"noise"'))
    with pytest.raises(SpecError, match="defenses must be a non-empty list"):
        load_experiment(f)


def test_cells_an_attack_cannot_read_are_na_and_a_hijacker_under_he_is_not_evaluated(run_matrix):
    pytest.importorskip("tenseal")
    from arena.records import ATTACK_CANNOT_RUN, NOT_EVALUATED

    cells = run_matrix(TINY.format(steps=4) + """
[[attacks]]
name = "grad-label-count"
[[attacks]]
name = "fsha"
params = { steps = 2, checkpoints = 1 }
[[defenses]]
name = "mid"
[[defenses]]
name = "he"
""", "--retry-errors")
    by = {(c["attack"], c["defense"]): c for c in cells}
    mid = by[("grad-label-count", "mid")]  # mid's bottleneck sits in front of the last layer
    assert mid["status"] == "blocked" and mid["reason"].startswith(ATTACK_CANNOT_RUN) and "Bottleneck" in mid["reason"]
    he = by[("fsha", "he")]  # a hijacker trains no honest server layer: nothing to rebuild the activations from
    assert he["status"] == "blocked" and he["reason"].startswith(NOT_EVALUATED) and "hijacking" in he["reason"]


def test_a_rank_deficient_cut_gradient_is_not_called_exact():
    g = torch.Generator().manual_seed(1)
    gh = (torch.randn(64, 9, generator=g) @ torch.randn(9, 120, generator=g)).float()  # rank 9 (a 9-class tail)
    a = torch.randn(64, 20, generator=g)
    got, rank = derive_activations(gh, gh.T @ a)
    assert rank == 9 and float((got - a).norm() / a.norm()) > 0.5
