"""The defense scorecard (worst case per defense and attack kind), its place in the report, scorecard.csv,
HE beside deeper-split, and `--compare`. Built from synthetic cells with known numbers (no training)."""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import re

import pytest

from arena.records import Cell
from arena.report.cli import main as report_main
from arena.report.scorecard import DP_SGD_NOT_CREDITED, ONE_SEED, scorecard
from arena.report.scorecard_doc import with_same_cut
from arena.run.store import CellStore

NOISE = ("noise", {"sigma": 1.0})


def cell(attack, defense=("none", {}), seed=0, metrics=None, status="ok", reason=None, aparams=None,
         dataset="digits", depth=1, setup="vanilla", acc=0.9, adapts_to=(), derived=None, effective=None):
    name, dparams = defense
    key = hashlib.sha256(repr((dataset, attack, aparams, name, dparams, seed, depth, setup)).encode()).hexdigest()[:16]
    c = Cell(key=key, dataset=dataset, model="lenet", depth=depth, setup=setup, attack=attack, defense=name,
             attack_params=aparams or {}, defense_params=dparams, seed=seed, status=status, reason=reason,
             metrics=metrics or {} if status == "ok" else {}, utility={"test_acc": acc} if status == "ok" else {},
             cost={"client_s_per_sample": 1e-4, "bytes_per_sample": 4096} if status == "ok" else {},
             effective=effective or {})
    return dataclasses.replace(c, adapts_to=list(adapts_to), derived=derived or {})


def inversion_run(seeds=3, adaptive_leak=0.6) -> list[Cell]:
    """unsplit (oblivious) and he-whitebox (built against noise) vs mean-image; unsplit's clone vs
    random-front; cosine-label; undefended, under noise (only the adaptive attack gets through), under
    shield (nothing gets through; it removes the cut gradient) and under he (not evaluated)."""
    out = []
    for s in range(seeds):
        j = 0.01 * s  # spread over seeds, so paired CIs are finite
        for d in (("none", {}), NOISE, ("shield", {})):  # one training run per defense and seed: one test acc
            acc = 0.9 if d[0] == "none" else 0.85 + j
            out.append(cell("mean-image", d, s, {"ssim": 0.10 + j}, acc=acc))
            out.append(cell("random-front", d, s, {"clone_acc": 0.30 + j}, acc=acc))
        leak = {"none": (0.8, 0.9, 0.7), "noise": (0.05, adaptive_leak, 0.6), "shield": (0.04, 0.03, 0.2)}
        for (name, p), (u, h, clone) in zip(((n, {} if n != "noise" else NOISE[1]) for n in leak), leak.values()):
            acc = 0.9 if name == "none" else 0.85 + j
            out.append(cell("unsplit", (name, p), s, {"ssim": u + j, "clone_acc": clone - j}, acc=acc))
            out.append(cell("he-whitebox", (name, p), s, {"ssim": h + j}, acc=acc, adapts_to=("noise",)))
        out.append(cell("cosine-label", ("none", {}), s, {"label_acc": 0.9 + j, "label_chance": 0.1}))
        out.append(cell("cosine-label", NOISE, s, {"label_acc": 0.8 + j, "label_chance": 0.1}, acc=0.85 + j))
        out.append(cell("cosine-label", ("shield", {}), s, status="blocked",
                        reason="cosine-label requires cut_gradient, which defense shield removes"))
        for a in ("unsplit", "he-whitebox"):
            out.append(cell(a, ("he", {}), s, status="blocked", effective={"depth": 3, "setup": "u-shaped"},
                            reason=f"not evaluated: {a} requires smashed, which defense he does not send in plaintext"))
    return out


def _row(sc, defense, dataset="digits"):
    rows = sc[(sc["defense_label"] == defense) & (sc["dataset"] == dataset)]
    assert len(rows) == 1, sc["defense_label"].tolist()
    return rows.iloc[0]


