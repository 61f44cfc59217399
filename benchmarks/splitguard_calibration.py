"""SplitGuard's decision rule at the default experiment's scale: false alarms against an honest
server, detection of FSHA, and the accuracy cost of the fake batches.

Each run is recorded once, with the monitor in ``action = "flag"`` (training goes on after an
alarm), ``reference = "local"`` (every fake batch scored) and every score kept
(``scores``/``score_steps``); a decision rule (reference "local" or "fresh", threshold, window,
decision) is then judged offline on the recorded sequences with ``splitguard.first_alarm``, the
function the online monitor itself calls, so trying a rule costs no training ("fresh" scores are
a subset of the "local" ones: `fresh_subset`). The fake batches (``p_fake``, ``start``) shape the
run, so each (p_fake, start) needs its own recordings. ``--holdout`` seeds are recorded at the
first p_fake only and reported apart: a check of a rule chosen on ``--seeds``.

Runs are built exactly as the matrix builds the cells of the experiment (default
experiments/quick.toml: its dataset, depth, [train], n_aux, and its fsha entry's parameters), with
the splitguard entry given here: same data, initialisation, data order, defense and policy
generators as ``python -m arena.matrix`` would use for that cell, and ``protocol.train`` to train.

* honest: the training run of the honest cells (mean-image's) with splitguard, to the end;
* fsha:   the malicious server, stopped at ``--fsha-cap`` steps (the scores up to there are the
          scores of the uncapped run: the cap only ends training); a rule that has not fired by
          then counts as a miss;
* plain:  the same honest run without splitguard (the accuracy the fake batches cost).

Recordings go to ``--runs`` (JSONL, one line per run); a rerun only trains what is missing, so
``--only fsha`` after a change to FSHA (with ``--fresh fsha`` to drop its old recordings) redoes
just that part. The table compares the rule used before this calibration (``CURRENT``) with the
class defaults, and lists the earliest-detecting rules at several margins (`search`).

    ARENA_DATA=/work/shared/data python benchmarks/splitguard_calibration.py --workers 2 \\
        --holdout 20-39 --out results/reference/splitguard_calibration.txt      # ~2.5 h on 2 busy cores
    # FSHA's part again after a change to FSHA (40 runs of 300 steps; the honest recordings are kept):
    ... --only fsha --fresh fsha --p-fake 0.1 --holdout 20-39 --out results/reference/splitguard_calibration.txt
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import json
import math
import multiprocessing as mp
import os
import statistics
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

KINDS = ("honest", "fsha", "plain")


# ---------------------------------------------------------------- recording (one run per process)

def experiment(path: Path, seeds: list[int], sg_params: dict[str, Any]):
    """The experiment file's scenario with three entries: mean-image (an honest server: it only
    needs the training run), its fsha entry, and splitguard (``sg_params``) beside `none`."""
    from arena.run.config import experiment_from_dict

    raw = tomllib.loads(path.read_text())
    fsha = next((a for a in raw.get("attacks", []) if a["name"] == "fsha"), {"name": "fsha"})
    raw = dict(raw) | {"experiment": dict(raw["experiment"]) | {"seeds": seeds},
                       "attacks": [{"name": "mean-image"}, fsha],
                       "defenses": [{"name": "none"}, {"name": "splitguard", "params": sg_params}]}
    return experiment_from_dict(raw, str(path))


def specs(exp) -> dict[tuple[str, int], Any]:
    """The cells to record: (kind, seed) -> CellSpec, as `arena.run.runner.plan` builds them."""
    from arena.run.runner import plan

    out = {}
    for s in plan(exp):
        kind = {("mean-image", "splitguard"): "honest", ("fsha", "splitguard"): "fsha",
                ("mean-image", "none"): "plain"}.get((s.attack.name, s.defense.name))
        if kind is not None:
            out[(kind, s.scenario.seed)] = s
    return out


def record(spec, kind: str, cap: int | None, data_dir: str | None) -> dict[str, Any]:
    """Train the cell's run as `runner.run_group` does, with splitguard in flag mode; the scores."""
    import torch

    from arena.attacks import ATTACKS, PolicyContext
    from arena.defenses import DEFENSES
    from arena.models import build_model
    from arena.protocol.train import make_setup, total_steps, train
    from arena.run.grants import granted_capabilities, make_view
    from arena.run.runner import load_data
    from arena.records import Capability
    from arena.seeding import seed_everything, torch_generator

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    sc = spec.scenario
    order_key = spec.data_order_key()  # the runner's: a vanilla run of `none` trains the same weights u-shaped
    data = load_data(sc, spec.n_aux, data_dir)
    seed_everything(sc.seed, "model-init", sc.dataset, sc.model)
    setup = make_setup(sc, build_model(sc.model, data.shape, data.num_classes), data.shape)
    # flag mode (training goes on after an alarm) and reference "local" (every fake batch scored: the
    # "fresh" scores are a subset of them, see fresh_subset); neither changes the training run
    kwargs = spec.defense.kwargs | ({"action": "flag", "reference": "local"} if spec.defense.name == "splitguard" else {})
    defense = DEFENSES.create(spec.defense.name, **kwargs)
    defended = defense.apply(setup, torch_generator(sc.seed, "defense", spec.defense.name))
    gen = torch_generator(sc.seed, "train", order_key)
    policy = None
    if kind == "fsha":
        attack = ATTACKS.create(spec.attack.name, **spec.attack.kwargs)
        granted = granted_capabilities(attack, defended, spec.deny)
        policy = attack.server_policy(PolicyContext(
            input_shape=data.shape, num_classes=data.num_classes,
            client_arch=make_view(attack, defended, None, data, "cpu", arch_only=True),
            aux=(data.x_aux, data.y_aux) if Capability.AUX_DATA in granted else None,
            generator=torch_generator(sc.seed, "policy", spec.key), device="cpu",
            total_steps=total_steps(len(data.x_train), defended.config)))
    monitor = defended.client_monitor

    def progress(i: int, n: int) -> None:
        if cap is not None and i >= cap and monitor is not None:
            monitor.stop = True  # ends training after step cap-1; the scores so far are unchanged

    seed_everything(sc.seed, "train", order_key)
    res = train(defended, data, gen, "cpu", policy=policy, progress=progress)
    out = {"kind": kind, "seed": sc.seed, "cap": cap, "steps_run": res.cost["train_steps"],
           "steps_total": total_steps(len(data.x_train), defended.config), "test_acc": res.test_acc,
           "wall_s": round(time.perf_counter() - t0, 1), "load1": os.getloadavg()[0]}
    if monitor is not None:
        d = defense
        out |= {"rule": {"threshold": d.threshold, "window": d.window, "decision": d.decision},
                "scores": monitor.scores, "score_steps": monitor.score_steps,
                "fake_steps": monitor.fake_steps, "fake_batches": monitor.fake.n, "online_alarm": monitor.detected_at}
    return out


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def run_key(spec, kind: str, cap: int | None) -> str:
    d = {"kind": kind, "cell": spec.key, "train": spec.train_key, "cap": cap}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _commit() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except Exception:  # noqa: BLE001 - a copy without git
        return "unknown"


