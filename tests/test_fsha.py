"""FSHA: server networks fit every split depth, the attack beats the chance line on a tiny digits
run, its policy drives only its own training run, and its public data never meets the private set."""
from __future__ import annotations

import pytest
import torch

from arena.attacks import ATTACKS, PolicyContext, fsha_nets as nets
from arena.attacks.fsha import FSHA, FSHAPolicy
from arena.run.config import experiment_from_dict
from arena.models import build_model
from arena.run.runner import CellSpec, GroupContext, groups, plan, run_group
from arena.run.config import Entry
from arena.records import Scenario, TrainConfig
from arena.protocol.train import make_setup, train
from arena.seeding import torch_generator
from arena.protocol.split import split, valid_depths


pytestmark = pytest.mark.usefixtures("one_thread")


def _arch(name, shape, depth):
    return lambda: split(build_model(name, shape, 10), depth).client


@pytest.mark.parametrize("name,shape,depths", [
    ("lenet", (1, 28, 28), None),
    ("cifar-cnn", (3, 32, 32), [0, 4, 9, 14, 15]),
    ("fsha-resnet", (1, 28, 28), None),
])
def test_pilot_decoder_and_critic_fit_every_depth(name, shape, depths):
    for d in depths or valid_depths(build_model(name, shape, 10)):
        arch = _arch(name, shape, d)
        act = nets.activation_shape(arch, shape)
        x = torch.rand(2, *shape)
        for pilot in (arch(), nets.paper_pilot(shape, act)):
            z = pilot(x)
            assert tuple(z.shape[1:]) == act, (name, d)
        with torch.no_grad():
            rec = nets.decoder(act, shape)(z)
        assert rec.shape == x.shape and 0 <= float(rec.min()) and float(rec.max()) <= 1, (name, d)
        assert nets.discriminator(act)(z).shape == (2, 1)


def test_fsha_resnet_is_the_papers_client_and_splits_exactly():
    model = build_model("fsha-resnet", (1, 28, 28), 10).double()
    assert len(model) == 7
    x = torch.rand(3, 1, 28, 28, dtype=torch.float64)
    assert split(model, 4).client(x).shape == (3, 256, 4, 4)  # the paper's split: 4×4×256
    ref = model(x)
    for d in valid_depths(model):
        sm = split(model, d)
        torch.testing.assert_close(sm.server(sm.client(x)), ref, rtol=0, atol=1e-12)


TINY = {
    "experiment": {"datasets": ["digits"], "depths": [2], "seeds": [0], "n_train": 600, "n_test": 200,
                   "n_aux": 200},
    "train": {"epochs": 5, "batch_size": 32, "record_steps": 2},
    "attacks": [{"name": "mean-image"}, {"name": "fsha", "params": {"checkpoints": 4}}],
    "defenses": [{"name": "none"}],
}


def test_fsha_beats_the_mean_image_and_its_policy_only_drives_its_own_run(monkeypatch):
    calls = []
    real_step = FSHAPolicy.step

    def spy(self, smashed, labels, step):
        calls.append(step)
        return real_step(self, smashed, labels, step)

    monkeypatch.setattr(FSHAPolicy, "step", spy)
    specs = plan(experiment_from_dict(TINY))
    gs = groups(specs)
    assert sorted(len(g) for g in gs) == [1, 1]  # fsha trains alone; mean-image on the honest run
    cells = {}
    for g in gs:
        before = len(calls)
        for c in run_group(g, GroupContext()):
            cells[c.attack] = c
        if g[0].attack.name != "fsha":
            assert len(calls) == before, "an honest training run called the malicious policy"
    fsha, base = cells["fsha"], cells["mean-image"]
    assert fsha.status == "ok" and base.status == "ok", (fsha.error, base.error)
    assert calls == list(range(95))  # one call per step of fsha's own training run
    assert fsha.metrics["mse"] < 0.5 * base.metrics["mse"], (fsha.metrics, base.metrics)
    assert fsha.metrics["ssim"] > base.metrics["ssim"] + 0.3
    curve = sorted((int(k[4:]), v) for k, v in fsha.metrics.items() if k.startswith("mse@"))
    assert [s for s, _ in curve] == [0, 24, 48, 71, 94]
    assert curve[-1][1] < 0.5 * curve[0][1]  # the hijack converges over training
    # task damage: the server never trained the task, the client is left with a chance-level model
    assert fsha.utility["test_acc"] < 0.3 < 0.6 < base.utility["test_acc"]


