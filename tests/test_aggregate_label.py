"""grad-label-count: labels and label counts from the batched last-layer gradients (the adaptive attack
on `batching+max-norm`). On a tiny u-shaped run under the stack it must beat every oblivious label
attack on the same run, get most groups' counts exactly right, read only what it declares, and
refuse what it cannot compute."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from arena.attacks import ATTACKS
from arena.attacks.aggregate_label import (GradLabelCount, direction_scores, fit_last_layer, group_size,
                                           last_linear, solve_group)
from arena.protocol.transcript import resolve
from arena.records import AttackOutput, Capability, TrainConfig
from arena.run.runner import make_view
from arena.scoring.metrics import group_count_metrics
from arena.scoring.score import ScoringError, score
from arena.seeding import torch_generator
from cellruns import train_cell

C = Capability
pytestmark = pytest.mark.usefixtures("one_thread")
# trained long enough that max-norm hurts the oblivious direction attacks (at 2 epochs cosine-label is perfect)
CFG = TrainConfig(epochs=10, batch_size=32, record_steps=6)
OBLIVIOUS = [("norm-label", {}), ("cosine-label", {}), ("cosine-label", {"sign": "abs"}), ("cluster-label", {}),
             ("cluster-label", {"sign": "abs"}), ("unsplit-label", {}), ("unsplit-label", {"window": "after"})]


@pytest.fixture(scope="module", params=[4, 16])
def stacked(request, tiny_data):
    _, _, defended, res = train_cell(tiny_data, "batching+max-norm", "u-shaped", CFG, batching={"b": request.param})
    return request.param, defended, res


def _run(name, defended, res, data, **params):
    attack = ATTACKS.create(name, **params)
    view = make_view(attack, defended, res, data, "cpu")
    out = attack.run(view, torch_generator(0, "attack"))
    return score(out, res, data.x_test, data.y_test), out, view


def test_beats_every_oblivious_label_attack_under_batching_plus_max_norm(tiny_data, stacked):
    b, defended, res = stacked
    m, out, _ = _run("grad-label-count", defended, res, tiny_data)
    assert m["label_acc"] >= 0.95 and m["leak_auc"] > 0.95, m
    assert out.extra["group_size"] == b  # read off the transcript, the partial last batch included
    assert m["count_exact"] >= 0.75 and m["count_l1"] < 1.0, m  # most groups' counts exactly right
    assert m["n_groups"] == len(out.group_counts) and int(out.group_counts.sum()) == len(out.ids)
    for name, params in OBLIVIOUS:
        other, _, _ = _run(name, defended, res, tiny_data, **params)
        assert m["label_acc"] > other["label_acc"], (name, params, other)
    cut, _, _ = _run("grad-label-count", defended, res, tiny_data, fallback="cut_grad")
    assert cut["label_acc"] >= 0.95


def test_same_output_twice(tiny_data, stacked):
    _, defended, res = stacked
    _, a, _ = _run("grad-label-count", defended, res, tiny_data)
    _, b, _ = _run("grad-label-count", defended, res, tiny_data)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.label_scores, b.label_scores)


@pytest.mark.parametrize("params,fields", [({}, {"server_out", "tail_grads"}),
                                           ({"fallback": "argmin"}, {"server_out", "tail_grads"}),
                                           ({"fallback": "cut_grad"}, {"server_out", "tail_grads", "cut_grad"})])
def test_view_holds_exactly_the_declared_capabilities(tiny_data, stacked, params, fields):
    _, defended, res = stacked
    attack = GradLabelCount(**params)
    view = make_view(attack, defended, res, tiny_data, "cpu")
    assert view.capabilities == attack.requires | {C.ARCHITECTURE}
    assert attack.adapts_to == ("batching",) and GradLabelCount.requires == GradLabelCount().requires
    for w in ("before", "after"):
        for o in view.observations(w):
            for f in ("smashed", "labels", "inputs", "server_out", "cut_grad", "tail_grads", "server_grads"):
                assert (getattr(o, f) is not None) == (f in fields), f
            assert bool((o.ids < 0).all())  # per-release handles: no SAMPLE_IDS
    assert view.known_labels is None and view.client_weights is None and view.query is None
    assert view.aux is None and view.train_data is None
    assert attack.run(view, torch_generator(0, "attack")).labels is not None  # runs on exactly that


def _group(b, d, k=10, seed=0, confident=()):
    """A synthetic group: inputs x (b×d, ReLU-like), labels, errors e and the float32 mean gradients."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d, generator=g).relu() + 0.1
    y = torch.randint(0, k, (b,), generator=g)
    logits = torch.randn(b, k, generator=g)
    logits[list(confident), y[list(confident)]] += 30.0
    e = logits.softmax(1) - F.one_hot(y, k)
    return x, y, e, (e.T @ x / b).float(), (e.sum(0) / b).float()


