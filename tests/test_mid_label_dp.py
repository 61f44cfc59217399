"""label-dp (randomized response on the training labels) and mid (a variational bottleneck at the
label owner's input): identity / architecture-only at strength zero, RR's flip law, the truth keeps
the true labels, each lowers label leakage on a tiny setup, clear errors, and the matrix CLI."""
from __future__ import annotations

import math

import pytest
import torch

from arena.attacks import ATTACKS
from arena.defenses import DEFENSES
from arena.defenses.label_dp import keep_probability, randomized_response
from arena.defenses.mid import Bottleneck
from arena.models import build_model
from arena.protocol.train import _tail_adam, derived_generator, make_setup
from arena.protocol.transcript import resolve
from arena.records import NOT_APPLICABLE, Scenario, TrainConfig
from arena.run.runner import make_view
from arena.scoring.score import score
from arena.seeding import torch_generator
from cellruns import assert_same_transcript, train_cell

pytestmark = pytest.mark.usefixtures("one_thread")

SHORT = TrainConfig(epochs=1, batch_size=16, record_steps=2, max_steps=5)
LONG = TrainConfig(epochs=8, batch_size=32, lr=2e-3, record_steps=3)  # 150 steps: LeNet reaches ~0.9 on digits


def _run(data, defense="none", setup="u-shaped", cfg=SHORT, **params):
    """One cell's training as the runner does it: same seeds for every defense."""
    d, _, defended, res = train_cell(data, defense, setup, cfg, **params)
    return d, defended, res


def _attack(name, run, data):
    _, setup, res = run
    attack = ATTACKS.create(name)
    out = attack.run(make_view(attack, setup, res, data, "cpu"), torch_generator(0, "attack"))
    return score(out, res, data.x_test, data.y_test), out


@pytest.fixture(scope="module")
def long_runs(tiny_data):
    return {k: _run(tiny_data, d, cfg=LONG, **p) for k, (d, p) in {
        "none": ("none", {}), "mid0": ("mid", {"lam": 0.0}), "mid-big": ("mid", {"lam": 0.1}),
        "ldp1": ("label-dp", {"epsilon": 1.0})}.items()}


# --- label-dp ------------------------------------------------------------------------------------

@pytest.mark.parametrize("setup", ["vanilla", "u-shaped"])
def test_label_dp_infinite_epsilon_reproduces_none_exactly(tiny_data, setup):
    _, defended, res = _run(tiny_data, "label-dp", setup, epsilon=math.inf)
    _, _, ref = _run(tiny_data, "none", setup)
    assert defended.label_transform is None and res.test_acc == ref.test_acc
    assert_same_transcript(res, ref)
    assert all(torch.equal(p, q) for p, q in zip(res.model.client.parameters(), ref.model.client.parameters()))


@pytest.mark.parametrize("eps", [0.5, 2.0, 8.0])
def test_randomized_response_flips_at_its_rate_to_uniform_other_classes(eps):
    k, n = 10, 200_000
    y = torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(1))
    noisy = randomized_response(y, k, eps, torch.Generator().manual_seed(2))
    assert noisy.dtype == y.dtype and noisy.shape == y.shape and int(noisy.min()) >= 0 and int(noisy.max()) < k
    flipped = noisy != y
    expected = (k - 1) / (math.exp(eps) + k - 1)
    assert 1 - keep_probability(eps, k) == pytest.approx(expected)
    assert float(flipped.float().mean()) == pytest.approx(expected, abs=4 * math.sqrt(expected / n) + 1e-4)
    if eps < 8:  # where a flip goes: one of the other K-1 classes, uniformly
        offsets = ((noisy - y) % k)[flipped]
        share = torch.bincount(offsets, minlength=k).float() / len(offsets)
        assert share[0] == 0 and torch.allclose(share[1:], torch.full((k - 1,), 1 / (k - 1)), atol=0.01)
    again = randomized_response(y, k, eps, torch.Generator().manual_seed(2))
    assert torch.equal(noisy, again)  # same seed, same numbers