def _ctx(data, depth=2, **kw):
    return PolicyContext(input_shape=data.shape, num_classes=data.num_classes,
                         client_arch=_arch("lenet", data.shape, depth), aux=(data.x_aux, data.y_aux),
                         generator=torch_generator(0, "t"), device="cpu", total_steps=kw.pop("steps", 50))


def test_public_and_private_sets_never_overlap(tiny_data):
    attack = ATTACKS.create("fsha", missing_classes=[3, 7])
    policy = attack.server_policy(_ctx(tiny_data))
    private = {row.numpy().tobytes() for row in tiny_data.x_train}
    assert len(policy.x_pub) > 0
    assert not any(row.numpy().tobytes() in private for row in policy.x_pub.cpu())
    assert not torch.isin(policy.y_pub, torch.tensor([3, 7])).any()
    assert set(policy.y_pub.tolist()) == set(range(10)) - {3, 7}
    assert policy.record_steps == tuple(sorted({0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 49}))


@pytest.mark.parametrize("kw,needle", [
    ({"lr_tilde": 0}, "lr_tilde"), ({"lr_d": -1}, "lr_d"), ({"gp_weight": float("nan")}, "gp_weight"),
    ({"pilot": "mirror"}, "pilot"), ({"public": "imagenet"}, "public"), ({"n_public": 0}, "n_public"),
    ({"missing_classes": [-1]}, "missing_classes"), ({"missing_classes": [1, 1]}, "duplicates"),
    ({"checkpoints": -1}, "checkpoints"), ({"curve_steps": ["a"]}, "curve_steps"), ({"window": "mid"}, "window"),
    ({"lr": 1e-3}, "unknown parameter"), ({"critic": "deep"}, "critic"), ({"critic_blocks": 0}, "critic_blocks"),
    ({"critic_blocks": 2.5}, "critic_blocks"), ({"gp_norm": "l1"}, "gp_norm"), ({"init": "he"}, "init"),
    ({"pilot_input": "raw"}, "pilot_input"), ({"pilot_input": "signed"}, "goes with pilot=.paper."),
    ({"critic_width": 0}, "critic_width"), ({"decoder_width": 8.5}, "decoder_width"), ({"gp_every": 0}, "gp_every"),
    ({"steps": 0}, "steps"), ({"steps": -5}, "steps"), ({"steps": 2.5}, "steps"), ({"steps": "half"}, "steps"),
    ({"steps": True}, "steps"), ({"gp_samples": 0}, "gp_samples"), ({"gp_samples": "half"}, "gp_samples"),
])
def test_bad_parameters_raise(kw, needle):
    with pytest.raises(ValueError, match=needle):
        ATTACKS.create("fsha", **kw)


def test_bad_classes_are_caught_when_the_policy_is_built(tiny_data):
    with pytest.raises(ValueError, match="not classes of this dataset"):
        ATTACKS.create("fsha", missing_classes=[10]).server_policy(_ctx(tiny_data))
    with pytest.raises(ValueError, match="no public data"):
        ATTACKS.create("fsha", missing_classes=list(range(10))).server_policy(_ctx(tiny_data))


def test_run_needs_the_policy():
    with pytest.raises(RuntimeError, match="server_policy"):
        FSHA().run(None, torch.Generator())


