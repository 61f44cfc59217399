"""The attacks that know the smashed-data defenses: `noise-average` (linked releases averaged, then a
white-box inversion with the noise model) and `informed-inverse` (an inverse network trained through the
client with the defense simulated from its public parameters).

Each beats its defense-oblivious counterpart (he-whitebox with quick.toml's parameters) on the same
run, averaging gains with the number of releases, the defense's parameters come only from
``view.defense`` (Kerckhoffs), bad parameters fail at construction, and the attacks read nothing but
what they declared.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from arena.attacks import ATTACKS
from arena.attacks.informed_inverse import clip_rows, simulate, simulation
from arena.attacks.noise_average import group_releases, noise_model
from arena.protocol.knowledge import DefenseKnowledge
from arena.records import Capability, TrainConfig
from arena.run.grants import make_view
from arena.scoring.score import score
from arena.seeding import torch_generator
from cellruns import train_cell

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = TrainConfig(epochs=3, batch_size=32, record_steps=1, track=16)
WB = dict(iterations=300, fit="relative", lambda_tv=0.1, relu_slope=0.01)  # quick.toml's he-whitebox
FAST_INV = dict(n_aux=200, epochs=10)  # the tiny auxiliary set


def _run(data, defense="none", **params):
    d, _, defended, res = train_cell(data, defense, cfg=CFG, **params)
    return d, defended, res


def _attack(trained, data, name, view_edit=None, **params):
    d, defended, res = trained
    attack = ATTACKS.create(name, **params)
    view = make_view(attack, defended, res, data, "cpu", defense=d)
    if view_edit is not None:
        view = view_edit(view)
    out = attack.run(view, torch_generator(0, "attack", name))
    assert out.reconstructions.shape == (len(out.ids), *data.shape)
    return score(out, res, data.x_test, data.y_test), out


@pytest.fixture(scope="module")
def noisy(tiny_data):
    return _run(tiny_data, "noise", scale=1.0, clip=30.0)


def test_noise_average_beats_the_oblivious_whitebox(noisy, tiny_data):
    wb = _attack(noisy, tiny_data, "he-whitebox", **WB)[0]["ssim"]
    m, out = _attack(noisy, tiny_data, "noise-average")
    assert out.extra["noise_var"] == pytest.approx(1.0)  # scale 1.0, from view.defense
    assert 1 <= out.extra["releases_mean"] <= 3
    assert len(out.ids) == CFG.track and bool((out.ids >= 0).all())  # the tracked examples, by sample id
    assert m["ssim"] > wb + 0.1, (m["ssim"], wb)


@pytest.fixture(scope="module")
def steady(tiny_data):
    """A client that barely changes between epochs (lr 1e-5: no drift to trade against), 4 releases each."""
    d, _, defended, res = train_cell(tiny_data, "noise", cfg=dataclasses.replace(CFG, epochs=4, lr=1e-5),
                                     scale=1.0, clip=30.0)
    return d, defended, res


def test_averaging_gains_with_the_number_of_releases(steady, tiny_data):
    ssim = {}
    for n in (1, 2, 4):
        m, out = _attack(steady, tiny_data, "noise-average", releases=n)
        assert out.extra["releases_mean"] == n
        ssim[n] = m["ssim"]
    assert ssim[1] + 0.03 < ssim[2] < ssim[4] - 0.03, ssim
    _, auto = _attack(steady, tiny_data, "noise-average", iterations=5)
    assert auto.extra["releases_mean"] == 4 and auto.extra["drift_rel"] < 0.05  # no drift: every release


def test_the_network_decoder_on_the_average_needs_aux_data_and_gains_with_releases(steady, tiny_data):
    net = ATTACKS.create("noise-average", decoder="network", n_aux=200)
    assert Capability.AUX_DATA in net.requires and Capability.AUX_DATA not in ATTACKS.create("noise-average").requires
    m, out = _attack(steady, tiny_data, "noise-average", decoder="network", n_aux=200, releases=4)
    one, _ = _attack(steady, tiny_data, "noise-average", decoder="network", n_aux=200, releases=1)
    assert out.extra["releases_mean"] == 4
    assert m["ssim"] > one["ssim"] + 0.03, (m, one)


def test_averaging_divides_the_noise_variance_by_the_number_of_releases():
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(20, 50, generator=g)
    reps = 9
    ids = torch.arange(20).repeat(reps)
    steps = torch.arange(reps).repeat_interleave(20)
    noisy = clean.repeat(reps, 1) + torch.randn(20 * reps, 50, generator=g)
    perm = torch.randperm(len(ids), generator=g)  # releases arrive in any order
    uid, groups = group_releases(ids[perm], steps[perm], noisy[perm])
    assert torch.equal(uid, torch.arange(20)) and all(len(x) == reps for x in groups)
    err = (torch.stack([x.mean(0) for x in groups]) - clean).pow(2).mean()
    assert float(err) == pytest.approx(1 / reps, rel=0.2)
    _, last2 = group_releases(ids[perm], steps[perm], noisy[perm], last=2)
    mine = [noisy[(ids == 0) & (steps == k)][0] for k in (reps - 2, reps - 1)]
    assert torch.equal(last2[0], torch.stack(mine))  # the last two, in step order


def test_informed_inverse_beats_the_oblivious_whitebox_under_noise(noisy, tiny_data):
    wb = _attack(noisy, tiny_data, "he-whitebox", **WB)[0]["ssim"]
    m, out = _attack(noisy, tiny_data, "informed-inverse", **FAST_INV)
    assert out.extra["simulated"] == "noise"
    assert m["ssim"] > wb + 0.1, (m["ssim"], wb)


def test_informed_inverse_beats_the_oblivious_whitebox_under_dropout(tiny_data):
    run = _run(tiny_data, "dropout", p=0.5)
    wb = _attack(run, tiny_data, "he-whitebox", **WB)[0]["ssim"]
    m, out = _attack(run, tiny_data, "informed-inverse", **FAST_INV)
    assert out.extra["simulated"] == "dropout"
    assert m["ssim"] > wb + 0.1, (m["ssim"], wb)


def test_undefended_they_still_run_and_simulate_nothing(tiny_data):
    run = _run(tiny_data)
    wb = _attack(run, tiny_data, "he-whitebox", **WB)[0]["ssim"]
    m, out = _attack(run, tiny_data, "noise-average")
    assert out.extra["noise_var"] == 0 and out.extra["releases_mean"] == 1  # nothing to average: the last
    assert m["ssim"] > 0.8 and wb > 0.8
    m, out = _attack(run, tiny_data, "informed-inverse", **FAST_INV)
    assert out.extra["simulated"] == "none" and m["ssim"] > 0.5


def test_the_noise_model_comes_only_from_the_views_defense_knowledge(noisy, tiny_data):
    # the same run, the view told a different sigma: the attack follows what it is told (it never peeks
    # at the setup or the client's generator)
    told = DefenseKnowledge((("noise", {"scale": 0.25, "clip": 7.0, "distribution": "laplace"}),))
    _, out = _attack(noisy, tiny_data, "noise-average", iterations=5,
                     view_edit=lambda v: dataclasses.replace(v, defense=told))
    assert out.extra["noise_var"] == pytest.approx(2 * 0.25**2)
    _, out = _attack(noisy, tiny_data, "noise-average", iterations=5,
                     view_edit=lambda v: dataclasses.replace(v, defense=DefenseKnowledge()))
    assert out.extra["noise_var"] == 0 and out.extra["releases_mean"] == 1


def test_simulation_follows_the_stack_order_and_the_public_parameters():
    class View:
        defense = DefenseKnowledge((("batching", {"b": 4}), ("dropout", {"p": 0.5, "at_test": "drop"}),
                                    ("noise", {"scale": 0.0, "clip": 1.0})))

    members = simulation(View())
    assert [n for n, _ in members] == ["dropout"]  # noise at scale 0 is the identity; batching not simulated
    a = torch.ones(200, 100)
    out = simulate(a, members, torch.Generator().manual_seed(0))
    assert set(out.unique().tolist()) == {0.0, 2.0} and abs(float((out == 0).float().mean()) - 0.5) < 0.02
    noise = [("noise", {"scale": 0.0 + 1e-9, "clip": 3.0, "distribution": "gaussian"})]
    clipped = simulate(torch.full((5, 100), 1.0), noise, torch.Generator().manual_seed(0))
    assert torch.allclose(clipped.norm(dim=1), torch.full((5,), 3.0), atol=1e-4)
    assert torch.allclose(clip_rows(torch.ones(2, 4), float("inf")), torch.ones(2, 4))

    class Plain:
        defense = DefenseKnowledge((("noise", {"scale": 0.5, "clip": 30.0, "distribution": "gaussian"}),))

    assert noise_model(Plain()) == (0.25, 30.0, 2)


@pytest.mark.parametrize("name, params, needle", [
    ("noise-average", {"tracked": 0}, "tracked"),
    ("noise-average", {"releases": -1}, "releases"),
    ("noise-average", {"releases": 1.5}, "releases"),
    ("noise-average", {"lambda_tv": -1}, "lambda_tv"),
    ("noise-average", {"init": 2}, "init"),
    ("noise-average", {"sigma": 1}, "sigma"),
    ("noise-average", {"decoder": "unet"}, "decoder"),
    ("noise-average", {"decoder": "network", "n_aux": 0}, "n_aux"),
    ("informed-inverse", {"n_aux": -3}, "n_aux"),
    ("informed-inverse", {"epochs": 0}, "epochs"),
    ("informed-inverse", {"window": "tracked"}, "window"),
    ("informed-inverse", {"p": 0.5}, "p"),
])
def test_bad_parameters_raise(name, params, needle):
    with pytest.raises(ValueError, match=needle):
        ATTACKS.create(name, **params)


class _Recorder:
    """A view that records which of its attributes an attack read."""

    def __init__(self, view):
        object.__setattr__(self, "_view", view)
        object.__setattr__(self, "read", set())

    def __getattr__(self, name):
        self.read.add(name)
        return getattr(self._view, name)


@pytest.mark.parametrize("name, params, allowed", [
    ("noise-average", {"iterations": 5}, {"client_weights", "defense"}),
    ("informed-inverse", {"n_aux": 50, "epochs": 1}, {"client_weights", "aux", "defense"}),
])
def test_they_read_only_what_they_declared(noisy, tiny_data, name, params, allowed):
    d, defended, res = noisy
    attack = ATTACKS.create(name, **params)
    assert attack.adapts_to and "noise" in attack.adapts_to
    view = make_view(attack, defended, res, tiny_data, "cpu", defense=d)
    assert view.query is None and view.train_data is None and view.known_labels is None
    assert (view.aux is not None) == (Capability.AUX_DATA in attack.requires)
    assert all(o.labels is None for w in ("after", "tracked") for o in view.observations(w))
    rec = _Recorder(view)
    attack.run(rec, torch_generator(0, "attack", name))
    data_fields = {"client_weights", "aux", "query", "train_data", "known_labels", "server_part",
                   "server_part_before", "windows"}
    assert rec.read & data_fields <= allowed, rec.read


def test_same_seed_same_reconstructions(noisy, tiny_data):
    # the simulated defense draws from the attack's own stream (seeded from the cell's generator)
    a = _attack(noisy, tiny_data, "informed-inverse", n_aux=50, epochs=1)[1].reconstructions
    b = _attack(noisy, tiny_data, "informed-inverse", n_aux=50, epochs=1)[1].reconstructions
    assert torch.equal(a, b)
