"""Li et al.'s cut-gradient label attacks: norm scoring (binary) and direction scoring (cosine).

Undefended, direction scoring leaks every label of a 10-class task; norm scoring leaks the rare
positive class of an imbalanced binary task (Li et al.'s setting). Each sees only the gradients
(and, for cosine, exactly its known examples) and is blocked without CUT_GRADIENT.
"""
from __future__ import annotations


import pytest
import torch

from arena.protocol.transcript import resolve
from arena.attacks import ATTACKS
from arena.attacks.label_leak import CosineLabel, NormLabel, two_means_threshold
from arena.defenses import DEFENSES, Defense
from arena.models import build_model
from arena.protocol.train import Data, make_setup, train
from arena.protocol.transcript import Observation, Truth
from arena.protocol.view import ServerView
from arena.records import AttackOutput, Capability, Cell, Scenario, TrainConfig
from arena.run.runner import make_view
from arena.scoring.metrics import auc
from arena.scoring.score import score
from arena.seeding import seed_everything, torch_generator

C = Capability


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _trained(data, setup_name="u-shaped"):
    sc = Scenario("digits", "lenet", 1, setup=setup_name, seed=0,
                  train=TrainConfig(epochs=2, batch_size=32, record_steps=3))
    seed_everything(0, "init")
    setup = make_setup(sc, build_model("lenet", data.shape, data.num_classes), data.shape)
    return setup, train(setup, data, torch_generator(0, "train"))


@pytest.fixture(scope="module")
def ushaped(tiny_data):
    return _trained(tiny_data)


@pytest.fixture(scope="module")
def binary(tiny_data):
    """Li et al.'s setting: an imbalanced binary task (digit 0 vs the rest, ~10% positives)."""
    d = tiny_data
    b = lambda y: (y == 0).long()  # noqa: E731
    data = Data(d.x_train, b(d.y_train), d.x_test, b(d.y_test), d.x_aux, b(d.y_aux), 2)
    return data, _trained(data)


def _run(name, trained, data, **params):
    setup, res = trained
    attack = ATTACKS.create(name, **params)
    view = make_view(attack, setup, res, data, "cpu")
    out = attack.run(view, torch_generator(0, "attack"))
    return score(out, res, data.x_test, data.y_test), out, view


@pytest.mark.parametrize("setup_name", ["u-shaped", "label-only"])
def test_cosine_label_leaks_all_labels_undefended(tiny_data, ushaped, setup_name):
    trained = ushaped if setup_name == "u-shaped" else _trained(tiny_data, "label-only")
    m, out, view = _run("cosine-label", trained, tiny_data)
    assert m["leak_auc"] > 0.95 and m["label_acc"] > 0.9, m
    assert m["label_acc"] > m["label_chance"] + 0.5
    known_ids, known_y = view.known_labels["after"]
    assert set(known_ids.tolist()).isdisjoint(out.ids.tolist())  # known examples are not scored
    assert len(known_ids) == len(set(known_y.tolist())) and out.label_scores.shape == (len(out.ids), 10)


def test_norm_label_leaks_the_rare_positive_class_of_a_binary_task(binary):
    data, trained = binary
    m, out, _ = _run("norm-label", trained, data, positive=1)
    assert out.positive_class == 1 and out.label_scores.ndim == 1
    assert m["leak_auc"] > 0.9, m
    assert m["label_acc"] >= m["label_chance"], m
    m_cos, _, _ = _run("cosine-label", trained, data)
    assert m_cos["label_acc"] > 0.9, m_cos


def test_norm_label_on_balanced_multiclass_data_is_scored_one_vs_rest(tiny_data, ushaped):
    m, out, view = _run("norm-label", ushaped, tiny_data, positive=3)
    y = ushaped[1].truth.labels(resolve(out.ids, ushaped[1].transcript))
    positive = (y == 3).long()
    assert 0 < int(positive.sum()) < len(y)  # both sides present among the targets
    assert m["label_chance"] == pytest.approx(max(float((y == 3).float().mean()), float((y != 3).float().mean())))
    # one-vs-rest: the AUC of the attack's own scores (the norms, as they are) against "label == 3",
    # and the accuracy of its labels against the same binary truth; not a 10-class comparison
    assert m["leak_auc"] == pytest.approx(auc(out.label_scores, positive))
    assert m["label_acc"] == pytest.approx(float((out.labels == positive).float().mean()))
    assert m["n_positive"] == int(positive.sum()) and m["n_labels"] == len(y)
    assert view.known_labels is None and view.observations()[0].smashed is None  # least privilege