def test_paper_critic_gp_norms_and_keras_init():
    act = (256, 4, 4)
    d = nets.discriminator(act, "paper", 6)  # the authors': conv, 6 residual blocks at 4×4, strided conv
    assert sum(isinstance(m, nets._Res) for m in d) == 6 and d[0].stride == (1, 1)
    assert d(torch.zeros(2, *act)).shape == (2, 1)
    assert sum(isinstance(m, nets._Res) for m in nets.discriminator(act, "fast", 3)) == 3
    for bad in ({"layout": "deep"}, {"blocks": 0}, {"blocks": True}):
        with pytest.raises(ValueError, match="critic"):
            nets.discriminator(act, **bad)
    # a critic whose gradient is all ones on 4×2×2: per-sample norm 4, per-channel norm 2
    critic, z = (lambda t: t.flatten(1).sum(1, keepdim=True)), torch.zeros(3, 4, 2, 2)
    g = torch.Generator().manual_seed(0)
    assert float(nets.gradient_penalty(critic, z, z + 1, g, "sample")) == pytest.approx(9.0)
    assert float(nets.gradient_penalty(critic, z, z + 1, g, "channel")) == pytest.approx(1.0)
    net = nets.glorot_init(nets.paper_pilot((1, 28, 28), act))
    assert all(float(m.bias.detach().abs().max()) == 0 for m in net if isinstance(m, torch.nn.Conv2d))


def test_network_widths_and_penalty_samples():
    act = (8, 24, 24)  # LeNet at depth 1

    def widths(net):
        return [m.out_channels for m in net if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))] + [
            m.c1.out_channels for m in net if isinstance(m, nets._Res)]

    assert widths(nets.discriminator(act)) == [32, 32, 32, 32]  # one width: 2× the channels, at least 32
    assert widths(nets.discriminator(act, width=256)) == [32, 64, 128, 128]  # the previous critic
    assert widths(nets.discriminator((256, 4, 4))) == [256, 256]  # the paper's split keeps its width
    assert widths(nets.discriminator((256, 4, 4), "paper")) == [256, 256, 256]
    assert widths(nets.decoder(act, (1, 28, 28))) == [16, 1]
    assert widths(nets.decoder(act, (1, 28, 28), width=64)) == [64, 1]
    assert widths(nets.decoder((64, 32, 32), (3, 32, 32))) == [64, 3]  # 16 to 64: CIFAR's depth 1 as before
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="width"):
            nets.discriminator(act, width=bad)
        with pytest.raises(ValueError, match="width"):
            nets.decoder(act, (1, 28, 28), width=bad)
    # the penalty on the first k interpolates is the penalty of the first k pairs
    critic, real, fake = nets.discriminator(act), torch.rand(6, *act), torch.rand(6, *act)
    some = nets.gradient_penalty(critic, real, fake, torch.Generator().manual_seed(1), samples=2)
    first = nets.gradient_penalty(critic, real[:2], fake[:2], torch.Generator().manual_seed(1))
    torch.testing.assert_close(some, first)