def test_label_dp_randomizes_once_and_the_truth_keeps_the_true_labels(tiny_data):
    """Vanilla, every step recorded over two epochs: the server receives the randomized labels, the
    same ones in both epochs (drawn once, never per epoch); the scorer's truth holds the true ones."""
    cfg = TrainConfig(epochs=2, batch_size=100, record_steps=6)  # 600 samples: 12 steps, all recorded
    d, _, res = _run(tiny_data, "label-dp", "vanilla", cfg=cfg, epsilon=1.0)
    seen: dict[int, int] = {}
    sent, true = [], []
    for w in ("before", "after"):
        for o in res.transcript.observations(w):
            for i, lab in zip(o.ids.tolist(), o.labels.tolist()):
                assert seen.setdefault(i, lab) == lab  # each example carries one noisy label for the whole run
            sent.append(o.labels)
            true.append(res.truth.labels(o.ids))
    sent_t, true_t = torch.cat(sent), torch.cat(true)
    assert len(seen) == len(tiny_data.y_train)
    assert torch.equal(true_t, tiny_data.y_train[torch.cat([o.ids for w in ("before", "after")
                                                            for o in res.transcript.observations(w)])])
    flip = float((sent_t != true_t).float().mean())
    assert abs(flip - 0.742) < 0.08 and d.report()["labels_flipped"] == pytest.approx(flip, abs=1e-6)
    rep = d.report()
    assert rep["epsilon_labels"] == 1.0 and "label" in rep["epsilon_labels_scope"] and rep["delta_labels"] == 0.0


def test_label_dp_attacks_recover_noisy_labels_and_are_scored_against_true_ones(tiny_data, long_runs):
    m_none, _ = _attack("unsplit-label", long_runs["none"], tiny_data)
    m, out = _attack("unsplit-label", long_runs["ldp1"], tiny_data)
    _, _, res = long_runs["ldp1"]
    ids = resolve(out.ids, res.transcript)
    noisy = randomized_response(tiny_data.y_train, 10, 1.0, derived_generator(torch_generator(0, "train"), "labels"))
    # UnSplit's gradient matching reads the label the owner trained on: the randomized one, exactly
    assert float((out.labels == noisy[ids]).float().mean()) > 0.95
    # the scorer compares with the TRUE labels: about RR's keep probability (0.23) is right
    assert m["label_acc"] == pytest.approx(float((out.labels == tiny_data.y_train[ids]).float().mean()))
    assert m_none["label_acc"] > 0.95 and m["label_acc"] < 0.4, (m_none, m)
    m_cos, _ = _attack("cosine-label", long_runs["ldp1"], tiny_data)
    m_cos_none, _ = _attack("cosine-label", long_runs["none"], tiny_data)
    assert m_cos_none["label_acc"] > 0.9 and m_cos["label_acc"] < 0.4, (m_cos_none, m_cos)


# --- mid -----------------------------------------------------------------------------------------

def test_mid_at_lambda_zero_differs_from_none_by_the_added_layers_only(tiny_data, long_runs):
    d, defended, res = long_runs["mid0"]
    _, base, ref = long_runs["none"]
    assert defended.label_layers == base.label_layers + 1 and not defended.label_loss_terms
    tail = res.model.tail
    assert isinstance(tail[0], Bottleneck) and tail[0].noise_generator is None and len(tail) == 2
    # the client and the server start and train on the same batches: what the server sees of the
    # first step's forward pass is bit for bit none's (only the label owner's side differs)
    first, first_ref = res.transcript.observations("before")[0], ref.transcript.observations("before")[0]
    assert torch.equal(first.ids, first_ref.ids) and torch.equal(first.smashed, first_ref.smashed)
    assert torch.equal(first.server_out, first_ref.server_out) and not torch.equal(first.cut_grad, first_ref.cut_grad)
    assert res.test_acc > 0.7 and res.test_acc > ref.test_acc - 0.15, (res.test_acc, ref.test_acc)
    rep = d.report()
    assert rep["mid_note"] == "λ = 0 still adds the bottleneck layers; compare with none"
    assert rep["mid_lambda"] == 0.0 and rep["mid_bottleneck_dim"] == 84 and rep["mid_bottleneck_params"] > 0


def test_mid_large_lambda_lowers_cosine_label(tiny_data, long_runs):
    m_none, _ = _attack("cosine-label", long_runs["none"], tiny_data)
    m0, _ = _attack("cosine-label", long_runs["mid0"], tiny_data)
    m_big, _ = _attack("cosine-label", long_runs["mid-big"], tiny_data)
    # measured: none 1.00, λ = 0 ≈ 0.6 (the deeper noisy tail alone scatters directions), λ = 0.1 ≈ 0.2
    assert m_none["label_acc"] > 0.9 and m_big["label_acc"] < 0.35, (m_none, m0, m_big)
    assert m_big["label_acc"] < m0["label_acc"] - 0.2 and m_big["leak_auc"] < m_none["leak_auc"] - 0.2
    assert long_runs["mid-big"][0].report()["mid_kl_after"] < long_runs["mid0"][0].report()["mid_kl_after"]


