"""One training run serves a defense's vanilla and u-shaped cells when the defense leaves the label
owner alone (`Defense.label_owner_neutral`): the declaration is true (same weights, bit for bit), the
derived vanilla run is what a vanilla run records, and the matrix's numbers do not change."""
from __future__ import annotations

import pytest
import torch

from arena.defenses import DEFENSES
from arena.protocol.derive import as_vanilla
from arena.records import TrainConfig
from cellruns import train_cell

pytestmark = pytest.mark.usefixtures("one_thread")
CFG = TrainConfig(epochs=1, batch_size=16, record_steps=2, max_steps=6)
NEUTRAL = [("none", {}), ("deeper-split", {"k": 1}), ("noise", {"scale": 0.5}), ("nopeek", {"alpha": 1.0}), ("dropout", {"p": 0.5}),
           ("dp-sgd", {"noise_multiplier": 1.0, "max_grad_norm": 1.0})]


def _train(data, defense, params, setup):
    return train_cell(data, defense, setup, CFG, **params)[3]


def test_the_neutral_defenses_are_the_declared_ones():
    declared = {n for n in DEFENSES.names() if getattr(DEFENSES.get(n), "label_owner_neutral", False)}
    assert {n for n, _ in NEUTRAL} <= declared
    assert not declared & {"batching", "he", "splitguard"}  # label owner's side, own setup, vanilla only
    assert DEFENSES.get("noise+dp-sgd").label_owner_neutral  # a stack is neutral when all its members are
    assert not DEFENSES.get("noise+batching").label_owner_neutral


@pytest.mark.parametrize("defense,params", NEUTRAL, ids=[n for n, _ in NEUTRAL])
def test_vanilla_and_u_shaped_train_the_same_weights_and_derive_the_vanilla_transcript(tiny_data, defense, params):
    van, ush = _train(tiny_data, defense, params, "vanilla"), _train(tiny_data, defense, params, "u-shaped")
    derived = as_vanilla(ush, tiny_data.shape)
    assert van.test_acc == ush.test_acc == derived.test_acc
    for part in ("client", "server", "tail"):
        a, b = list(getattr(van.model, part).parameters()), list(getattr(derived.model, part).parameters())
        assert len(a) == len(b) and all(torch.equal(p, q) for p, q in zip(a, b)), part
    for p, q in zip(van.server_before.parameters(), derived.server_before.parameters(), strict=True):
        assert torch.equal(p, q)
    assert derived.transcript.setup == "vanilla"
    for w in ("before", "after"):
        ov, od = van.transcript.observations(w), derived.transcript.observations(w)
        assert len(ov) == len(od) == 2
        for x, y in zip(ov, od):
            assert x.step == y.step and torch.equal(x.ids, y.ids)
            assert torch.equal(x.smashed, y.smashed) and torch.equal(x.labels, y.labels)
            assert y.cut_grad is None and y.server_out is None and y.tail_grads is None and y.tail_labels is None
    assert derived.cost["client_flops"] == van.cost["client_flops"] < ush.cost["client_flops"]
    assert derived.cost["client_s"] <= ush.cost["client_s"]
    assert "label_owner_s" not in derived.cost


def test_fake_splitguard_labels_reach_the_derived_vanilla_transcript(tiny_data):
    """What a vanilla server is sent is the labels the client used, fake ones included."""
    ush = _train(tiny_data, "none", {}, "u-shaped")
    o = ush.transcript.observations("after")[0]
    o.tail_labels = (o.tail_labels + 1) % 10  # as a fake batch would have them
    derived = as_vanilla(ush, tiny_data.shape)
    assert torch.equal(derived.transcript.observations("after")[0].labels, o.tail_labels)


MATRIX = """
[experiment]
datasets = ["digits"]
depths = [1]
seeds = [0]
n_train = 300
n_test = 100
n_aux = 100
[train]
epochs = 1
batch_size = 32
record_steps = 2
[[attacks]]
name = "mean-image"
[[attacks]]
name = "random-front"
[[attacks]]
name = "unsplit"
params = { rounds = 2 }
[[attacks]]
name = "cosine-label"
[[defenses]]
name = "none"
[[defenses]]
name = "noise"
params = { scale = 0.3 }
"""


def _matrix(tmp_path, name):
    import json

    from arena.matrix import main
    from arena.run.store import CELLS

    spec = tmp_path / "experiment.toml"
    spec.write_text(MATRIX)
    out = tmp_path / name
    assert main(["-e", str(spec), "--out", str(out), "-q", "--workers", "1"]) == 0
    return {(c["attack"], c["defense"], c["setup"]): c for c in map(json.loads, (out / CELLS).read_text().splitlines())}


def test_the_matrix_trains_once_per_neutral_defense_and_its_numbers_do_not_change(tmp_path, monkeypatch):
    import arena.run.runner as runner

    calls = []
    real = runner.train
    monkeypatch.setattr(runner, "train", lambda setup, *a, **k: calls.append(setup.scenario.setup) or real(setup, *a, **k))
    shared = _matrix(tmp_path, "shared")
    assert sorted(calls) == ["u-shaped", "u-shaped"]  # one run per defense serves vanilla and u-shaped
    calls.clear()
    for name in ("none", "noise"):
        monkeypatch.setattr(DEFENSES.get(name), "label_owner_neutral", False)
    apart = _matrix(tmp_path, "apart")
    assert sorted(calls) == ["u-shaped", "u-shaped", "vanilla", "vanilla"]
    assert shared.keys() == apart.keys() and len(shared) == 8
    for k, c in shared.items():
        assert c["status"] == apart[k]["status"] == "ok", (k, c.get("error"), apart[k].get("error"))
        timed = {m for m in c["metrics"] if m.endswith("_per_s")}  # speeds, not results
        assert {m: v for m, v in c["metrics"].items() if m not in timed} == \
            {m: v for m, v in apart[k]["metrics"].items() if m not in timed}, k  # bit-for-bit the same numbers
        assert c["utility"] == apart[k]["utility"], k
        assert c["effective"] == apart[k]["effective"], k
        assert c["cost"]["client_flops"] == apart[k]["cost"]["client_flops"], k


def test_a_cut_too_deep_for_u_shaped_still_trains_the_vanilla_cells(tmp_path):
    """deeper-split(k=2) at depth 7 cuts LeNet at 9: a valid vanilla split, too deep for a label owner's
    layer. The u-shaped cell (listed first) is an error that says why; the vanilla cell trains on its own
    and is never lost."""
    import json

    from arena.matrix import main
    from arena.run.store import CELLS

    spec = tmp_path / "e.toml"
    spec.write_text('[experiment]\ndatasets = ["digits"]\ndepths = [7]\nseeds = [0]\nn_train = 200\nn_test = 100\n'
                    'n_aux = 50\n[train]\nepochs = 1\nbatch_size = 32\n[[attacks]]\nname = "cosine-label"\n'
                    '[[attacks]]\nname = "mean-image"\n[[defenses]]\nname = "deeper-split"\nparams = { k = 2 }\n')
    assert main(["-e", str(spec), "--out", str(tmp_path / "run"), "-q", "--workers", "1"]) == 1  # one error cell
    cells = {c["attack"]: c for c in map(json.loads, (tmp_path / "run" / CELLS).read_text().splitlines())}
    assert cells.keys() == {"cosine-label", "mean-image"}
    assert cells["cosine-label"]["status"] == "error" and "split depth 9" in cells["cosine-label"]["error"]
    assert cells["mean-image"]["status"] == "ok" and cells["mean-image"]["effective"]["depth"] == 9