def test_an_adaptive_attack_breaks_a_defense_the_oblivious_one_does_not():
    cells = inversion_run()
    r = _row(scorecard(cells), "noise(sigma=1.0)")
    assert r["inversion_verdict"] == "broken"
    assert r["inversion_attack"] == "he-whitebox" and r["inversion_adaptive"]
    assert r["inversion_worst"] == pytest.approx(0.61)
    assert r["inversion_beaten_by"] == "he-whitebox [adaptive]"
    # without the adaptive attack the same defense holds against inversion: the oblivious one is under baseline
    oblivious = scorecard([c for c in cells if c.attack != "he-whitebox"])
    assert _row(oblivious, "noise(sigma=1.0)")["inversion_verdict"] == "holds"
    # adaptive only where its target defense is: undefended the same attack is not adaptive
    assert not _row(scorecard(cells), "none")["inversion_adaptive"]


def test_derived_capabilities_mark_an_attack_adaptive():
    cells = [dataclasses.replace(c, derived={"smashed": "least squares from (g_h, dL/dW)"})
             if c.attack == "unsplit" and c.defense == "noise" else c for c in inversion_run()]
    sc = scorecard([c for c in cells if c.attack != "he-whitebox"])
    assert _row(sc, "noise(sigma=1.0)")["inversion_adaptive"]


def test_a_defense_under_which_every_attack_is_under_baseline_holds_and_reference_row_leaks():
    sc = scorecard(inversion_run())
    assert sc.iloc[0]["defense"] == "none"
    none = _row(sc, "none")
    assert none["inversion_verdict"] == "leaks" and none["label_verdict"] == "leaks"
    shield = _row(sc, "shield")
    assert shield["inversion_verdict"] == "holds" and shield["stealing_verdict"] == "holds"
    assert shield["stealing_attack"] == "unsplit" and shield["stealing_metric"] == "clone_acc"
    assert shield["label_verdict"] == "blocked (removes cut_gradient)"
    assert shield["hijack_verdict"].startswith("not evaluated: no attack")  # nothing of the kind ran
    assert _row(sc, "noise(sigma=1.0)")["label_verdict"] == "broken"
    assert _row(sc, "noise(sigma=1.0)")["d_test_acc"] == pytest.approx(-0.04, abs=1e-9)  # 0.85 + 0.01·seed vs 0.9
    assert _row(sc, "noise(sigma=1.0)")["d_test_acc_n"] == 3


def test_not_evaluated_failed_and_under_budget_cells_never_count_as_holds():
    cells = inversion_run()
    sc = scorecard(cells)
    he = _row(sc, "he")
    assert he["inversion_verdict"].startswith("not evaluated") and "holds" not in he["inversion_verdict"]
    # a failed attack next to ones that hold: not a hold
    failed = [cell("he-whitebox", ("shield", {}), 9, status="error")] + cells
    failed = [dataclasses.replace(c, error="RuntimeError: boom") if c.status == "error" else c for c in failed]
    failed = [c for c in failed if not (c.attack == "he-whitebox" and c.defense == "shield" and c.status == "ok")]
    assert _row(scorecard(failed), "shield")["inversion_verdict"].startswith("not evaluated: he-whitebox")
    # no attack leaks even undefended: a defense that "stops" it is not credited
    weak = [dataclasses.replace(c, metrics={"ssim": 0.1 + 0.01 * c.seed}) if c.attack in ("unsplit", "he-whitebox")
            and c.status == "ok" else c for c in cells]
    v = _row(scorecard(weak), "shield")["inversion_verdict"]
    assert v.startswith("not evaluated: under budget")
    assert _row(scorecard(weak), "none")["inversion_verdict"].startswith("not evaluated: under budget")


def test_one_seed_uses_the_point_comparison_and_says_so():
    sc = scorecard(inversion_run(seeds=1))
    assert _row(sc, "noise(sigma=1.0)")["inversion_verdict"] == f"broken ({ONE_SEED})"
    assert _row(sc, "shield")["inversion_verdict"] == f"holds ({ONE_SEED})"


