"""Run the planned cells (`arena.run.plan`, re-exported here): one training run per (scenario, defense,
seed), every honest attack on it.

Only a malicious attack (one with a server policy) needs a training run of its own. Blocked cells
are decided up front, never by catching exceptions, and cost no training: the defense removes a
capability the attack requires, or does not apply to the setup, or the experiment's threat model
denies an assumption the attack needs, or the attack needs a quantity the defended protocol does
not send in plaintext but the server could rebuild ("not evaluated": no credit to the defense).

Every cell records the split that actually ran (a defense may move the cut) and the capabilities
its attack was granted. Attacks see opaque per-release handles instead of sample ids unless they
declare SAMPLE_IDS; the runner maps their outputs back before scoring.
"""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from ..attacks import ATTACKS, PolicyContext
from ..data.sources import load_dataset
from ..defenses import DEFENSES, Defense
from .model_cache import cache_key, cached_training
from ..models import build_model
from ..protocol.derive import as_vanilla, vanilla_cost
from ..protocol.train import Data, TrainResult, make_setup, total_steps, train
from ..protocol.transcript import resolve
from ..records import ATTACK_CANNOT_RUN, AttackNotApplicable, Capability, Cell, Scenario
from ..scoring.metrics import auc
from ..scoring.score import score
from ..seeding import numpy_rng, seed_everything, torch_generator
from ..protocol.knowledge import knowledge_of
from .grants import blocked_reason, capability_names, granted_capabilities, make_view
from .plan import (KNOWN_SHAPES, CellSpec, group_cost, groups, longest_first, plan, seed_passes,  # noqa: F401
                   validate_depths)

Progress = Callable[[str, int, int], None]


AUX_SHARE = 0.2  # the most of a training split the auxiliary set may take when both do not fit


def effective_sizes(n: int, n_train: int | None, n_aux: int, dataset: str = "the dataset") -> tuple[int, int]:
    """(private training samples, auxiliary samples) actually used from a training split of ``n``:
    ``n_train`` (None: all that is left) and ``n_aux``. A split too small for both keeps a disjoint
    auxiliary set of at most ``AUX_SHARE`` of it and trains on the rest (digits: 1,437 images, default
    n_aux 5000 -> 287 auxiliary, 1,150 private). Raises only if nothing would be left to train on."""
    if n < 2:
        raise ValueError(f"{dataset} has {n} training sample(s): too few to train and attack")
    aux = n_aux if n_aux <= AUX_SHARE * n or (n_train is not None and n_train + n_aux <= n) \
        else max(1, int(AUX_SHARE * n)) if n_aux else 0
    return min(n - aux if n_train is None else n_train, n - aux), aux


def load_data(sc: Scenario, n_aux: int, data_dir: str | None) -> Data:
    """The private training subset, a disjoint auxiliary subset (both from the training split) and
    the test subset, by seed. Private, auxiliary and test data never overlap: a dataset with fewer
    training samples than ``n_train + n_aux`` trains on what is left after the auxiliary set (and a
    split too small for the auxiliary set keeps a smaller one: `effective_sizes`)."""
    ds = load_dataset(sc.dataset, data_dir=data_dir, seed=sc.seed)
    n = len(ds.x_train)
    rng = numpy_rng(sc.seed, sc.dataset, "split")
    perm = rng.permutation(n)
    n_train, n_aux = effective_sizes(n, sc.n_train, n_aux, sc.dataset)
    train_idx = torch.as_tensor(sorted(perm[:n_train]))
    aux_idx = torch.as_tensor(sorted(perm[n - n_aux:]) if n_aux else [], dtype=torch.long)  # the far end: disjoint
    x_aux, y_aux = ds.x_train[aux_idx], ds.y_train[aux_idx]
    n_test = len(ds.x_test) if sc.n_test is None else min(sc.n_test, len(ds.x_test))
    test_idx = torch.as_tensor(sorted(numpy_rng(sc.seed, sc.dataset, "test").permutation(len(ds.x_test))[:n_test]))
    return Data(ds.x_train[train_idx], ds.y_train[train_idx], ds.x_test[test_idx], ds.y_test[test_idx],
                x_aux, y_aux, ds.num_classes)


