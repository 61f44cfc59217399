"""He et al. (ACSAC 2019) on MNIST / Fashion-MNIST: PSNR/SSIM of the three inversion attacks beside the paper.

For each dataset and split depth (0 = conv1, 4 = ReLU2) the LeNet is trained once through arena's
split-learning pipeline (runner.run_group: the same code as `python -m arena.matrix`) and every
attack row runs on that one training run; the targets are the smashed data of the last recorded
training step(s). The paper's table (MNIST only) is printed beside ours.

    ARENA_DATA=/work/shared/data python benchmarks/he_paper.py           # full run (~20 min, 2 cores)
    ARENA_DATA=/work/shared/data python benchmarks/he_paper.py --quick   # smoke run (~1 min)
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from arena.run.config import Entry  # noqa: E402
from arena.records import Scenario, TrainConfig  # noqa: E402
from arena.run.runner import CellSpec, GroupContext, run_group  # noqa: E402

# He et al. 2019, Tables (MNIST): PSNR dB / SSIM at conv1 (depth 0) and ReLU2 (depth 4); see ALGORITHMS.md
PAPER = {
    "white-box": {0: (39.69, .9969), 4: (15.10, .5998)},
    "inverse net, same set": {0: (39.64, .9887), 4: (20.35, .7334)},
    "inverse net, same distribution": {0: (40.72, .9950), 4: (20.81, .8046)},
    "inverse net, random noise": {0: (14.76, .7188), 4: (7.72, .4310)},
    "query-free, same set, same net": {0: (17.60, .7423), 4: (9.61, .4981)},
    "query-free, other set, same net": {0: (21.53, .9121), 4: (9.27, .4652)},
    "query-free, same set, other net": {0: (12.59, .6430), 4: (8.05, .3790)},
    "query-free, other set, other net": {0: (17.86, .6952), 4: (8.03, .3226)},
}


def rows(a: argparse.Namespace, depth: int) -> list[tuple[str, str, dict]]:
    bb = {"n_queries": a.n_queries, "epochs": a.inv_epochs}
    qf = {"shadow_epochs": a.shadow_epochs, "n_shadow": a.n_aux, "iterations": a.qf_iterations}
    # He et al.: deeper layers need a stronger TV prior; conv1 is a linear map with a unique inverse
    lam = a.wb_lambda_tv0 if depth == 0 else a.wb_lambda_tv
    return [
        ("mean image (baseline)", "mean-image", {}),
        ("white-box", "he-whitebox", {"iterations": a.wb_iterations, "lambda_tv": lam}),
        ("inverse net, same set", "he-blackbox", {**bb, "query_set": "training-set"}),
        ("inverse net, same distribution", "he-blackbox", {**bb, "query_set": "same-distribution"}),
        ("inverse net, random noise", "he-blackbox", {**bb, "query_set": "random-noise"}),
        ("query-free, same set, same net", "he-queryfree", {**qf, "data": "training-set", "arch": "same"}),
        ("query-free, other set, same net", "he-queryfree", {**qf, "data": "aux", "arch": "same"}),
        ("query-free, same set, other net", "he-queryfree", {**qf, "data": "training-set", "arch": "other"}),
        ("query-free, other set, other net", "he-queryfree", {**qf, "data": "aux", "arch": "other"}),
        (f"query-free, other set, same net, λ_TV .01 lr .01 {2 * a.qf_iterations} it", "he-queryfree",
         {**qf, "data": "aux", "arch": "same", "lambda_tv": 0.01, "lr": 0.01, "iterations": 2 * a.qf_iterations}),
    ]


def run(a: argparse.Namespace) -> None:
    torch.set_num_threads(a.threads)
    cfg = TrainConfig(epochs=a.epochs, batch_size=64, record_steps=a.target_steps)
    print(f"# He et al. 2019 reproduction — arena benchmarks/he_paper.py {' '.join(sys.argv[1:])}")
    print(f"# LeNet trained {a.epochs} epochs on {a.n_train} private samples (batch 64, Adam 1e-3 amsgrad), "
          f"seed {a.seed}; targets: the smashed data of the last {a.target_steps} training step(s) "
          f"({64 * a.target_steps} images); aux (same distribution, disjoint): {a.n_aux}")
    print(f"# white-box: Adam lr 1e-2, {a.wb_iterations} it, λ_TV {a.wb_lambda_tv0} at depth 0 / {a.wb_lambda_tv} "
          f"deeper; inverse net: {a.n_queries} queries, {a.inv_epochs} epochs, Adam 1e-3; query-free: shadow "
          f"{a.shadow_epochs} epochs on {a.n_aux} samples, then {a.qf_iterations} it, lr 0.1, λ_TV 2 (ALGORITHMS.md)")
    print(f"# torch {torch.__version__}, {a.threads} thread(s); PSNR (dB, peak 1) / SSIM (data range 1); "
          "paper = He et al. MNIST tables; '-' = no paper value\n")
    t_all = time.perf_counter()
    for ds in a.datasets:
        results: dict[int, dict[str, tuple]] = {}
        accs: dict[int, float] = {}
        for depth in a.depths:
            sc = Scenario(ds, "lenet", depth, setup="vanilla", seed=a.seed, n_train=a.n_train, n_test=a.n_test,
                          train=cfg)
            spec_rows = rows(a, depth)
            specs = [CellSpec(sc, Entry(name, tuple(sorted(p.items()))), Entry("none"), a.n_aux)
                     for _, name, p in spec_rows]
            t0 = time.perf_counter()
            cells = list(run_group(specs, GroupContext(data_dir=a.data_dir)))
            results[depth] = {}
            for (label, _, _), c in zip(spec_rows, cells):
                if c.status != "ok":
                    raise SystemExit(f"{ds} depth {depth} {label}: {c.status} {c.error or c.reason}")
                accs[depth] = c.utility["test_acc"]
                results[depth][label] = (c.metrics["psnr"], c.metrics["ssim"], c.cost.get("attack_s", 0.0))
            print(f"[{ds} depth {depth}: test acc {accs[depth]:.4f}, {time.perf_counter() - t0:.0f} s]", flush=True)
        table(ds, a.depths, results, accs)
    print(f"total {time.perf_counter() - t_all:.0f} s")


def table(ds: str, depths: list[int], results: dict, accs: dict) -> None:
    name = {0: "conv1 (depth 0)", 4: "ReLU2 (depth 4)"}
    w = 58
    head = f"{'attack':<{w}}" + "".join(f" | {name.get(d, f'depth {d}'):^31}" for d in depths)
    sub = f"{'':<{w}}" + "".join(f" | {'ours':^14} {'paper':^14}  {'s':>0}" for _ in depths)
    print(f"\n## {ds}  (target test accuracy: " + ", ".join(f"depth {d} {accs[d]:.4f}" for d in depths) + ")")
    print(head)
    print(sub.rstrip())
    print("-" * len(head))
    for label in results[depths[0]]:
        line = f"{label:<{w}}"
        for d in depths:
            p, s, secs = results[d][label]
            ref = PAPER.get(label, {}).get(d) if ds == "mnist" else None
            ref_s = f"{ref[0]:5.2f} / {ref[1]:.3f}" if ref else f"{'-':^14}"
            line += f" | {p:5.2f} / {s:.3f} {ref_s} {secs:4.0f}s"
        print(line)
    print()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: MNIST depth 0 only, tiny settings")
    p.add_argument("--datasets", nargs="+", default=["mnist", "fashion-mnist"])
    p.add_argument("--depths", nargs="+", type=int, default=[0, 4])
    p.add_argument("--n-train", type=int, default=12800, help="private training samples (default 12800)")
    p.add_argument("--n-test", type=int, default=2000)
    p.add_argument("--n-aux", type=int, default=5000, help="auxiliary samples; also the shadow set size")
    p.add_argument("--epochs", type=float, default=5, help="training epochs of the target LeNet")
    p.add_argument("--target-steps", type=int, default=1, help="last training steps whose smashed data are targets")
    p.add_argument("--wb-iterations", type=int, default=1000)
    p.add_argument("--wb-lambda-tv0", type=float, default=0.0, help="white-box λ_TV at depth 0")
    p.add_argument("--wb-lambda-tv", type=float, default=0.01, help="white-box λ_TV at deeper splits")
    p.add_argument("--n-queries", type=int, default=5000)
    p.add_argument("--inv-epochs", type=int, default=10, help="inverse-network training epochs (paper: 50)")
    p.add_argument("--shadow-epochs", type=int, default=5)
    p.add_argument("--qf-iterations", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core box)")
    p.add_argument("--data-dir", default=os.environ.get("ARENA_DATA"))
    a = p.parse_args(argv)
    if a.quick:
        a.datasets, a.depths, a.n_train, a.n_test, a.n_aux, a.epochs = ["mnist"], [0], 1280, 500, 500, 1
        a.wb_iterations, a.n_queries, a.inv_epochs, a.shadow_epochs, a.qf_iterations = 100, 500, 2, 1, 50
    run(a)


if __name__ == "__main__":
    main()
