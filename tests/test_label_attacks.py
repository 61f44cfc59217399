"""model-completion (Fu et al.) and cluster-label (Liu & Lyu): each beats chance undefended by a clear
margin, reads only what it declared, names labels from its known examples only, and fails early on bad
parameters; model-completion needs no cut gradient; the adjusted Rand index against its references."""
from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from arena.attacks import ATTACKS
from arena.attacks.cluster_label import ClusterLabel, kmeans, name_clusters
from arena.attacks.model_completion import ModelCompletion
from arena.defenses import DEFENSES, Defense
from arena.models import build_model
from arena.protocol.train import make_setup, train
from arena.protocol.transcript import Observation, Truth, resolve
from arena.protocol.view import ServerView
from arena.records import AttackOutput, Capability, Scenario, TrainConfig
from arena.run.grants import blocked_reason
from arena.run.runner import make_view
from arena.scoring.metrics import adjusted_rand_index
from arena.scoring.score import ScoringError, score
from arena.seeding import seed_everything, torch_generator

C = Capability
pytestmark = pytest.mark.usefixtures("one_thread")
FAST = {"steps": 300}  # model-completion: 300 steps are enough on the tiny setup (~0.8 s)


@pytest.fixture(scope="module")
def ushaped(tiny_data):
    """LeNet on 600 digits, u-shaped, 2 epochs; the last 4 batches of 32 are the targets."""
    sc = Scenario("digits", "lenet", 1, setup="u-shaped", seed=0,
                  train=TrainConfig(epochs=2, batch_size=32, record_steps=4))
    seed_everything(0, "init")
    setup = make_setup(sc, build_model("lenet", tiny_data.shape, tiny_data.num_classes), tiny_data.shape)
    return setup, train(setup, tiny_data, torch_generator(0, "train"))


def _run(name, trained, data, view_edit=None, **params):
    setup, res = trained
    attack = ATTACKS.create(name, **params)
    view = make_view(attack, setup, res, data, "cpu")
    if view_edit is not None:
        view = view_edit(view)
    out = attack.run(view, torch_generator(0, "attack"))
    return score(out, res, data.x_test, data.y_test), out, view


# ----------------------------------------------------------------------------- undefended leakage
# Measured on this fixture: cluster-label on gradients 1.00 (ARI 1.00), on server outputs 0.56 (ARI 0.36),
# on smashed data 0.72 (ARI 0.51); model-completion 0.70 at 300 steps (known_per_class 1: 0.62 at 1000); chance 0.15-0.16.
def test_cluster_label_on_cut_gradients_recovers_the_classes(tiny_data, ushaped):
    m, out, view = _run("cluster-label", ushaped, tiny_data)
    assert m["label_acc"] > 0.9 and m["label_acc"] > m["label_chance"] + 0.6, m
    assert m["label_ari"] > 0.8 and m["leak_auc"] > 0.95, m
    known_ids, known_y = view.known_labels["after"]
    assert len(known_ids) == len(set(known_y.tolist())) == 10  # one known example per class
    assert set(known_ids.tolist()).isdisjoint(out.ids.tolist())  # known examples are not scored
    assert out.clusters.shape == out.labels.shape and out.label_scores.shape == (len(out.ids), 10)


@pytest.mark.parametrize("source", ["server_out", "smashed"])
def test_cluster_label_on_activations_beats_chance(tiny_data, ushaped, source):
    m, _, view = _run("cluster-label", ushaped, tiny_data, source=source)
    assert m["label_acc"] > m["label_chance"] + 0.25 and m["label_ari"] > 0.25, m
    assert C.CUT_GRADIENT not in view.capabilities


def test_model_completion_beats_chance_without_the_cut_gradient(tiny_data, ushaped):
    m, out, view = _run("model-completion", ushaped, tiny_data, **FAST)
    assert m["label_acc"] > m["label_chance"] + 0.4 and m["leak_auc"] > 0.9, m
    assert C.CUT_GRADIENT not in view.capabilities
    assert all(o.cut_grad is None and o.smashed is None for o in view.observations("after"))
    known_ids, known_y = view.known_labels["after"]
    assert int(torch.bincount(known_y).max()) == 4 and len(known_ids) == 40  # 4 per class (Fu et al.: 40)
    assert set(known_ids.tolist()).isdisjoint(out.ids.tolist())
    assert torch.allclose(out.label_scores.sum(1), torch.ones(len(out.ids)))  # class probabilities
    m1, _, _ = _run("model-completion", ushaped, tiny_data, known_per_class=1, **FAST)
    assert m1["label_acc"] > m1["label_chance"] + 0.3, m1