@dataclass
class GroupContext:
    data_dir: str | None = None
    device: str = "cpu"
    out_dir: Path | None = None
    progress: Progress | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def run_group(specs: list[CellSpec], ctx: GroupContext) -> Iterator[Cell]:
    """Train once for the group and run each of its attacks; yields cells as they finish."""
    t0 = time.perf_counter()
    # one run for the group, recording as many steps as its most demanding attack asked for; each
    # attack then sees the transcript its own record_steps would have kept (Transcript.trimmed)
    rec = max(s.scenario.train.record_steps for s in specs)
    track = max(s.scenario.train.track for s in specs)  # the union of the attacks' declared coverage
    first = replace(specs[0], scenario=replace(specs[0].scenario, train=replace(specs[0].scenario.train,
                                                                                  record_steps=rec, track=track)))
    sc = first.scenario
    order_key = first.data_order_key()
    # a defense that leaves the label owner alone trains vanilla cells' model u-shaped (`protocol.derive`)
    converts = bool(getattr(DEFENSES.get(first.defense.name), "converts_setups", {}))
    train_sc = sc if converts else replace(sc, setup=first.training_setup())
    try:
        data = load_data(sc, first.n_aux, ctx.data_dir)
        seed_everything(sc.seed, "model-init", sc.dataset, sc.model)
        model = build_model(sc.model, data.shape, data.num_classes)
    except Exception as e:  # noqa: BLE001 - a failing cell is recorded, the run goes on
        for s in specs:
            yield _cell(s, "error", error=_err(e), wall_s=time.perf_counter() - t0)
        return
    sides: dict[str, tuple[Defense, Any, bool]] = {}  # cell setup -> (defense, defended setup, applies)
    failed: dict[str, BaseException] = {}  # cell setup -> why its setup cannot be built (e.g. the depth)
    for setup_name in dict.fromkeys([train_sc.setup] + [s.scenario.setup for s in specs]):
        if converts and setup_name != train_sc.setup:
            continue  # he: every setup's cells are the converted one's
        try:
            d: Defense = DEFENSES.create(first.defense.name, **first.defense.kwargs)
            base = make_setup(replace(train_sc, setup=setup_name), model, data.shape)
            ok = d.not_applicable(setup_name, data.num_classes) is None
            sides[setup_name] = (d, d.apply(base, torch_generator(sc.seed, "defense", first.defense.name))
                                 if ok else base, ok)
        except Exception as e:  # noqa: BLE001
            failed[setup_name] = e
    if converts:
        for s in specs:
            if train_sc.setup in sides:
                sides[s.scenario.setup] = sides[train_sc.setup]
            else:
                failed[s.scenario.setup] = failed[train_sc.setup]
    elif (train_sc.setup == "u-shaped" and any(s.scenario.setup == "vanilla" for s in specs)
          and sides.get("vanilla", (None, None, False))[2]
          and ("u-shaped" in failed or not sides["u-shaped"][2])):
        # a cut too deep for the label owner's layers (u-shaped) is still a valid vanilla split, and a
        # defense that does not apply u-shaped may still apply vanilla: the vanilla cells train on their own
        # (the u-shaped cells are errors or n/a, so none is served from this run)
        train_sc = replace(train_sc, setup="vanilla")
    for s in [s for s in specs if s.scenario.setup in failed]:
        yield _cell(s, "error", error=_err(failed[s.scenario.setup]), wall_s=time.perf_counter() - t0)
    specs = [s for s in specs if s.scenario.setup not in failed]
    if not specs:
        return
    if train_sc.setup not in sides:  # never silently: every remaining cell says why it did not run
        for s in specs:
            yield _cell(s, "error", error=_err(failed[train_sc.setup]), wall_s=time.perf_counter() - t0)
        return
    attacks = [ATTACKS.create(s.attack.name, **s.attack.kwargs) for s in specs]
    defense, defended, applies = sides[train_sc.setup]

    def effective(dset) -> dict[str, Any]:
        return {"depth": dset.depth, "setup": dset.scenario.setup, "label_layers": dset.label_layers,
                "n_train": len(data.x_train), "n_aux": len(data.x_aux)}

    runnable = []
    for s, a in zip(specs, attacks):
        d, dset, ok = sides[s.scenario.setup]
        why = blocked_reason(s.scenario, s.deny, a, d, dset, data.num_classes)
        granted = capability_names(granted_capabilities(a, dset, s.deny))
        if why is not None:
            yield _cell(s, "blocked", reason=why, cost=d.report() if ok else {},
                        effective=effective(dset), granted=granted)
        else:
            runnable.append((s, a))
    if not runnable:
        return
    policy_spec, policy_attack = next(((s, a) for s, a in runnable if getattr(a, "malicious", False)), (None, None))
    try:
        # Common random numbers: every defense of a scenario trains on the same data order, so a
        # defense-vs-none difference is the defense's, not training noise (and strength 0 == none).
        gen = torch_generator(sc.seed, "train", order_key)
        policy = None
        if policy_attack is not None:  # its own generator, and aux data only if its threat model has it
            pgranted = granted_capabilities(policy_attack, defended, policy_spec.deny)
            policy = policy_attack.server_policy(PolicyContext(
                input_shape=data.shape, num_classes=data.num_classes, client_arch=make_view(
                    policy_attack, defended, None, data, ctx.device, arch_only=True),
                aux=(data.x_aux, data.y_aux) if Capability.AUX_DATA in pgranted else None,
                generator=torch_generator(sc.seed, "policy", policy_spec.attack_stream), device=ctx.device,
                defense=knowledge_of(defense),
                total_steps=total_steps(len(data.x_train), defended.config)))
        prog = (lambda i, n: ctx.progress("train " + first.label(), i, n)) if ctx.progress else None

        def fresh() -> tuple[TrainResult, dict[str, Any]]:
            seed_everything(sc.seed, "train", order_key)
            res = train(defended, data, gen, ctx.device, policy=policy, progress=prog)
            defense.after_training(res)
            return res, {**res.cost, **defense.report()}

        cache = ctx.extra.get("model_cache") if policy is None else None  # a malicious policy keeps state
        result, cost = cached_training(cache, cache_key(first, type(defense), ctx.device) if cache else None, fresh)
    except Exception as e:  # noqa: BLE001
        for s, _ in runnable:
            yield _cell(s, "error", error=_err(e), wall_s=time.perf_counter() - t0)
        return
    train_s = time.perf_counter() - t0
    utility = {"test_acc": result.test_acc}
    if result.test_positive_scores is not None and 0 < int(data.y_test.sum()) < len(data.y_test):
        # a binary task (10% positive): always answering "rest" scores 0.9 accuracy; the AUC shows the cost
        utility["test_auc"] = auc(result.test_positive_scores, data.y_test)
    served: dict[str, tuple[TrainResult, dict[str, Any]]] = {}  # cell setup -> (its run, its costs)

    def serve(setup_name: str) -> tuple[TrainResult, dict[str, Any]]:
        if setup_name not in served:
            mine = sides[setup_name][1].scenario.setup
            vanilla = mine == "vanilla" and defended.scenario.setup == "u-shaped"
            if mine != defended.scenario.setup and not vanilla:  # a run serves only its own or derived cells
                raise RuntimeError(f"a {defended.scenario.setup} run cannot serve a {mine} cell")
            served[setup_name] = ((as_vanilla(result, data.shape), vanilla_cost(cost, result.model.client, data.shape))
                                  if vanilla else (result, cost))
        return served[setup_name]

    for s, a in runnable:
        t1 = time.perf_counter()
        mine, mine_track = s.scenario.train.record_steps, s.scenario.train.track
        mine_result, mine_cost = serve(s.scenario.setup)
        dset = sides[s.scenario.setup][1]
        res = mine_result if (mine, mine_track) == (rec, track) else \
            replace(mine_result, transcript=mine_result.transcript.trimmed(mine, mine_track))
        try:
            # global streams too (fresh layers in view builders, clones): a cell's numbers must not
            # depend on which attacks ran before it on the same model, nor on a cached training run
            seed_everything(sc.seed, "attack", s.attack_stream)
            view = make_view(a, dset, res, data, ctx.device, deny=s.deny, defense=sides[s.scenario.setup][0])
            granted = view.capabilities  # what make_view granted: computed once, there
            if ctx.progress is not None:  # long attacks report through view.report_progress(i, n)
                view = replace(view, progress=lambda i, n, _l=s.label(): ctx.progress(_l, i, n))
            try:
                out = a.run(view, torch_generator(sc.seed, "attack", s.attack_stream))
            finally:
                if view.query is not None:
                    view.query.close()
            metrics = score(out, res, data.x_test, data.y_test, ctx.device,
                            ids="samples" if Capability.SAMPLE_IDS in granted else "handles")
            metrics |= {k: v for k, v in out.extra.items() if isinstance(v, (int, float)) and k not in metrics}
            artifacts = _save_artifacts(ctx, s, res, out)
            yield _cell(s, "ok", metrics=metrics, utility=utility,
                        cost=mine_cost | {"attack_s": time.perf_counter() - t1},
                        wall_s=train_s + time.perf_counter() - t1, artifacts=artifacts, effective=effective(dset),
                        granted=capability_names(granted), derived=dict(view.derived),
                        observed=res.transcript.coverage())
        except AttackNotApplicable as e:  # the attack is not defined for this cell: not evaluated, with why
            yield _cell(s, "blocked", reason=f"{ATTACK_CANNOT_RUN}{e}", cost=mine_cost, effective=effective(dset),
                        wall_s=train_s + time.perf_counter() - t1)
        except Exception as e:  # noqa: BLE001
            yield _cell(s, "error", error=_err(e), utility=utility, cost=mine_cost,
                        wall_s=train_s + time.perf_counter() - t1, effective=effective(dset))