def test_dp_sgd_is_not_credited_for_inversion():
    cells = inversion_run()
    cells += [dataclasses.replace(c, defense="dp-sgd", key=c.key + "dp") for c in cells if c.defense == "shield"
              and c.status == "ok"]
    r = _row(scorecard(cells), "dp-sgd")
    assert r["inversion_verdict"] == DP_SGD_NOT_CREDITED
    assert r["stealing_verdict"] == "holds"  # its weights: what it protects


def _he_and_deeper(depths):
    cells = inversion_run()
    for k, d in depths:
        for s in range(3):
            cells.append(cell("unsplit", ("deeper-split", {"k": k}), s, {"ssim": 0.3 + 0.01 * s, "clone_acc": 0.5},
                              effective={"depth": d, "setup": "vanilla"}))
    return with_same_cut(scorecard(cells))


def test_he_is_shown_beside_deeper_split_at_the_same_effective_depth():
    sc = _he_and_deeper([(1, 2), (2, 3)])
    labels = sc["defense_label"].tolist()
    i = labels.index("he")
    assert labels[i + 1] == "deeper-split(k=2)"  # placed right after he
    assert sc.iloc[i]["same_cut"] == "same cut as deeper-split(k=2) (depth 3)"
    assert "as he" in sc.iloc[i + 1]["same_cut"]
    assert sc.iloc[labels.index("deeper-split(k=1)")]["same_cut"] == ""
    alone = _he_and_deeper([(1, 2)])
    assert _row(alone, "he")["same_cut"].startswith("no deeper-split at depth 3 in this run")


def _write(path, cells):
    store = CellStore(path)
    for c in cells:
        store.append(c)
    return path


def test_report_starts_with_the_scorecard_and_writes_scorecard_csv(tmp_path, capsys):
    pytest.importorskip("pandas")
    _write(tmp_path, inversion_run())
    assert report_main([str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    assert re.findall(r"^## .*$", md, re.M)[0] == "## Defense scorecard"
    assert md.index("## Defense scorecard") < md.index("## This run") < md.index("## Which defense")
    assert "protects the client's **weights**" not in md  # no dp-sgd in this run: no dp-sgd words
    with (tmp_path / "scorecard.csv").open() as f:
        rows = list(csv.DictReader(f))
    cols = set(rows[0])
    for kind in ("inversion", "stealing", "label", "hijack"):
        assert {f"{kind}_{x}" for x in ("verdict", "worst", "metric", "attack", "adaptive", "beaten_by")} <= cols
    assert {"dataset", "defense", "defense_params", "d_test_acc", "d_test_acc_ci95", "d_test_acc_n",
            "client_s_per_sample", "bytes_per_sample", "privacy", "effective", "same_cut"} <= cols
    assert rows[0]["defense"] == "none" and len(rows) == 4
    assert "<h2 id='defense-scorecard'>" in (tmp_path / "report.html").read_text()


def test_compare_prints_changed_numbers_added_rows_and_verdict_flips(tmp_path, capsys):
    old = _write(tmp_path / "old", inversion_run(adaptive_leak=0.05))  # noise holds: no attack beats mean-image
    new_cells = inversion_run() + [cell("unsplit", ("fresh", {}), s, {"ssim": 0.5, "clone_acc": 0.5}) for s in range(3)]
    new = _write(tmp_path / "new", new_cells)
    assert report_main(["--compare", str(old), str(new)]) == 0
    out = capsys.readouterr().out
    assert "digits · d1 vanilla · he-whitebox · noise(sigma=1.0): ssim 0.060 → 0.610 (+0.550)" in out
    assert "added (only in NEW): 1" in out and "unsplit · fresh" in out
    assert "digits · noise(sigma=1.0) · inversion: holds → broken" in out
    assert "[VERDICT CHANGED: holds → broken]" in out
    assert "mean-image · none" not in out  # unchanged rows are not printed
    assert report_main(["--compare", str(tmp_path / "missing"), str(new)]) == 2
    assert "has no cells.jsonl" in capsys.readouterr().err