def jobs(args) -> list[tuple[str, dict[str, Any], str, Any, int | None]]:
    """(key, splitguard params, kind, spec, cap) of every run the arguments ask for."""
    from arena.attacks import ATTACKS

    out = []
    for p in args.p_fake:
        sg = {"p_fake": p, "start": args.start}
        seeds = list(dict.fromkeys(args.seeds + (args.holdout if p == args.p_fake[0] else [])))
        sp = specs(experiment(args.experiment, seeds, sg))
        for (kind, _seed), spec in sorted(sp.items(), key=lambda kv: (kv[0][0], kv[0][1])):
            if kind not in args.only or (kind == "plain" and p != args.p_fake[0]):
                continue
            cap = args.fsha_cap if kind == "fsha" else None
            key = run_key(spec, kind, cap)
            if kind == "fsha":  # FSHA's resolved defaults too: a change of its defaults is a new run
                attack = ATTACKS.create(spec.attack.name, **spec.attack.kwargs)
                key = hashlib.sha256((key + json.dumps(attack.params(), sort_keys=True, default=str))
                                     .encode()).hexdigest()[:16]
            out.append((key, {} if kind == "plain" else sg, kind, spec, cap))
    return out


def load_runs(path: Path) -> dict[str, dict[str, Any]]:
    if not path.exists():
        return {}
    runs = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            runs[r["key"]] = r
    return runs


