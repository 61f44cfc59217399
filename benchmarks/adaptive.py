"""Defense-oblivious vs adaptive attacks, per defense at two or three strengths, on Fashion-MNIST, with
paired 95% CIs over seeds (issue 17).

Runs an experiment (default experiments/adaptive.toml) through `python -m arena.matrix`, so the cells
land in OUT/cells.jsonl, a rerun resumes, and `python -m arena.report OUT` draws the full report (the
scorecard first); then prints one row per (defense setting, attack kind): the strongest oblivious
attack (the highest mean headline leakage among attacks that do not adapt to the defense) beside the
strongest adaptive one (an attack whose ``adapts_to`` names a member of the defense, or that ran on
activations the view rebuilt, e.g. under he), and the paired difference adaptive − oblivious (mean ±
the 95% CI half-width over the seeds both ran; * = the CI excludes 0), with the undefended value of
each for reference.

Headline leakage per kind: inversion and hijack SSIM; label: label accuracy on 10 classes; stealing:
not swept here.

    ARENA_DATA=/path/to/data python benchmarks/adaptive.py --out results/adaptive \\
        --table results/reference/adaptive.txt             # 3 seeds, 2 cores: see the table's header
    python benchmarks/adaptive.py --seeds 0 --out /tmp/ad   # one seed, no CIs
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from arena.attacks import ATTACKS  # noqa: E402
from arena.matrix import main as matrix_main  # noqa: E402
from arena.report.statistics import paired_difference  # noqa: E402
from arena.report.tables import params_text  # noqa: E402
from arena.run.store import read_cells  # noqa: E402

HEADLINE = {"inversion": "ssim", "hijack": "ssim", "label": "label_acc"}


def _fmt(x: float | None, nd: int = 3) -> str:
    return "-" if x is None or not isinstance(x, (int, float)) or math.isnan(x) else f"{x:.{nd}f}"


def _attack(c) -> str:
    return c.attack + params_text(json.dumps(c.attack_params, sort_keys=True) if c.attack_params else "")


def _defense(c) -> str:
    return c.defense + params_text(json.dumps(c.defense_params, sort_keys=True) if c.defense_params else "")


def _kind(c) -> str | None:
    try:
        return getattr(ATTACKS.get(c.attack), "kind", None)
    except Exception:  # noqa: BLE001 - an attack of a plug-in not loaded here
        return None


def adaptive(c) -> bool:
    """Adaptive in this cell: built against a member of its defense (as recorded, or as the attack instance
    declares it: he-whitebox's fit="masked" knows dropout), or run on rebuilt quantities."""
    members = set(c.defense.split("+"))
    declared = set(getattr(c, "adapts_to", []) or [])
    try:
        declared |= set(getattr(ATTACKS.create(c.attack, **(c.attack_params or {})), "adapts_to", ()))
    except Exception:  # noqa: BLE001 - an attack of a plug-in not loaded here
        pass
    return bool(members & declared) or bool(getattr(c, "derived", {}) or {})


def _mean(v: dict[int, float]) -> float | None:
    return sum(v.values()) / len(v) if v else None


def _delta(mine: dict[int, float], ref: dict[int, float]) -> str:
    p = paired_difference(mine, ref)
    if p.n == 0:
        return ""
    if p.n < 2 or not math.isfinite(p.ci):
        return f"{p.mean:+.3f} (n={p.n})"
    return f"{p.mean:+.3f} ±{p.ci:.3f}{'*' if p.distinguishable else ''}"


def table(cells) -> str:
    ok = [c for c in cells if c.status == "ok" and _kind(c) in HEADLINE]
    # (dataset, defense setting, kind) -> attack setting -> (adaptive?, {seed: value})
    series: dict[tuple[str, str, str], dict[str, tuple[bool, dict[int, float]]]] = {}
    acc: dict[tuple[str, str], dict[int, float]] = {}
    for c in ok:
        kind = _kind(c)
        v = c.metrics.get(HEADLINE[kind])
        if not isinstance(v, (int, float)) or math.isnan(v):
            continue
        d = _defense(c)
        slot = series.setdefault((c.dataset, d, kind), {}).setdefault(_attack(c), (adaptive(c), {}))
        slot[1][c.seed] = float(v)
        if isinstance(c.utility.get("test_acc"), float):
            acc.setdefault((c.dataset, d), {})[c.seed] = c.utility["test_acc"]
    lines = []
    for dataset in sorted({k[0] for k in series}):
        seeds = sorted({c.seed for c in ok if c.dataset == dataset})
        lines.append(f"\n## {dataset}  (seeds {', '.join(map(str, seeds))}; headline: inversion/hijack SSIM, "
                     f"label accuracy; Δ = adaptive − oblivious, paired, mean ± 95% CI half-width; * = CI excludes 0)\n")
        lines.append(f"{'defense':<40} {'test_acc':>8} {'kind':<9} {'oblivious (best)':<40} {'value':>6} "
                     f"{'adaptive (best)':<46} {'value':>6} {'Δ':<24} {'undefended: obl / adapt':<24}")
        for (ds, d, kind), attacks in sorted(series.items(), key=lambda kv: (kv[0][1] != "none", kv[0][1], kv[0][2])):
            if ds != dataset:
                continue
            obl = {a: s for a, (is_ad, s) in attacks.items() if not is_ad}
            ada = {a: s for a, (is_ad, s) in attacks.items() if is_ad}
            best_o = max(obl, key=lambda a: _mean(obl[a]), default=None)
            best_a = max(ada, key=lambda a: _mean(ada[a]), default=None)
            if d == "none" or best_a is None:
                continue
            ref = series.get((dataset, "none", kind), {})
            ref_o = _mean(ref[best_o][1]) if best_o in ref else None
            ref_a = _mean(ref[best_a][1]) if best_a in ref else None
            a_acc = _mean(acc.get((dataset, d), {}))
            lines.append(f"{d[:40]:<40} {_fmt(a_acc):>8} {kind:<9} {(best_o or '-')[:40]:<40} "
                         f"{_fmt(_mean(obl[best_o]) if best_o else None):>6} {best_a[:46]:<46} {_fmt(_mean(ada[best_a])):>6} "
                         f"{(_delta(ada[best_a], obl[best_o]) if best_o else ''):<24} {_fmt(ref_o)} / {_fmt(ref_a)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-e", "--experiment", default=str(ROOT / "experiments" / "adaptive.toml"))
    ap.add_argument("--out", default="results/adaptive", help="run folder (a rerun resumes)")
    ap.add_argument("--seeds", nargs="+", type=int, help="override the experiment's seeds")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--data-dir", help="where the dataset files are (default: the matrix's search path)")
    ap.add_argument("--table", help="also write the table to this file")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    flags = ["-e", args.experiment, "--out", args.out, "--workers", str(args.workers), "-q"]
    if args.seeds:
        flags += ["--seeds", *map(str, args.seeds)]
    if args.data_dir:
        flags += ["--data-dir", args.data_dir]
    rc = matrix_main(flags)
    cells = read_cells(Path(args.out))
    text = (f"# Oblivious vs adaptive attacks ({Path(args.experiment).name}; "
            f"`python benchmarks/adaptive.py {' '.join(argv if argv is not None else sys.argv[1:])}`)\n"
            f"# matrix exit {rc}; {len(cells)} cells; this invocation {time.perf_counter() - t0:.0f} s\n"
            + table(cells) + "\n")
    print(text)
    if args.table:
        Path(args.table).parent.mkdir(parents=True, exist_ok=True)
        Path(args.table).write_text(text)
    return rc


if __name__ == "__main__":
    sys.exit(main())
