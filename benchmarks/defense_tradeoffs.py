"""Defense trade-off curves: per defense and strength, leakage against the UnSplit attacks, test
accuracy and cost (ε, client seconds, bytes per sample).

Runs experiments/defense_sweep.toml through `python -m arena.matrix` (so the cells land in
OUT/cells.jsonl, a rerun resumes, and `python -m arena.report OUT` rebuilds the matrix table),
then prints one row per (defense, strength). The `none` row is every defense's strength zero.
A `mean-image` column (a constant grey image: what an attacker gets from knowing nothing) is the
chance line of the inversion metrics; label attacks come with their own chance (label_chance in
the cells).

    python benchmarks/defense_tradeoffs.py --data-dir /path/to/data          # Fashion-MNIST, ~15 min
    python benchmarks/defense_tradeoffs.py --quick                           # digits smoke run, ~1 min

Attacks missing from the registry are replaced (and the output says so): unsplit -> mean-image,
unsplit-label -> norm-label (Li et al.'s cut-gradient attack).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import math
import sys
import time
import warnings
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from arena.attacks import ATTACKS  # noqa: E402
from arena.run.config import load_experiment  # noqa: E402
from arena.matrix import main as matrix_main  # noqa: E402
from arena.run.runner import plan  # noqa: E402
from arena.run.store import read_cells  # noqa: E402

FALLBACK = {"unsplit": "mean-image", "unsplit-label": "norm-label"}
STRENGTH = {"noise": "scale", "dp-sgd": "noise_multiplier", "batching": "b", "nopeek": "alpha",
            "deeper-split": "k"}
LEAK = ["mse", "ssim", "psnr", "clone_acc", "label_acc", "leak_auc"]
METRICS = {"mean-image": ["mse", "ssim"], "unsplit": ["mse", "ssim", "clone_acc"]}
# quick mode: the smallest attack budgets (applied only where the attack takes that parameter)
QUICK_ATTACK = {"rounds": 2, "steps": 10, "input_steps": 10, "model_steps": 10, "iterations": 20,
                "targets": 4, "n_targets": 4, "max_targets": 4}


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {v!r} as TOML")


def dump_toml(raw: dict) -> str:
    """The subset of TOML an experiment uses: two tables and two arrays of tables."""
    out = []
    for table in ("experiment", "train"):
        if table in raw:
            out.append(f"[{table}]")
            out += [f"{k} = {_toml_value(v)}" for k, v in raw[table].items()]
            out.append("")
    for arr in ("attacks", "defenses"):
        for item in raw.get(arr, []):
            out.append(f"[[{arr}]]")
            out += [f"{k} = {_toml_value(v)}" for k, v in item.items()]
            out.append("")
    return "\n".join(out)


def _accepts(attack: str, key: str) -> bool:
    import inspect

    return key in inspect.signature(ATTACKS.get(attack).__init__).parameters


def resolve(raw: dict, quick: bool, notes: list[str]) -> dict:
    """The experiment actually run: fallbacks for missing attacks, the chance line, quick settings."""
    attacks = []
    for a in raw.get("attacks", []):
        name = a["name"]
        if name not in ATTACKS.names():
            alt = FALLBACK.get(name)
            if alt is None or alt not in ATTACKS.names():
                notes.append(f"attack {name!r} is not registered and has no fallback: left out")
                continue
            notes.append(f"attack {name!r} is not registered: ran {alt!r} in its place")
            a = {k: v for k, v in a.items() if k not in ("params", "grid")} | {"name": alt}
        attacks.append(dict(a))
    if not any(a["name"] == "mean-image" for a in attacks):
        setup = next((a["setup"] for a in attacks if "setup" in a), None)
        attacks.append({"name": "mean-image"} | ({"setup": setup} if setup else {}))
    raw = dict(raw) | {"attacks": attacks}
    if quick:
        raw["experiment"] = dict(raw["experiment"]) | {"datasets": ["digits"], "n_train": 300, "n_test": 100,
                                                       "n_aux": 100}
        raw["train"] = dict(raw.get("train", {})) | {"max_steps": 4}
        for a in attacks:
            quick_params = {k: v for k, v in QUICK_ATTACK.items() if _accepts(a["name"], k)}
            if quick_params:
                a["params"] = dict(a.get("params", {})) | quick_params
        defenses = []
        for d in raw["defenses"]:
            d = dict(d)
            if "grid" in d:  # the weakest and the strongest point of each curve
                d["grid"] = {k: [v[0], v[-1]] if len(v) > 1 else v for k, v in d["grid"].items()}
            defenses.append(d)
        raw["defenses"] = defenses
    return raw


def _fmt(v, nd=3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    if isinstance(v, float):
        return f"{v:.{nd}g}" if abs(v) >= 1e4 or (v != 0 and abs(v) < 1e-3) else f"{v:.{nd}f}"
    return str(v)


def _mean(vals):
    vals = [v for v in vals if isinstance(v, (int, float))]
    return sum(vals) / len(vals) if vals else None


def _spread(vals) -> str:
    """Mean over seeds, with ± half the range when there are several."""
    vals = [v for v in vals if isinstance(v, (int, float)) and math.isfinite(v)]
    if not vals:
        return "-"
    m = sum(vals) / len(vals)
    return _fmt(m) + (f"±{(max(vals) - min(vals)) / 2:.3f}" if len(vals) > 1 else "")


def _int(v):
    return None if v is None else int(round(v))


def table(cells, exp) -> str:
    """One row per (defense, strength); per attack its leakage metrics; utility and cost."""
    attacks = list(dict.fromkeys((e.name, tuple(sorted(e.kwargs.items()))) for e in exp.attacks))
    names = [n for n, _ in attacks]

    def label(a) -> str:  # the name, plus the parameters that tell apart entries of the same attack
        if names.count(a[0]) == 1:
            return a[0]
        others = [dict(p) for n, p in attacks if n == a[0] and p != a[1]]
        diff = {k: v for k, v in a[1] if any(o.get(k) != v for o in others)}
        return a[0] + "[" + ",".join(f"{k}={v}" for k, v in diff.items()) + "]"

    def of(c, a) -> bool:
        return c.attack == a[0] and tuple(sorted(c.attack_params.items())) == a[1] and c.status == "ok"
    order = {(e.name, tuple(sorted(e.kwargs.items()))): i for i, e in enumerate(exp.defenses)}
    rows: dict[tuple, list] = {}
    for c in cells:
        rows.setdefault((c.defense, tuple(sorted(c.defense_params.items()))), []).append(c)
    metric_cols = []
    for a in attacks:
        have = {m for c in cells if of(c, a) for m in c.metrics}
        metric_cols += [(a, m) for m in METRICS.get(a[0], LEAK) if m in have]
    header = ["defense", "strength"] + [f"{label(a)}:{m}" for a, m in metric_cols] + \
             ["test_acc", "eps_activations", "eps_weights", "client_s", "bytes/sample", "status"]
    lines = [header]
    for key in sorted(rows, key=lambda k: order.get(k, 1e9)):
        name, params = key
        cs = rows[key]
        p = dict(params)
        strength = _fmt(p.get(STRENGTH.get(name, ""), 0 if name == "none" else None))
        vals = [_spread([c.metrics.get(m) for c in cs if of(c, a)])
                for a, m in metric_cols]
        ok = [c for c in cs if c.status == "ok"]
        eps = []  # two guarantees, two columns: never one ε column mixing them
        for key in ("epsilon_activations", "epsilon_weights"):
            eps_vals = [c.cost.get(key, "absent") for c in cs]
            eps.append("-" if all(e == "absent" for e in eps_vals) else (
                "inf" if any(e is None for e in eps_vals) else _fmt(_mean(eps_vals), 3)))
        status = ",".join(sorted({c.status for c in cs}))
        lines.append([name, strength] + vals + [
            _spread([c.utility.get("test_acc") for c in ok]), *eps,
            _fmt(_mean([c.cost.get("client_s") for c in ok]), 2),
            _fmt(_int(_mean([c.cost.get("bytes_per_sample") for c in ok]))), status])
    widths = [max(len(str(r[i])) for r in lines) for i in range(len(header))]
    text = "\n".join("  ".join(str(v).rjust(w) if i > 1 else str(v).ljust(w)
                               for i, (v, w) in enumerate(zip(r, widths))) for r in lines)
    problems = [f"- {c.attack} vs {c.defense}{c.defense_params}: {c.status}: "
                f"{(c.error or c.reason or '').splitlines()[0]}" for c in cells if c.status != "ok"]
    return text + ("\n" + "\n".join(dict.fromkeys(problems)) if problems else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiment", "-e", default=str(ROOT / "experiments" / "defense_sweep.toml"),
                    help="the sweep's TOML (default: experiments/defense_sweep.toml)")
    ap.add_argument("--out", type=Path, help="run folder (default: results/defense_sweep[-quick])")
    ap.add_argument("--data-dir", help="dataset folder (else $ARENA_DATA, the cache, system locations)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: digits, 300 samples, 4 steps, two strengths per defense, tiny attack budgets")
    ap.add_argument("--verbose", "-v", action="store_true", help="show the matrix's progress and table")
    a = ap.parse_args(argv)
    # Opacus's notes on RDP orders and on full backward hooks at the input layer: expected here
    warnings.filterwarnings("ignore", message="Optimal order is the")
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    raw = tomllib.loads(Path(a.experiment).read_text())
    notes: list[str] = []
    raw = resolve(raw, a.quick, notes)
    out = a.out or ROOT / "results" / ("defense_sweep-quick" if a.quick else "defense_sweep")
    out.mkdir(parents=True, exist_ok=True)
    spec = out / "sweep.toml"
    spec.write_text(dump_toml(raw))
    exp = load_experiment(spec)
    keys = {s.key for s in plan(exp)}
    argv_m = ["-e", str(spec), "--out", str(out)] + (["--data-dir", a.data_dir] if a.data_dir else [])
    t0 = time.perf_counter()
    if a.verbose:
        rc = matrix_main(argv_m)
    else:  # the matrix's own table is in OUT/summary.csv; print only ours
        with contextlib.redirect_stdout(io.StringIO()):
            rc = matrix_main(argv_m + ["-q"])
    if rc != 0:
        return rc
    wall = time.perf_counter() - t0
    cells = [c for c in read_cells(out) if c.key in keys]
    e, t = exp, exp.train
    used = ", ".join(f"{x.name}@{x.setup or 'default'}" for x in e.attacks)
    print(f"defense trade-offs: {', '.join(e.datasets)}, depth {', '.join(map(str, e.depths))}, "
          f"seeds {list(e.seeds)}, n_train {e.n_train}, n_test {e.n_test}, {t.epochs:g} epoch(s) of batch "
          f"{t.batch_size}{f' (max {t.max_steps} steps)' if t.max_steps else ''}; "
          f"attacks: {used}")
    for n in notes:
        print("note:", n)
    print(table(cells, exp))
    print("values: mean over seeds ± half their range. Rows whose training equals `none` (batching, any "
          "strength) show how much the attack itself varies from seed to seed.")
    print(f"\n{len(cells)} cells, {wall:.0f} s this run (finished cells are reused); cells: {out / 'cells.jsonl'}")
    print("eps_activations (noise): one example's activations, every release composed, client network given, "
          "replace-one (Opacus RDP, sample rate 1). eps_weights (dp-sgd): the client's front weights only, "
          "add/remove-one with Poisson sampling (Opacus RDP, sample rate B/n). Different guarantees: do not "
          "compare the columns. '-' = no such claim; inf = no finite guarantee.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
