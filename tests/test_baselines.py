"""The baselines (mean-image for inversion, random-front for stealing): what they output and how they
are scored on a tiny undefended setup, clear parameter errors, a view holding only the architecture,
and no defense of the default experiment blocks them where UnSplit could run."""
from __future__ import annotations

import inspect

import pytest
import torch

import arena.attacks.baseline as baseline_mod
from arena.attacks import ATTACKS
from arena.defenses import DEFENSES
from arena.models import build_model
from arena.protocol.train import make_setup, train
from arena.records import NOT_APPLICABLE, Capability, Scenario, TrainConfig
from arena.run.grants import blocked_reason
from arena.run.runner import make_view
from arena.scoring.score import clone_accuracy, score
from arena.seeding import seed_everything, torch_generator

pytestmark = pytest.mark.usefixtures("one_thread")
CFG = TrainConfig(epochs=1, batch_size=32, record_steps=2, max_steps=6)


@pytest.fixture(scope="module")
def vanilla(tiny_data):
    sc = Scenario("digits", "lenet", 1, setup="vanilla", seed=0, train=CFG)
    seed_everything(0, "init")
    setup = make_setup(sc, build_model("lenet", tiny_data.shape, tiny_data.num_classes), tiny_data.shape)
    return setup, train(setup, tiny_data, torch_generator(0, "train"))


def _run(name, setup, res, data, gen="attack", **params):
    a = ATTACKS.create(name, **params)
    view = make_view(a, setup, res, data, "cpu")
    out = a.run(view, torch_generator(0, gen))
    return view, out, score(out, res, data.x_test, data.y_test, ids="handles")


def test_baselines_are_marked_with_the_kinds_they_are_the_baseline_of():
    from arena.report.tables import baseline_metrics, headline_metric

    assert ATTACKS.get("mean-image").kind == ATTACKS.get("random-front").kind == "baseline"
    assert ATTACKS.get("mean-image").baseline_of == ("inversion", "hijack")
    assert ATTACKS.get("random-front").baseline_of == ("stealing",)
    assert baseline_metrics("mean-image") == ("ssim",) and baseline_metrics("random-front") == ("clone_acc",)
    assert baseline_metrics("unsplit") == () and baseline_metrics("no-such-attack") == ()
    assert headline_metric("random-front", ["ssim", "clone_acc"]) == "clone_acc"
    assert headline_metric("mean-image", ["ssim", "clone_acc"]) == "ssim"
    assert all(ATTACKS.get(n).requires == frozenset() for n in ("mean-image", "random-front"))


def test_mean_image_is_a_constant_image_of_every_target_and_is_scored(tiny_data, vanilla):
    setup, res = vanilla
    view, out, m = _run("mean-image", setup, res, tiny_data)
    handles = torch.cat([o.ids for o in view.observations("after")])
    assert torch.equal(out.ids, handles) and bool((handles < 0).all())  # every release, as opaque handles
    assert out.reconstructions.shape == (len(handles), 1, 28, 28) and bool((out.reconstructions == 0.5).all())
    assert m["n_targets"] == len(handles) == 2 * 32
    x = res.truth.inputs(torch.cat([o.ids for o in res.transcript.observations("after")]))
    assert m["mse"] == pytest.approx(float(((x - 0.5) ** 2).mean()), rel=1e-5)  # the constant's own error
    _, black, mb = _run("mean-image", setup, res, tiny_data, value="black", window="before")
    assert bool((black.reconstructions == 0).all()) and mb["mse"] > m["mse"] and mb["ssim"] < 0.2


def test_random_front_is_a_fresh_client_part_scored_with_the_real_server(tiny_data, vanilla):
    setup, res = vanilla
    view, out, m = _run("random-front", setup, res, tiny_data)
    assert set(m) == {"clone_acc"} and 0.0 <= m["clone_acc"] <= 1.0
    assert m["clone_acc"] == clone_accuracy(out.clone, res, tiny_data.x_test, tiny_data.y_test)
    assert [type(x) for x in out.clone] == [type(x) for x in res.model.client]  # the architecture ...
    for p, q in zip(out.clone.parameters(), res.model.client.parameters()):
        assert not torch.equal(p, q) and not p.requires_grad  # ... never the client's weights
    again = _run("random-front", setup, res, tiny_data)[1]  # same seed, same front
    other = _run("random-front", setup, res, tiny_data, gen="other")[1]
    first = next(out.clone.parameters())
    assert torch.equal(first, next(again.clone.parameters())) and not torch.equal(first, next(other.clone.parameters()))


