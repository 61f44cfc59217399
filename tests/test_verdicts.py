"""What the matrix reports is what happens (issue 14): the deployed pipeline's accuracy, the split
that ran, the threat model granted, isolation of what an attack sees, disjoint data, failed runs
that say so. Each test here fails on the code before that issue."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from arena.attacks.base import Attack, PolicyContext
from arena.defenses import DEFENSES
from arena.matrix import main
from arena.models import build_model
from arena.protocol.train import evaluate, make_setup, train
from arena.records import DENIED, NOT_EVALUATED, SCHEMA, AttackOutput, Capability, Cell, Scenario, TrainConfig
from arena.run.runner import load_data, make_view
from arena.protocol.transcript import resolve
from arena.run.store import CELLS, CellStore, read_cells
from arena.scoring.score import score
from arena.seeding import seed_everything, torch_generator

from conftest import real_data_dir
from test_protocol import _tensors

CFG = TrainConfig(epochs=2, batch_size=32, record_steps=2)
# a tiny matrix run: digits, depth 1, a few training steps; each test adds its attacks and defenses
TINY = """[experiment]
datasets = ["digits"]
depths = [1]
n_train = 200
n_test = 100
n_aux = 100
[train]
epochs = 1
max_steps = {steps}
"""


def _setup(tiny_data, setup="vanilla", depth=1):
    sc = Scenario("digits", "lenet", depth, setup=setup, seed=0, train=CFG)
    seed_everything(0, "init")
    return make_setup(sc, build_model("lenet", tiny_data.shape, tiny_data.num_classes), tiny_data.shape)


# 1. utility is the deployed pipeline's -------------------------------------------------------
def test_test_accuracy_is_measured_through_what_the_client_sends_at_test_time(tiny_data):
    setup = _setup(tiny_data)
    plain = train(setup, tiny_data, torch_generator(0, "t"))

    def silence(a, gen):  # a client that sends nothing useful at inference
        return torch.zeros_like(a)

    muted = train(setup.replace(inference_hooks=(silence,)), tiny_data, torch_generator(0, "t"))
    assert plain.test_acc > 0.4  # chance: 0.1
    # same training (the hook is test-time only), but the deployed pipeline predicts one class
    prior = torch.bincount(tiny_data.y_test, minlength=10).max().item() / len(tiny_data.y_test)
    assert muted.test_acc <= prior + 1e-9 < plain.test_acc
    assert evaluate(muted.model, tiny_data.x_test, tiny_data.y_test) == plain.test_acc


def test_noise_utility_is_that_of_the_noisy_deployed_pipeline(tiny_data):
    setup = _setup(tiny_data)
    noise = DEFENSES.create("noise", scale=3.0, clip=5.0)
    res = train(noise.apply(setup, torch_generator(0, "d")), tiny_data, torch_generator(0, "t"))
    clean = evaluate(res.model, tiny_data.x_test, tiny_data.y_test)  # what was reported before
    assert res.test_acc != clean  # the noise at test time is part of the measured system


# 3 and 5. HE: derivable activations are rebuilt, not blocked; the cell records the split that ran ------
def test_he_inversion_cells_run_on_rebuilt_activations_and_record_the_effective_split(run_matrix):
    pytest.importorskip("tenseal")
    cells = run_matrix(TINY.format(steps=1) + """
[[attacks]]
name = "unsplit"
[[defenses]]
name = "he"
grid = { train_server = [true, false] }
""")
    by = {c["defense_params"]["train_server"]: c for c in cells}
    trained, frozen = by[True], by[False]
    # issue 17: the view rebuilds the activations from g_h and dL/dW (protocol.leak), so the cell runs
    assert trained["status"] == "ok", trained.get("error") or trained.get("reason")
    assert "least squares" in trained["derived"]["smashed"] and "smashed" in trained["granted"]
    assert frozen["status"] == "blocked" and not frozen["reason"].startswith(NOT_EVALUATED)
    assert "he removes" in frozen["reason"] or "which defense he removes" in frozen["reason"]
    for c in cells:  # LeNet under he: the client runs layers 0..5, U-shaped, a 4-layer tail
        assert c["depth"] == 1 and c["effective"] == {"depth": 5, "setup": "u-shaped", "label_layers": 4,
                                                      "n_train": 200, "n_aux": 100}
        assert c["schema"] == SCHEMA == 2
    # the report shows them as what they are: not evaluated (never a defense that works) vs blocked
    from arena.report.tables import leakage_frame, summarize

    lf = leakage_frame(summarize([Cell.from_json(c) for c in cells]))
    states = {r.defense_label.split("train_server=")[1].split(",")[0].split(")")[0]: r.state
              for r in lf.itertuples()}
    assert states == {"True": "ok", "False": "blocked"}, states
    assert all("[runs at depth 5, u-shaped]" in r.defense_label for r in lf.itertuples())


# 6. threat model: recorded, and deniable ------------------------------------------------------
def test_denied_assumptions_block_the_cells_that_need_them_and_granted_ones_are_recorded(run_matrix):
    toml = TINY.format(steps=2) + """
