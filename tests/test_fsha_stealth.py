"""fsha-stealth: on a tiny run where SplitGuard stops plain FSHA, the hiding hijacker is never
stopped and still reconstructs far better than the mean image; it judges the fake batches from the
labels alone, hijacks every other batch exactly as FSHA, is plain FSHA where there is nothing to
hide from, and rejects bad parameters."""
from __future__ import annotations

import pytest
import torch

from arena.attacks import ATTACKS, PolicyContext
from arena.attacks.fsha import FSHA
from arena.attacks.fsha_stealth import FSHAStealth
from arena.models import build_model
from arena.protocol.knowledge import DefenseKnowledge
from arena.protocol.split import split
from arena.run.config import experiment_from_dict
from arena.run.runner import GroupContext, groups, plan, run_group
from arena.seeding import torch_generator

pytestmark = pytest.mark.usefixtures("one_thread")

TOY = {"p_fake": 0.3}  # as tests/test_splitguard.py: a 95-step run needs more fake batches for a 7-score vote
TINY = {
    "experiment": {"datasets": ["digits"], "depths": [2], "seeds": [2], "n_train": 600, "n_test": 200,
                   "n_aux": 200},
    "train": {"epochs": 5, "batch_size": 32, "record_steps": 2},
    "attacks": [{"name": "mean-image"}, {"name": "fsha", "params": {"checkpoints": 0}},
                {"name": "fsha-stealth", "params": {"checkpoints": 0, **TOY}}],
    "defenses": [{"name": "splitguard", "params": TOY}],
}


def test_hides_from_splitguard_where_fsha_is_stopped():
    cells = {c.attack: c for g in groups(plan(experiment_from_dict(TINY))) for c in run_group(g, GroupContext())}
    fsha, hide, base = cells["fsha"], cells["fsha-stealth"], cells["mean-image"]
    assert all(c.status == "ok" for c in cells.values()), {k: c.error for k, c in cells.items()}
    assert fsha.cost["sg_alarm"] == 1 and fsha.cost["train_steps"] < 60, fsha.cost  # plain FSHA: caught early
    assert hide.cost["sg_alarm"] == 0 and hide.cost["train_steps"] == 95, hide.cost  # never caught
    assert hide.cost["sg_score_mean"] > 0.8  # its fake-batch answers look like an honest server's
    # it judged (about) every fake batch fake and no regular one: the client's fake batches from `start` on
    assert abs(hide.metrics["judged_fake"] - hide.cost["sg_fake_batches"]) <= 2, (hide.metrics, hide.cost)
    assert hide.metrics["head_acc"] > 0.5
    assert hide.metrics["ssim"] > base.metrics["ssim"] + 0.3, (hide.metrics["ssim"], base.metrics["ssim"])
    # what the stop saved the client from (seed 2: FSHA stopped at step 36 decodes at 0.02, the hidden
    # one at 0.53; on seed 1 the stop came at step 44, when FSHA already decoded at 0.64: a tiny digits
    # hijack converges fast, and SplitGuard's detection is only worth what it saves before the stop)
    assert hide.metrics["ssim"] > fsha.metrics["ssim"] + 0.3
    assert hide.metrics["mse"] < 0.5 * base.metrics["mse"]


def Known(**members: dict) -> DefenseKnowledge:
    """What the run tells a policy about the client's defense (no member: none)."""
    return DefenseKnowledge(tuple(members.items()) or (("none", {}),))


SG = Known(splitguard={"p_fake": 0.3, "start": 4})


def _ctx(data, defense=SG, steps=40):
    return PolicyContext(input_shape=data.shape, num_classes=data.num_classes,
                         client_arch=lambda: split(build_model("lenet", data.shape, data.num_classes), 2).client,
                         aux=(data.x_aux, data.y_aux), generator=torch_generator(0, "t"), device="cpu",
                         total_steps=steps, defense=defense)


def _batches(data, n=12, size=32):
    client = split(build_model("lenet", data.shape, data.num_classes), 2).client
    with torch.no_grad():
        return [(client(data.x_train[i * size:(i + 1) * size]), data.y_train[i * size:(i + 1) * size])
                for i in range(n)]


def _answers(policy, batches, labels=True, fake_at=()):
    out = []
    for s, (a, y) in enumerate(batches):
        if s in fake_at:
            y = (y + 1) % 10  # every label wrong, as SplitGuard's fake batches
        out.append(policy.step(a.clone().requires_grad_(True), y if labels else None, s))
    return out


