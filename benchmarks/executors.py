"""Wall time of one experiment serially, with --workers N, with Ray, and again from the model cache;
prints a table with speed-ups as ratios to the serial run of the same invocation, and checks that
every executor produced the very same numbers.

    python benchmarks/executors.py --quick            # a smoke run on digits (about a minute)
    python benchmarks/executors.py --ray              # 6 digits cells of 10 epochs on 1000 samples
    python benchmarks/executors.py -e quick --workers 2 --ray
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arena.matrix import main as matrix  # noqa: E402
from arena.run.store import read_cells  # noqa: E402

SPEC = """
[experiment]
datasets = ["digits"]
depths = [1]
seeds = [0, 1]
n_train = {n_train}
n_test = 200
n_aux = 200

[train]
epochs = {epochs}
batch_size = 32
record_steps = 1

[[attacks]]
name = "mean-image"

[[defenses]]
name = "none"

[[defenses]]
name = "noise"
grid = {{ scale = [0.1, 1.0] }}
"""


def numbers(out: Path) -> dict:
    return {c.key: (c.status, c.metrics, c.utility) for c in read_cells(out)}


def timed(args: list[str]) -> float:
    t0 = time.perf_counter()
    rc = matrix(args)
    if rc != 0:
        raise SystemExit(f"arena.matrix {' '.join(args)} exited with {rc}")
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-e", "--experiment", help="experiment name or TOML (default: a small digits one)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--ray", action="store_true", help="also time --executor ray (local Ray)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 6 tiny cells (start-up costs dominate)")
    p.add_argument("--data-dir", help="passed to arena.matrix")
    a = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="arena-bench-"))
    try:
        spec = a.experiment
        if spec is None or a.quick:
            spec = str(tmp / "digits.toml")
            Path(spec).write_text(SPEC.format(n_train=600 if a.quick else 1000, epochs=2 if a.quick else 10))
        base = ["-e", spec, "-q", "--no-report"] + (["--data-dir", a.data_dir] if a.data_dir else [])
        timed(base + ["--out", str(tmp / "warm-up"), "--seeds", "0", "--defenses", "none"])  # imports, data caches
        runs = [("serial", []), (f"--workers {a.workers}", ["--workers", str(a.workers)])]
        if a.ray:
            runs.append((f"ray, {a.workers} workers", ["--executor", "ray", "--workers", str(a.workers)]))
        rows, ref = [], None
        for name, extra in runs:
            out = tmp / name.replace(" ", "_").replace(",", "")
            t = timed(base + ["--out", str(out)] + extra)
            got = numbers(out)
            bad = [k for k, (status, _, _) in got.items() if status != "ok"]
            if bad:
                raise SystemExit(f"{len(bad)} cell(s) of the {name} run did not finish ok: see {out}/cells.jsonl")
            ref = ref or got
            rows.append((name, t, len(got), got == ref))
        cache = tmp / "models"
        t_fill = timed(base + ["--out", str(tmp / "fill"), "--model-cache", str(cache)])
        t_hit = timed(base + ["--out", str(tmp / "hit"), "--model-cache", str(cache)])
        rows += [("serial, filling the model cache", t_fill, len(numbers(tmp / "fill")), numbers(tmp / "fill") == ref),
                 ("serial, from the model cache", t_hit, len(numbers(tmp / "hit")), numbers(tmp / "hit") == ref)]
        serial = rows[0][1]
        print(f"{'run':<34} {'cells':>5} {'wall s':>8} {'speed-up':>9}  same numbers")
        for name, t, n, same in rows:
            print(f"{name:<34} {n:>5} {t:>8.1f} {serial / t:>8.2f}x  {'yes' if same else 'NO'}")
        return 0 if all(r[3] for r in rows) else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