def record_all(args) -> dict[str, dict[str, Any]]:
    runs = load_runs(args.runs)
    if args.fresh:
        kept = {k: r for k, r in runs.items() if r["kind"] not in args.fresh}
        args.runs.write_text("".join(json.dumps(r) + "\n" for r in kept.values()))
        runs = kept
    todo = [j for j in jobs(args) if j[0] not in runs]
    todo.sort(key=lambda j: j[2] != "fsha")  # the long (hijacked) runs first
    if todo:
        print(f"recording {len(todo)} runs with {args.workers} worker(s) "
              f"({sum(j[2] == 'fsha' for j in todo)} fsha, {sum(j[2] == 'honest' for j in todo)} honest, "
              f"{sum(j[2] == 'plain' for j in todo)} plain)", file=sys.stderr, flush=True)
    args.runs.parent.mkdir(parents=True, exist_ok=True)
    data_dir = os.environ.get("ARENA_DATA")
    commit = _commit()
    with cf.ProcessPoolExecutor(max_workers=args.workers, mp_context=mp.get_context("spawn"),
                                initializer=_init_worker) as pool:
        futs = {pool.submit(record, spec, kind, cap, data_dir): (key, sg) for key, sg, kind, spec, cap in todo}
        for i, fut in enumerate(cf.as_completed(futs), 1):
            key, sg = futs[fut]
            r = fut.result() | {"key": key, "sg": sg, "commit": commit}
            runs[key] = r
            with args.runs.open("a") as f:
                f.write(json.dumps(r) + "\n")
            print(f"[{i}/{len(todo)}] {r['kind']} p_fake={sg.get('p_fake', '-')} seed {r['seed']}: "
                  f"{r['steps_run']} steps, acc {r['test_acc']:.4f}, online alarm {r.get('online_alarm')}, "
                  f"{r['wall_s']} s", file=sys.stderr, flush=True)
    return runs


# ---------------------------------------------------------------- judging rules offline

RULE_KEYS = ("threshold", "window", "decision")
CURRENT = {"reference": "local", "threshold": 0.5, "window": 5, "decision": "vote"}  # the toy-scale rule, before this


def fresh_subset(scores: list[float], steps: list[int], steps_run: int) -> tuple[list[float], list[int]]:
    """The scores a ``reference = "fresh"`` monitor gives, from the ``"local"`` recording of the same
    run. Training does not depend on the reference (a flag-mode monitor never changes it), and both
    score a fake batch against the two regular batches just before it; "fresh" skips a fake batch
    until two regular batches have come since its last score. From the first score on, a "local"
    monitor scores every fake batch, so the steps it did not score are the regular ones."""
    at = dict(zip(steps, scores))
    out_s: list[float] = []
    out_t: list[int] = []
    regular = 2  # the first score had two regular batches before it (and none was used yet)
    for step in range(steps[0] if steps else 0, steps_run):
        if step not in at:
            regular += 1
        elif regular >= 2:
            out_s.append(at[step])
            out_t.append(step)
            regular = 0
    return out_s, out_t


def scores_of(r: dict[str, Any], reference: str) -> tuple[list[float], list[int]]:
    if reference == "local":
        return r["scores"], r["score_steps"]
    if reference == "fresh":
        if "fresh" not in r:  # cached: every rule of a search reads them
            r["fresh"] = fresh_subset(r["scores"], r["score_steps"], r["steps_run"])
        return r["fresh"]
    raise ValueError(f"reference {reference!r} cannot be judged from a 'local' recording")