def test_least_squares_recovers_every_error_and_label_of_a_full_rank_group():
    x, y, e, dw, dc = _group(12, 20)
    got, ok, full = solve_group(x.double(), dw.double(), dc.double(), 4.0)
    assert full and bool(ok.all())
    assert torch.equal(got.argmin(1), y) and torch.allclose(got, e.double(), atol=1e-5)


def test_a_very_confident_example_is_left_unresolved_and_a_wide_group_is_rank_deficient():
    x, y, e, dw, dc = _group(12, 20, confident=[3])
    _, ok, full = solve_group(x.double(), dw.double(), dc.double(), 4.0)
    assert full and not bool(ok[3]) and bool(ok[torch.arange(12) != 3].all())
    x, y, e, dw, dc = _group(30, 20)  # b > d + 1: the system has more unknowns than equations
    _, _, full = solve_group(x.double(), dw.double(), dc.double(), 4.0)
    assert not full


def test_group_size_is_read_off_the_transcript_with_a_partial_last_batch():
    """24 examples in groups of 16: two tail gradients, cut as 16 + 8 (n/groups would say 12 + 12)."""
    x, _, e, _, _ = _group(24, 40, seed=1)
    mats = [[((e[s:s + 16].T @ x[s:s + 16] / len(x[s:s + 16])).double(), (e[s:s + 16].sum(0) / len(x[s:s + 16])).double())
             for s in (0, 16)]]
    full_x, _, full_e, _, _ = _group(32, 40, seed=2)
    full = [[((full_e[s:s + 16].T @ full_x[s:s + 16] / 16).double(), (full_e[s:s + 16].sum(0) / 16).double())
             for s in (0, 16)]]
    assert group_size([full_x.double(), x.double()], full + mats) == 16
    assert group_size([x.double()], mats) == 16  # 12..23 all cut 24 in two: the consistent cut wins
    assert group_size([x.double()], mats, known=5) == 16  # a public b the transcript rules out is ignored
    with pytest.raises(ValueError, match="group size"):
        group_size([x.double()], [mats[0] * 5])  # 10 tail gradients cannot come from 24 examples' groups


def test_fallbacks_label_confident_examples_from_resolved_ones():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(16, 5, generator=g) * 2
    x = torch.randn(400, 16, generator=g).double()
    p = (x @ w.double()).softmax(1)
    y = p.argmax(1)
    e = p - F.one_hot(y, 5).double()
    ok = p.max(1).values < 0.9  # the uncertain ones are resolved, the confident ones are not
    assert 20 < int(ok.sum()) < 380
    logits = fit_last_layer(x, e, y, ok, 5)
    assert float((logits.argmax(1)[~ok] == y[~ok]).double().mean()) > 0.95
    cut = F.normalize(e @ w.double().T * torch.where(torch.rand(400, generator=g) < 0.5, -1.0, 1.0)[:, None].double(), dim=1)
    cos = direction_scores(cut, y, ok, 5)  # directions W e up to sign (max-norm's flips)
    assert float((cos.argmax(1)[~ok] == y[~ok]).double().mean()) > 0.6  # chance: about 0.2


def test_refuses_a_tail_whose_last_linear_input_it_cannot_compute(tiny_data):
    from arena.records import AttackNotApplicable

    with pytest.raises(AttackNotApplicable, match="cannot compute"):  # the runner: n/a, never an error
        last_linear(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)))
    with pytest.raises(ValueError, match="output layer"):
        last_linear(nn.Sequential(nn.Linear(8, 3), nn.ReLU()))
    k, front = last_linear(nn.Sequential(nn.ReLU(), nn.Linear(8, 3)))
    assert k == "1" and len(front) == 1


