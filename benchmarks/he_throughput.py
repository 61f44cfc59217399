"""Training throughput of the `he` defense: the coefficient packing (default) vs the slot packings
(the previous default, batch) vs one ciphertext per sample vs plaintext, in one run.

One model (UnSplit's LeNet): the `he` defense moves the cut to layer 5 (256 features), the server
runs Linear(256->120) on ciphertext, the client keeps the other four layers. Every variant trains
through `protocol.train` with the same batch size and each packing's default CKKS parameters
(printed); a step's time is everything in it (client layers, encryption, serialisation, server
evaluation, decryption, tail, backward). Samples/s = batch size / median step time (first and
last steps, which also record the transcript, left out when there are more than two), in
wall-clock time and per CPU-second of this process (the machine is shared: the second is the
load-robust figure). Torch runs one thread, as in the matrix; every HE path here is
single-threaded except TenSEAL's per-sample product, which uses every core.

    python benchmarks/he_throughput.py                 # MNIST ($ARENA_DATA or --data-dir)
    python benchmarks/he_throughput.py --full-run      # and one HE + one plaintext run on Fashion-MNIST, 3 epochs
    python benchmarks/he_throughput.py --quick         # smoke run on scikit-learn's digits
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

VARIANTS = {"plaintext": None, "he coeff (new default)": "coeff", "he batch (old default)": "batch",
            "he batch-real (1 sample/slot)": "batch-real", "he 1 ciphertext/sample": "sample"}
NEW, OLD = "he coeff (new default)", "he batch (old default)"
REALISTIC = 3 * 59_500  # Fashion-MNIST, 500 images held out as auxiliary data, 3 epochs


def _load() -> str:
    return "load average %.2f %.2f %.2f" % os.getloadavg()


def run_variant(name: str, data, cfg: TrainConfig, dataset: str = "bench") -> dict:
    seed_everything(0, "init")
    model = build_model("lenet", data.shape, data.num_classes)
    setup = make_setup(Scenario(dataset, "lenet", 1, setup="u-shaped", seed=0, train=cfg), model, data.shape)
    packing = VARIANTS[name]
    defense = DEFENSES.create("he", packing=packing or "coeff")
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
           "total_s": stamps[-1][0] - stamps[0][0], "total_cpu_s": stamps[-1][1] - stamps[0][1], "defense": defense,
           "result": res}
    if packing is not None:
        out |= defense.report()
    return out


def full_run(args) -> None:
    """One HE (default packing) and one plaintext training run at the realistic scale."""
    data = load_data(Scenario("fashion-mnist", "lenet", 1), n_aux=500, data_dir=args.data_dir)
    cfg = TrainConfig(epochs=3, batch_size=args.batch_size, record_steps=1)
    print(f"\n# full run: fashion-mnist, {len(data.y_train)} training images x 3 epochs, batch {args.batch_size}, "
          f"{len(data.y_test)} test images ({_load()})", flush=True)
    rows = {}
    for name in ("plaintext", NEW):
        r = rows[name] = run_variant(name, data, cfg, dataset="fashion-mnist")
        print(f"# done: {name} in {r['total_s']:.1f} s, {r['total_cpu_s']:.1f} CPU-s ({_load()})", flush=True)
    he, plain = rows[NEW], rows["plaintext"]
    ch = he["defense"].channel
    acc_he_plain = evaluate(he["result"].model, data.x_test, data.y_test)
    t = time.perf_counter()
    acc_he_ct = he_accuracy(ch, he["result"].model, data.x_test, data.y_test)
    n = len(data.y_train) * 3
    print(f"HE training run ({NEW}): {he['steps']} steps in {he['total_s']:.1f} s wall-clock, {he['total_cpu_s']:.1f} "
          f"CPU-s = {n / he['total_s']:.0f} training samples/s wall-clock, {n / he['total_cpu_s']:.0f} per CPU-second "
          f"(target: <= 120 s, >= 1500/s on one core); plaintext run {plain['total_s']:.1f} s, "
          f"{plain['total_cpu_s']:.1f} CPU-s")
    print(f"test accuracy, {len(data.y_test)} images: HE-trained model {acc_he_plain:.4f} (server part in plaintext), "
          f"{acc_he_ct:.4f} (server part on ciphertext, {time.perf_counter() - t:.1f} s); plaintext-trained model "
          f"{plain['result'].test_acc:.4f} (difference {acc_he_plain - plain['result'].test_acc:+.4f}); max |HE - "
          f"plaintext| on the server output over training {he['he_max_abs_err']:.1e}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20, help="training steps of the plaintext and packed runs")
    ap.add_argument("--sample-steps", type=int, default=1,
                    help="training steps of the one-ciphertext-per-sample run (0: skip it; one step takes ~1 min)")
    ap.add_argument("--n-test", type=int, default=1000, help="test samples for the HE-vs-plaintext accuracy")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: the matrix's default; the packed HE paths are single-threaded, TenSEAL's "
                         "per-sample product uses every core)")
    ap.add_argument("--full-run", action="store_true",
                    help="also train once with HE (default packing) and once in plaintext on Fashion-MNIST, 3 epochs")
    ap.add_argument("--quick", action="store_true", help="smoke run: digits, batch 16, 4 steps, 100 test samples")
    args = ap.parse_args(argv)
    if args.quick:
        args.dataset, args.batch_size, args.steps, args.n_test = "digits", 16, 4, 100
    torch.set_num_threads(args.threads)
    import tenseal

    from arena.defenses.he import PACKING_DEFAULTS

    print(f"# he_throughput: {args.dataset}, LeNet cut at layer 5, server = Linear(256->120) on CKKS; "
          f"batch {args.batch_size}; CKKS parameters (N, primes, scale bits): "
          + "; ".join(f"{p} {PACKING_DEFAULTS[p]}" for p in ("coeff", "batch")) + " (batch-real, sample: as batch)")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), tenseal {tenseal.__version__}; {_load()} (machine shared)")
    n_train = args.batch_size * max(args.steps, args.sample_steps)
    data = load_data(Scenario(args.dataset, "lenet", 1, n_train=n_train, n_test=args.n_test), n_aux=10,
                     data_dir=args.data_dir)
    rows = {}
    for name in VARIANTS:
        steps = args.sample_steps if VARIANTS[name] == "sample" else args.steps
        if steps == 0:
            continue
        cfg = TrainConfig(epochs=1, batch_size=args.batch_size, record_steps=1, max_steps=steps)
        rows[name] = run_variant(name, data, cfg)
        print(f"# done: {name} ({_load()})", flush=True)
    old = rows[OLD]
    print()
    print(f"{'variant':30s} {'steps':>5s} {'samples/s':>10s} {'vs old':>7s} {'samples/cpu-s':>13s} {'vs old':>7s} "
          f"{'cts up/dn':>9s} {'KB up/sample':>12s} {'KB down/sample':>14s} {'client ms/sample':>16s} "
          f"{'server ms/sample':>16s} {'max |err|':>9s} {'context MB':>10s} {'keygen s':>8s}")
    for r in rows.values():
        he = "he_samples" in r
        cts = f"{r['he_ciphertexts_up_per_batch']:.0f}/{r['he_ciphertexts_down_per_batch']:.0f}" if he else "-"
        print(f"{r['variant']:30s} {r['steps']:5d} {r['samples_s']:10.2f} {r['samples_s'] / old['samples_s']:6.2f}x "
              f"{r['samples_cpu_s']:13.2f} {r['samples_cpu_s'] / old['samples_cpu_s']:6.2f}x {cts:>9s} "
              + (f"{r['he_ct_bytes_up_per_sample'] / 1e3:12.1f} {r['he_ct_bytes_down_per_sample'] / 1e3:14.1f} "
                 f"{1e3 * r['he_client_s_per_sample']:16.2f} {1e3 * r['he_server_s_per_sample']:16.2f} "
                 f"{r['he_max_abs_err']:9.1e} {r['he_public_context_bytes'] / 1e6:10.2f} {r['keygen_s']:8.2f}" if he else
                 f"{4 * 256 / 1e3:12.1f} {4 * 120 / 1e3:14.1f} {'-':>16s} {'-':>16s} {'-':>9s} {'-':>10s} {'-':>8s}"))
    new, plain = rows[NEW], rows["plaintext"]
    print()
    print(f"coefficient packing vs the old default (slot batch packing): {new['samples_s'] / old['samples_s']:.2f}x "
          f"wall-clock, {new['samples_cpu_s'] / old['samples_cpu_s']:.2f}x per CPU-second")
    print(f"coefficient packing: {new['samples_s']:.0f} training samples/s wall-clock, {new['samples_cpu_s']:.0f} per "
          f"CPU-second (target >= 1500 on one core); plaintext step is {plain['samples_s'] / new['samples_s']:.1f}x "
          f"faster (wall-clock)")
    print(f"at this rate a realistic HE run (Fashion-MNIST, {REALISTIC} training samples) takes "
          f"{REALISTIC / new['samples_cpu_s']:.0f} CPU-s with the coefficient packing, {REALISTIC / old['samples_cpu_s']:.0f} "
          f"with the old default (extrapolated from {new['steps']} steps)")
    res, ch = new["result"], new["defense"].channel
    acc_plain = evaluate(res.model, data.x_test, data.y_test)
    acc_he = he_accuracy(ch, res.model, data.x_test, data.y_test)
    print(f"test accuracy of the HE-trained model (coefficient packing) after {new['steps']} steps, {len(data.y_test)} "
          f"test samples: server part in plaintext {acc_plain:.4f}, on ciphertext {acc_he:.4f} (difference "
          f"{acc_he - acc_plain:+.4f}); plaintext-trained model {plain['result'].test_acc:.4f}")
    print(f"# {_load()}")
    if args.full_run:
        full_run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(argv=None))