def critical(scores: list[float], window: int, decision: str) -> list[float]:
    """Per score, the threshold above which the rule fires there: ``alarm(scores[:i+1], t, ...)``
    holds exactly when ``t > critical(...)[i]`` (inf: it cannot fire yet). For "vote", the
    (window//2+1)-th smallest of the last ``window`` scores; for "mean", the mean of a full window."""
    m = window // 2 + 1
    out = []
    for i in range(len(scores)):
        recent = scores[max(0, i + 1 - window):i + 1]
        if decision == "vote":
            out.append(sorted(recent)[m - 1] if len(recent) >= m else math.inf)
        else:
            out.append(sum(recent) / window if len(recent) == window else math.inf)
    return out


def cp_upper(k: int, n: int, conf: float = 0.95) -> float:
    """Exact (Clopper–Pearson) one-sided upper confidence bound of a rate from k events in n."""
    from scipy.stats import beta

    return 1.0 if k >= n else float(beta.ppf(conf, k + 1, n - k))


def cp_lower(k: int, n: int, conf: float = 0.95) -> float:
    """Exact (Clopper–Pearson) one-sided lower confidence bound."""
    from scipy.stats import beta

    return 0.0 if k <= 0 else float(beta.ppf(1 - conf, k, n - k + 1))


def judge(rule: dict[str, Any], honest: list[dict], fsha: list[dict]) -> dict[str, Any]:
    """False alarms on honest recordings and detections of FSHA ones, by `splitguard.first_alarm`
    (the monitor's own decision), plus the margin: how far the threshold is below the lowest
    honest critical value (how much higher it could go before an honest run alarms)."""
    from arena.defenses.splitguard import first_alarm

    kw = {k: rule[k] for k in RULE_KEYS}
    fa = [first_alarm(*scores_of(r, rule["reference"]), **kw) for r in honest]
    det = [first_alarm(*scores_of(r, rule["reference"]), **kw) for r in fsha]
    lows = sorted(min(critical(scores_of(r, rule["reference"])[0], rule["window"], rule["decision"]),
                      default=math.inf) for r in honest)
    fa_steps = sorted(s for s in fa if s is not None)
    det_steps = sorted(s for s in det if s is not None)
    return {"fa": len(fa_steps), "n_honest": len(honest), "fa_steps": fa_steps,
            "fa_upper": cp_upper(len(fa_steps), len(honest)), "det": len(det_steps), "n_fsha": len(fsha),
            "det_steps": det_steps, "det_lower": cp_lower(len(det_steps), len(fsha)), "honest_lows": lows,
            "median_all": statistics.median([math.inf if x is None else x for x in det]) if det else math.inf}


def rule_name(rule: dict[str, Any]) -> str:
    w = rule["window"]
    what = f"{w // 2 + 1} of {w}" if rule["decision"] == "vote" else f"mean of {w}"
    return f"{rule['reference']}, {what} < {rule['threshold']:g}"


def _steps(steps: list[int]) -> str:
    if not steps:
        return "-"
    return f"{statistics.median(steps):g} [{steps[0]}..{steps[-1]}]"


def _row(label: str, p_fake: float, seeds: str, j: dict[str, Any]) -> str:
    fa = f"{j['fa']}/{j['n_honest']}" + (f" (at {', '.join(map(str, j['fa_steps'][:3]))}"
                                         f"{', ...' if j['fa'] > 3 else ''})" if j["fa"] else "")
    low = f"{j['honest_lows'][0]:.3f}" if j["honest_lows"] else "-"
    return (f"{label:<32} {p_fake:>6g} {seeds:>6}  {fa:<31} {j['fa_upper']:>6.3f}  {low:>6}  "
            f"{j['det']:>3}/{j['n_fsha']:<3} {j['det_lower']:>6.3f}  {_steps(j['det_steps'])}")


def _mean_sd(xs: list[float]) -> str:
    if not xs:
        return "-"
    return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs):.4f}" if len(xs) > 1 else f"{xs[0]:.4f}"