@pytest.mark.parametrize("name,params,needle", [
    ("mean-image", {"value": "pink"}, "value must be one of grey, black"),
    ("mean-image", {"window": "during"}, "window must be one of before, after"),
    ("mean-image", {"colour": "grey"}, "unknown parameter(s) ['colour']"),
    ("random-front", {"seed": 3}, "unknown parameter(s) ['seed']"),
])
def test_bad_parameters_are_clear_errors(name, params, needle):
    with pytest.raises(ValueError) as e:
        ATTACKS.create(name, **params)
    assert needle in str(e.value)


def test_baselines_read_only_the_architecture_and_the_target_handles(tiny_data, vanilla, monkeypatch):
    setup, res = vanilla
    for name in ("mean-image", "random-front"):
        a = ATTACKS.create(name)
        view = make_view(a, setup, res, tiny_data, "cpu")
        assert view.capabilities == {Capability.ARCHITECTURE}
        assert view.aux is None and view.query is None and view.client_weights is None
        for o in view.observations("before") + view.observations("after"):
            assert o.ids is not None and all(getattr(o, f) is None for f in
                                             ("smashed", "labels", "inputs", "cut_grad", "server_out", "tail_grads"))

    def forbidden(*args, **kwargs):
        raise AssertionError("a baseline reached outside its ServerView")

    import arena.protocol.train
    import arena.protocol.transcript
    import arena.scoring.score
    for mod, attr in [(arena.scoring.score, "score"), (arena.scoring.score, "clone_accuracy"),
                      (arena.protocol.train, "train"), (arena.protocol.train, "evaluate"),
                      (arena.protocol.transcript.Truth, "inputs"), (arena.protocol.transcript.Truth, "labels")]:
        monkeypatch.setattr(mod, attr, forbidden)
    for name in ("mean-image", "random-front"):
        a = ATTACKS.create(name)
        assert a.run(make_view(a, setup, res, tiny_data, "cpu"), torch_generator(0, "a")) is not None
    src = inspect.getsource(baseline_mod)
    for name in ("scoring", "protocol.train", "protocol.transcript", "run", "Truth", "load_data"):
        assert f"import {name}" not in src and f".{name} import" not in src, name


def test_no_default_defense_blocks_a_baseline_where_unsplit_could_run():
    from arena.run.config import load_experiment

    exp = load_experiment(str(__import__("pathlib").Path(__file__).parents[1] / "experiments" / "quick.toml"))
    assert {"none", "noise", "dp-sgd", "he", "nopeek", "splitguard"} <= {e.name for e in exp.defenses}
    if "he" in {e.name for e in exp.defenses}:
        pytest.importorskip("tenseal")
    for e in exp.defenses:
        d = DEFENSES.create(e.name, **e.kwargs)
        for setup_name in ("vanilla", "u-shaped"):
            sc = Scenario("digits", "lenet", 1, setup=setup_name, seed=0, train=CFG)
            setup = make_setup(sc, build_model("lenet", (1, 28, 28), 10), (1, 28, 28))
            defended = d.apply(setup, torch_generator(0, "d")) if d.not_applicable(setup_name, 10) is None else setup
            unsplit = blocked_reason(sc, (), ATTACKS.create("unsplit"), d, defended, 10)
            for name in ("mean-image", "random-front"):
                why = blocked_reason(sc, (), ATTACKS.create(name), d, defended, 10)
                if unsplit is not None and unsplit.startswith(NOT_APPLICABLE):
                    assert why is not None and why.startswith(NOT_APPLICABLE), (e.name, name, why)
                else:  # unsplit runs here, or is blocked / not evaluated: the baseline runs
                    assert why is None, (e.name, setup_name, name, why)