def test_model_completion_is_reproducible_from_its_generator(tiny_data, ushaped):
    _, a, _ = _run("model-completion", ushaped, tiny_data, steps=50)
    _, b, _ = _run("model-completion", ushaped, tiny_data, steps=50)
    assert torch.equal(a.label_scores, b.label_scores)


# ----------------------------------------------------------------------------- naming from known labels only
def _permuted_known(perm: torch.Tensor):
    def edit(view: ServerView) -> ServerView:
        return dataclasses.replace(view, known_labels={w: (ids, perm[y]) for w, (ids, y) in view.known_labels.items()})
    return edit


@pytest.mark.parametrize("name,params", [("cluster-label", {}), ("model-completion", FAST)])
def test_names_come_from_the_known_labels_not_the_truth(tiny_data, ushaped, name, params):
    """Rename the classes of the known examples behind the attack's back: its predictions follow the
    renamed classes, not the truth it never saw (cluster-label exactly, and its partition does not move)."""
    perm = torch.tensor([3, 7, 0, 9, 1, 4, 8, 2, 6, 5])
    m, out, _ = _run(name, ushaped, tiny_data, **params)
    m2, out2, _ = _run(name, ushaped, tiny_data, view_edit=_permuted_known(perm), **params)
    assert torch.equal(out.ids, out2.ids)
    _, res = ushaped
    y = res.truth.labels(resolve(out.ids, res.transcript))
    renamed_acc = float((out2.labels == perm[y]).float().mean())
    assert m2["label_acc"] < 0.3 and renamed_acc > m["label_chance"] + 0.4, (m, m2, renamed_acc)
    if out.clusters is not None:  # k-means and the naming are exactly equivariant to renaming the classes
        assert torch.equal(out2.labels, perm[out.labels]) and renamed_acc == m["label_acc"]
        # the same partition (cluster indices follow the seeds' order, which follows the names)
        assert adjusted_rand_index(out.clusters, out2.clusters) == 1.0
        assert m2["label_ari"] == pytest.approx(m["label_ari"])


def test_kmeans_and_hungarian_naming_on_separated_directions():
    gen = torch.Generator().manual_seed(0)
    dirs = torch.eye(3, 6, dtype=torch.float64) * 5
    y = torch.arange(3).repeat(20)
    x = dirs[y] + 0.3 * torch.randn(60, 6, generator=gen, dtype=torch.float64)
    seeds = torch.stack([x[0], x[1], x[2]])  # one known example of classes 0, 1, 2
    assign, centres = kmeans(x, seeds, 20)
    assert torch.equal(assign, y)
    # the known examples say: cluster 0 holds class 2, cluster 1 class 0, cluster 2 class 1
    names = name_clusters(torch.tensor([0, 1, 2, 0]), torch.tensor([2, 0, 1, 2]), torch.tensor([0, 1, 2]))
    assert names.tolist() == [2, 0, 1]


def test_cluster_label_on_a_synthetic_view_uses_only_known_names():
    """Three gradient directions; the known examples are named 5, 1, 8: those are the only names used."""
    gen = torch.Generator().manual_seed(1)
    y = torch.arange(3).repeat(20)
    g = torch.eye(3, 8)[y] + 0.1 * torch.randn(60, 8, generator=gen)
    obs = tuple(Observation(step=k, ids=-torch.arange(20 * k + 1, 20 * k + 21), cut_grad=g[20 * k:20 * (k + 1)])
                for k in range(3))
    names = torch.tensor([5, 1, 8])
    view = ServerView(setup="u-shaped", capabilities=frozenset({C.CUT_GRADIENT, C.KNOWN_LABELS}),
                      input_shape=(1, 8, 8), num_classes=10, client_depth=1, label_layers=1,
                      client_arch=torch.nn.Sequential, tail_arch=torch.nn.Sequential,
                      server_part=torch.nn.Sequential(), server_part_before=torch.nn.Sequential(),
                      windows={"after": obs}, known_labels={"after": (-torch.tensor([1, 2, 3]), names)})
    out = ClusterLabel().run(view, torch_generator(0, "attack"))
    assert torch.equal(out.labels, names[y[3:]]) and len(out.ids) == 57
    assert set(out.label_scores.argmax(1).tolist()) == {5, 1, 8}