def _save_artifacts(ctx: GroupContext, s: CellSpec, result: TrainResult, out) -> dict[str, str]:
    if ctx.out_dir is None or out.reconstructions is None or out.ids is None:
        return {}
    from .artifacts import save_grid

    rel = Path("grids") / f"{s.key}.png"
    try:
        save_grid(ctx.out_dir / rel, result.truth.inputs(resolve(out.ids[:10], result.transcript)),
                  out.reconstructions[:10],
                  title=s.label())
    except Exception:  # noqa: BLE001 - a missing picture must not lose the cell
        return {}
    return {"grid": str(rel)}


def _err(e: BaseException) -> str:
    tb = traceback.format_exception(type(e), e, e.__traceback__)
    return f"{type(e).__name__}: {e}\n" + "".join(tb[-3:])


def _cell(s: CellSpec, status: str, **kw: Any) -> Cell:
    kw.setdefault("adapts_to", _adapts_to(s))
    kw.setdefault("effective", {"depth": s.scenario.depth, "setup": s.scenario.setup,
                                "label_layers": 0 if s.scenario.setup == "vanilla" else s.scenario.label_layers})
    sc = s.scenario
    return Cell(key=s.key, dataset=sc.dataset, model=sc.model, depth=sc.depth, setup=sc.setup,
                attack=s.attack.name, defense=s.defense.name, attack_params=s.attack.kwargs,
                defense_params=s.defense.kwargs, seed=sc.seed, status=status,
                label_layers=sc.label_layers, **kw)


def _adapts_to(s: CellSpec) -> list[str]:
    """The defenses the cell's attack is built against: its instance's (a parameter may make it adaptive,
    he-whitebox's fit="masked"), else its class's."""
    try:
        return list(getattr(ATTACKS.create(s.attack.name, **s.attack.kwargs), "adapts_to", ()))
    except Exception:  # noqa: BLE001 - bad parameters are reported by the cell itself
        return list(getattr(ATTACKS.get(s.attack.name), "adapts_to", ()))
