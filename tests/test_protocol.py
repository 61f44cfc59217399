"""Each setup trains above chance; the transcript/view hold exactly what the server may see."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from arena.attacks.base import Attack
from arena.models import build_model
from arena.protocol.train import make_setup, train
from arena.records import NOT_APPLICABLE, Capability, Scenario, TrainConfig
from arena.run.runner import make_view
from arena.seeding import seed_everything, torch_generator

CFG = TrainConfig(epochs=3, batch_size=32, record_steps=2)


def _train(tiny_data, setup_name, depth=1, **kw):
    sc = Scenario("digits", "lenet", depth, setup=setup_name, seed=0, train=CFG, **kw)
    seed_everything(0, "init")
    model = build_model("lenet", tiny_data.shape, tiny_data.num_classes)
    setup = make_setup(sc, model, tiny_data.shape)
    return setup, train(setup, tiny_data, torch_generator(0, "t"))


@pytest.mark.parametrize("setup_name", ["vanilla", "label-only", "u-shaped"])
def test_each_setup_trains_above_chance(tiny_data, setup_name):
    _, res = _train(tiny_data, setup_name)
    assert res.test_acc > 0.5, f"{setup_name}: test accuracy {res.test_acc} (chance 0.1)"
    assert res.cost["train_steps"] == 57
    assert set(res.transcript.windows) == {"before", "after"}
    assert len(res.transcript.observations("after")) == 2


def test_transcript_fields_follow_the_setup(tiny_data):
    for name, present, absent in [
        ("vanilla", {"smashed", "labels"}, {"cut_grad", "inputs", "server_out"}),
        ("label-only", {"inputs", "cut_grad", "server_out", "tail_grads"}, {"smashed", "labels"}),
        ("u-shaped", {"smashed", "cut_grad", "server_out"}, {"labels", "inputs"}),
    ]:
        _, res = _train(tiny_data, name)
        o = res.transcript.observations("after")[0]
        for f in present:
            assert getattr(o, f) is not None, (name, f)
        for f in absent:
            assert getattr(o, f) is None, (name, f)


def test_same_seed_same_numbers(tiny_data):
    _, a = _train(tiny_data, "vanilla")
    _, b = _train(tiny_data, "vanilla")
    assert a.test_acc == b.test_acc
    torch.testing.assert_close(a.transcript.observations("after")[0].smashed,
                               b.transcript.observations("after")[0].smashed, rtol=0, atol=0)


class _Greedy(Attack):
    name = "test-greedy"
    requires = frozenset({Capability.SMASHED, Capability.LABELS})


class _WhiteBox(Attack):
    name = "test-whitebox"
    requires = frozenset({Capability.SMASHED, Capability.CLIENT_WEIGHTS})


def _tensors(obj, seen=None):
    """Every tensor reachable from obj (dataclass fields, dicts, lists, modules)."""
    seen = seen if seen is not None else set()
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, torch.nn.Module):
        yield from (p for p in obj.parameters())
        yield from (b for b in obj.buffers())
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from _tensors(getattr(obj, f.name), seen)
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v, seen)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v, seen)
    elif callable(obj) and getattr(obj, "__closure__", None):
        for c in obj.__closure__:
            yield from _tensors(c.cell_contents, seen)


def test_view_holds_no_client_parameters_or_private_tensors(tiny_data):
    setup, res = _train(tiny_data, "vanilla")
    view = make_view(_Greedy(), setup, res, tiny_data, "cpu")
    client_params = [p.detach() for p in res.model.client.parameters()]
    private = [tiny_data.x_train, tiny_data.y_train, tiny_data.x_test] + list(res.truth.x.values())
    for t in _tensors(view):
        for p in client_params:
            assert not (t.shape == p.shape and torch.equal(t, p)), "a client parameter leaked into the view"
        for x in private:
            assert t.data_ptr() != x.data_ptr()
            assert not (t.shape == x.shape and torch.equal(t, x)), "a private tensor leaked into the view"
    # the images themselves never appear, even row by row
    img = set(map(bytes, (x.numpy().tobytes() for x in res.truth.x.values())))
    for t in _tensors(view):
        if t.dim() == 4 and t.shape[1:] == tiny_data.shape:
            assert not any(r.numpy().tobytes() in img for r in t)
    assert view.client_weights is None and view.query is None and view.aux is None
    # the architecture builder makes a freshly initialised part, not the trained one
    fresh = view.client_arch()
    assert not all(torch.equal(a, b) for a, b in zip(fresh.parameters(), client_params))
    assert view.observations("after")[0].labels is not None


def test_least_privilege_and_whitebox_grant(tiny_data):
    setup, res = _train(tiny_data, "vanilla")
    view = make_view(_WhiteBox(), setup, res, tiny_data, "cpu")
    assert view.observations("after")[0].labels is None  # LABELS not requested
    assert view.client_weights is not None
    for p, q in zip(view.client_weights.parameters(), res.model.client.parameters()):
        assert torch.equal(p, q) and p.data_ptr() != q.data_ptr()  # a copy, never the client's own


class _Querier(Attack):
    name = "test-querier"
    requires = frozenset({Capability.QUERY})


def test_query_answers_go_through_the_defended_client(tiny_data):
    from arena.defenses import DEFENSES

    sc = Scenario("digits", "lenet", 1, setup="vanilla", seed=0, train=CFG)
    seed_everything(0, "init")
    setup = make_setup(sc, build_model("lenet", tiny_data.shape, 10), tiny_data.shape)
    x = tiny_data.x_test[:8]
    for scale, same in ((0.0, True), (1.0, False)):
        defended = DEFENSES.create("noise", scale=scale).apply(setup, torch_generator(0, "d"))
        res = train(defended, tiny_data, torch_generator(0, "t"))
        view = make_view(_Querier(), defended, res, tiny_data, "cpu")
        with torch.no_grad():
            clean = res.model.client(x)
        assert torch.equal(view.query(x), clean) is same


def test_defense_outside_its_setups_is_blocked_up_front(run_matrix):
    (cell,) = run_matrix("""
