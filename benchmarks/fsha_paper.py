"""FSHA (Pasquini et al., CCS 2021) on MNIST / Fashion-MNIST: reconstruction MSE over iterations beside
the paper's curve, and seconds per 1k iterations on this machine.

One FSHA cell per dataset through arena's pipeline (runner.run_group: the code `python -m arena.matrix`
runs), set up as the authors' code (github.com/pasquini-dario/SplitNN_FSHA) runs: the paper's
residual client as TensorFlow runs it (`fsha-resnet-tf`: pixels on [−1,1], stem batch norm in
inference mode, Glorot init; split after the 4th residual block: 256×4×4), the authors' pilot
(linear strided convolutions, fed [−1,1]) and critic (6 residual blocks at 4×4), their gradient
penalty (weight 500, norm per channel), Glorot init, plain Adam lr 1e-5 for the client and for
f̃/f̃⁻¹, 1e-4 for D, batch 64. Every one of these has a flag to switch back to arena's choice.
X_priv: a random subset of the training split; X_pub: a disjoint subset of the same split (arena's
aux set; the authors use the MNIST test set).

MSE at iteration i is the MSE of the decoder of that moment on the batch the client sends at step
i (64 images), as the authors' "attack validation" does; arena scores pixels in [0,1], the paper
reports [−1,1] images, whose MSE is exactly 4× ours (decoder tanh vs sigmoid is the same map). The
authors resize MNIST to 32×32 (3 channels); arena keeps 28×28×1 (same 4×4 activation).
``--input 32x3`` runs the authors' input instead: each image bilinearly resized to 32×32 (half-pixel
centres, no antialiasing, as tf.image.resize) and repeated over 3 channels, through a dataset
registered here as ``<name>-32x3`` (arena's dataset registry; nothing in arena changes).
Progress (iteration, seconds per iteration, time left) goes to stderr every ``--progress-every``.

A full run is long on a CPU: 793 s (MNIST) and 819 s (Fashion-MNIST) per 1k iterations on two idle
cores (2 threads), so 2.1–2.2 h per dataset to the 9.5k-iteration point, ~3.7 h on one core shared
with another job. ``--time-budget`` measures seconds per iteration on a short calibration run and
shortens the run to fit; the table then ends where the run ended and says so (nothing is
extrapolated).

    ARENA_DATA=/work/shared/data python benchmarks/fsha_paper.py --time-budget 1500
    ARENA_DATA=/work/shared/data python benchmarks/fsha_paper.py --quick    # smoke run (~1 min)
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from arena.run.config import Entry  # noqa: E402
from arena.data.sources import DATASETS, RawData  # noqa: E402
from arena.records import Scenario, TrainConfig  # noqa: E402
from arena.run.runner import CellSpec, GroupContext, run_group  # noqa: E402

# Pasquini et al. 2021, MNIST, MSE on [−1,1] images (ALGORITHMS.md)
PAPER = {0: 0.163, 1500: 0.085, 3500: 0.042, 5000: 0.032, 9500: 0.019}


def resized_32x3(x: np.ndarray, batch: int = 4096) -> np.ndarray:
    """N×1×H×W images (uint8 or [0,1] floats) → N×3×32×32 float32 in [0,1]: bilinear, half-pixel
    centres, no antialiasing (tf.image.resize's default), the grey channel repeated 3 times."""
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    out = np.empty((len(x), 1, 32, 32), np.float32)
    for i in range(0, len(x), batch):
        t = torch.from_numpy(x[i:i + batch].astype(np.float32) / scale)
        out[i:i + batch] = F.interpolate(t, size=(32, 32), mode="bilinear", align_corners=False,
                                         antialias=False).clamp_(0, 1).numpy()
    return np.broadcast_to(out, (len(x), 3, 32, 32))  # a view: subsetting copies only what is used


def register_32x3(ds: str) -> str:
    """Register ``<ds>-32x3`` (the authors' input) in arena's dataset registry; returns its name."""
    name = f"{ds}-32x3"
    if name not in DATASETS:
        base = DATASETS.get(ds)

        def load(**kw) -> RawData:
            raw = base(**kw)
            if raw.x_train.shape[1] != 1:
                raise ValueError(f"--input 32x3 resizes grey images; {ds} has {raw.x_train.shape[1]} channels")
            return RawData(resized_32x3(raw.x_train), raw.y_train, resized_32x3(raw.x_test), raw.y_test, raw.classes)

        DATASETS.register(name, load)
    return name


def seconds_per_iteration(ticks: list[tuple[int, float]], warmup: int = 10) -> float | None:
    """Training speed from (iteration, time) progress ticks, the first ``warmup`` excluded; None until
    the ticks after the warm-up span at least one iteration."""
    if len(ticks) <= warmup:
        return None
    (i0, t0), (i1, t1) = ticks[warmup], ticks[-1]
    return (t1 - t0) / (i1 - i0) if i1 > i0 else None


def progress(ds: str, ticks: list[tuple[int, float]], every: int):
    """A runner progress callback: keeps (iteration, time) ticks and prints a line every ``every``."""
    def report(label: str, i: int, n: int) -> None:
        if not label.startswith("train "):
            return
        ticks.append((i, time.perf_counter()))
        if every and i and (i % every == 0 or i == n):
            rate = seconds_per_iteration(ticks)
            rate = float("nan") if rate is None else rate
            print(f"[{ds}] iteration {i}/{n}: {rate:.2f} s/it, {(n - i) * rate / 60:.0f} min left", file=sys.stderr,
                  flush=True)
    return report


def cell(a: argparse.Namespace, ds: str, iterations: int, curve: list[int]):
    cfg = TrainConfig(epochs=1e6, batch_size=64, lr=a.client_lr, record_steps=1, max_steps=iterations,
                      amsgrad=a.client_optimizer == "amsgrad")
    sc = Scenario(ds, a.model, a.depth, setup="vanilla", seed=a.seed, n_train=a.n_train, n_test=a.n_test, train=cfg)
    params = {"pilot": a.pilot, "lr_tilde": a.lr_tilde, "lr_d": a.lr_d, "gp_weight": a.gp_weight,
              "curve_steps": tuple(curve), "critic": a.critic, "critic_blocks": a.critic_blocks,
              "gp_norm": a.gp_norm, "init": a.init, "pilot_input": a.pilot_input, "gp_every": a.gp_every,
              "gp_samples": None, "steps": None}  # no attack budget: the curve runs to --iterations
    spec = CellSpec(sc, Entry("fsha", tuple(sorted(params.items()))), Entry("none"), a.n_public)
    ticks: list[tuple[int, float]] = []
    ctx = GroupContext(data_dir=a.data_dir, device=a.device, progress=progress(ds, ticks, a.progress_every))
    (c,) = list(run_group([spec], ctx))
    if c.status != "ok":
        raise SystemExit(f"{ds}: {c.status} {c.error or c.reason}")
    s_per_it = seconds_per_iteration(ticks)
    if s_per_it is None:  # too short a run for the ticks: the cell's own timing, warm-up included
        s_per_it = (c.cost.get("client_s", 0) + c.cost.get("server_s", 0)) / max(c.cost.get("train_steps", 1), 1)
    return c, s_per_it


def run(a: argparse.Namespace) -> None:
    torch.set_num_threads(a.threads)
    print(f"# FSHA reproduction — arena benchmarks/fsha_paper.py {' '.join(sys.argv[1:])}")
    print(f"# client {a.model} depth {a.depth}, pilot {a.pilot}, lr client {a.client_lr} / f̃,f̃⁻¹ {a.lr_tilde} / "
          f"D {a.lr_d}, GP {a.gp_weight} ({a.gp_norm} norm, every {a.gp_every} step(s)), "
          f"critic {a.critic} x{a.critic_blocks} blocks, "
          f"init {a.init}, pilot input {a.pilot_input}, client optimiser {a.client_optimizer}, batch 64; X_priv {a.n_train} samples, X_pub {a.n_public} (disjoint); "
          f"input {a.input}; seed {a.seed}; torch {torch.__version__}, {a.threads} thread(s), {os.cpu_count()} CPU(s), device {a.device}")
    t_all = time.perf_counter()
    for base in a.datasets:
        ds = register_32x3(base) if a.input == "32x3" else base
        iterations = a.iterations
        note = ""
        if a.time_budget:
            _, s_cal = cell(a, ds, a.calibration, [])
            fit = int(a.time_budget / len(a.datasets) / s_cal) if s_cal > 0 else iterations
            if fit < iterations:
                iterations, note = max(fit, 1), (f"  (shortened from {a.iterations} to fit --time-budget "
                                                 f"{a.time_budget:.0f} s: calibration {1000 * s_cal:.0f} s/1k it)")
        marks = sorted({s for s in [*PAPER, *range(0, iterations, a.every)] if s < iterations} | {iterations - 1})
        t0 = time.perf_counter()
        c, s_per_it = cell(a, ds, iterations, marks)
        m = c.metrics
        print(f"\n## {ds}: {iterations} iterations in {time.perf_counter() - t0:.0f} s, "
              f"{1000 * s_per_it:.0f} s per 1k iterations{note}")
        print(f"{'iteration':>9} | {'MSE [-1,1] ours':>15} | {'paper (MNIST)':>13} | {'MSE [0,1] ours':>14}")
        print("-" * 62)
        for s in marks:
            v = m.get(f"mse@{s}")
            ref = PAPER.get(s) if base == "mnist" else None
            ref_s = f"{ref:13.3f}" if ref is not None else f"{'-':>13}"
            print(f"{s:>9} | {4 * v:15.4f} | {ref_s} | {v:14.4f}" if v is not None else f"{s:>9} | {'-':>15} |")
        missing = [s for s in PAPER if s >= iterations]
        if missing:
            print(f"(paper points {missing} not reached: the run stopped at iteration {iterations - 1}; "
                  "no extrapolation)")
        print(f"final decoder on the last batch: MSE [0,1] {m['mse']:.4f} ([-1,1] {4 * m['mse']:.4f}), "
              f"PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.3f}; attacker's public autoencoder MSE "
              f"{m.get('public_ae_mse', float('nan')):.4f}; client test accuracy {c.utility['test_acc']:.4f} "
              "(the server never trains the task)")
    print(f"\ntotal {time.perf_counter() - t_all:.0f} s")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: MNIST, LeNet depth 2, 200 iterations")
    p.add_argument("--datasets", nargs="+", default=["mnist", "fashion-mnist"])
    p.add_argument("--model", default="fsha-resnet-tf",
                   help="client architecture (default: the paper's client as the authors' TF code runs it)")
    p.add_argument("--depth", type=int, default=4, help="split depth (fsha-resnet 4 = the paper's split)")
    p.add_argument("--pilot", default="paper", choices=["paper", "same"])
    p.add_argument("--iterations", type=int, default=10000)
    p.add_argument("--every", type=int, default=500, help="curve points every N iterations (plus the paper's)")
    p.add_argument("--time-budget", type=float, default=0.0,
                   help="seconds for all datasets; shortens --iterations after a calibration run (0: off)")
    p.add_argument("--calibration", type=int, default=40, help="iterations of the calibration run")
    p.add_argument("--client-lr", type=float, default=1e-5)
    p.add_argument("--lr-tilde", type=float, default=1e-5)
    p.add_argument("--lr-d", type=float, default=1e-4)
    p.add_argument("--gp-weight", type=float, default=500.0)
    p.add_argument("--gp-norm", default="channel", choices=["channel", "sample"],
                   help="gradient-penalty norm: per channel as the authors' code, or per sample (WGAN-GP)")
    p.add_argument("--gp-every", type=int, default=1,
                   help="gradient penalty every k critic steps, weight ×k (arena's default: 4; the paper: 1)")
    p.add_argument("--critic", default="paper", choices=["paper", "fast"], help="critic layout")
    p.add_argument("--critic-blocks", type=int, default=6, help="critic residual blocks (paper: 6)")
    p.add_argument("--init", default="keras", choices=["keras", "torch"], help="attacker networks' init")
    p.add_argument("--pilot-input", default="signed", choices=["signed", "unit"],
                   help="pixels the pilot sees: [-1,1] as the authors' data, or arena's [0,1]")
    p.add_argument("--client-optimizer", default="adam", choices=["adam", "amsgrad"],
                   help="client optimiser: the authors' plain Adam, or arena's Adam with amsgrad")
    p.add_argument("--input", default="28x1", choices=["28x1", "32x3"],
                   help="images as arena loads them (28x28, grey) or as the authors feed them (bilinear "
                   "32x32, grey repeated over 3 channels)")
    p.add_argument("--progress-every", type=int, default=100,
                   help="print progress to stderr every N iterations (0: quiet)")
    p.add_argument("--n-train", type=int, default=50000, help="private training samples")
    p.add_argument("--n-public", type=int, default=10000, help="public samples (disjoint from the private ones)")
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda (a full 10k-iteration run takes "
                   "hours on CPU)")
    p.add_argument("--data-dir", default=os.environ.get("ARENA_DATA"))
    a = p.parse_args(argv)
    if a.progress_every < 0:
        p.error(f"--progress-every must be >= 0, got {a.progress_every}")
    if a.quick:
        a.datasets, a.model, a.depth, a.iterations, a.every = ["mnist"], "lenet", 2, 200, 50
        a.n_train, a.n_public, a.n_test, a.time_budget = 2000, 1000, 500, 0.0
        a.pilot, a.client_lr, a.lr_tilde, a.lr_d, a.gp_weight = "same", 1e-3, 3e-3, 1e-3, 10.0
        a.critic, a.critic_blocks, a.gp_norm, a.init, a.pilot_input = "fast", 1, "sample", "torch", "unit"
        a.gp_every = 1
        a.client_optimizer = "amsgrad"
    run(a)


if __name__ == "__main__":
    main()