def test_plain_fsha_where_there_is_nothing_to_hide_from(tiny_data):
    batches = _batches(tiny_data)
    ref = _answers(FSHA().server_policy(_ctx(tiny_data)), batches)
    cases = [(Known(noise={"sigma": 1.0}), True), (Known(), True), (SG, False)]  # other defense, none, u-shaped
    for known, labels in cases:
        policy = FSHAStealth().server_policy(_ctx(tiny_data, known))
        got = _answers(policy, batches, labels=labels, fake_at=range(12))
        assert all(torch.equal(g, r) for g, r in zip(got, ref, strict=True))
        assert policy.judged_fake == 0
    assert not FSHAStealth().server_policy(_ctx(tiny_data, Known(noise={}))).hides


def test_public_parameters_come_from_the_defense(tiny_data):
    p = FSHAStealth().server_policy(_ctx(tiny_data, Known(splitguard={"p_fake": 0.25, "start": 3})))
    assert p.hides and (p.p_fake, p.start) == (0.25, 3)
    p = FSHAStealth(p_fake=0.5, start=7).server_policy(_ctx(tiny_data, Known(splitguard={"p_fake": 0.25})))
    assert (p.p_fake, p.start) == (0.5, 7)  # explicit parameters override (a mis-informed attacker)
    p = FSHAStealth().server_policy(_ctx(tiny_data, Known(splitguard={})))
    assert p.hides and (p.p_fake, p.start) == (0.1, 10)  # parameters not public: SplitGuard's defaults
    assert not FSHAStealth().server_policy(_ctx(tiny_data, Known(splitguard={"p_fake": 0.0}))).hides


class Oracle(torch.nn.Module):
    """A head that predicts the true labels: a well-trained honest server, so the test needs no training."""

    def __init__(self, head: torch.nn.Module) -> None:
        super().__init__()
        self.head, self.y = head, torch.zeros(0, dtype=torch.long)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x) + 10.0 * torch.nn.functional.one_hot(self.y, 10).float()


def test_judgement_and_the_answer_to_a_fake_batch(tiny_data):
    batches = _batches(tiny_data, n=12)
    ref = _answers(FSHA().server_policy(_ctx(tiny_data)), batches)
    policy = FSHAStealth(start=4, p_fake=0.3, fake_scale=3.0).server_policy(_ctx(tiny_data))
    policy.head = Oracle(policy.head)
    got = []
    for s, (a, y) in enumerate(batches):
        policy.acc, policy.head.y = 0.9, y
        got.append(policy.step(a.clone().requires_grad_(True), (y + 1) % 10 if s in (1, 6) else y, s))
    assert policy.fake_steps == [6]  # step 1 is before `start`: the client never fakes there
    for s in range(12):
        if s != 6:
            assert torch.equal(got[s], ref[s])  # every other batch is hijacked exactly as FSHA does
    assert not torch.allclose(got[6], ref[6])
    assert float(got[6].norm()) == pytest.approx(3.0 * float(ref[6].norm()), rel=1e-5)
    assert policy._log_odds_fake(0, 32) > 0 > policy._log_odds_fake(20, 32)
    policy.acc = 0.1  # a head at chance cannot tell: the prior (p_fake < 1/2) says regular
    assert policy._log_odds_fake(3, 32) < 0


def test_mirror_answer(tiny_data):
    policy = FSHAStealth(answer="mirror", fake_scale=2.0, start=0, p_fake=0.5).server_policy(_ctx(tiny_data))
    ref = FSHA().server_policy(_ctx(tiny_data))
    a, y = _batches(tiny_data, n=1)[0]
    policy.acc = 0.9
    policy._log_odds_fake = lambda agree, n: 1.0  # judged fake
    g = policy.step(a.clone().requires_grad_(True), y, 0)
    assert torch.allclose(g, -2.0 * ref.step(a.clone().requires_grad_(True), y, 0))


def test_declares_fshas_threat_model_and_its_target():
    assert FSHAStealth.requires == FSHA.requires and FSHAStealth.malicious
    assert FSHAStealth.adapts_to == ("splitguard",)
    assert ATTACKS.create("fsha-stealth").params()["answer"] == "honest"
    assert "new here" in FSHAStealth.paper


@pytest.mark.parametrize("kw,needle", [
    ({"answer": "silent"}, "answer"), ({"fake_scale": 0}, "fake_scale"), ({"fake_scale": -1.0}, "fake_scale"),
    ({"answer": "mirror", "fake_scale": None}, "fake_scale"), ({"fake_scale": "big"}, "fake_scale"), ({"lr_head": 0}, "lr_head"),
    ({"head_width": 0}, "head_width"), ({"head_width": 2.5}, "head_width"), ({"ema": 1.0}, "ema"),
    ({"ema": -0.1}, "ema"), ({"p_fake": 0}, "p_fake"), ({"p_fake": 1.0}, "p_fake"), ({"start": -1}, "start"),
    ({"steps": 0}, "steps"), ({"lr": 1e-3}, "unknown parameter"),
])
def test_bad_parameters_raise(kw, needle):
    with pytest.raises(ValueError, match=needle):
        ATTACKS.create("fsha-stealth", **kw)