# ----------------------------------------------------------------------------- threat model
@pytest.mark.parametrize("name,params,fields", [
    ("model-completion", {}, {"server_out"}),
    ("cluster-label", {}, {"cut_grad"}),
    ("cluster-label", {"source": "smashed"}, {"smashed"}),
    ("cluster-label", {"source": "server_out"}, {"server_out"}),
])
def test_views_hold_exactly_the_declared_knowledge(tiny_data, ushaped, name, params, fields):
    setup, res = ushaped
    attack = ATTACKS.create(name, **params)
    view = make_view(attack, setup, res, tiny_data, "cpu")
    assert view.capabilities == attack.requires | {C.ARCHITECTURE}
    assert C.KNOWN_LABELS in attack.requires
    for o in view.observations("after"):
        for f in ("smashed", "labels", "inputs", "server_out", "cut_grad", "tail_grads", "server_grads"):
            assert (getattr(o, f) is not None) == (f in fields), f
    for w in ("before", "after"):
        ids, y = view.known_labels[w]
        assert int(torch.bincount(y).max()) <= attack.known_per_class
        assert torch.equal(res.truth.labels(resolve(ids, res.transcript)), y)
    assert view.client_weights is None and view.query is None and view.aux is None and view.train_data is None


class _NoCutGradient(Defense):
    name = "test-no-cut-gradient-h5"
    removes = frozenset({C.CUT_GRADIENT})

    def apply(self, setup, generator):
        return setup.replace(removes=setup.removes | self.removes)


def test_requires_follow_the_source_and_the_runner_reads_the_instance(ushaped):
    setup, _ = ushaped
    defended = _NoCutGradient().apply(setup, None)
    sc = setup.scenario
    why = lambda a: blocked_reason(sc, (), a, _NoCutGradient(), defended, 10)  # noqa: E731
    assert "cut_gradient" in why(ClusterLabel())
    assert why(ClusterLabel(source="smashed")) is None and why(ClusterLabel(source="server_out")) is None
    assert why(ModelCompletion()) is None
    assert ClusterLabel.requires == ClusterLabel().requires  # the class default is the default source's


TINY = """
[experiment]
datasets = ["digits"]
depths = [1]
seeds = [0]
n_train = 256
n_test = 100
n_aux = 100

[train]
epochs = 1
batch_size = 32
record_steps = 4

[[attacks]]
name = "model-completion"
params = { steps = 100 }

[[attacks]]
name = "cluster-label"

[[attacks]]
name = "cluster-label"
params = { source = "server_out" }

[[defenses]]
name = "none"

[[defenses]]
name = "test-no-cut-gradient-h5"
"""


def test_in_the_matrix_model_completion_runs_without_cut_gradients(run_matrix):
    DEFENSES.register(_NoCutGradient.name, _NoCutGradient)
    try:
        cells = {(c["attack"], c["attack_params"].get("source", "cut_grad" if c["attack"] == "cluster-label" else None),
                  c["defense"]): c for c in run_matrix(TINY, "--no-report")}
    finally:
        DEFENSES.unregister(_NoCutGradient.name)
    assert len(cells) == 6
    for (attack, source, defense), c in cells.items():
        if source == "cut_grad" and defense != "none":  # cluster-label on gradients: blocked, never a 0
            assert c["status"] == "blocked" and "cut_gradient" in c["reason"] and c["metrics"] == {}, c
            continue
        assert c["status"] == "ok" and c["setup"] == "u-shaped", (attack, source, defense, c["error"])
        assert "label_acc" in c["metrics"] and ("label_ari" in c["metrics"]) == (attack == "cluster-label")
        assert ("cut_gradient" in c["granted"]) == (source == "cut_grad")
    assert cells[("cluster-label", "cut_grad", "none")]["metrics"]["label_ari"] > 0.5