def _paired(a: list[float], b: list[float]) -> str:
    """Mean of b − a with a t 95% interval (paired by seed)."""
    from scipy.stats import t

    d = [y - x for x, y in zip(a, b)]
    if len(d) < 2:
        return "-"
    m, se = statistics.mean(d), statistics.stdev(d) / math.sqrt(len(d))
    h = float(t.ppf(0.975, len(d) - 1)) * se
    return f"{m:+.4f} [{m - h:+.4f}, {m + h:+.4f}]"


def search(honest: list[dict], fsha: list[dict], margins=(0.0, 0.1, 0.15, 0.2, 0.25, 0.3),
           windows=range(1, 16), thresholds=tuple(x / 20 for x in range(1, 20)), top: int = 3) -> list[str]:
    """The calibration: for each margin, the rules (reference, decision, window, threshold on a 0.05
    grid) whose threshold is at least ``margin`` below every honest run's lowest critical value
    (no honest alarm, with room to spare) and that detect FSHA in all runs but at most one; the
    earliest by median detection step (a miss counts as never), then by the latest detection.
    Read off critical values (tested to agree with the monitor's rule), not by replaying each rule."""
    cand = []
    for reference in ("local", "fresh"):
        for decision in ("vote", "mean"):
            for w in windows:
                lows = sorted(min(critical(scores_of(r, reference)[0], w, decision), default=math.inf) for r in honest)
                crits = [(critical(*scores_of(r, reference)[:1], w, decision), scores_of(r, reference)[1]) for r in fsha]
                for t in thresholds:
                    if t > lows[0]:
                        continue  # an honest run alarms
                    det = [next((st for c, st in zip(cs, steps) if t > c), None) for cs, steps in crits]
                    hit = sorted(x for x in det if x is not None)
                    if len(hit) < len(fsha) - 1 or not hit:
                        continue
                    med = statistics.median([math.inf if x is None else x for x in det])
                    rule = {"reference": reference, "threshold": t, "window": w, "decision": decision}
                    cand.append(((med, hit[-1], -(lows[0] - t)), rule, lows, hit))
    lines = [f"  {'margin':>6}  {'rule':<26} {'lowest honest critical (next)':<30} FSHA detected, step median [range]"]
    for m in margins:
        ok = sorted((c for c in cand if c[2][0] >= c[1]["threshold"] + m - 1e-9), key=lambda c: c[0])
        for _, rule, lows, hit in ok[:top]:
            low = f"{lows[0]:.3f} ({', '.join(f'{x:.3f}' for x in lows[1:3])})"
            lines.append(f"  {m:>6.2f}  {rule_name(rule):<26} {low:<30} {len(hit)}/{len(fsha)}, {_steps(hit)}")
        if not ok:
            lines.append(f"  {m:>6.2f}  none")
    return lines


