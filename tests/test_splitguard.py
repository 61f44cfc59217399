"""SplitGuard: identity at strength zero, no alarm against an honest server, catches FSHA and stops
training, never learns from a fake batch, and the score behaves as the paper's formula says."""
from __future__ import annotations

import pytest
import torch

from arena.attacks import ATTACKS, PolicyContext
from arena.defenses import DEFENSES
from arena.defenses.splitguard import _Running, alarm, first_alarm, splitguard_score
from arena.models import build_model
from arena.protocol.train import make_setup, total_steps, train
from arena.records import Scenario, TrainConfig
from arena.run.runner import load_data
from arena.seeding import seed_everything, torch_generator
from arena.protocol.split import split

CFG = TrainConfig(epochs=5, batch_size=32, record_steps=2)  # 95 steps on 600 digits


pytestmark = pytest.mark.usefixtures("one_thread")


def _setup(data, seed=0, depth=2, cfg=CFG, setup="vanilla"):
    sc = Scenario("digits", "lenet", depth, setup=setup, seed=seed, train=cfg)
    seed_everything(seed, "init")
    return make_setup(sc, build_model("lenet", data.shape, data.num_classes), data.shape)


# The default decision rule was calibrated at realistic scale (2,580 steps, p_fake 0.1: see the
# module's docstring); a 95-step toy run sends 3x more fake batches so a 7-score vote has scores to count.
TOY = {"p_fake": 0.3}


def _guarded(data, seed=0, **kw):
    d = DEFENSES.create("splitguard", **kw)
    return d, d.apply(_setup(data, seed), torch_generator(seed, "defense"))


def test_strength_zero_is_the_plain_protocol(tiny_data):
    cfg = TrainConfig(epochs=1, batch_size=32, record_steps=2)
    plain = _setup(tiny_data, cfg=cfg)
    d = DEFENSES.create("splitguard", p_fake=0)
    guarded = d.apply(plain, torch_generator(0, "defense"))
    assert guarded is plain and d.report()["sg_fake_batches"] == 0
    a = train(plain, tiny_data, torch_generator(0, "t"))
    b = train(guarded, tiny_data, torch_generator(0, "t"))
    assert a.test_acc == b.test_acc
    for w in ("before", "after"):
        for oa, ob in zip(a.transcript.observations(w), b.transcript.observations(w), strict=True):
            assert torch.equal(oa.smashed, ob.smashed) and torch.equal(oa.labels, ob.labels)


@pytest.mark.parametrize("seed", range(5))
def test_no_alarm_against_an_honest_server(tiny_data_seeded, seed):
    data = tiny_data_seeded(seed)
    d, setup = _guarded(data, seed, **TOY)
    res = train(setup, data, torch_generator(seed, "t"))
    r = d.report()
    assert r["sg_scores"] >= d.window, r  # enough scores for the vote to fire
    assert r["sg_alarm"] == 0 and r["sg_detected_at"] is None, r
    assert res.cost["train_steps"] == 95 and res.test_acc > 0.6
    assert r["sg_score_mean"] > 0.9


@pytest.fixture
def tiny_data_seeded():
    cache = {}

    def get(seed):
        if seed not in cache:
            cache[seed] = load_data(Scenario("digits", "lenet", 2, seed=seed, n_train=600, n_test=200),
                                    n_aux=200, data_dir=None)
        return cache[seed]

    return get


def test_detects_fsha_and_stops_training(tiny_data):
    d, setup = _guarded(tiny_data, **TOY)
    attack = ATTACKS.create("fsha")
    gen = torch_generator(0, "t")
    policy = attack.server_policy(PolicyContext(
        input_shape=tiny_data.shape, num_classes=10, client_arch=lambda: split(build_model(
            "lenet", tiny_data.shape, 10), 2).client, aux=(tiny_data.x_aux, tiny_data.y_aux),
        generator=gen, device="cpu", total_steps=total_steps(600, CFG)))
    res = train(setup, tiny_data, gen, policy=policy)
    r = d.report()
    assert r["sg_alarm"] == 1 and r["sg_detected_at"] is not None, r
    assert res.cost["train_steps"] == r["sg_detected_at"] + 1 < 95  # stopped right after the alarm
    after = res.transcript.observations("after")
    assert [o.step for o in after] == [r["sg_detected_at"] - 1, r["sg_detected_at"]]
    assert all(int(i) in res.truth.x for o in after for i in o.ids)


