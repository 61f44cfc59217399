"""`python -m arena.matrix`: run every attack against every defense and score each pairing.

Each finished cell is appended at once to OUT/cells.jsonl; re-running the same command skips the
finished cells, so an interrupted run resumes where it stopped. A table and OUT/summary.csv close
the run.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from . import __version__
from .attacks import ATTACKS
from .config import Experiment, SpecError, load_experiment, select
from .data import DATASETS
from .defenses import DEFENSES
from .models import MODELS
from .records import SETUPS, TrainConfig
from .registry import UnknownNameError
from .report import write_summary
from .runner import GroupContext, groups, plan, run_group, validate_depths
from .store import CellStore

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
               "--depths 1 2 3 --seeds 0 1 2",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", "-e", default=DEFAULT_EXPERIMENT,
                   help="experiment TOML file, or the name of one in experiments/ (default: quick)")
    p.add_argument("--list", action="store_true", help="list datasets, models, attacks and defenses, then exit")
    sel = p.add_argument_group("selection (each overrides the experiment file; several space-separated values)")
    sel.add_argument("--datasets", nargs="+", metavar="NAME")
    sel.add_argument("--attacks", nargs="+", metavar="NAME",
                     help="attack names; parameters come from the experiment file's entry, or defaults")
    sel.add_argument("--defenses", nargs="+", metavar="NAME")
    sel.add_argument("--depths", nargs="+", type=int, metavar="K", help="split depths: the client runs layers 0..K")
    sel.add_argument("--seeds", nargs="+", type=int, metavar="S")
    sel.add_argument("--n-train", type=int, help="private training samples per run")
    sel.add_argument("--n-test", type=int, help="test samples for utility and clone accuracy")
    sel.add_argument("--epochs", type=float, help="training epochs of the split model")
    p.add_argument("--out", type=Path, help="output folder (default: results/<experiment name>)")
    p.add_argument("--data-dir", help="folder with the dataset files (else $ARENA_DATA, the cache, system "
                                      "locations, then a download)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
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
    lines.append("defenses:")
    for n in DEFENSES.names():
        cls = DEFENSES.get(n)
        rem = ", ".join(sorted(c.value for c in getattr(cls, "removes", ())))
        lines.append(f"  {n:<16} removes: {rem or '-':<30} [{getattr(cls, 'paper', '')}]")
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
    changes["attacks"] = select(exp.attacks, a.attacks)
    changes["defenses"] = select(exp.defenses, a.defenses)
    return dataclasses.replace(exp, **changes)


class Progress:
    """One status line on stderr: cells done of total, the current job and an estimated time left."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.total, self.done, self.quiet = total, 0, quiet
        self.t0 = time.perf_counter()
        self._last = 0.0
        self.tty = sys.stderr.isatty()

    def eta(self) -> str:
        if self.done == 0:
            return "?"
        left = (time.perf_counter() - self.t0) / self.done * (self.total - self.done)
        return f"{int(left // 60)}m{int(left % 60):02d}s"

    def inner(self, what: str, i: int, n: int) -> None:
        now = time.perf_counter()
        if self.quiet or (now - self._last < 1.0 and i != n):
            return
        self._last = now
        line = f"[{self.done}/{self.total} cells, ~{self.eta()} left] {what}: {100 * i // max(n, 1)}%"
        if self.tty:
            print("\r" + line[:150].ljust(150), end="", file=sys.stderr, flush=True)
        elif i == n or i == 1:
            print(line, file=sys.stderr, flush=True)

    def cell(self, label: str, status: str) -> None:
        self.done += 1
        if not self.quiet:
            pre = "\r" if self.tty else ""
            print(f"{pre}[{self.done}/{self.total}] {status:<7} {label}".ljust(150 if self.tty else 0),
                  file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    a = _parser().parse_args(argv)
    if a.list:
        print(list_everything())
        return 0
    try:
        exp = apply_overrides(load_experiment(resolve_experiment(a.experiment)), a)
        if not exp.attacks:
            raise SpecError("no attacks selected: add [[attacks]] to the experiment or pass --attacks")
        DATASETS.check(exp.datasets)
        ATTACKS.check([e.name for e in exp.attacks])
        DEFENSES.check([e.name for e in exp.defenses])
        MODELS.check([exp.model_for(d) for d in exp.datasets])
        specs = plan(exp)
        validate_depths(specs)
    except (SpecError, UnknownNameError, ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = a.out or Path("results") / Path(exp.source).stem
    if a.dry_run:
        for s in specs:
            print(s.label())
        print(f"{len(specs)} cells -> {out}")
        return 0
    store = CellStore(out)
    store.write_manifest({"experiment": exp.to_json(), "device": a.device, "data_dir": a.data_dir}, ["arena.matrix", *argv])
    done = store.done_keys(retry_errors=a.retry_errors)
    todo = [s for s in specs if s.key not in done]
    if not a.quiet:
        print(f"{len(specs)} cells planned, {len(specs) - len(todo)} already in {out / 'cells.jsonl'}, "
              f"{len(todo)} to run", file=sys.stderr)
    progress = Progress(len(todo), a.quiet)
    ctx = GroupContext(data_dir=a.data_dir, device=a.device, out_dir=out, progress=progress.inner)
    try:
        for group in groups(todo):
            labels = {s.key: s.label() for s in group}
            for cell in run_group(group, ctx):
                store.append(cell)
                progress.cell(labels[cell.key], cell.status)
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished cells are in {out / 'cells.jsonl'}; run the same command to resume",
              file=sys.stderr)
        return 130
    print(write_summary(out))
    print(f"\ncells: {out / 'cells.jsonl'}   summary: {out / 'summary.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