def test_fsha_resnet_tf_runs_the_stem_norm_in_inference_mode():
    torch.manual_seed(0)
    model = build_model("fsha-resnet-tf", (1, 28, 28), 10).train()
    client = split(model, 4).client
    x = torch.rand(5, 1, 28, 28)
    a = client(x)
    assert a.shape == (5, 256, 4, 4)
    torch.testing.assert_close(client(x[:1]), a[:1])  # no batch statistics: a sample's output is its own
    bn = model[0].bn
    assert float(bn.running_mean.abs().max()) == 0 and float(bn.running_var.min()) == 1  # never updated
    assert all(float(m.bias.detach().abs().max()) == 0 for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    # pixels on [-1,1] inside the stem: the same as fsha-resnet's stem fed 2x − 1
    ref = build_model("fsha-resnet", (1, 28, 28), 10)
    ref[0].conv.load_state_dict(model[0].conv.state_dict())
    ref[0].eval()
    ref[0].bn.eps = 1e-3
    torch.testing.assert_close(ref[0](2 * x - 1), model[0](x))


def test_paper_settings_build_and_step(tiny_data):
    attack = ATTACKS.create("fsha", pilot="paper", critic="paper", critic_blocks=2, gp_norm="channel",
                            init="keras", pilot_input="signed", gp_weight=500.0)
    policy = attack.server_policy(_ctx(tiny_data))
    assert isinstance(policy.pilot[0], nets.Signed)
    smashed = _arch("lenet", tiny_data.shape, 2)()(tiny_data.x_train[:8]).detach().requires_grad_(True)
    grad = policy.step(smashed, None, 0)
    assert grad.shape == smashed.shape and torch.isfinite(grad).all() and float(grad.abs().sum()) > 0


def _unfused_step(p, smashed, step):
    """FSHA's step written plainly (two critic passes, the penalty every step): the oracle for the
    fused one (one critic forward and one backward for the client's gradient and the critic's loss)."""
    d_priv = p.critic(smashed)
    (grad,) = torch.autograd.grad(d_priv.mean(), smashed, retain_graph=True)
    z_pub = p._train_autoencoder(p._public_batch(len(smashed)))
    d_pub = p.critic(z_pub)
    gap = d_pub.mean() - d_priv.mean()
    loss = gap + p.a.gp_weight * nets.gradient_penalty(p.critic, smashed.detach(), z_pub, p.gen, p.a.gp_norm,
                                                       p.a.gp_samples)
    p.opt_d.zero_grad(set_to_none=True)
    loss.backward(inputs=list(p.critic.parameters()))
    p.opt_d.step()
    return grad


def test_fused_step_is_the_plain_one(tiny_data):
    torch.manual_seed(0)
    client = _arch("lenet", tiny_data.shape, 1)().double()  # float64: Adam would amplify float32 rounding
    fused, plain = (ATTACKS.create("fsha", gp_every=1).server_policy(_ctx(tiny_data, depth=1)) for _ in range(2))
    for p in (fused, plain):
        p.pilot.double(), p.decoder.double(), p.critic.double()
        p.x_pub = p.x_pub.double()
    for i in range(3):
        smashed = client(tiny_data.x_train[16 * i:16 * i + 16].double()).detach()
        g1 = fused.step(smashed.clone().requires_grad_(True), None, i)
        g2 = _unfused_step(plain, smashed.clone().requires_grad_(True), i)
        torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-12 * float(g2.abs().max()))
    for a, b in zip(fused.critic.parameters(), plain.critic.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_the_budget_stops_training_at_its_step(tiny_data):
    cfg = TrainConfig(epochs=5, batch_size=32, record_steps=2)  # 95 steps on 600 digits
    sc = Scenario("digits", "lenet", 2, train=cfg)
    setup = make_setup(sc, build_model("lenet", tiny_data.shape, 10), tiny_data.shape)
    policy = ATTACKS.create("fsha", steps=30, checkpoints=3).server_policy(_ctx(tiny_data, steps=95))
    assert policy.total_steps == 30 and policy.record_steps == (0, 10, 20, 29)  # the curve within the budget
    calls = []
    real = policy.step
    policy.step = lambda smashed, labels, step: calls.append(step) or real(smashed, labels, step)
    res = train(setup, tiny_data, torch_generator(0, "t"), policy=policy)
    assert calls == list(range(30)) and policy.stop and res.cost["train_steps"] == 30
    # the last recorded steps before the stop are the "after" window, as when a monitor stops training
    assert [o.step for o in res.transcript.observations("after")] == [28, 29]
    assert [o.step for o in res.transcript.observations("before")] == [0, 1]
    assert all(int(i) in res.truth.x for o in res.transcript.observations("after") for i in o.ids)
    # a budget beyond the run: the whole run, and "all" (what TOML can say for None) is no budget
    assert ATTACKS.create("fsha", steps=500).server_policy(_ctx(tiny_data, steps=95)).total_steps == 95
    assert ATTACKS.create("fsha", steps="all").steps is None


def test_the_budget_is_the_cells_steps_run():
    sc = Scenario("digits", "lenet", 2, n_train=600, n_test=200, train=TrainConfig(epochs=5, batch_size=32,
                                                                                  record_steps=1))
    spec = CellSpec(sc, Entry("fsha", (("checkpoints", 2), ("steps", 12))), Entry("none"), 200)
    (cell,) = run_group([spec], GroupContext())
    assert cell.status == "ok", cell.error
    assert cell.cost["train_steps"] == 12 and cell.metrics["policy_steps"] == 12
    assert sorted(int(k[4:]) for k in cell.metrics if k.startswith("mse@")) == [0, 6, 11]