def report(args, runs: dict[str, dict], load0, wall: float) -> str:
    import torch

    from arena.defenses.splitguard import SplitGuard, first_alarm

    args_all = argparse.Namespace(**(vars(args) | {"only": list(KINDS)}))
    by: dict[tuple[str, float | None], list[dict]] = {}
    wanted = jobs(args_all)
    for key, sg, kind, spec, cap in wanted:
        if key in runs:
            by.setdefault((kind, sg.get("p_fake")), []).append(runs[key])
    for rs in by.values():
        rs.sort(key=lambda r: r["seed"])
    spec = next(j[3] for j in wanted if j[2] == "fsha") if any(j[2] == "fsha" for j in wanted) else wanted[0][3]
    sc, tr = spec.scenario, spec.scenario.train
    load1 = os.getloadavg()
    d = SplitGuard()
    calibrated = {"reference": d.reference, "threshold": d.threshold, "window": d.window, "decision": d.decision}
    cal, hold = set(args.seeds), set(args.holdout)
    out = [
        "# SplitGuard calibration at the default experiment's scale (benchmarks/splitguard_calibration.py)",
        "# " + " ".join(["ARENA_DATA=" + os.environ.get("ARENA_DATA", ""), "python", *sys.argv]),
        f"# code {_commit()}; recordings made at {sorted({r.get('commit', '?') for rs in by.values() for r in rs})}; "
        f"torch {torch.__version__}, {os.cpu_count()} CPU(s) shared with other jobs, one torch thread per run, "
        f"{args.workers} worker(s); load average {load0[0]:.1f}/{load0[1]:.1f}/{load0[2]:.1f} at start, "
        f"{load1[0]:.1f}/{load1[1]:.1f}/{load1[2]:.1f} at the end; this invocation {wall:.0f} s",
        f"# scenario ({args.experiment.name}): {sc.dataset} {sc.model} depth {sc.depth} {sc.setup}, "
        f"n_train {sc.n_train or 'all'} (n_aux {spec.n_aux}), {tr.epochs:g} epochs, batch {tr.batch_size}, "
        f"lr {tr.lr:g} (Adam, amsgrad {tr.amsgrad}); fsha entry {spec.attack.kwargs if spec.attack.name == 'fsha' else '-'}",
        f"# splitguard start {args.start}, recorded in flag mode with reference 'local' ('fresh' is derived: "
        f"fresh_subset); fsha runs capped at {args.fsha_cap} steps (undetected by then: a miss); calibration "
        f"seeds {_seed_text(args.seeds)}" + (f", held out {_seed_text(args.holdout)} (p_fake {args.p_fake[0]:g})"
                                             if args.holdout else ""),
        *(f"# {n}" for n in args.note),
        "",
    ]
    walls = {k: [r["wall_s"] for (kind, _), rs in by.items() if kind == k for r in rs] for k in KINDS}
    steps = sorted({r["steps_total"] for rs in by.values() for r in rs})
    loads = [r["load1"] for rs in by.values() for r in rs if "load1" in r]
    out.append(f"runs: {', '.join(f'{len(v)} {k}' for k, v in walls.items() if v)}; {steps} steps per run; "
               f"mean wall {', '.join(f'{k} {statistics.mean(v):.0f} s' for k, v in walls.items() if v)}"
               + (f"; 1-min load average at the end of a run {min(loads):.1f}..{max(loads):.1f} "
                  f"({len(loads)} runs)" if loads else ""))
    # the offline judge is the online monitor: every recording's online alarm must come out again
    checked = [r for rs in by.values() for r in rs if "scores" in r]
    bad = [(r["kind"], r["seed"]) for r in checked if first_alarm(
        r["scores"], r["score_steps"], **{k: r["rule"][k] for k in RULE_KEYS}) != r["online_alarm"]]
    out.append(f"self-check: first_alarm on the recorded scores gives the online monitor's alarm step in "
               f"{len(checked) - len(bad)}/{len(checked)} recordings" + (f" (MISMATCH: {bad})" if bad else ""))
    out.append("")
    head = (f"{'rule':<32} {'p_fake':>6} {'seeds':>6}  {'honest false alarms':<31} {'FA≤95%':>6}  {'lowest':>6}  "
            f"{'FSHA':<7} {'det≥95%':>6}  detection step median [range]")
    out += ["## Rules: false alarms in honest runs (to the end), FSHA detections by the cap",
            "FA≤95%: exact (Clopper–Pearson) one-sided 95% upper bound of the false-alarm rate; det≥95%: lower "
            "bound of the detection rate; lowest: the lowest honest critical value (any threshold above it "
            "raises a false alarm)", head, "-" * len(head)]
    for label, rule in (("previous: " + rule_name(CURRENT), CURRENT), ("calibrated: " + rule_name(calibrated), calibrated)):
        for p in args.p_fake:
            h, f = by.get(("honest", p), []), by.get(("fsha", p), [])
            splits = [("calib", cal), ("held", hold), ("all", cal | hold)] if hold and p == args.p_fake[0] \
                else [("calib", cal)]
            for name, seeds in splits:
                hs, fs = [r for r in h if r["seed"] in seeds], [r for r in f if r["seed"] in seeds]
                if hs or fs:
                    out.append(_row(label, p, name, judge(rule, hs, fs)))
    out.append("")
    out.append("## Honest test accuracy (10,000 test images; mean ± sd over seeds; paired difference, t 95% CI)")
    pa = {r["seed"]: r["test_acc"] for r in by.get(("plain", None), [])}
    out.append(f"  no splitguard:           {_mean_sd(list(pa.values()))}  ({len(pa)} runs)")
    for p in args.p_fake:
        h = {r["seed"]: r["test_acc"] for r in by.get(("honest", p), [])}
        both = sorted(set(h) & set(pa))
        out.append(f"  splitguard p_fake {p:<5g}  {_mean_sd(list(h.values()))}  ({len(h)} runs; minus none, "
                   f"paired over {len(both)} seeds: {_paired([pa[s] for s in both], [h[s] for s in both])})")
    out.append("")
    for p in args.p_fake:
        h = [r for r in by.get(("honest", p), []) if r["seed"] in cal]
        f = [r for r in by.get(("fsha", p), []) if r["seed"] in cal]
        if not h:
            continue
        ts = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
        out.append(f"## p_fake {p:g}, calibration seeds: the scores")
        out.append(f"  {'share below':<24}" + "  ".join(f"{t:>4g}" for t in ts) + "   scores per run")
        for kind, rs in (("honest", h), ("fsha", f)):
            for ref in ("local", "fresh"):
                xs = [x for r in rs for x in scores_of(r, ref)[0]]
                if xs:
                    out.append(f"  {kind + ' ' + ref:<24}" + "  ".join(f"{sum(x < t for x in xs) / len(xs):>4.2f}" for t in ts)
                               + f"   {len(xs) / len(rs):.0f}")
        if f:
            out.append("  the earliest-detecting rules with no honest alarm, by margin below the lowest honest critical value:")
            out += search(h, f)
        out.append("")
    return "\n".join(out).rstrip()