# ----------------------------------------------------------------------------- parameters
@pytest.mark.parametrize("cls,params,needle", [
    (ModelCompletion, {"known_per_class": 0}, "known_per_class"),
    (ModelCompletion, {"steps": 0}, "steps"),
    (ModelCompletion, {"batch_size": 2.5}, "batch_size"),
    (ModelCompletion, {"lr": -1}, "lr"),
    (ModelCompletion, {"temperature": 0}, "temperature"),
    (ModelCompletion, {"alpha": float("nan")}, "alpha"),
    (ModelCompletion, {"lambda_u": -1}, "lambda_u"),
    (ModelCompletion, {"ema": 1.0}, r"ema must be a number in \[0, 1\)"),
    (ModelCompletion, {"layers": 0}, "layers"),
    (ModelCompletion, {"window": "middle"}, "window"),
    (ModelCompletion, {"T": 0.5}, "unknown parameter"),
    (ClusterLabel, {"source": "labels"}, "source must be one of cut_grad, smashed, server_out"),
    (ClusterLabel, {"metric": "manhattan"}, "metric"),
    (ClusterLabel, {"known_per_class": 0}, "known_per_class"),
    (ClusterLabel, {"iterations": 0}, "iterations"),
    (ClusterLabel, {"window": "checkpoints"}, "window"),
])
def test_bad_parameters_raise(cls, params, needle):
    with pytest.raises(ValueError, match=needle):
        cls(**params)


# ----------------------------------------------------------------------------- adjusted Rand index
@pytest.mark.parametrize("t,c,expect", [
    ([0, 0, 1, 1], [0, 0, 1, 1], 1.0),
    ([0, 0, 1, 1], [5, 5, 2, 2], 1.0),  # renaming changes nothing
    ([0, 0, 1, 1], [0, 0, 1, 2], 4 / 7),  # index 1, expected 2·1/6, max 3/2: (1 − 1/3)/(3/2 − 1/3)
    ([0, 0, 1, 1], [0, 1, 0, 1], -0.5),  # index 0, expected 2/3, max 2
    ([0, 0, 0, 0], [0, 0, 0, 0], 1.0),  # one cluster each: sklearn's convention
    ([0, 1, 2, 3], [0, 1, 2, 3], 1.0),  # singletons each
    ([0, 0, 0, 0], [0, 1, 2, 3], 0.0),
    ([7], [3], 1.0),
])
def test_adjusted_rand_index_hand_computed(t, c, expect):
    assert adjusted_rand_index(torch.tensor(t), torch.tensor(c)) == pytest.approx(expect)


def test_adjusted_rand_index_matches_sklearn_and_is_zero_for_random_clusterings():
    sk = pytest.importorskip("sklearn.metrics")
    gen = torch.Generator().manual_seed(0)
    for n, k1, k2 in itertools.product((5, 50, 400), (2, 10), (1, 3, 10)):
        t, c = torch.randint(0, k1, (n,), generator=gen), torch.randint(0, k2, (n,), generator=gen)
        c[: n // 3] = t[: n // 3]  # partly agreeing
        assert adjusted_rand_index(t, c) == pytest.approx(sk.adjusted_rand_score(t.numpy(), c.numpy()), abs=1e-12)
    t, c = torch.randint(0, 10, (20000,), generator=gen), torch.randint(0, 10, (20000,), generator=gen)
    assert abs(adjusted_rand_index(t, c)) < 0.01  # chance is 0 by construction


@pytest.mark.parametrize("t,c,needle", [
    ([0, 1], [0, 1, 1], "shape mismatch"),
    ([], [], "empty"),
    ([0.5, 1.0], [0, 1], "integers"),
    ([[0, 1]], [[0, 1]], "1-D"),
])
def test_adjusted_rand_index_rejects_bad_input(t, c, needle):
    with pytest.raises(ValueError, match=needle):
        adjusted_rand_index(torch.tensor(t), torch.tensor(c))


def test_scorer_turns_clusters_into_label_ari():
    from types import SimpleNamespace

    truth = Truth()
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    truth.add(torch.arange(6), torch.zeros(6, 1, 2, 2), y)
    res = SimpleNamespace(truth=truth)
    m = score(AttackOutput(ids=torch.arange(6), clusters=torch.tensor([4, 4, 0, 0, 9, 9])), res, None, None)
    assert m["label_ari"] == 1.0 and "label_acc" not in m and m["n_labels"] == 6
    with pytest.raises(ScoringError, match="clusters have shape"):
        score(AttackOutput(ids=torch.arange(6), clusters=torch.zeros(5, dtype=torch.long)), res, None, None)
    with pytest.raises(ScoringError, match="no sample ids"):
        score(AttackOutput(clusters=torch.zeros(6, dtype=torch.long)), res, None, None)