def _gradient_view(norms: torch.Tensor, batch: int = 20) -> ServerView:
    """A view whose 'after' window holds cut gradients of the given norms (random directions)."""
    g = torch.randn(len(norms), 8, generator=torch.Generator().manual_seed(0))
    g = g / g.norm(dim=1, keepdim=True) * norms[:, None] / batch  # the batch-mean loss scales by 1/batch
    obs = tuple(Observation(step=k, ids=torch.arange(k * batch, (k + 1) * batch), cut_grad=g[k * batch:(k + 1) * batch])
                for k in range(len(norms) // batch))
    return ServerView(setup="u-shaped", capabilities=frozenset({C.CUT_GRADIENT}), input_shape=(1, 8, 8),
                      num_classes=2, client_depth=1, label_layers=1, client_arch=torch.nn.Sequential,
                      tail_arch=torch.nn.Sequential, server_part=torch.nn.Sequential(),
                      server_part_before=torch.nn.Sequential(), windows={"after": obs})


def test_norm_label_direction_is_its_rule_and_never_flipped():
    """Positives have the larger norms: AUC ≈ 1. The same scores against the reversed truth: the
    rule is wrong, AUC ≈ 0, and the scorer and the report show it as it is (not 1 − AUC)."""
    from types import SimpleNamespace

    from arena.report.tables import leakage_frame, summarize

    gen = torch.Generator().manual_seed(1)
    y = (torch.rand(200, generator=gen) < 0.2).long()  # 20% positives
    norms = torch.where(y == 1, 3.0, 1.0) + 0.3 * torch.rand(200, generator=gen)
    out = NormLabel(positive=1).run(_gradient_view(norms), torch_generator(0, "attack"))
    metrics = {}
    for name, truth_y in (("right", y), ("reversed", 1 - y)):
        truth = Truth()
        truth.add(torch.arange(200), torch.zeros(200, 1, 8, 8), truth_y)
        metrics[name] = score(out, SimpleNamespace(truth=truth), None, None)
    assert metrics["right"]["leak_auc"] > 0.9 and metrics["right"]["label_acc"] > 0.9
    assert metrics["reversed"]["leak_auc"] < 0.1 and metrics["reversed"]["label_acc"] < 0.1
    cells = [Cell(key=f"{name}-{s}", dataset="digits", model="lenet", depth=1, setup="u-shaped", attack="norm-label",
                  attack_params={}, defense=name, defense_params={}, seed=s, status="ok", metrics=m,
                  utility={"test_acc": 0.9})
             for name, m in metrics.items() for s in range(2)]
    lf = leakage_frame(summarize(cells)).set_index("defense")
    assert (lf["metric"] == "leak_auc").all()
    assert lf.loc["right", "value"] > 0.9 and lf.loc["reversed", "value"] < 0.1  # not folded up to > 0.9
    assert lf.loc["reversed", "norm"] == 0.0


def test_views_hold_exactly_the_declared_knowledge(tiny_data, ushaped):
    setup, res = ushaped
    for k in (1, 2):
        view = make_view(CosineLabel(known_per_class=k), setup, res, tiny_data, "cpu")
        for w in ("before", "after"):
            ids, y = view.known_labels[w]
            counts = torch.bincount(y, minlength=10)
            assert int(counts.max()) <= k and torch.equal(res.truth.labels(resolve(ids, res.transcript)), y)
        assert view.client_weights is None and view.query is None and view.aux is None and view.train_data is None
        assert view.observations()[0].labels is None


def test_scorer_binarises_for_positive_class(tiny_data, ushaped):
    _, res = ushaped
    ids = torch.cat([o.ids for o in res.transcript.observations("after")])
    y = res.truth.labels(ids)
    perfect = AttackOutput(ids=ids, labels=(y == 4).long(), label_scores=(y == 4).float(), positive_class=4)
    m = score(perfect, res, tiny_data.x_test, tiny_data.y_test)
    assert m["label_acc"] == 1.0 and m["leak_auc"] == 1.0


def test_two_means_threshold_splits_two_clusters():
    s = torch.tensor([0.1, 0.2, 0.15, 5.0, 5.5, 0.12])
    t = two_means_threshold(s)
    assert 0.2 < t < 5.0
    assert two_means_threshold(torch.ones(4)) == 1.0


@pytest.mark.parametrize("cls,params,needle", [
    (NormLabel, {"positive": -1}, "positive"),
    (NormLabel, {"positive": 1.5}, "positive"),
    (NormLabel, {"window": "middle"}, "window"),
    (CosineLabel, {"known_per_class": 0}, "known_per_class"),
    (CosineLabel, {"reference": "mean"}, "unknown parameter"),
])
def test_bad_parameters_raise(cls, params, needle):
    with pytest.raises(ValueError, match=needle):
        cls(**params)


def test_positive_class_outside_the_task_raises(tiny_data, ushaped):
    with pytest.raises(ValueError, match="positive=10"):
        _run("norm-label", ushaped, tiny_data, positive=10)


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
record_steps = 2

[[attacks]]
name = "norm-label"

[[attacks]]
name = "cosine-label"

[[defenses]]
name = "none"

[[defenses]]
name = "test-no-cut-gradient"
"""


class _NoCutGradient(Defense):
    name = "test-no-cut-gradient"
    removes = frozenset({C.CUT_GRADIENT})

    def apply(self, setup, generator):
        return setup.replace(removes=setup.removes | self.removes)


def test_label_attacks_run_in_the_matrix_and_are_blocked_without_cut_gradients(run_matrix):
    DEFENSES.register(_NoCutGradient.name, _NoCutGradient)
    try:
        cells = {(c["attack"], c["defense"]): c for c in run_matrix(TINY, "--no-report")}
    finally:
        DEFENSES.unregister(_NoCutGradient.name)
    assert len(cells) == 4
    for attack in ("norm-label", "cosine-label"):
        ok, blocked = cells[(attack, "none")], cells[(attack, "test-no-cut-gradient")]
        assert ok["status"] == "ok" and ok["setup"] == "u-shaped", ok["error"]
        assert blocked["status"] == "blocked" and "cut_gradient" in blocked["reason"] and blocked["metrics"] == {}
    assert cells[("cosine-label", "none")]["metrics"]["leak_auc"] > 0.9


def test_abs_cosine_scoring_sees_through_max_norm_sign_flips(tiny_data, ushaped):
    """max-norm's scalar factor 1 + σξ flips whole rows: signed cosines then point at no class, |cos|
    (the attacker who knows the defense) gets the labels back; undefended both work."""
    sc = Scenario("digits", "lenet", 1, setup="u-shaped", seed=0,
                  train=TrainConfig(epochs=2, batch_size=32, record_steps=3))
    seed_everything(0, "init")
    base = make_setup(sc, build_model("lenet", tiny_data.shape, tiny_data.num_classes), tiny_data.shape)
    defended = DEFENSES.create("max-norm").apply(base, torch_generator(0, "defense"))
    trained = (defended, train(defended, tiny_data, torch_generator(0, "train")))
    signed = _run("cosine-label", trained, tiny_data)[0]["label_acc"]
    absolute = _run("cosine-label", trained, tiny_data, sign="abs")[0]["label_acc"]
    # tiny data ends training with similar norms (few rows flipped); on Fashion-MNIST the signed score
    # falls to about 0.5 and |cos| keeps about 0.8 (the max-norm docstring's numbers)
    assert absolute > signed and absolute >= 0.95, (signed, absolute)
    assert _run("cosine-label", ushaped, tiny_data, sign="abs")[0]["label_acc"] > 0.6
    # the same for clustering: rows folded to one sign (cluster-label sign="abs")
    c_signed = _run("cluster-label", trained, tiny_data)[0]["label_acc"]
    c_abs = _run("cluster-label", trained, tiny_data, sign="abs")[0]["label_acc"]
    assert c_abs >= c_signed and c_abs >= 0.9, (c_signed, c_abs)
    assert _run("cluster-label", ushaped, tiny_data, sign="abs")[0]["label_acc"] > 0.9
    assert "sign" not in ATTACKS.create("cluster-label").params()
    assert ATTACKS.create("cosine-label").params() == {"known_per_class": 1, "window": "after"}  # old keys kept
    with pytest.raises(ValueError, match="sign must be one of"):
        ATTACKS.create("cosine-label", sign="both")