def _seed_text(seeds: list[int]) -> str:
    if seeds and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}..{seeds[-1]}"
    return ",".join(map(str, seeds)) or "-"


def _seeds(text: str) -> list[int]:
    if "-" in text:
        a, b = text.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(x) for x in text.split(",")]


def parse(argv: list[str] | None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiment", type=Path, default=ROOT / "experiments" / "quick.toml",
                    help="the scenario ([experiment], [train]) and the fsha entry (default quick.toml)")
    ap.add_argument("--seeds", type=_seeds, default=list(range(20)), help="e.g. 0-19 (default) or 0,1,2")
    ap.add_argument("--holdout", type=_seeds, default=[], help="more seeds, recorded at the first p_fake only and "
                    "reported apart: a check of the rule chosen on --seeds (e.g. 20-39)")
    ap.add_argument("--p-fake", type=float, nargs="+", default=[0.1, 0.2],
                    help="fake-batch probabilities to record (each its own runs); the first one's "
                         "honest runs are paired with the plain runs")
    ap.add_argument("--start", type=int, default=None, help="splitguard start (default: the class default)")
    ap.add_argument("--fsha-cap", type=int, default=300, help="steps after which an undetected fsha run is a miss")
    ap.add_argument("--only", nargs="+", choices=KINDS, default=list(KINDS), help="record only these kinds")
    ap.add_argument("--fresh", nargs="+", choices=KINDS, default=[], help="drop these kinds' recordings first")
    ap.add_argument("--report-only", action="store_true", help="train nothing; report what is recorded")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--runs", type=Path, default=ROOT / "results" / "splitguard_calibration" / "runs.jsonl")
    ap.add_argument("--out", type=Path, default=None, help="also write the report here")
    ap.add_argument("--note", action="append", default=[], help="a line for the report's header (e.g. how and "
                    "where the recordings were made, when this invocation only reports)")
    args = ap.parse_args(argv)
    if args.start is None:
        from arena.defenses.splitguard import SplitGuard

        args.start = SplitGuard().start
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    load0 = os.getloadavg()
    t0 = time.time()
    runs = load_runs(args.runs) if args.report_only else record_all(args)
    text = report(args, runs, load0, time.time() - t0)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