def test_fake_batches_never_update_the_client(tiny_data):
    cfg = TrainConfig(epochs=1, batch_size=32, record_steps=2, max_steps=8)
    d = DEFENSES.create("splitguard", p_fake=1.0, start=0)
    setup = d.apply(_setup(tiny_data, cfg=cfg), torch_generator(0, "defense"))
    res = train(setup, tiny_data, torch_generator(0, "t"))
    init = split(setup.model, setup.depth)
    for p, q in zip(res.model.client.parameters(), init.client.parameters()):
        assert torch.equal(p.cpu(), q)  # every batch was fake: the client never moved
    assert not all(torch.equal(p.cpu(), q) for p, q in zip(res.model.server.parameters(), init.server.parameters()))
    for o in res.transcript.observations("before"):
        assert (o.labels != res.truth.labels(o.ids)).all()  # every label the server saw was wrong
    assert d.report()["sg_fake_batches"] == 8


def _run(vectors):
    r = _Running()
    for v in vectors:
        r.add(torch.as_tensor(v, dtype=torch.float64))
    return r


def test_score_follows_the_papers_formula():
    same = _run([[1.0, 0.0]])
    assert splitguard_score(same, _run([[1.0, 0.0]]), _run([[1.0, 0.0]])) == pytest.approx(0.25)  # S = 0
    # fake gradients larger and orthogonal, regular halves alike: S = π/2 → SG = sigmoid(5π/2)²
    honest = splitguard_score(_run([[0.0, 3.0]]), _run([[1.0, 0.0]]), _run([[1.0, 0.0]]))
    assert honest == pytest.approx((1 / (1 + torch.exp(torch.tensor(-5 * torch.pi / 2)).item())) ** 2)
    # the regular halves disagree more than fake vs regular: S < 0, score below 0.25
    assert splitguard_score(_run([[1.5, 0.5]]), _run([[2.0, 2.0]]), _run([[1.0, -1.0]])) < 0.2


@pytest.mark.parametrize("kw,needle", [
    ({"p_fake": 1.5}, "p_fake"), ({"p_fake": -0.1}, "p_fake"), ({"threshold": 2}, "threshold"),
    ({"window": 0}, "window"), ({"start": -1}, "start"), ({"reference": "global"}, "reference"),
    ({"action": "warn"}, "action"), ({"alpha": 0}, "alpha"), ({"decision": "any"}, "decision"),
    ({"fake": 0.1}, "unknown parameter"),
])
def test_bad_parameters_raise(kw, needle):
    with pytest.raises(ValueError, match=needle):
        DEFENSES.create("splitguard", **kw)


def test_needs_the_vanilla_setup(tiny_data):
    with pytest.raises(ValueError, match="vanilla"):
        DEFENSES.create("splitguard").apply(_setup(tiny_data, setup="u-shaped"), torch_generator(0, "d"))


# ---------------------------------------------------------------- the offline judge is the online monitor

def _fsha_policy(data, gen, steps, depth=2):
    return ATTACKS.create("fsha").server_policy(PolicyContext(
        input_shape=data.shape, num_classes=10, client_arch=lambda: split(build_model(
            "lenet", data.shape, 10), depth).client, aux=(data.x_aux, data.y_aux),
        generator=gen, device="cpu", total_steps=steps))


def _flag_run(data, rule, malicious, cfg):
    """A flag-mode run (training goes on after an alarm) with the decision rule ``rule``."""
    d = DEFENSES.create("splitguard", p_fake=0.5, start=0, action="flag", reference="local", **rule)
    setup = d.apply(_setup(data, 0, cfg=cfg), torch_generator(0, "defense"))
    gen = torch_generator(0, "t")
    policy = _fsha_policy(data, gen, total_steps(len(data.x_train), cfg)) if malicious else None
    train(setup, data, gen, policy=policy)
    return d.monitor


@pytest.mark.parametrize("malicious", [False, True])
def test_offline_rule_reproduces_the_online_monitor(tiny_data, malicious):
    """Scores do not depend on the decision rule (flag mode), and `first_alarm` on the scores one
    monitor recorded gives the alarm step another rule's monitor raised online: rules can be
    judged on recorded runs (benchmarks/splitguard_calibration.py)."""
    cfg = TrainConfig(epochs=1, batch_size=32, record_steps=1, max_steps=12 if malicious else 19)
    rules = [{"threshold": 0.5, "window": 5, "decision": "vote"}, {"threshold": 0.9, "window": 1, "decision": "vote"},
             {"threshold": 0.6, "window": 3, "decision": "mean"},
             {k: getattr(DEFENSES.create("splitguard"), k) for k in ("threshold", "window", "decision")}]
    monitors = [_flag_run(tiny_data, r, malicious, cfg) for r in rules]
    ref = monitors[0]
    assert len(ref.scores) >= 4
    for rule, m in zip(rules, monitors):
        assert m.scores == ref.scores and m.score_steps == ref.score_steps
        assert first_alarm(ref.scores, ref.score_steps, **rule) == m.detected_at
    fired = [m.detected_at for m in monitors if m.detected_at is not None]
    assert fired or not malicious  # not vacuous: the eager rule fires on a hijacked run
    if malicious:
        assert monitors[1].detected_at is not None


