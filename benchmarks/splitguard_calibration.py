"""SplitGuard's decision rule at the default experiment's scale: false alarms against an honest
server, detection of FSHA, and the accuracy cost of the fake batches.

Each run is recorded once, with the monitor in ``action = "flag"`` (training goes on after an
alarm) and every score kept (``scores``/``score_steps``); a decision rule (threshold, window,
decision) is then judged offline on the recorded sequences with ``splitguard.first_alarm``, the
function the online monitor itself calls, so trying a rule costs no training. The fake batches
(``p_fake``, ``start``) shape the run, so each (p_fake, start) needs its own recordings.

Runs are built exactly as the matrix builds the cells of the experiment (default
experiments/quick.toml: its dataset, depth, [train], n_aux, and its fsha entry's parameters), with
the splitguard entry given here: same data, initialisation, data order, defense and policy
generators as ``python -m arena.matrix`` would use for that cell, and ``protocol.train`` to train.

* honest: the `none`-attack training run of the cell (an honest server), to the end;
* fsha:   the malicious server, stopped at ``--fsha-cap`` steps (the scores up to there are the
          scores of the uncapped run: the cap only ends training); a rule that has not fired by
          then counts as a miss;
* plain:  the same honest run without splitguard (the accuracy the fake batches cost).

Recordings go to ``--runs`` (JSONL, one line per run); a rerun only trains what is missing, so
``--only fsha`` after a change to FSHA (with ``--fresh fsha`` to drop its old recordings) redoes
just that part. The table compares the rule at ``--current`` with the calibrated defaults.

    ARENA_DATA=/work/shared/data python benchmarks/splitguard_calibration.py --workers 2 \\
        --out results/reference/splitguard_calibration.txt
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import json
import multiprocessing as mp
import os
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
    order_key = json.loads(json.dumps(sc.training_key(), default=str))
    order_key = json.dumps(order_key, sort_keys=True)  # splitguard converts no setup
    data = load_data(sc, spec.n_aux, data_dir)
    seed_everything(sc.seed, "model-init", sc.dataset, sc.model)
    setup = make_setup(sc, build_model(sc.model, data.shape, data.num_classes), data.shape)
    kwargs = spec.defense.kwargs | ({"action": "flag"} if spec.defense.name == "splitguard" else {})
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
           "wall_s": round(time.perf_counter() - t0, 1)}
    if monitor is not None:
        d = defense
        out |= {"rule": {"threshold": d.threshold, "window": d.window, "decision": d.decision},
                "scores": monitor.scores, "score_steps": monitor.score_steps,
                "fake_batches": monitor.fake.n, "online_alarm": monitor.detected_at}
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
        sp = specs(experiment(args.experiment, args.seeds, sg))
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


def report(args, runs, load0, wall) -> str:  # placeholder, replaced below
    return json.dumps({k: len([r for r in runs.values() if r["kind"] == k]) for k in KINDS})


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
