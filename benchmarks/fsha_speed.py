"""FSHA at the default experiment's scale: what one training step costs, before and after making it
cheaper, and what the attack gets within its budget of hijacked steps.

Scale (the default experiment's): Fashion-MNIST, every private training image (59,500 with the 500
public ones set aside), 3 epochs of batch 64 (2,790 steps), LeNet split at depth 1 (8×24×24 smashed
data), client Adam lr 1e-3 with amsgrad. One torch thread.

1. Cost per training step (the client's step plus the malicious server's `FSHAPolicy.step`) for the
   previous configuration and for each change on the way to the defaults, measured in one process,
   interleaved in rounds of a few steps (the median round counts), as *CPU* seconds of this
   process: a single-threaded step's CPU time does not count the time other processes hold the
   core, so the ratios hold on a shared machine. "before" is the previous code and defaults: two
   critic passes (one for the client's gradient, one for the critic's loss), the critic growing to
   128 channels at this split (``critic_width=256``: its cap), the decoder's extra layer 64 wide,
   the gradient penalty on all 64 interpolates. The last row is an option left off by default
   (lazy regularisation: see arena/attacks/fsha.py).
2. FSHA's result with the defaults through arena's pipeline (`runner.run_group`, what
   `python -m arena.matrix` runs), one cell per seed: steps run (the budget stops training), CPU
   seconds of the whole cell (data, training, test accuracy, attack), SSIM/MSE of the decoded last
   recorded batch (arena's scorer), the grey image (`mean-image`) scored on that same batch, the
   client's test accuracy (≈ chance: the hijacked model).
3. ``--splitguard``: the same cells against SplitGuard (its defaults; ``--p-fake`` to change its
   fake-batch rate): whether it detects the hijack and at which step (training then stops there).

    ARENA_DATA=/work/shared/data python benchmarks/fsha_speed.py --seeds 0 1 2 --splitguard   # ~4 min
    ARENA_DATA=/work/shared/data python benchmarks/fsha_speed.py --quick     # smoke run (~1 min)
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from arena.attacks import ATTACKS, PolicyContext, fsha_nets as nets  # noqa: E402
from arena.attacks.fsha import FSHAPolicy  # noqa: E402
from arena.models import build_model  # noqa: E402
from arena.protocol.split import split  # noqa: E402
from arena.records import Scenario, TrainConfig  # noqa: E402
from arena.run.config import Entry  # noqa: E402
from arena.run.runner import CellSpec, GroupContext, load_data, run_group  # noqa: E402
from arena.seeding import torch_generator  # noqa: E402

PREVIOUS = {"critic_width": 256, "decoder_width": 64, "gp_samples": None, "steps": None}
# (label, parameters, the previous two-pass step?): each row adds one change to the one above
ROWS = [
    ("before: previous defaults, two critic passes", PREVIOUS, True),
    ("one critic pass (fused step)", PREVIOUS, False),
    ("+ critic 32 wide throughout", {**PREVIOUS, "critic_width": None}, False),
    ("+ decoder width 16", {**PREVIOUS, "critic_width": None, "decoder_width": None}, False),
    ("+ penalty on 16 interpolates (= defaults)", {}, False),
    ("(not default) lazy penalty, every 4th step", {"gp_samples": None, "gp_every": 4}, False),
]


class TwoPassPolicy(FSHAPolicy):
    """The previous `FSHAPolicy.step`: the critic's forward and backward for the client's gradient,
    then again for its loss, and the penalty every step (tests/test_fsha.py checks the fused step
    gives the same numbers)."""

    def step(self, smashed: torch.Tensor, labels: torch.Tensor | None, step: int) -> torch.Tensor:
        self.steps_seen += 1
        d_priv = self.critic(smashed)
        (grad,) = torch.autograd.grad(d_priv.mean(), smashed, retain_graph=True)
        z_pub = self._train_autoencoder(self._public_batch(len(smashed)))
        d_pub = self.critic(z_pub)
        gap = d_pub.mean() - d_priv.mean()
        loss = gap + self.a.gp_weight * nets.gradient_penalty(self.critic, smashed.detach(), z_pub, self.gen,
                                                              self.a.gp_norm)
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward(inputs=list(self.critic.parameters()))
        self.opt_d.step()
        return grad.detach()


def scenario(seed: int, a: argparse.Namespace) -> Scenario:
    cfg = TrainConfig(epochs=a.epochs, batch_size=64, lr=1e-3, record_steps=1, amsgrad=True)
    return Scenario(a.dataset, "lenet", 1, setup="vanilla", seed=seed, n_train=a.n_train, n_test=1000, train=cfg)


def step_costs(a: argparse.Namespace) -> list[tuple[str, float]]:
    """Median CPU seconds per training step of each row, measured interleaved in one process."""
    data = load_data(scenario(0, a), a.n_aux, a.data_dir)

    def arch() -> torch.nn.Sequential:
        return split(build_model("lenet", data.shape, data.num_classes), 1).client

    runs = []
    for label, params, two_pass in ROWS:
        torch.manual_seed(0)
        client = arch()
        opt = torch.optim.Adam(client.parameters(), lr=1e-3, amsgrad=True)
        attack = ATTACKS.create("fsha", **params)
        ctx = PolicyContext(input_shape=data.shape, num_classes=data.num_classes, client_arch=arch,
                            aux=(data.x_aux, data.y_aux), generator=torch_generator(0, "bench"), device="cpu",
                            total_steps=10 ** 9)
        policy = (TwoPassPolicy if two_pass else FSHAPolicy)(attack, ctx)
        runs.append((label, client, opt, policy, []))
    order = torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(0))
    step = 0
    for _ in range(a.rounds):
        for label, client, opt, policy, times in runs:
            t0 = time.process_time()
            for _ in range(a.round_steps):  # what protocol.train does in a step, with the policy as the server
                x = data.x_train[order[(64 * step) % len(order):][:64]]
                act = client(x)
                msg = act.detach().requires_grad_(True)
                g = policy.step(msg, None, 10 ** 8 + step)  # past every checkpoint: no decoding here
                (act * g).sum().backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                step += 1
            times.append((time.process_time() - t0) / a.round_steps)
    return [(label, statistics.median(times[1:])) for label, *_, times in runs]  # the first round warms up


def fsha_cells(a: argparse.Namespace, defense: Entry) -> list[dict]:
    out = []
    for seed in a.seeds:
        sc = scenario(seed, a)
        fsha = CellSpec(sc, Entry("fsha"), defense, a.n_aux)
        grey = CellSpec(sc, Entry("mean-image"), defense, a.n_aux)
        # one group: mean-image scores the grey image on the very batch FSHA is scored on
        t0, c0 = time.perf_counter(), time.process_time()
        cells = {c.attack: c for c in run_group([fsha, grey], GroupContext(data_dir=a.data_dir))}
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        c = cells["fsha"]
        if c.status != "ok":
            raise SystemExit(f"seed {seed} {defense.name}: {c.status} {c.error or c.reason}")
        out.append({"seed": seed, "steps": c.cost["train_steps"], "cpu": cpu, "wall": wall,
                    "ssim": c.metrics["ssim"], "mse": c.metrics["mse"],
                    "grey_ssim": cells["mean-image"].metrics["ssim"],
                    "acc": c.utility["test_acc"], "detected": c.cost.get("sg_detected_at"),
                    "alarm": c.cost.get("sg_alarm")})
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--n-train", type=int, default=None, help="private images (default: all but the public ones)")
    p.add_argument("--n-aux", type=int, default=500, help="the attacker's public images (disjoint)")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=16, help="timing rounds per configuration")
    p.add_argument("--round-steps", type=int, default=4, help="steps per timing round")
    p.add_argument("--splitguard", action="store_true", help="also run the cells against splitguard")
    p.add_argument("--p-fake", type=float, default=None, help="splitguard's p_fake (default: the defense's)")
    p.add_argument("--no-undefended", action="store_true", help="skip the undefended cells")
    p.add_argument("--no-speed", action="store_true", help="skip the cost-per-step table")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 rounds, 1 seed of 3000 images, 1 epoch")
    p.add_argument("--data-dir", default=os.environ.get("ARENA_DATA"))
    a = p.parse_args(argv)
    if a.quick:
        a.rounds, a.round_steps, a.seeds, a.n_train, a.epochs = 2, 2, a.seeds[:1], 3000, 1.0
    torch.set_num_threads(1)
    print(f"# FSHA speed — arena benchmarks/fsha_speed.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"# {a.dataset}, LeNet depth 1, batch 64, {a.epochs:g} epochs, n_train {a.n_train or 'all'}, "
          f"public {a.n_aux}; torch {torch.__version__}, 1 thread, {os.cpu_count()} CPU(s)")
    fsha = ATTACKS.create("fsha")
    print(f"# fsha defaults: {fsha.params()}")
    if not a.no_speed:
        costs = step_costs(a)
        base = costs[0][1]
        print(f"\n## cost per training step (client + FSHAPolicy.step), CPU ms, median of {a.rounds - 1} rounds "
              f"of {a.round_steps} steps, interleaved")
        print(f"{'configuration':48} | {'ms/step':>7} | {'speed-up':>8}")
        print("-" * 70)
        for label, sec in costs:
            print(f"{label:48} | {1000 * sec:7.1f} | {base / sec:7.2f}×")
    sg = Entry("splitguard", () if a.p_fake is None else (("p_fake", a.p_fake),))
    for defense in ([] if a.no_undefended else [Entry("none")]) + ([sg] if a.splitguard else []):
        rows = fsha_cells(a, defense)
        label = defense.name + "".join(f" {k}={v}" for k, v in defense.params)
        print(f"\n## fsha with its defaults, defense {label}: one cell per seed (arena's pipeline)")
        print(f"{'seed':>4} | {'steps':>5} | {'CPU s':>6} | {'wall s':>6} | {'SSIM':>5} | {'MSE':>6} | "
              f"{'grey SSIM':>9} | {'test acc':>8}" + (" | detected at" if defense.name == "splitguard" else ""))
        print("-" * (84 if defense.name == "splitguard" else 70))
        for r in rows:
            det = f" | {r['detected'] if r['alarm'] else 'no':>11}" if defense.name == "splitguard" else ""
            print(f"{r['seed']:>4} | {r['steps']:>5} | {r['cpu']:6.1f} | {r['wall']:6.1f} | {r['ssim']:5.3f} | "
                  f"{r['mse']:6.4f} | {r['grey_ssim']:9.3f} | {r['acc']:8.3f}{det}")
        if len(rows) > 1:
            print(f"mean | {'':>5} | {statistics.mean(r['cpu'] for r in rows):6.1f} | "
                  f"{statistics.mean(r['wall'] for r in rows):6.1f} | "
                  f"{statistics.mean(r['ssim'] for r in rows):5.3f} | "
                  f"{statistics.mean(r['mse'] for r in rows):6.4f} | "
                  f"{statistics.mean(r['grey_ssim'] for r in rows):9.3f} |")


if __name__ == "__main__":
    main()