[experiment]
datasets = ["digits"]
depths = [1]
n_train = 200
n_test = 50
n_aux = 50
[train]
epochs = 1
batch_size = 32
record_steps = 1
[[attacks]]
name = "mean-image"
setup = "label-only"
[[defenses]]
name = "noise"
params = { scale = 0.5 }
""", "--no-report")
    assert cell["status"] == "blocked" and "applies to the vanilla and u-shaped setup(s) only" in cell["reason"]
    assert cell["reason"].startswith(NOT_APPLICABLE)  # the report shows it as n/a, not as a removed capability


class _CutOnly(Attack):
    name = "test-cut-only"
    requires = frozenset({Capability.CUT_GRADIENT})


class _CutAndOutput(Attack):
    name = "test-cut-and-output"
    requires = frozenset({Capability.CUT_GRADIENT, Capability.SERVER_OUT})


def test_server_out_reaches_only_attacks_that_declare_it(tiny_data):
    setup, res = _train(tiny_data, "u-shaped")
    assert res.transcript.observations("after")[0].server_out is not None  # the server computed it
    bare = make_view(_CutOnly(), setup, res, tiny_data, "cpu").observations("after")[0]
    assert bare.server_out is None and bare.cut_grad is not None and bare.smashed is None
    full = make_view(_CutAndOutput(), setup, res, tiny_data, "cpu").observations("after")[0]
    torch.testing.assert_close(full.server_out, res.transcript.observations("after")[0].server_out)


def test_amsgrad_setting_reaches_every_optimiser_and_keeps_default_keys(tiny_data, monkeypatch):
    seen = []
    real = torch.optim.Adam

    def spy(params, **kw):
        seen.append(kw.get("amsgrad"))
        return real(params, **kw)

    monkeypatch.setattr(torch.optim, "Adam", spy)
    cfg = dataclasses.replace(CFG, amsgrad=False, max_steps=2)
    sc = Scenario("digits", "lenet", 1, setup="u-shaped", seed=0, train=cfg)
    train(make_setup(sc, build_model("lenet", tiny_data.shape, 10), tiny_data.shape), tiny_data,
          torch_generator(0, "t"))
    assert seen == [False, False, False]  # client, server, label-owner tail
    with pytest.raises(ValueError, match="amsgrad"):
        TrainConfig(amsgrad="yes")
    # a field added later is left out of the key at its default, so recorded cells keep their keys
    assert "amsgrad" not in Scenario("digits", "lenet", 1, train=CFG).key()["train"]
    assert Scenario("digits", "lenet", 1, train=cfg).key()["train"]["amsgrad"] is False