[[attacks]]
name = "mean-image"
[[attacks]]
name = "he-whitebox"
params = { iterations = 2 }
[threat]
deny = ["client_weights"]
"""
    cells = {c["attack"]: c for c in run_matrix(toml)}
    wb, base = cells["he-whitebox"], cells["mean-image"]
    assert wb["status"] == "blocked" and wb["reason"].startswith(DENIED) and "client_weights" in wb["reason"]
    assert base["status"] == "ok" and base["granted"] == ["architecture"]  # a baseline needs nothing more


def test_deny_names_are_checked_before_any_work(tmp_path, capsys):
    assert main(["--datasets", "digits", "--attacks", "mean-image", "--deny", "telepathy",
                 "--out", str(tmp_path / "r"), "-q"]) == 2
    assert "cannot deny ['telepathy']" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


# 7. isolation ---------------------------------------------------------------------------------
class _Needs(Attack):
    name = "test-needs"

    def __init__(self, caps):
        super().__init__()
        self.requires = frozenset(caps)


@pytest.mark.parametrize("cap", [c for c in Capability if c not in (Capability.CLIENT_WEIGHTS, Capability.TRAIN_DATA)])
def test_no_view_holds_client_parameters_or_private_tensors_whatever_it_was_granted(tiny_data, cap):
    """CLIENT_WEIGHTS and TRAIN_DATA hand over exactly those by definition; every other capability,
    QUERY included, gives nothing reachable that is a client parameter or a private tensor."""
    setup = _setup(tiny_data, "u-shaped" if cap in (Capability.CUT_GRADIENT, Capability.TAIL_GRADIENTS,
                                                    Capability.SERVER_OUT) else
                   "label-only" if cap == Capability.INPUTS else "vanilla")
    res = train(setup, tiny_data, torch_generator(0, "t"))
    view = make_view(_Needs({cap}), setup, res, tiny_data, "cpu")
    # the private party's parameters: the client's front, or in label-only the label owner's tail
    owner = res.model.tail if cap == Capability.INPUTS else res.model.client
    client = [p.detach() for p in owner.parameters()]
    private = [tiny_data.x_train, tiny_data.y_train, tiny_data.x_test]
    if cap != Capability.INPUTS:  # in label-only the server owns the inputs
        private += list(res.truth.x.values())
    for t in _tensors(view):
        for p in client:
            assert not (t.shape == p.shape and torch.equal(t, p)), f"{cap}: a client parameter is reachable"
        for x in private:
            assert not (t.shape == x.shape and torch.equal(t, x)), f"{cap}: a private tensor is reachable"
    if cap == Capability.QUERY:  # and the query still answers as the client does
        x = tiny_data.x_test[:4]
        with torch.no_grad():
            assert torch.equal(view.query(x), res.model.client(x))
        assert not hasattr(view.query, "__closure__") and not hasattr(view.query, "__dict__")


def test_attacks_see_opaque_per_release_handles_unless_they_declare_sample_ids(tiny_data):
    setup = _setup(tiny_data)
    res = train(setup, tiny_data, torch_generator(0, "t"))
    true = torch.cat([o.ids for w in ("before", "after") for o in res.transcript.observations(w)])
    opaque = make_view(_Needs({Capability.SMASHED}), setup, res, tiny_data, "cpu")
    seen = torch.cat([o.ids for w in ("before", "after") for o in opaque.observations(w)])
    assert torch.equal(seen, -1 - torch.arange(len(true)))  # one handle per release, in the order sent
    assert torch.equal(resolve(seen, res.transcript), true)  # only the scorer's side maps them back
    linked = make_view(_Needs({Capability.SMASHED, Capability.SAMPLE_IDS}), setup, res, tiny_data, "cpu")
    assert torch.equal(torch.cat([o.ids for w in ("before", "after") for o in linked.observations(w)]), true)
    # and the scorer finds the truth through the handles
    ids, _ = opaque.stacked("smashed", "after")
    out = AttackOutput(ids=ids, reconstructions=res.truth.inputs(resolve(ids, res.transcript)))
    assert score(out, res, tiny_data.x_test, tiny_data.y_test)["ssim"] == pytest.approx(1.0)


def test_a_defense_never_shifts_the_data_order(tiny_data):
    """Paired comparisons: the noise defense draws from its own stream, so a defended run sees the
    same batches as the undefended one in every epoch (before, noise and data order shared one)."""
    setup = _setup(tiny_data)
    plain = train(setup, tiny_data, torch_generator(0, "t"))
    noisy = train(DEFENSES.create("noise", scale=0.5).apply(setup, torch_generator(0, "d")), tiny_data,
                  torch_generator(0, "t"))
    for w in ("before", "after"):  # "after" is in the second epoch
        for a, b in zip(plain.transcript.observations(w), noisy.transcript.observations(w)):
            assert torch.equal(a.ids, b.ids)


class _Malicious(Attack):
    name = "test-malicious"
    kind = "hijack"
    malicious = True
    requires = frozenset({Capability.SMASHED, Capability.CONTROL_GRADIENT})
    seen: list = []

    def server_policy(self, ctx: PolicyContext):
        type(self).seen.append(ctx)
        return None  # behave honestly: only what the policy was given matters here

    def run(self, view, generator):
        ids, _ = view.stacked("smashed")
        return AttackOutput(ids=ids, reconstructions=torch.zeros(len(ids), *view.input_shape))


def test_a_malicious_policy_gets_aux_data_only_when_it_declares_it(tiny_data, tmp_path):
    from arena.attacks import ATTACKS

    if _Malicious.name not in ATTACKS.names():
        ATTACKS.register(_Malicious.name, _Malicious)
    from arena.run.config import Entry
    from arena.run.runner import CellSpec, GroupContext, run_group

    sc = Scenario("digits", "lenet", 1, n_train=200, n_test=100, train=TrainConfig(epochs=1, max_steps=2))
    cells = list(run_group([CellSpec(sc, Entry(_Malicious.name), Entry("none"), 100)], GroupContext()))
    assert cells[0].status == "ok", cells[0].error
    ctx = _Malicious.seen[-1]
    assert ctx.aux is None
    gen = torch_generator(0, "train", json.dumps(sc.key(), sort_keys=True, default=str))
    assert ctx.generator.initial_seed() != gen.initial_seed()  # not the data-order stream


# 8. auxiliary, private and test data never overlap ---------------------------------------------
def test_aux_comes_from_the_training_split_and_never_overlaps_when_n_train_is_all():
    d = load_data(Scenario("digits", "lenet", 1, n_train=None, n_test=None), n_aux=100, data_dir=None)
    rows = lambda x: {r.numpy().tobytes() for r in x}  # noqa: E731
    aux, tr, te = rows(d.x_aux), rows(d.x_train), rows(d.x_test)
    assert len(d.x_aux) == 100 and not aux & tr and not aux & te
    full = load_data(Scenario("digits", "lenet", 1, n_train=None, n_test=None), n_aux=1, data_dir=None)
    assert len(d.x_train) == len(full.x_train) - 99  # "all" trains on what is left after the aux set


def test_the_defaults_fit_a_dataset_smaller_than_them(tmp_path, capsys):
    """The default experiment asks for every training image and 5,000 auxiliary ones; digits has 1,437:
    it keeps a disjoint auxiliary fifth and trains on the rest (said before the run, recorded per cell)."""
    out = tmp_path / "digits"
    assert main(["--datasets", "digits", "--attacks", "mean-image", "--defenses", "none", "--seeds", "0",
                 "--out", str(out), "--no-report"]) == 0
    (cell,) = read_cells(out)
    assert cell.status == "ok"
    assert (cell.effective["n_train"], cell.effective["n_aux"]) == (1437 - 287, 287)
    assert "digits: 1437 training images: 1150 private + 287 auxiliary (n_aux 5000 does not fit" \
        in capsys.readouterr().err


def test_sizes_that_fit_are_kept_and_only_an_empty_split_is_an_error():
    from arena.run.runner import effective_sizes

    assert effective_sizes(60000, None, 5000) == (55000, 5000)
    assert effective_sizes(1437, 300, 1000) == (300, 1000)  # both fit: as asked
    assert effective_sizes(1437, None, 5000) == (1150, 287)
    assert effective_sizes(1437, 2000, 0) == (1437, 0)
    with pytest.raises(ValueError, match="too few to train"):
        effective_sizes(1, None, 0, "tiny")


# A run that fails says so ----------------------------------------------------------------------
def test_a_corrupt_dataset_file_is_an_error_before_any_work(tmp_path, capsys):
    src = real_data_dir()
    if src is None or not (src / "fashion-mnist").is_dir():
        pytest.skip("needs the real Fashion-MNIST files (ARENA_DATA)")
    bad = tmp_path / "data" / "fashion-mnist"
    shutil.copytree(src / "fashion-mnist", bad)
    f = next(bad.rglob("train-images*"))
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])  # truncated
    out = tmp_path / "run"
    code = main(["--datasets", "fashion-mnist", "--attacks", "mean-image", "--defenses", "none", "--data-dir",
                 str(tmp_path / "data"), "--out", str(out), "-q"])
    assert code == 2
    assert "fashion-mnist" in capsys.readouterr().err
    assert not (out / CELLS).exists()


def test_cells_of_an_older_schema_are_recomputed_not_mixed(tmp_path):
    store = CellStore(tmp_path)
    old = Cell(key="k", dataset="digits", model="lenet", depth=1, setup="vanilla", attack="mean-image",
               defense="none", attack_params={}, defense_params={}, seed=0, status="ok", schema=SCHEMA - 1)
    store.append(old)
    with pytest.warns(UserWarning, match="older schema"):
        assert read_cells(tmp_path) == [] and store.done_keys() == set()
    assert read_cells(tmp_path, older=True)[0].schema == SCHEMA - 1


def test_a_normal_run_shows_no_library_warning(run_matrix, recwarn):
    """FSHA, SplitGuard and DP-SGD runs used to print PyTorch's "Full backward hook is firing"."""
    run_matrix(TINY.format(steps=3) + """
[[attacks]]
name = "fsha"
params = { checkpoints = 1 }
[[attacks]]
name = "mean-image"
[[defenses]]
name = "none"
[[defenses]]
name = "splitguard"
[[defenses]]
name = "dp-sgd"
""")
    assert not [str(w.message) for w in recwarn if issubclass(w.category, UserWarning)]


def test_the_scorer_refuses_ids_the_view_did_not_give(tiny_data):
    """An attack without sample_ids must answer with the handles it saw: made-up non-negative ids would
    otherwise be scored against whichever samples happen to carry those ids."""
    from arena.scoring.score import ScoringError

    setup = _setup(tiny_data)
    res = train(setup, tiny_data, torch_generator(0, "t"))
    view = make_view(_Needs({Capability.SMASHED}), setup, res, tiny_data, "cpu")
    ids, _ = view.stacked("smashed", "after")
    good = AttackOutput(ids=ids, reconstructions=torch.zeros(len(ids), *tiny_data.shape))
    assert "ssim" in score(good, res, tiny_data.x_test, tiny_data.y_test, ids="handles")
    made_up = AttackOutput(ids=torch.arange(len(ids)), reconstructions=torch.zeros(len(ids), *tiny_data.shape))
    with pytest.raises(ScoringError, match="not granted sample_ids"):
        score(made_up, res, tiny_data.x_test, tiny_data.y_test, ids="handles")
    with pytest.raises(ScoringError, match="granted sample_ids"):
        score(good, res, tiny_data.x_test, tiny_data.y_test, ids="samples")