def test_label_layers_two_reads_the_labels_through_the_relu(tiny_data):
    from arena.records import Scenario
    from arena.models import build_model
    from arena.protocol.train import make_setup, train
    from arena.defenses import DEFENSES
    from arena.seeding import seed_everything

    sc = Scenario("digits", "lenet", 1, setup="u-shaped", seed=0, label_layers=2,
                  train=TrainConfig(epochs=1, batch_size=32, record_steps=2))
    seed_everything(0, "init")
    base = make_setup(sc, build_model("lenet", tiny_data.shape, 10), tiny_data.shape)
    defended = DEFENSES.create("batching+max-norm", batching={"b": 8}).apply(base, torch_generator(0, "defense"))
    res = train(defended, tiny_data, torch_generator(0, "train"))
    m, _, _ = _run("grad-label-count", defended, res, tiny_data)
    assert m["label_acc"] == 1.0 and m["count_exact"] == 1.0, m


@pytest.mark.parametrize("params,needle", [({"window": "tracked"}, "window"), ({"fallback": "knn"}, "fallback"),
                                           ({"z": 0}, "z"), ({"z": -1.0}, "z"), ({"z": "big"}, "z"),
                                           ({"b": 4}, "unknown parameter")])
def test_bad_parameters_raise(params, needle):
    with pytest.raises(ValueError, match=needle):
        GradLabelCount(**params)


def test_count_metrics_hand_computed_and_checked():
    counts = torch.tensor([[2, 0, 0], [0, 1, 1]])
    groups, truth = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 2, 2])
    m = group_count_metrics(counts, groups, truth)
    assert m == {"count_exact": 0.5, "count_l1": 1.0, "n_groups": 2.0}  # group 1: |0-0| + |1-0| + |1-2|
    with pytest.raises(ValueError, match="groups"):
        group_count_metrics(counts, torch.tensor([0, 0, 1, 2]), truth)
    with pytest.raises(ValueError, match="column"):
        group_count_metrics(counts, groups, torch.tensor([0, 0, 3, 3]))


def test_scorer_counts_from_the_truth_of_the_output_ids(tiny_data, stacked):
    _, defended, res = stacked
    _, out, _ = _run("grad-label-count", defended, res, tiny_data)
    y = res.truth.labels(resolve(out.ids, res.transcript))
    true_counts = torch.zeros_like(out.group_counts).index_put_((out.groups, y), torch.ones_like(y), accumulate=True)
    perfect = AttackOutput(ids=out.ids, group_counts=true_counts, groups=out.groups)
    assert score(perfect, res, tiny_data.x_test, tiny_data.y_test)["count_exact"] == 1.0
    off = true_counts.clone()
    off[0, 0] += 1
    m = score(AttackOutput(ids=out.ids, group_counts=off, groups=out.groups), res, tiny_data.x_test, tiny_data.y_test)
    assert m["count_l1"] == pytest.approx(1 / len(off)) and m["count_exact"] == pytest.approx(1 - 1 / len(off))
    with pytest.raises(ScoringError, match="groups"):
        score(AttackOutput(ids=out.ids, group_counts=off), res, tiny_data.x_test, tiny_data.y_test)


MATRIX = """
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
name = "grad-label-count"

[[defenses]]
name = "none"

[[defenses]]
name = "batching+max-norm"
params = { batching = { b = 8 } }
"""


def test_in_the_matrix_it_runs_u_shaped_and_records_the_counts(run_matrix):
    cells = {c["defense"]: c for c in run_matrix(MATRIX, "--no-report")}
    assert set(cells) == {"none", "batching+max-norm"}
    for c in cells.values():
        assert c["status"] == "ok" and c["setup"] == "u-shaped", c["error"]
        assert c["metrics"]["label_acc"] == 1.0 and c["metrics"]["count_exact"] == 1.0, c["metrics"]
        assert "cut_gradient" not in c["granted"]  # the default fallback needs no cut gradient
        assert list(c["adapts_to"]) == ["batching"]
    assert cells["none"]["metrics"]["group_size"] == 1 and cells["batching+max-norm"]["metrics"]["group_size"] == 8