def test_alarm_rules():
    assert not alarm([0.1, 0.1], 0.5, 5, "vote")  # two of five: no majority yet
    assert alarm([0.9, 0.1, 0.1, 0.1], 0.5, 5, "vote")  # three below: a majority of five already
    assert not alarm([0.1, 0.1, 0.1, 0.9, 0.9, 0.9], 0.5, 5, "vote")  # only the last five count
    assert not alarm([0.0] * 4, 0.5, 5, "mean") and alarm([0.0] * 5, 0.5, 5, "mean")  # mean: a full window
    assert not alarm([0.5] * 5, 0.5, 5, "vote")  # strictly below
    assert first_alarm([0.9, 0.2, 0.1, 0.3], [10, 12, 19, 30], 0.5, 3, "vote") == 19
    assert first_alarm([0.9, 0.9], [1, 2], 0.5, 3, "vote") is None


@pytest.fixture(scope="module")
def bench():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "splitguard_calibration.py"
    spec = importlib.util.spec_from_file_location("splitguard_calibration_bench", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("decision", ["vote", "mean"])
def test_benchmark_critical_values_match_the_rule(bench, decision):
    """The benchmark's search reads a rule's alarm off critical values: alarm ⇔ threshold > critical."""
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        scores = [round(float(x), 2) for x in torch.rand(int(torch.randint(1, 15, (1,), generator=g)), generator=g)]
        for window in (1, 2, 3, 4, 5, 7):
            crit = bench.critical(scores, window, decision)
            for t in (0.0, 0.1, 0.25, 0.3, 0.5, 0.77, 1.0):
                for i in range(len(scores)):
                    assert alarm(scores[:i + 1], t, window, decision) == (t > crit[i])


def test_benchmark_records_the_matrix_run(bench, tmp_path):
    """The benchmark's recorder trains exactly the run `runner.run_group` trains for the cell."""
    from arena.run.runner import GroupContext, run_group

    toml = tmp_path / "e.toml"
    toml.write_text('[experiment]\ndatasets = ["digits"]\nn_train = 600\nn_test = 100\nn_aux = 100\n'
                    '[train]\nepochs = 1\nbatch_size = 32\nrecord_steps = 1\n')
    sg = {"p_fake": 0.5, "start": 0, "action": "flag", "reference": "local"}  # what the recorder runs
    specs = bench.specs(bench.experiment(toml, [0], sg))
    spec = specs[("honest", 0)]
    (cell,) = run_group([spec], GroupContext())
    rec = bench.record(spec, "honest", None, None)
    assert cell.status == "ok" and rec["test_acc"] == cell.utility["test_acc"]
    assert rec["steps_run"] == cell.cost["train_steps"] == 19
    assert len(rec["scores"]) == cell.cost["sg_scores"] >= 3
    assert rec["online_alarm"] == cell.cost["sg_detected_at"]
    assert sum(rec["scores"]) / len(rec["scores"]) == cell.cost["sg_score_mean"]


def test_benchmark_derives_fresh_scores_from_a_local_recording(tiny_data, bench):
    """Training does not depend on the reference in flag mode, so the benchmark records 'local' (every
    fake batch scored) and derives what a 'fresh' monitor scores; both monitors, run online, agree."""
    cfg = TrainConfig(epochs=1, batch_size=32, record_steps=1, max_steps=19)
    mons = {}
    for ref in ("local", "fresh"):
        d = DEFENSES.create("splitguard", p_fake=0.5, start=0, action="flag", reference=ref)
        train(d.apply(_setup(tiny_data, 0, cfg=cfg), torch_generator(0, "defense")), tiny_data, torch_generator(0, "t"))
        mons[ref] = d.monitor
    local, fresh = mons["local"], mons["fresh"]
    assert local.fake_steps == fresh.fake_steps and len(fresh.scores) < len(local.scores)
    assert bench.fresh_subset(local.scores, local.score_steps, 19) == (fresh.scores, fresh.score_steps)
