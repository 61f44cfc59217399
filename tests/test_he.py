"""The `he` defense: CKKS output equals the plaintext one, training through it matches plaintext
training, the server holds only a public context, the transcript holds exactly the plaintext
messages (cut gradients, server weight gradients) and no smashed data, bad CKKS parameters fail
before any key or ciphertext exists, and attacks that need smashed data come out `blocked`."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

pytest.importorskip("tenseal")

from arena.attacks.base import Attack, register_attack  # noqa: E402
from arena.protocol.channel import PlainChannel  # noqa: E402
from arena.defenses import DEFENSES  # noqa: E402
from arena.he.channel import Square, he_accuracy  # noqa: E402
from arena.he.ckks import CKKSParams  # noqa: E402
from arena.models import FlattenLinear, build_model  # noqa: E402
from arena.protocol.train import evaluate, make_setup  # noqa: E402
from arena.protocol.train import train  # noqa: E402
from arena.records import AttackOutput, Capability, Scenario, TrainConfig  # noqa: E402
from arena.run.runner import make_view  # noqa: E402
from arena.seeding import seed_everything, torch_generator  # noqa: E402

CFG = TrainConfig(epochs=1, batch_size=64, lr=3e-3, record_steps=1)  # 10 steps


def _setup(data, model=None, setup="vanilla", depth=1, cfg=CFG):
    seed_everything(0, "init")
    model = model if model is not None else build_model("lenet", data.shape, data.num_classes)
    return make_setup(Scenario("digits", "lenet", depth, setup=setup, seed=0, train=cfg), model, data.shape)


def _defend(setup, **params):
    d = DEFENSES.create("he", **params)
    return d, d.apply(setup, torch_generator(0, "he"))


def _small_model(square: bool) -> nn.Sequential:
    """64 features at the cut (cheap for the one-ciphertext-per-sample baseline)."""
    torch.manual_seed(0)
    mid = [FlattenLinear(64, 32), Square(), nn.Linear(32, 16)] if square else [FlattenLinear(64, 16)]
    return nn.Sequential(nn.Conv2d(1, 4, 7, stride=7), nn.ReLU(), *mid, nn.ReLU(), nn.Linear(16, 10))


@pytest.fixture(scope="module")
def runs(tiny_data):
    """The same model trained through HE and through a plain channel with the same layout and seed."""
    defense, he_setup = _defend(_setup(tiny_data))
    plain_setup = he_setup.replace(channel=PlainChannel())
    he = train(he_setup, tiny_data, torch_generator(0, "train"))
    plain = train(plain_setup, tiny_data, torch_generator(0, "train"))
    return defense, he_setup, he, plain


def test_he_output_matches_plaintext_server(tiny_data):
    defense, setup = _defend(_setup(tiny_data))
    assert (setup.depth, setup.label_layers, setup.scenario.setup) == (5, 4, "u-shaped")
    assert defense.packing == "coeff" and defense.params()["poly_modulus_degree"] == 2048
    sm = setup.split()
    a = sm.client(tiny_data.x_test[:40])  # 40 samples: a full and a partly filled ciphertext (slots)
    channels = {}
    for packing in ("coeff", "batch", "batch-real"):
        ch = channels[packing] = defense.channel if packing == "coeff" else _defend(_setup(tiny_data), packing=packing)[0].channel
        h = torch.as_tensor(ch.encrypted_forward(a.detach().flatten(1).double().numpy(), sm.server))
        ref = sm.server(a).detach().double()
        assert h.shape == ref.shape == (40, 120)
        assert (h - ref).abs().max() < 1e-4, packing
    assert channels["batch"].samples_per_ciphertext == 32  # 256 features, 4096 slots, two samples per slot
    assert channels["coeff"].samples_per_ciphertext == 128  # up to 2048 / 16 coefficients apart


@pytest.mark.parametrize("square", [False, True])
def test_one_ciphertext_per_sample_and_square_match_plaintext(tiny_data, square):
    params = dict(server_layers=3, coeff_mod_bit_sizes=[40, 30, 30, 30, 40], scale_bits=30) if square else {}
    for packing in (["batch"] if square else ["sample"]):
        defense, setup = _defend(_setup(tiny_data, _small_model(square)), packing=packing, **params)
        sm = setup.split()
        assert len(sm.server) == (3 if square else 1)
        a = sm.client(tiny_data.x_test[:3])
        h = torch.as_tensor(defense.channel.encrypted_forward(a.detach().flatten(1).double().numpy(), sm.server))
        ref = sm.server(a).detach().double()
        assert (h - ref).abs().max() < 1e-3 * max(1.0, float(ref.abs().max())), packing


def test_training_through_he_matches_plaintext(runs, tiny_data):
    defense, setup, he, plain = runs
    assert he.test_acc > 0.25, he.test_acc  # chance is 0.1
    assert abs(he.test_acc - plain.test_acc) <= 0.03, (he.test_acc, plain.test_acc)
    # the HE-trained model, evaluated with its server part on ciphertext, loses nothing either
    x, y = tiny_data.x_test[:96], tiny_data.y_test[:96]
    assert abs(he_accuracy(defense.channel, he.model, x, y) - evaluate(he.model, x, y)) <= 0.02
    rep = defense.report()
    assert rep["depth"] == 5 and rep["he_label_layers"] == 4 and rep["he_server_layers"] == [6, 6]
    assert rep["he_max_abs_err"] < 1e-4 and rep["he_samples"] == 600
    assert rep["he_ct_bytes_up_per_sample"] > 1000 and rep["he_server_s_per_sample"] > 0
    assert he.cost["bytes_per_sample"] > plain.cost["bytes_per_sample"]
    json.dumps(rep)  # goes into the cell as is


def test_server_only_holds_a_public_context(runs, tiny_data):
    from tenseal import sealapi

    ch = runs[0].channel  # the default coefficient packing: the server gets the encryption parameters only
    assert ch.packing == "coeff" and ch.client.holds_secret_key() and not ch.server.holds_secret_key()
    keys = (sealapi.SecretKey, sealapi.PublicKey, sealapi.GaloisKeys, sealapi.RelinKeys)
    assert not any(isinstance(v, keys) for v in vars(ch.server).values())
    assert ch.public_context_bytes < 1000  # parameters, no key
    slot = _defend(_setup(tiny_data), packing="batch")[0].channel  # slots: public, relinearisation, Galois keys
    assert slot.server.ts_context.is_private() is False
    assert not slot.server.ts_context.has_secret_key()
    assert slot.client.ts_context.is_private() is True
    assert all(v is not slot.client.ts_context for v in vars(slot.server).values())


def test_transcript_has_cut_and_weight_gradients_but_no_smashed_data(runs, tiny_data):
    _, setup, he, _ = runs
    for window in ("before", "after"):
        for o in he.transcript.observations(window):
            assert o.smashed is None and o.server_out is None  # ciphertext only
            assert o.cut_grad is not None and o.cut_grad.shape == (len(o.ids), 120)
            assert set(o.server_grads) == {"0.linear.weight", "0.linear.bias"}
    # what the plaintext weight gradient gives away: dL/dW = g_h^T a determines the batch's
    # activations by least squares (64 samples <= 120 outputs). At the first step the client
    # still had its initial weights, so the truth is the initial client's output.
    o = he.transcript.observations("before")[0]
    a_hat = torch.linalg.lstsq(o.cut_grad.double().T, o.server_grads["0.linear.weight"].double()).solution
    a_true = setup.split().client(he.truth.inputs(o.ids)).detach().flatten(1).double()
    assert (a_hat - a_true).norm() / a_true.norm() < 1e-3
    torch.testing.assert_close(o.server_grads["0.linear.bias"], o.cut_grad.sum(0))

    class _CutGrad(Attack):
        name = "test-he-view"
        requires = frozenset({Capability.SMASHED, Capability.CUT_GRADIENT})

    # issue 17: the view does that least squares for every attack that needs smashed data (the attacker's
    # computation on g_h and dL/dW, `protocol.leak`), marks it derived, and still grants what it declared
    view = make_view(_CutGrad(), setup, he, tiny_data, "cpu")
    assert Capability.SMASHED in view.capabilities and "least squares" in view.derived["smashed"]
    first = view.observations("before")[0]
    assert first.cut_grad is not None
    got = first.smashed.flatten(1).double()
    assert first.smashed.shape[1:] == (16, 4, 4) and (got - a_true).norm() / a_true.norm() < 1e-3


def test_frozen_server_sends_no_weight_gradient(tiny_data):
    cfg = TrainConfig(epochs=1, batch_size=64, record_steps=1, max_steps=1)
    defense, setup = _defend(_setup(tiny_data, cfg=cfg), train_server=False)
    res = train(setup, tiny_data, torch_generator(0, "train"))
    o = res.transcript.observations("after")[0]
    assert o.server_grads is None and o.cut_grad is not None
    w0, w1 = list(setup.model)[6].linear.weight, res.model.server[0].linear.weight
    assert torch.equal(w0, w1)


@pytest.mark.parametrize("params,needle", [
    (dict(poly_modulus_degree=1000), "poly_modulus_degree must be one of"),
    (dict(coeff_mod_bit_sizes=[60, 60, 60, 60], packing="batch"), "allows at most 218 bits"),
    (dict(coeff_mod_bit_sizes=[60]), "allows at most 54 bits"),  # coeff's n = 2048
    (dict(coeff_mod_bit_sizes=[]), "at least one prime"),
    (dict(poly_modulus_degree=8192, coeff_mod_bit_sizes=[60, 40, 60]), "modulo one ciphertext prime"),
    (dict(coeff_mod_bit_sizes=[60, 40], packing="batch"), "at least 3 primes"),
    (dict(coeff_mod_bit_sizes=[60, 40, 70]), "20..60 bits"),
    (dict(scale_bits=55), "does not fit the first (decryption) prime"),
    (dict(scale_bits=26), "results carry scale 2^52"),  # coeff: 2 x 26 + 10 bits > 60
    (dict(coeff_mod_bit_sizes=[60, 20, 20, 60], packing="batch"), "scale out of bounds"),
    (dict(scale_bits=20, packing="batch"), "after rescaling at server op 0 (linear) the scale is 2^0"),
    (dict(server_layers=2), "layer 7 (ReLU) cannot run on CKKS"),
    (dict(server_layers=0), "server_layers must be an integer >= 1"),
    (dict(packing="rows"), "packing must be one of"),
    (dict(train_server="yes"), "train_server must be"),
    (dict(epsilon=1), "unknown parameter"),
])
def test_bad_parameters_fail_before_any_encryption(tiny_data, monkeypatch, params, needle):
    import tenseal

    def no_keys(*a, **k):
        raise AssertionError("a CKKS context was created before the parameters were checked")

    monkeypatch.setattr(tenseal, "context", no_keys)
    with pytest.raises(ValueError) as e:
        _defend(_setup(tiny_data), **params)
    assert needle in str(e.value)


def test_impossible_layouts_are_clear_errors(tiny_data, monkeypatch):
    import tenseal

    monkeypatch.setattr(tenseal, "context", lambda *a, **k: (_ for _ in ()).throw(AssertionError("keys made")))
    with pytest.raises(ValueError, match="needs 3 multiplicative level"):  # square part, default primes
        _defend(_setup(tiny_data, _small_model(True)), server_layers=3, packing="batch")
    with pytest.raises(ValueError, match="exactly one linear layer.*packing='batch'"):
        _defend(_setup(tiny_data, _small_model(True)), server_layers=3)
    with pytest.raises(ValueError, match="no layer to finish"):
        _defend(_setup(tiny_data, depth=8))  # only the last Linear is left for the server
    with pytest.raises(ValueError, match="label-only"):
        _defend(_setup(tiny_data, setup="label-only"))
    with pytest.raises(ValueError, match="use poly_modulus_degree >= 16384"):
        CKKSParams().check_circuit(["linear"], 5000)


@register_attack
class _CutGradientCounter(Attack):
    """A stand-in label attack: needs only what HE leaves in clear (the cut gradient)."""

    name = "test-he-cut-grad"
    kind = "label"
    requires = frozenset({Capability.CUT_GRADIENT})
    default_setup = "u-shaped"

    def run(self, view, generator):
        ids, g = view.stacked("cut_grad")
        return AttackOutput(extra={"n_cut_grads": float(len(ids)), "cut_grad_norm": float(g.norm())})


def test_matrix_rebuilds_smashed_data_and_runs_label_attacks(run_matrix):
    cells = {d["attack"]: d for d in run_matrix("""
