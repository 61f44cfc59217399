"""FORA (Xu et al., CVPR 2024) on tiny digits setups: a substitute client matched to the observed
smashed-data distribution, then an inverse network.

It must beat the mean image undefended, beat its defense-oblivious counterpart (he-queryfree: the same
view, SMASHED + AUX_DATA, without the distribution matching) under the defenses it adapts to, check its
parameters, and read nothing outside SMASHED and AUX_DATA.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from arena.attacks import ATTACKS
from arena.attacks.fora import Fora
from arena.attacks.fora_nets import critic, gradient_penalty, mk_mmd
from arena.protocol.transcript import Coverage
from arena.records import Capability, TrainConfig
from arena.run.runner import make_view
from arena.scoring.score import score
from arena.seeding import torch_generator
from cellruns import train_cell

C = Capability
pytestmark = pytest.mark.usefixtures("one_thread")

CFG = TrainConfig(epochs=3, batch_size=32, record_steps=8)  # 8 batches at each end: 256 smashed rows to match
FAST = {"iterations": 100, "inv_iterations": 150, "batch_size": 32, "lr": 1e-3}
# Three layers deep the substitute starts far from the client's feature scale (MK-MMD ≈ 4 after 100
# iterations): it needs more steps and a larger step (measured SSIM 0.04 at FAST, 0.70 here)
BUDGET = {"nopeek": FAST, "deeper-split": {"iterations": 300, "inv_iterations": 300, "batch_size": 32, "lr": 3e-3}}


@pytest.fixture(scope="module")
def cells(tiny_data):
    out = {}
    for name, p in [("none", {}), ("nopeek", {"alpha": 2.0}), ("deeper-split", {"k": 2})]:
        _, _, defended, res = train_cell(tiny_data, name, cfg=CFG, **p)
        out[name] = (defended, res)
    return out


def _attack(name, cell, data, last_batch=False, **params):
    setup, res = cell
    if last_batch:  # what the runner gives an attack recording one step: the last batch as targets
        res = dataclasses.replace(res, transcript=res.transcript.trimmed(1))
    attack = ATTACKS.create(name, **params)
    view = make_view(attack, setup, res, data, "cpu")
    out = attack.run(view, torch_generator(0, "attack", name))
    assert out.reconstructions.shape == (len(out.ids), *data.shape)
    assert 0 <= float(out.reconstructions.min()) and float(out.reconstructions.max()) <= 1
    m = score(out, res, data.x_test, data.y_test)
    return m, out


def test_fora_beats_the_mean_image_undefended(cells, tiny_data):
    grey, base_out = _attack("mean-image", cells["none"], tiny_data)
    m, out = _attack("fora", cells["none"], tiny_data, **FAST)
    # the targets are the last observed batch, the same examples the baseline scores
    after = cells["none"][1].transcript.observations("after")
    assert len(after) == 8 and torch.equal(out.ids, base_out.ids[-len(after[-1].ids):])
    assert out.extra["pool"] == sum(len(o.ids) for o in after)  # the whole "after" window was the matching pool
    # measured: SSIM 0.88, MSE 0.008 against the grey image's 0.03 / 0.14
    assert m["ssim"] > grey["ssim"] + 0.5 and m["mse"] < 0.25 * grey["mse"], (m, grey)


@pytest.mark.parametrize("defense", ["nopeek", "deeper-split"])
def test_fora_beats_the_oblivious_query_free_attack_under_its_target_defenses(cells, tiny_data, defense):
    # he-queryfree gets the same view (SMASHED + AUX_DATA) and trains its shadow through the server part;
    # NoPeek's client is trained to hide the inputs from exactly that kind of feature, and a deeper cut
    # makes the shadow's features drift. FORA only asks what the client's features look like.
    qf, _ = _attack("he-queryfree", cells[defense], tiny_data, last_batch=True, shadow_epochs=3, iterations=150)
    m, _ = _attack("fora", cells[defense], tiny_data, **BUDGET[defense])
    grey, _ = _attack("mean-image", cells[defense], tiny_data, last_batch=True)
    assert m["ssim"] > qf["ssim"] + 0.3 and m["mse"] < qf["mse"], (defense, m, qf)
    assert m["ssim"] > grey["ssim"] + 0.4, (defense, m, grey)


def test_same_seed_same_reconstructions(cells, tiny_data):
    tiny = {"iterations": 5, "inv_iterations": 10, "batch_size": 16}
    _, a = _attack("fora", cells["none"], tiny_data, **tiny)
    _, b = _attack("fora", cells["none"], tiny_data, **tiny)
    assert torch.equal(a.reconstructions, b.reconstructions)


def test_coverage_asks_for_a_stream_of_batches():
    assert Fora().coverage() == Coverage(steps=40) and Fora(steps=12).coverage() == Coverage(steps=12)
    assert Fora().coverage().tracked == 0  # it matches a distribution: no example needs linking


def test_reads_only_smashed_data_and_aux_data(cells, tiny_data):
    assert Fora.requires == {C.SMASHED, C.AUX_DATA} == Fora().requires
    assert Fora.kind == "inversion" and set(Fora.adapts_to) == {"nopeek", "deeper-split"}
    setup, res = cells["none"]
    attack = Fora(iterations=3, inv_iterations=4, batch_size=16)
    view = make_view(attack, setup, res, tiny_data, "cpu")
    assert view.capabilities <= {C.SMASHED, C.AUX_DATA, C.ARCHITECTURE}
    assert view.query is None and view.client_weights is None and view.train_data is None
    assert view.known_labels is None
    obs = [o for w in ("before", "after") for o in view.observations(w)]
    assert obs and all(o.labels is None and o.cut_grad is None and o.inputs is None for o in obs)

    class Trap(nn.Module):
        def forward(self, x):
            raise AssertionError("fora used the server part")

    # the server's own layers are not part of FORA's threat model: it must not touch them
    trapped = dataclasses.replace(view, server_part=nn.Sequential(Trap()), server_part_before=nn.Sequential(Trap()),
                                  tail_arch=lambda: nn.Sequential(Trap()))
    seen: set[str] = set()

    class Recording:
        def __getattr__(self, name):
            seen.add(name)
            return getattr(trapped, name)

    out = attack.run(Recording(), torch_generator(0, "attack", "fora"))
    assert len(out.ids) == len(res.transcript.observations("after")[-1].ids)
    assert seen <= {"observations", "stacked", "aux", "client_arch", "device", "input_shape", "require",
                    "report_progress", "progress"}, seen
    assert {"aux", "client_arch"} <= seen


@pytest.mark.parametrize("params,needle", [
    ({"steps": 0}, "steps"), ({"pool": "all"}, "pool"), ({"iterations": 0}, "iterations"),
    ({"lr": 0}, "lr"), ({"critic_lr": -1.0}, "critic_lr"), ({"a": 1.5}, "a must"), ({"a": "0.8"}, "a must"),
    ({"gp_weight": float("nan")}, "gp_weight"), ({"batch_size": 1}, "batch_size"),
    ({"inv_iterations": 2.5}, "inv_iterations"), ({"inv_lr": float("inf")}, "inv_lr"), ({"hidden": 0}, "hidden"),
    ({"critic_hidden": 0}, "critic_hidden"), ({"n_aux": 1}, "n_aux"), ({"window": "after"}, "unknown parameter"),
])
def test_bad_parameters_raise(params, needle):
    with pytest.raises(ValueError, match=needle):
        ATTACKS.create("fora", **params)


def _mmd_reference(x, y, powers=(-3, -2, -1, 0, 1)):
    """MK-MMD² by explicit loops over pairs (unbiased: i != j within a batch)."""
    x, y = x.flatten(1).double(), y.flatten(1).double()
    z = torch.cat([x, y])
    base = sum(float((a - b).pow(2).sum()) for a in z for b in z) / len(z) ** 2

    def k(a, b):
        return sum(torch.exp(-(a - b).pow(2).sum() / (2 * 2.0 ** p * base)) for p in powers)

    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return float(xx + yy - 2 * xy)


def test_mk_mmd_matches_the_pairwise_definition_and_separates_distributions():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 2, 3, generator=g), torch.randn(5, 2, 3, generator=g) + 0.5
    assert mk_mmd(x, y).item() == pytest.approx(_mmd_reference(x, y), rel=1e-4, abs=1e-6)
    same = [mk_mmd(torch.randn(64, 10, generator=g), torch.randn(64, 10, generator=g)).item() for _ in range(5)]
    shifted = [mk_mmd(torch.randn(64, 10, generator=g), torch.randn(64, 10, generator=g) + 1).item() for _ in range(5)]
    assert max(abs(s) for s in same) < 0.05 < min(shifted), (same, shifted)
    a = torch.randn(8, 4, generator=g, requires_grad=True)
    mk_mmd(a, torch.randn(8, 4, generator=g)).backward()
    assert torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="at least 2"):
        mk_mmd(torch.randn(1, 3), torch.randn(4, 3))


def test_critic_shapes_and_the_gradient_penalty_oracle():
    for shape in [(8, 24, 24), (16, 8, 8), (120,), (16, 4, 4)]:
        assert critic(shape)(torch.randn(3, *shape)).shape == (3, 1), shape
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)) for m in critic((8, 24, 24)).modules())
    # a linear critic with a unit-norm weight has gradient norm exactly 1 everywhere: penalty 0
    lin = nn.Linear(6, 1)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.6, 0.8, 0, 0, 0, 0]]))
    g = torch.Generator().manual_seed(1)
    assert gradient_penalty(lin, torch.randn(4, 6), torch.randn(4, 6), g).item() == pytest.approx(0, abs=1e-10)
    with torch.no_grad():
        lin.weight.mul_(3.0)  # norm 3: penalty (3 − 1)² = 4
    assert gradient_penalty(lin, torch.randn(4, 6), torch.randn(4, 6), g).item() == pytest.approx(4.0, rel=1e-5)
