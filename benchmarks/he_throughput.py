"""Training throughput of the `he` defense: batch packing vs one ciphertext per sample vs plaintext.

One run, one model (UnSplit's MNIST LeNet), one set of CKKS parameters: the `he` defense moves the
cut to layer 5 (256 features), the server runs Linear(256->120) on ciphertext, the client keeps
the other four layers. Every variant trains through `protocol.train` with the same batch size;
a step's time is everything in it (client layers, encryption, serialisation, server evaluation,
decryption, tail, backward). Samples/s = batch size / median step time (first and last steps,
which also record the transcript, left out when there are more than two), in wall-clock time and
per CPU-second of this process (the machine is shared: the second is the load-robust figure; the
packed HE path is single-threaded, TenSEAL's per-sample product uses both cores). Torch runs one
thread, as in the matrix: on a loaded two-core machine a second OpenMP thread spins and costs the
HE path about 3x.

    python benchmarks/he_throughput.py                      # MNIST ($ARENA_DATA or --data-dir)
    python benchmarks/he_throughput.py --quick              # smoke run on scikit-learn's digits
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from arena.protocol.channel import PlainChannel  # noqa: E402
from arena.defenses import DEFENSES  # noqa: E402
from arena.he.channel import he_accuracy  # noqa: E402
from arena.models import build_model  # noqa: E402
from arena.protocol.train import evaluate, make_setup  # noqa: E402
from arena.protocol.train import train  # noqa: E402
from arena.records import Scenario, TrainConfig  # noqa: E402
from arena.run.runner import load_data  # noqa: E402
from arena.seeding import seed_everything, torch_generator  # noqa: E402


def _load() -> str:
    return "load average %.2f %.2f %.2f" % os.getloadavg()


def run_variant(name: str, data, cfg: TrainConfig, ckks: dict) -> dict:
    seed_everything(0, "init")
    model = build_model("lenet", data.shape, data.num_classes)
    setup = make_setup(Scenario("bench", "lenet", 1, setup="u-shaped", seed=0, train=cfg), model, data.shape)
    packing = {"he batch (2 samples/slot)": "batch", "he batch (1 sample/slot)": "batch-real",
               "he 1 ciphertext/sample": "sample"}.get(name)
    defense = DEFENSES.create("he", packing=packing or "batch", **ckks)
    t = time.perf_counter()
    defended = defense.apply(setup, torch_generator(0, "he"))
    keygen_s = time.perf_counter() - t
    if packing is None:  # plaintext: the same layout (depth 5, U-shaped, 4-layer tail) on the plain wire
        defended = defended.replace(channel=PlainChannel())
    stamps = [(time.perf_counter(), time.process_time())]
    res = train(defended, data, torch_generator(0, "train"),
                progress=lambda i, n: stamps.append((time.perf_counter(), time.process_time())))
    wall = [b[0] - a[0] for a, b in zip(stamps, stamps[1:])]
    cpu = [b[1] - a[1] for a, b in zip(stamps, stamps[1:])]
    keep = slice(1, -1) if len(wall) > 2 else slice(None)
    out = {"variant": name, "steps": len(wall), "samples_s": cfg.batch_size / statistics.median(wall[keep]),
           "samples_cpu_s": cfg.batch_size / statistics.median(cpu[keep]), "keygen_s": keygen_s,
           "defense": defense, "result": res}
    if packing is not None:
        out |= defense.report()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20, help="training steps of the plaintext and batch-packed runs")
    ap.add_argument("--sample-steps", type=int, default=1, help="training steps of the one-ciphertext-per-sample run")
    ap.add_argument("--n-test", type=int, default=1000, help="test samples for the HE-vs-plaintext accuracy")
    ap.add_argument("--poly-modulus-degree", type=int, default=8192)
    ap.add_argument("--coeff-mod-bit-sizes", type=int, nargs="+", default=[60, 40, 40, 60])
    ap.add_argument("--scale-bits", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: the matrix's default; the packed HE path is single-threaded, TenSEAL's "
                         "per-sample product uses every core)")
    ap.add_argument("--quick", action="store_true", help="smoke run: digits, batch 16, 4 steps, 100 test samples")
    args = ap.parse_args(argv)
    if args.quick:
        args.dataset, args.batch_size, args.steps, args.n_test = "digits", 16, 4, 100
    torch.set_num_threads(args.threads)
    ckks = {"poly_modulus_degree": args.poly_modulus_degree, "coeff_mod_bit_sizes": args.coeff_mod_bit_sizes,
            "scale_bits": args.scale_bits}
    import tenseal

    print(f"# he_throughput: {args.dataset}, LeNet cut at layer 5, server = Linear(256->120) on CKKS; "
          f"batch {args.batch_size}; CKKS N={args.poly_modulus_degree}, primes {args.coeff_mod_bit_sizes}, "
          f"scale 2^{args.scale_bits}")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), tenseal {tenseal.__version__}; {_load()} (machine shared)")
    n_train = args.batch_size * max(args.steps, args.sample_steps)
    data = load_data(Scenario(args.dataset, "lenet", 1, n_train=n_train, n_test=args.n_test), n_aux=10,
                     data_dir=args.data_dir)
    rows = []
    for name, steps in [("plaintext", args.steps), ("he batch (2 samples/slot)", args.steps),
                        ("he batch (1 sample/slot)", args.steps), ("he 1 ciphertext/sample", args.sample_steps)]:
        cfg = TrainConfig(epochs=1, batch_size=args.batch_size, record_steps=1, max_steps=steps)
        rows.append(run_variant(name, data, cfg, ckks))
        print(f"# done: {name} ({_load()})", flush=True)
    per_sample = rows[-1]["samples_s"]
    print()
    cpu_per_sample = rows[-1]["samples_cpu_s"]
    print(f"{'variant':28s} {'steps':>5s} {'samples/s':>10s} {'vs 1 ct/sample':>14s} {'samples/cpu-s':>13s} "
          f"{'vs 1 ct/sample':>14s} {'samples/ct':>10s} "
          f"{'KB up/sample':>12s} {'KB down/sample':>14s} {'client ms/sample':>16s} {'server ms/sample':>16s} "
          f"{'max |err|':>9s} {'keygen s':>8s}")
    for r in rows:
        he = "he_samples" in r
        print(f"{r['variant']:28s} {r['steps']:5d} {r['samples_s']:10.2f} {r['samples_s'] / per_sample:13.1f}x "
              f"{r['samples_cpu_s']:13.2f} {r['samples_cpu_s'] / cpu_per_sample:13.1f}x "
              f"{r.get('he_samples_per_ciphertext', '-'):>10} "
              + (f"{r['he_ct_bytes_up_per_sample'] / 1e3:12.1f} {r['he_ct_bytes_down_per_sample'] / 1e3:14.1f} "
                 f"{1e3 * r['he_client_s_per_sample']:16.2f} {1e3 * r['he_server_s_per_sample']:16.2f} "
                 f"{r['he_max_abs_err']:9.1e} {r['keygen_s']:8.2f}" if he else
                 f"{4 * 256 / 1e3:12.1f} {4 * 120 / 1e3:14.1f} {'-':>16s} {'-':>16s} {'-':>9s} {'-':>8s}"))
    plain, batch = rows[0], rows[1]
    print()
    print(f"batch packing vs one ciphertext per sample: {batch['samples_s'] / per_sample:.0f}x wall-clock, "
          f"{batch['samples_cpu_s'] / cpu_per_sample:.0f}x per CPU-second (target >= 50x)")
    print(f"batch packing: {batch['samples_s']:.1f} training samples/s wall-clock, {batch['samples_cpu_s']:.1f} per "
          f"CPU-second (target >= 100 on two cores); plaintext step is {plain['samples_s'] / batch['samples_s']:.1f}x "
          f"faster (wall-clock)")
    print(f"public context (public + relinearisation + Galois keys), sent once: "
          f"{batch['he_public_context_bytes'] / 1e6:.1f} MB")
    # accuracy: the batch-packed run's trained model, server part in plaintext vs on ciphertext
    res, ch = batch["result"], batch["defense"].channel
    acc_plain = evaluate(res.model, data.x_test, data.y_test)
    acc_he = he_accuracy(ch, res.model, data.x_test, data.y_test)
    print(f"test accuracy of the HE-trained model after {batch['steps']} steps, {len(data.y_test)} test samples: "
          f"server part in plaintext {acc_plain:.4f}, on ciphertext {acc_he:.4f} (difference {acc_he - acc_plain:+.4f});"
          f" plaintext-trained model {plain['result'].test_acc:.4f}")
    print(f"# {_load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