[experiment]
datasets = ["digits"]
depths = [1]
seeds = [0]
n_train = 64
n_test = 50
n_aux = 50
[train]
epochs = 1
batch_size = 32
record_steps = 1
[[attacks]]
name = "mean-image"
[[attacks]]
name = "random-front"
[[attacks]]
name = "unsplit"
[[attacks]]
name = "test-he-cut-grad"
[[attacks]]
name = "unsplit-label"
setup = "u-shaped"
[[defenses]]
name = "he"
""")}
    rebuilt = cells["unsplit"]  # issue 17: runs on the activations the view rebuilds from g_h and dL/dW
    assert rebuilt["status"] == "ok" and "least squares" in rebuilt["derived"]["smashed"], rebuilt
    for name, metric in (("mean-image", "ssim"), ("random-front", "clone_acc")):  # baselines need nothing he removes
        assert cells[name]["status"] == "ok" and metric in cells[name]["metrics"], cells[name]
        assert cells[name]["granted"] == ["architecture"]
    label = cells["unsplit-label"]  # it simulates the label owner on the server's output: a ciphertext under HE
    assert label["status"] == "blocked" and "server_out" in label["reason"] and "he" in label["reason"]
    ok = cells["test-he-cut-grad"]
    assert ok["status"] == "ok", ok["error"]
    assert ok["metrics"]["n_cut_grads"] == 32 and ok["cost"]["depth"] == 5
    assert ok["cost"]["he_ct_bytes_up_per_sample"] > 0 and ok["cost"]["he_max_abs_err"] < 1e-4
