"""Label defenses against every label attack: leakage vs test accuracy, per defense, stack and strength,
on Fashion-MNIST (10 classes) and its binary task, with paired 95% CIs over seeds.

Runs an experiment (default experiments/sweep-label-defenses.toml) through `python -m arena.matrix`, so
the cells land in OUT/cells.jsonl, a rerun resumes, and `python -m arena.report OUT` draws the full
report; then prints, per dataset, one row per (defense, strength): test accuracy and its paired
difference from `none`, the privacy figure where the defense has one (with its scope), and per label
attack its leakage and the paired difference from `none` (mean ± the 95% CI half-width over the seeds both ran).

Leakage: label accuracy (chance: the majority class of the scored targets) for every attack; on a binary
task leak AUC too (chance 0.5), the metric Li et al. report. A difference whose CI excludes 0 is marked *.

    ARENA_DATA=/path/to/data python benchmarks/label_defenses.py --out results/label-defenses \\
        --table results/reference/label_defenses.txt                  # 3 seeds, 2 cores: see the table's header
    python benchmarks/label_defenses.py --seeds 0 --out /tmp/ld         # one seed, no CIs
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

from arena.matrix import main as matrix_main  # noqa: E402
from arena.report.statistics import paired_difference  # noqa: E402
from arena.report.tables import params_text  # noqa: E402
from arena.run.store import read_cells  # noqa: E402

EPSILON_KEYS = ("epsilon_labels", "epsilon_activations", "epsilon_weights")


def _fmt(x: float | None, nd: int = 3) -> str:
    return "-" if x is None or not isinstance(x, (int, float)) or math.isnan(x) else f"{x:.{nd}f}"


def _delta(mine: dict[int, float], ref: dict[int, float]) -> str:
    p = paired_difference(mine, ref)
    if p.n == 0:
        return ""
    if p.n < 2 or not math.isfinite(p.ci):
        return f"{p.mean:+.3f}"
    return f"{p.mean:+.3f} ±{p.ci:.3f}{'*' if p.distinguishable else ''}"


def _attack(c) -> str:
    """An attack setting's name: its parameters where it has any (cosine-label(sign=abs))."""
    return c.attack + params_text(json.dumps(c.attack_params, sort_keys=True) if c.attack_params else "")


def _params(c) -> str:
    return json.dumps(c.defense_params, sort_keys=True) if c.defense_params else ""


def _epsilon(cost: dict) -> str:
    for k in EPSILON_KEYS:
        v = cost.get(k)
        if isinstance(v, (int, float)):
            return f"{k.removeprefix('epsilon_')} ε={v:.3g}"
    for k, v in cost.items():  # a stack keeps its members' figures under their names
        if k.split(".")[-1] in EPSILON_KEYS and isinstance(v, (int, float)):
            return f"{k} ε={v:.3g}"
    return ""


def table(cells) -> str:
    ok = [c for c in cells if c.status == "ok"]
    lines = []
    for dataset in sorted({c.dataset for c in ok}):
        mine = [c for c in ok if c.dataset == dataset]
        binary = any(c.metrics.get("n_positive") is not None for c in mine) or dataset.endswith("binary")
        attacks = sorted({_attack(c) for c in mine})
        metrics = ["label_acc"] + (["leak_auc"] if binary else [])
        rows: dict[tuple[str, str], dict] = {}
        for c in mine:
            r = rows.setdefault((c.defense, _params(c)), {"acc": {}, "auc": {}, "eps": "", "m": {}})
            r["acc"][c.seed] = c.utility.get("test_acc")
            if isinstance(c.utility.get("test_auc"), float):  # binary tasks: accuracy hides the cost
                r["auc"][c.seed] = c.utility["test_auc"]
            r["eps"] = r["eps"] or _epsilon(c.cost)
            for m in metrics:
                v = c.metrics.get(m)
                if isinstance(v, (int, float)):
                    r["m"].setdefault((_attack(c), m), {})[c.seed] = v
        none = rows.get(("none", ""), {"acc": {}, "auc": {}, "m": {}})
        seeds = sorted({c.seed for c in mine})
        lines.append(f"\n## {dataset}  (seeds {', '.join(map(str, seeds))}; Δ = defense − none, paired, "
                     f"mean ± 95% CI half-width; * = CI excludes 0)\n")
        chance = {a: [c.metrics.get("label_chance") for c in mine if _attack(c) == a and c.defense == "none"]
                  for a in attacks}
        lines.append("chance (label_acc, undefended): " + ", ".join(
            f"{a} {_fmt(sum(v) / len(v))}" for a, v in chance.items() if v and all(isinstance(x, float) for x in v)))
        for m in metrics:
            head = f"{'defense':<22} {'params':<44} {'test_acc':>8} {'Δ test_acc':<28} " + (
                f"{'test_auc':>8} {'Δ test_auc':<28} " if binary else "") + f"{'privacy':<22}"
            lines.append(f"\n### {m}\n")
            lines.append(head + "".join(f" {a + ' ' + m:>14} {'Δ':<27}" for a in attacks))
            for (d, p), r in sorted(rows.items(), key=lambda kv: (kv[0][0] != "none", kv[0])):
                acc = [v for v in r["acc"].values() if isinstance(v, float)]
                s = (f"{d:<22} {p[:44]:<44} {_fmt(sum(acc) / len(acc)) if acc else '-':>8} "
                     f"{_delta(r['acc'], none['acc']) if d != 'none' else '':<28} ")
                if binary:
                    auc = list(r["auc"].values())
                    s += (f"{_fmt(sum(auc) / len(auc)) if auc else '-':>8} "
                          f"{_delta(r['auc'], none['auc']) if d != 'none' else '':<28} ")
                s += f"{r['eps'][:22]:<22}"
                for a in attacks:
                    v = r["m"].get((a, m), {})
                    s += f" {_fmt(sum(v.values()) / len(v)) if v else '-':>14} " \
                         f"{(_delta(v, none['m'].get((a, m), {})) if d != 'none' and v else ''):<27}"
                lines.append(s.rstrip())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-e", "--experiment", default=str(ROOT / "experiments" / "sweep-label-defenses.toml"))
    ap.add_argument("--out", default="results/label-defenses", help="run folder (a rerun resumes)")
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
    text = (f"# Label defenses vs label attacks ({Path(args.experiment).name}; "
            f"`python benchmarks/label_defenses.py {' '.join(argv if argv is not None else sys.argv[1:])}`)\n"
            f"# matrix exit {rc}; {len(cells)} cells; this invocation {time.perf_counter() - t0:.0f} s\n"
            + table(cells) + "\n")
    print(text)
    if args.table:
        Path(args.table).parent.mkdir(parents=True, exist_ok=True)
        Path(args.table).write_text(text)
    return rc


if __name__ == "__main__":
    sys.exit(main())