def test_mid_tail_gradients_cover_the_bottleneck_and_recording_never_changes_training(tiny_data):
    cfg = TrainConfig(epochs=1, batch_size=16, record_steps=1, max_steps=8)
    _, _, a = _run(tiny_data, "mid", cfg=cfg, lam=0.01)
    _, _, b = _run(tiny_data, "mid", cfg=TrainConfig(epochs=1, batch_size=16, record_steps=3, max_steps=8), lam=0.01)
    for p, q in zip(a.model.tail.parameters(), b.model.tail.parameters()):
        assert torch.equal(p, q)
    assert a.test_acc == b.test_acc
    grads = a.transcript.observations("before")[0].tail_grads
    assert len(grads) == 16 and {"0.encoder.weight", "1.weight"} <= set(grads[0])
    # the label owner's Adam: its own layers at the run's lr, the bottleneck at mid's (VFLAIR's 1e-4)
    opt = _tail_adam(a.model.tail, cfg)
    assert [g["lr"] for g in opt.param_groups] == [cfg.lr, 1e-4]


def test_mid_runs_in_label_only_and_refuses_vanilla(tiny_data):
    _, setup, res = _run(tiny_data, "mid", "label-only", lam=0.01)
    assert isinstance(res.model.tail[0], Bottleneck) and math.isfinite(res.test_acc)
    m = DEFENSES.create("mid")
    assert m.not_applicable("vanilla", 10).startswith("defense mid applies to")
    sc = Scenario("digits", "lenet", 1, setup="vanilla", train=SHORT)
    with pytest.raises(ValueError, match="server computes the loss"):
        m.apply(make_setup(sc, build_model("lenet", tiny_data.shape, 10), tiny_data.shape), torch_generator(0))


@pytest.mark.parametrize("name,params,needle", [
    ("label-dp", {"epsilon": 0}, "epsilon must be a number > 0"),
    ("label-dp", {"epsilon": -1.0}, "epsilon must be a number > 0"),
    ("label-dp", {"epsilon": "small"}, "epsilon must be a number > 0"),
    ("label-dp", {"epsilon": float("nan")}, "epsilon must be a number > 0"),
    ("label-dp", {"epsilon": True}, "epsilon must be a number > 0"),
    ("label-dp", {"delta": 1e-5}, "unknown parameter"),
    ("mid", {"lam": -1e-3}, "lam must be a finite number >= 0"),
    ("mid", {"lam": float("inf")}, "lam must be a finite number"),
    ("mid", {"lam": "big"}, "lam must be a number"),
    ("mid", {"std_shift": float("nan")}, "std_shift must be a finite number"),
    ("mid", {"lr": 0}, "lr must be a finite number > 0"),
    ("mid", {"lambda": 1.0}, "unknown parameter"),
])
def test_bad_parameters_are_clear_errors(name, params, needle):
    with pytest.raises(ValueError, match=needle):
        DEFENSES.create(name, **params)


TOML = """
[experiment]
datasets = ["digits"]
depths = [1]
seeds = [0]
n_train = 120
n_test = 60
n_aux = 50

[train]
epochs = 1
batch_size = 16
record_steps = 1
max_steps = 3

[[attacks]]
name = "mean-image"

[[attacks]]
name = "cosine-label"

[[attacks]]
name = "unsplit-label"

[[defenses]]
name = "mid"

[[defenses]]
name = "label-dp"
params = { epsilon = 1.0 }
"""


def test_mid_and_label_dp_through_the_matrix(run_matrix):
    cells = run_matrix(TOML, "--no-report")
    by = {(c["defense"], c["attack"]): c for c in cells}
    assert len(cells) == len(by) == 6
    for (d, a), c in by.items():
        setup = {"mean-image": "vanilla", "cosine-label": "u-shaped", "unsplit-label": "label-only"}[a]
        assert c["setup"] == setup, c
        if d == "mid" and setup == "vanilla":  # the server computes the loss: no label owner to defend
            assert c["status"] == "blocked" and c["reason"].startswith(NOT_APPLICABLE), c
            continue
        assert c["status"] == "ok", c.get("error")
        if d == "mid":
            assert c["cost"]["mid_lambda"] == 1e-3 and "compare with none" in c["cost"]["mid_note"]
            assert c["effective"]["label_layers"] == 2  # the bottleneck joins the label owner's tail
        else:
            assert c["cost"]["epsilon_labels"] == 1.0 and "label" in c["cost"]["epsilon_labels_scope"]
            assert 0 < c["cost"]["labels_flipped"] < 1
