"""`python -m arena.matrix`: run every attack against every defense and score each pairing.

Each finished cell is appended at once to OUT/cells.jsonl (by this process alone, whichever
executor runs the cells: serial, `--workers N` local processes or `--executor ray`); re-running the
same command skips the finished cells, so an interrupted run resumes where it stopped. A table,
OUT/summary.csv and OUT/report.md + OUT/report.html (`arena.report`) close the run.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from . import __version__
from .attacks import ATTACKS
from .run.config import Experiment, SpecError, check_deny, load_experiment, select, without_entry_limits
from .data.sources import DATASETS, load_dataset
from .defenses import DEFENSES
from .models import MODELS
from .records import SETUPS
from .run import model_cache
from .run.executors import EXECUTORS, execute
from .run.workers import ExecutorError, RunOptions, cpu_count
from .run.plugins import PluginError, import_plugins
from .run.progress import Progress
from .registry import UnknownNameError
from .report.document import write_report
from .report.tables import write_summary
from .run.runner import effective_sizes, groups, longest_first, plan, seed_passes, validate_depths
from .run.store import CellStore, read_cells

REPO = Path(__file__).resolve().parent.parent
DEFAULT_EXPERIMENT = "quick"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m arena.matrix",
        description="Run privacy attacks against split-learning defenses and score every pairing: leakage "
                    "(MSE/PSNR/SSIM, clone accuracy, label accuracy/AUC), utility (test accuracy) and cost "
                    "(client compute, bytes on the wire, privacy budget). Results go to OUT/cells.jsonl, "
                    "OUT/summary.csv and OUT/manifest.json; re-running the same command resumes.",
        epilog="Examples:\n  python -m arena.matrix                      # the default experiment (quick)\n"
               "  python -m arena.matrix --list               # what can be selected\n"
               "  python -m arena.matrix --datasets mnist --attacks unsplit --defenses none deeper-split "
               "--depths 1 2 3 --seeds 0 1 2\n"
               "  python -m arena.matrix -e paper --workers 8   # 8 training runs at once\n"
               "  python -m arena.matrix -e paper --executor ray --address auto\n"
               "  python -m arena.matrix --plugin my_defenses.py --defenses none my-defense\n"
               "  python -m arena.matrix --defenses none noise+dp-sgd   # a stack: noise, then dp-sgd\n"
               "  python -m arena.report results/quick          # rebuild the report from cells.jsonl",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", "-e", default=DEFAULT_EXPERIMENT,
                   help="experiment TOML file, or the name of one in experiments/ (default: quick)")
    p.add_argument("--list", action="store_true", help="list datasets, models, attacks and defenses, then exit")
    sel = p.add_argument_group("selection (each overrides the experiment file; several space-separated values)")
    sel.add_argument("--datasets", nargs="+", metavar="NAME")
    sel.add_argument("--attacks", nargs="+", metavar="NAME",
                     help="attack names; parameters come from the experiment file's entry, or defaults")
    sel.add_argument("--defenses", nargs="+", metavar="NAME",
                     help="defense names; join names with '+' for a stack, applied in that order (noise+dp-sgd); "
                          "parameters come from the experiment file's entry, or defaults")
    sel.add_argument("--depths", nargs="+", type=int, metavar="K", help="split depths: the client runs layers 0..K")
    sel.add_argument("--seeds", nargs="+", type=int, metavar="S")
    sel.add_argument("--n-train", type=int, help="private training samples per run")
    sel.add_argument("--n-test", type=int, help="test samples for utility and clone accuracy")
    sel.add_argument("--epochs", type=float, help="training epochs of the split model")
    sel.add_argument("--deny", nargs="+", metavar="CAP",
                     help="threat model: capabilities no attack is granted (e.g. client_weights query aux_data); "
                          "cells whose attack needs one are blocked with that reason (adds to [threat] deny)")
    p.add_argument("--out", type=Path, help="output folder (default: results/<experiment name>)")
    p.add_argument("--data-dir", help="folder with the dataset files (else $ARENA_DATA, the cache, system "
                                      "locations, then a download)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    ex = p.add_argument_group("execution (same seeds, same numbers, whichever executor runs the cells)")
    ex.add_argument("--workers", "-j", type=int, metavar="N",
                    help="run N training runs (groups of cells) at once in worker processes "
                         f"(default 1; this machine has {cpu_count()} cores)")
    ex.add_argument("--executor", choices=EXECUTORS,
                    help="serial, process (local worker processes; the default when --workers > 1) or ray "
                         "(Ray tasks; optional extra: pip install 'arena[ray]')")
    ex.add_argument("--address", metavar="ADDR",
                    help="Ray cluster address for --executor ray (e.g. auto or ray://head:10001; "
                         "default: start a local Ray)")
    ex.add_argument("--threads", type=int, metavar="T", default=1,
                    help="torch threads per worker, serial runs included (default 1: serial, --workers and Ray "
                         "runs then give bit-identical numbers; a different T changes the last digits)")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import MODULE (a module name on PYTHONPATH, or a .py file) before planning, so the "
                        "attacks/defenses it registers can be selected; repeatable")
    mc = p.add_argument_group("trained-model cache (on by default: a rerun, or a new attack over the same "
                              "scenarios, does not train again)")
    mc.add_argument("--model-cache", metavar="DIR",
                    help="keep trained models in DIR, keyed by everything that shaped them (scenario, defense, "
                         "code, torch, device, threads), and reuse them; default $ARENA_MODEL_CACHE, else "
                         "$ARENA_CACHE/models, else ~/.cache/arena/models ('off' turns it off)")
    mc.add_argument("--no-model-cache", action="store_true", help="train every model, keep none")
    mc.add_argument("--model-cache-info", action="store_true", help="print the cache's folder, entries and size, "
                                                                  "then exit")
    mc.add_argument("--clear-model-cache", action="store_true", help="delete every cached model, then exit")
    p.add_argument("--no-report", action="store_true", help="skip report.md/report.html at the end")
    p.add_argument("--retry-errors", action="store_true", help="re-run cells whose stored status is error")
    p.add_argument("--dry-run", action="store_true", help="print the planned cells and exit")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    p.add_argument("--version", action="version", version=f"arena {__version__}")
    return p


def resolve_experiment(name_or_path: str) -> Path:
    p = Path(name_or_path)
    candidates = [p] if p.suffix == ".toml" else [p.with_suffix(".toml"), Path("experiments") / f"{p}.toml",
                                                  REPO / "experiments" / f"{p}.toml"]
    for c in candidates:
        if c.is_file():
            return c
    raise SpecError(f"experiment {name_or_path!r} not found (looked at {', '.join(map(str, candidates))})")


def list_everything() -> str:
    lines = ["datasets:  " + ", ".join(DATASETS.names()),
             "models:    " + ", ".join(MODELS.names()),
             "setups:    " + ", ".join(SETUPS), "attacks:"]
    for n in ATTACKS.names():
        cls = ATTACKS.get(n)
        req = ", ".join(sorted(c.value for c in getattr(cls, "requires", ())))
        lines.append(f"  {n:<16} {getattr(cls, 'kind', '?'):<10} requires: {req or '-'}   "
                     f"[{getattr(cls, 'paper', '')}]")
        if getattr(cls, "adapts_to", ()):
            lines.append(f"  {'':<16} ADAPTIVE: built against {', '.join(cls.adapts_to)} (knows the defense "
                         "and its public parameters)")
    lines.append("defenses (stack them with '+', applied in that order: --defenses noise+dp-sgd):")
    for n in DEFENSES.names():
        cls = DEFENSES.get(n)
        rem = ", ".join(sorted(c.value for c in getattr(cls, "removes", ())))
        lines.append(f"  {n:<16} removes: {rem or '-':<30} [{getattr(cls, 'paper', '')}]")
        if getattr(cls, "covers", ""):
            lines.append(f"  {'':<16} covers: {cls.covers}")
    return "\n".join(lines)


def apply_overrides(exp: Experiment, a: argparse.Namespace) -> Experiment:
    changes: dict = {}
    if a.datasets:
        changes["datasets"] = tuple(a.datasets)
    if a.depths:
        changes["depths"] = tuple(a.depths)
    if a.seeds:
        changes["seeds"] = tuple(a.seeds)
    if a.n_train:
        changes["n_train"] = a.n_train
    if a.n_test:
        changes["n_test"] = a.n_test
    if a.epochs:
        changes["train"] = dataclasses.replace(exp.train, epochs=a.epochs)
    if a.deny:
        changes["deny"] = check_deny([*exp.deny, *a.deny])
    # a command-line --depths/--datasets replaces the entries' own depths/datasets too
    changes["attacks"] = without_entry_limits(select(exp.attacks, a.attacks), bool(a.depths), bool(a.datasets))
    changes["defenses"] = without_entry_limits(select(exp.defenses, a.defenses), bool(a.depths), bool(a.datasets))
    return dataclasses.replace(exp, **changes)


def _execution(a: argparse.Namespace) -> tuple[str, int, int | None]:
    """(executor, workers, torch threads per worker) from the command line."""
    if a.workers is not None and a.workers < 1:
        raise SpecError("--workers must be >= 1")
    if a.threads is not None and a.threads < 1:
        raise SpecError("--threads must be >= 1")
    executor = a.executor or ("process" if (a.workers or 1) > 1 else "serial")
    if a.address and executor != "ray":
        raise SpecError("--address is for --executor ray")
    if executor == "ray":
        from .run.ray import _import_ray

        _import_ray()  # fail now, with the install hint, not after planning
    workers = 1 if executor == "serial" else (a.workers or max(1, cpu_count() // a.threads))
    return executor, workers, a.threads


def _plugins(names: list[str]) -> tuple[str, ...]:
    """Plugin names as workers in other folders can import them (absolute paths for .py files)."""
    return tuple(str(Path(n).resolve()) if n.endswith(".py") else n for n in names)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    a = _parser().parse_args(argv)
    try:
        plugins = _plugins(a.plugin)
        import_plugins(plugins)
    except PluginError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.list:
        print(list_everything())
        return 0
    cache = _cache_dir(a)
    if a.model_cache_info or a.clear_model_cache:
        if cache is None:
            print("the model cache is off (--no-model-cache, --model-cache off or ARENA_MODEL_CACHE=off)")
            return 0
        n, size = (model_cache.clear if a.clear_model_cache else model_cache.info)(cache)
        print(f"model cache {cache}: {n} trained models, {size / 2**20:.1f} MiB"
              + (" deleted" if a.clear_model_cache else ""))
        return 0
    try:
        exp = apply_overrides(load_experiment(resolve_experiment(a.experiment)), a)
        if a.workers is None and a.executor is None and exp.workers:
            a.workers = exp.workers  # the experiment's default parallelism; the command line wins
        executor, workers, threads = _execution(a)
        if not exp.attacks:
            raise SpecError("no attacks selected: add [[attacks]] to the experiment or pass --attacks")
        DATASETS.check(exp.datasets)
        ATTACKS.check(list(dict.fromkeys(e.name for e in exp.attacks)))
        DEFENSES.check(list(dict.fromkeys(e.name for e in exp.defenses)))
        MODELS.check([exp.model_for(d) for d in exp.datasets] + [e.model for e in exp.attacks if e.model])
        specs = plan(exp)
        validate_depths(specs)
    except (SpecError, UnknownNameError, ValueError, TypeError, ExecutorError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = a.out or Path("results") / Path(exp.source).stem
    if a.dry_run:
        for s in specs:
            print(s.label())
        print(f"{len(specs)} cells -> {out} ({len(groups(specs))} training runs)")
        return 0
    try:
        check_data(exp, a.data_dir, a.quiet)
    except Exception as e:  # noqa: BLE001 - any unreadable dataset stops the run before any work
        print(f"error: {e}", file=sys.stderr)
        return 2
    store = CellStore(out)
    spec = {"experiment": exp.to_json(), "device": a.device, "data_dir": a.data_dir, "executor": executor,
            "workers": workers, "threads": threads, "plugins": list(plugins)}
    before, now = store.write_manifest(spec, ["arena.matrix", *argv])
    done = store.done_keys(retry_errors=a.retry_errors)
    kept = sum(s.key in done for s in specs)
    if kept and before is not None and before != now:
        print(f"warning: {kept} finished cells in {out} were computed by arena {before}, this is {now}; "
              f"they are kept, not recomputed (use a new --out to recompute everything)", file=sys.stderr)
    todo = [s for s in specs if s.key not in done]
    passes = seed_passes(todo, exp.seeds)
    if not a.quiet:
        how = "serially" if executor == "serial" else f"with {workers} {executor} workers x {threads} threads"
        print(f"{len(specs)} cells planned, {len(specs) - len(todo)} already in {out / 'cells.jsonl'}, "
              f"{len(todo)} to run in {len(groups(todo))} training runs {how}"
              + (f", one pass per seed ({', '.join(str(s) for s, _ in passes)}): the report is written after each"
                 if len(passes) > 1 else ""), file=sys.stderr)
        print(f"trained-model cache: {cache if cache is not None else 'off'}", file=sys.stderr)
    progress = Progress(len(todo), a.quiet)
    labels = {s.key: s.label() for s in todo}

    def sink(cell, worker) -> None:
        store.append(cell)  # the parent alone writes cells.jsonl, one whole fsynced line per cell
        progress.cell(labels.get(cell.key, cell.key), cell.status, worker)

    opts = RunOptions(data_dir=a.data_dir, device=a.device, out_dir=str(out), plugins=plugins, threads=threads,
                      model_cache=str(cache.resolve()) if cache is not None else None)
    try:
        for i, (seed, cells) in enumerate(passes):
            if not a.quiet and len(passes) > 1:
                progress.note(f"pass {i + 1}/{len(passes)}: seed {seed}, {len(cells)} cells")
            execute(longest_first(groups(cells)), opts, sink, progress, executor=executor, workers=workers,
                    address=a.address)
            if i < len(passes) - 1 and not a.no_report:  # an answer now; the next pass sharpens it
                if _outputs(out, quiet=True) and not a.quiet:
                    progress.note(f"pass {i + 1}/{len(passes)} done: report {out / 'report.html'} (seeds so far: "
                                  f"{', '.join(str(s) for s, _ in passes[:i + 1])})")
    except KeyboardInterrupt:
        progress.close()
        print(f"\ninterrupted: finished cells are in {out / 'cells.jsonl'}; run the same command to resume",
              file=sys.stderr)
        if not a.no_report and read_cells(out):
            _outputs(out, quiet=False)
        return 130
    except ExecutorError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    progress.close()
    status = 0 if a.no_report else (0 if _outputs(out, quiet=False) else 1)
    if a.no_report:
        print(write_summary(out))
    planned = {s.key for s in specs}
    failed = [c for c in read_cells(out) if c.key in planned and c.status == "error"]
    if failed:
        first = failed[0].error.splitlines()[0] if failed[0].error else "?"
        print(f"\n{len(failed)} of {len(specs)} cells failed (first: {failed[0].attack} vs {failed[0].defense}: "
              f"{first}); their errors are in {out / 'cells.jsonl'}. Rerun them with the same command plus "
              f"--retry-errors", file=sys.stderr)
        status = 1
    return status


def _outputs(out: Path, quiet: bool) -> bool:
    """summary.csv and report.md/.html from the cells so far; False (said on stderr) if the report
    failed: the cells are safe and `python -m arena.report OUT` rebuilds it."""
    summary = write_summary(out)
    if not quiet:
        print(summary)
        print(f"\ncells: {out / 'cells.jsonl'}   summary: {out / 'summary.csv'}")
    try:
        path = write_report(out)
    except Exception as e:  # noqa: BLE001 - the cells are safe; the report can be rebuilt
        print(f"error: the report failed ({type(e).__name__}: {e}); the cells are complete, rebuild it with "
              f"python -m arena.report {out}", file=sys.stderr)
        return False
    if not quiet:
        print(f"report: {path}")
    return True


def _cache_dir(a: argparse.Namespace) -> Path | None:
    """The trained-model cache's folder for this run (None: off)."""
    return None if a.no_model_cache else model_cache.resolve_dir(a.model_cache)


def check_data(exp: Experiment, data_dir: str | None, quiet: bool) -> None:
    """Load every dataset once before any work: a missing or corrupt file is an error now rather
    than an error cell later; a split too small for n_train + n_aux is said (see `effective_sizes`)."""
    for name in exp.datasets:
        if not quiet:
            print(f"checking {name} ...", file=sys.stderr)
        ds = load_dataset(name, data_dir=data_dir)
        n = len(ds.x_train)
        n_train, n_aux = effective_sizes(n, exp.n_train, exp.n_aux, name)
        if not quiet and (n_aux != exp.n_aux or (exp.n_train is not None and n_train < exp.n_train)):
            print(f"{name}: {n} training images: {n_train} private + {n_aux} auxiliary (n_aux {exp.n_aux} does "
                  f"not fit beside n_train {'all' if exp.n_train is None else exp.n_train}; the auxiliary set "
                  f"stays disjoint)", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
