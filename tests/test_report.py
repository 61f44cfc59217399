"""The report: statistics over seeds, headline metrics, blocked/error cells, conclusions, rebuild.

Built from synthetic cells with known numbers (no training), so the assertions are exact.
"""
from __future__ import annotations

import hashlib
import math
import sys

import pytest
import torch

from arena.records import Cell
from arena.report.cli import main as report_main
from arena.report.statistics import ci95
from arena.report.tables import leakage_frame, summarize
from arena.run.store import CELLS, CellStore, read_cells

DEFENSES = [("none", {}), ("noise", {"sigma": 0.5}), ("noise", {"sigma": 2.0}), ("shield", {})]
# (attack, params, metric, depths); unregistered names: the headline comes from the metrics present
ATTACKS = [("toy-inversion", {"lambda_tv": 0.1}, "ssim", (1, 2)), ("toy-label", {}, "label_acc", (1,)),
           ("mean-image", {}, "ssim", (1,))]
# leakage and test accuracy per defense: noise 2.0 leaks least but costs 20 points; noise 0.5 costs 1 point
LEAK = {"none": 0.8, "noise(sigma=0.5)": 0.5, "noise(sigma=2.0)": 0.1}
ACC = {"none": 0.90, "noise(sigma=0.5)": 0.89, "noise(sigma=2.0)": 0.70}


def _label(name, params):
    return name + ("(" + ",".join(f"{k}={v}" for k, v in params.items()) + ")" if params else "")


def make_cells(n_seeds: int = 3, grid_dir=None) -> list[Cell]:
    cells = []
    for attack, aparams, metric, depths in ATTACKS:
        for depth in depths:
            for defense, dparams in DEFENSES:
                d = _label(defense, dparams)
                for seed in range(n_seeds):
                    key = hashlib.sha256(repr((attack, aparams, depth, d, seed)).encode()).hexdigest()[:16]
                    base = dict(key=key, dataset="digits", model="lenet", depth=depth, setup="vanilla",
                                attack=attack, attack_params=aparams, defense=defense, defense_params=dparams,
                                seed=seed)
                    if defense == "shield" and attack == "toy-label":
                        cells.append(Cell(**base, status="blocked", reason="toy-label requires labels, which "
                                          "defense shield removes"))
                        continue
                    if defense == "shield":
                        cells.append(Cell(**base, status="error", error="RuntimeError: shield exploded"))
                        continue
                    leak = (0.03 if attack == "mean-image" else LEAK[d] / depth) + 0.01 * seed
                    m = {metric: leak} | ({"label_chance": 0.1} if metric == "label_acc" else {"mse": 0.05})
                    if attack == "toy-inversion":  # a curve during training, as FSHA records it
                        m |= {f"mse@{step}": 0.2 / (1 + step * leak) for step in (0, 50, 100)}
                    art = {}
                    if grid_dir is not None and seed == 0 and attack == "toy-inversion" and depth == 1:
                        from arena.run.artifacts import save_grid

                        rel = f"grids/{key}.png"
                        save_grid(grid_dir / rel, torch.rand(4, 1, 8, 8), torch.rand(4, 1, 8, 8), title=d)
                        art = {"grid": rel}
                    cells.append(Cell(**base, status="ok", metrics=m, utility={"test_acc": ACC[d] + 0.002 * seed},
                                      cost={"client_s_per_sample": 1e-4 * (1 + seed)}, wall_s=1.0, artifacts=art))
    return cells


@pytest.fixture
def run_dir(tmp_path):
    store = CellStore(tmp_path)
    for c in make_cells(grid_dir=tmp_path):
        store.append(c)
    return tmp_path


def test_ci95_matches_student_t():
    stats = pytest.importorskip("scipy.stats")
    v = [0.2, 0.25, 0.31, 0.18]
    m, h = ci95(v)
    sem = stats.sem(v)
    assert m == pytest.approx(sum(v) / 4)
    assert h == pytest.approx(stats.t.ppf(0.975, 3) * sem, rel=1e-3)
    assert ci95([0.5]) == (0.5, 0.0)
    assert all(math.isnan(x) for x in ci95([]))


def test_summary_has_mean_ci_and_seed_count():
    s = summarize(make_cells())
    row = s[(s["attack"] == "toy-inversion") & (s["defense"] == "none") & (s["depth"] == 1)].iloc[0]
    assert row["n_seeds"] == 3
    assert row["ssim"] == pytest.approx(0.81)
    assert row["ssim_ci95"] == pytest.approx(4.303 * 0.01 / math.sqrt(3), rel=1e-3)


def test_headline_metric_and_states_never_zero():
    lf = leakage_frame(summarize(make_cells()))
    assert set(lf.loc[lf["attack"] == "toy-label", "metric"]) == {"label_acc"}
    assert set(lf.loc[lf["attack"] == "toy-inversion", "metric"]) == {"ssim"}
    blocked = lf[lf["state"] == "blocked"]
    errors = lf[lf["state"] == "error"]
    assert len(blocked) == 1 and len(errors) == 3
    assert blocked["value"].isna().all() and errors["value"].isna().all()  # never scored as 0
    assert "removes" in blocked["reason"].iloc[0] and "exploded" in errors["error"].iloc[0]
    lab = lf[(lf["attack"] == "toy-label") & (lf["defense"] == "none")].iloc[0]
    assert lab["norm"] == pytest.approx((0.81 - 0.1) / 0.9)  # colour: 0 = chance, 1 = perfect


def test_report_files_conclusions_and_rebuild(run_dir, capsys):
    pytest.importorskip("seaborn")
    before = (run_dir / CELLS).read_bytes()
    assert report_main([str(run_dir)]) == 0
    assert (run_dir / CELLS).read_bytes() == before  # rebuilding never touches the results
    md = (run_dir / "report.md").read_text()
    html = (run_dir / "report.html").read_text()
    heatmaps = sorted((run_dir / "figures").glob("heatmap-*.png"))
    frontiers = sorted((run_dir / "figures").glob("frontier-*.png"))
    curves = sorted((run_dir / "figures").glob("curve-*.png"))
    assert len(heatmaps) == 1 and len(frontiers) == 3 and len(curves) == 1  # only toy-inversion has a curve
    assert "toy-inversion" in curves[0].name
    assert all(p.stat().st_size > 5000 for p in heatmaps + frontiers)
    for p in heatmaps + frontiers + curves:
        assert f"figures/{p.name}" in md and f"figures/{p.name}" in html
    assert "grids/" in md and "<img src='grids/" in html  # reconstruction grids linked
    # the conclusions come from the numbers: noise 2.0 leaks least but costs 20 points,
    # noise 0.5 is the best setting within 2 accuracy points
    assert ("Lowest leakage: noise(sigma=2.0), ssim 0.110 ± 0.025 (Δ vs undefended -0.700 ± 0.000 over 3 paired "
            "seeds, distinguishable)") in md
    assert "(-20.0 points; paired over 3 seeds: distinguishable)" in md
    assert "Best within 2 accuracy points: noise(sigma=0.5)" in md
    assert "Blocked (the defense removes what the attack needs) by shield" in md
    assert "by split depth: depth 1: 0.810, depth 2: 0.410" in md
    assert "It beats the mean-image baseline, paired by seed: Δ ssim +0.770 ± 0.000 over 3 paired seeds" in md
    assert "No baseline run" not in md.split("depth 1 (of depths 1, 2)")[1].split("\n")[1]  # depth 1 has one
    assert "ok; no baseline run (mean-image)" in md  # depth 2 has none: said, not guessed
    assert "| digits | 1 | shield | 0 | - | - | - | - | - | blocked: toy-label requires labels" in md
    assert "class='blocked'" in html and "class='error'" in html
    assert "n | ssim | Δ ssim vs none (paired) | test acc | Δ test acc vs none (paired)" in md
    assert "0.810 ± 0.025" in md  # n seeds and mean ± CI in the tables
    assert "| -0.700 ± 0.000 (3 pairs, distinguishable) | 0.702 ± 0.005 | -0.200 ± 0.000 (3 pairs, distinguishable)" in md
    import pandas as pd

    csv = pd.read_csv(run_dir / "summary.csv")  # the paired columns are in summary.csv too
    row = csv[(csv["attack"] == "toy-inversion") & (csv["depth"] == 1) & (csv["defense_params"] == '{"sigma": 2.0}')]
    assert row["d_headline"].iloc[0] == pytest.approx(-0.7) and row["d_headline_n"].iloc[0] == 3
    assert row["vs_baseline"].iloc[0] == "above baseline" and row["headline"].iloc[0] == "ssim"
    capsys.readouterr()


def test_report_without_seaborn_still_writes_text(run_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "seaborn", None)  # import seaborn -> ImportError
    assert report_main([str(run_dir)]) == 0
    md = (run_dir / "report.md").read_text()
    assert "Figures skipped" in md and "pip install 'arena[plot]'" in md
    assert "Lowest leakage" in md
    assert not list((run_dir / "figures").glob("*.png"))


def test_report_cli_errors(tmp_path, capsys):
    assert report_main([str(tmp_path)]) == 2
    assert "no cells.jsonl" in capsys.readouterr().err


def test_report_survives_a_partial_last_line(run_dir):
    with (run_dir / CELLS).open("a") as f:
        f.write('{"key": "half')
    n = len(read_cells(run_dir))
    assert report_main([str(run_dir), "--table-only"]) == 0
    assert n == len(make_cells())


def test_conclusions_tell_removed_capabilities_from_defenses_that_do_not_apply():
    pd = pytest.importorskip("pandas")
    from arena.report.conclusions import _blocked_errors
    from arena.records import NOT_APPLICABLE

    from arena.records import not_applicable

    na_reason = NOT_APPLICABLE + "defense splitguard applies to the vanilla setup(s) only"
    assert not_applicable(na_reason) and not not_applicable("x requires smashed, which defense he removes")
    assert not_applicable("defense splitguard applies to the vanilla setup(s) only; x runs in u-shaped")  # older cells
    at = pd.DataFrame({"state": ["blocked", "n/a", "ok"], "defense_label": ["he", "splitguard", "none"],
                       "reason": ["x requires smashed, which defense he removes",
                                  na_reason.removeprefix(NOT_APPLICABLE), None],
                       "error": [None, None, None]})
    g = pd.DataFrame({"defense": ["none"], "value": [0.5], "depth": [1]})
    lines = _blocked_errors(at, g, "ssim")
    assert lines[0] == "Blocked (the defense removes what the attack needs) by he: x requires smashed, which defense he removes."
    assert lines[1] == "Not applicable here: splitguard (defense splitguard applies to the vanilla setup(s) only)."


def _cells(attack: str, values: dict[str, list[float]], defense: str = "none") -> list[Cell]:
    """One ok cell per seed of ``attack`` vs ``defense`` with the given metric values per seed."""
    n = len(next(iter(values.values())))
    return [Cell(key=f"{attack}-{defense}-{s}", dataset="digits", model="lenet", depth=1, setup="u-shaped",
                 attack=attack, attack_params={}, defense=defense, defense_params={}, seed=s, status="ok",
                 metrics={k: v[s] for k, v in values.items()}, utility={"test_acc": 0.9}, wall_s=1.0)
            for s in range(n)]


def test_ci95_uses_the_exact_t_quantile_past_10_degrees_of_freedom():
    stats = pytest.importorskip("scipy.stats")
    v = [0.5 + 0.01 * ((7 * i) % 11) for i in range(15)]  # 15 seeds: 14 degrees of freedom
    m, h = ci95(v)
    assert h == pytest.approx(stats.t.ppf(0.975, 14) * stats.sem(v), rel=1e-9)  # 2.145, not 1.96
    for n in (12, 30, 200):
        w = [float(i % 5) for i in range(n)]
        assert ci95(w)[1] == pytest.approx(stats.t.ppf(0.975, n - 1) * stats.sem(w), rel=1e-9)


def test_nan_and_inf_seeds_are_not_counted_in_n():
    cells = _cells("toy-inversion", {"ssim": [0.5, math.nan, 0.7, math.inf], "mse": [0.1, 0.2, 0.3, 0.4]})
    row = summarize(cells).iloc[0]
    assert row["n_seeds"] == 4  # seeds that finished
    assert row["ssim_n"] == 2 and row["mse_n"] == 4  # values averaged
    assert row["ssim"] == pytest.approx(0.6)
    assert row["ssim_ci95"] == pytest.approx(12.706 * 0.1, rel=1e-3)  # sem 0.1, t with 1 df: n = 2
    assert row["dropped"] == "ssim: 2"
    lf = leakage_frame(summarize(cells)).iloc[0]
    assert lf["metric"] == "ssim" and lf["n_seeds"] == 2 and lf["dropped"] == 2
    from arena.report.tables import format_table

    assert "0.600±1.271 (n=2)" in format_table(summarize(cells)) and "ssim: 2" in format_table(summarize(cells))


def test_leak_auc_is_never_folded():
    # a binary question (label chance >= 0.5) is judged by its leak AUC; 0.3 stays 0.3
    cells = _cells("toy-label", {"leak_auc": [0.3, 0.3, 0.3], "label_acc": [0.5] * 3, "label_chance": [0.9] * 3})
    lf = leakage_frame(summarize(cells)).iloc[0]
    assert lf["metric"] == "leak_auc"
    assert lf["value"] == pytest.approx(0.3) and lf["norm"] == 0.0 and not lf["above_chance"]


def test_a_chance_score_is_not_coloured_as_a_leak():
    # the mean is above 0.5 but its 95% CI reaches 0.5: coloured as chance, the number still shown
    noisy = _cells("toy-label", {"leak_auc": [0.45, 0.75, 0.6], "label_chance": [0.9] * 3})
    clear = _cells("toy-label", {"leak_auc": [0.9, 0.92, 0.94], "label_chance": [0.9] * 3}, defense="noise")
    lf = leakage_frame(summarize(noisy + clear)).set_index("defense")
    assert lf.loc["none", "value"] == pytest.approx(0.6) and lf.loc["none", "norm"] == 0.0
    assert not lf.loc["none", "above_chance"]
    assert lf.loc["noise", "above_chance"] and lf.loc["noise", "norm"] == pytest.approx((0.92 - 0.5) / 0.5)
    from arena.report.conclusions import conclude

    text = " ".join(conclude(leakage_frame(summarize(noisy + clear)), "toy-label", "digits"))
    assert "Chance (AUC 0.5) is 0.500: the attack is not distinguishable from it" in text


def test_label_accuracy_chance_is_the_majority_share_of_the_scored_targets():
    from arena.report.tables import chance_line
    from arena.scoring.metrics import chance_accuracy

    # 10 classes, but the scored targets are 40% class 3: chance is 0.4, not 1/classes
    y = torch.tensor([3, 3, 3, 3, 0, 1, 2, 4, 5, 6])
    assert chance_accuracy(y) == pytest.approx(0.4)
    cells = _cells("toy-label", {"label_acc": [0.6, 0.7, 0.8], "label_chance": [0.3, 0.4, 0.5]})
    lf = leakage_frame(summarize(cells)).iloc[0]
    assert lf["metric"] == "label_acc" and lf["chance"] == pytest.approx(0.4)
    assert lf["norm"] == pytest.approx((0.7 - 0.4) / 0.6)
    assert chance_line("label_acc", {"label_acc": 0.7}) != chance_line("label_acc", {"label_acc": 0.7})  # NaN
    no_chance = leakage_frame(summarize(_cells("toy-label", {"label_acc": [0.6, 0.7, 0.8]}))).iloc[0]
    assert math.isnan(no_chance["chance"]) and math.isnan(no_chance["norm"])  # no guessed 1/classes


def test_report_states_one_chance_definition(run_dir):
    assert report_main([str(run_dir)]) == 0
    md = (run_dir / "report.md").read_text()
    assert "majority-class share of the scored targets" in md
    assert "accuracy 1/classes" not in md and "folded to max(AUC, 1 − AUC), since" not in md
    assert "Chance (the majority-class share of the scored targets) is 0.100" in md


def test_a_label_attack_is_judged_per_dataset_leak_auc_on_a_binary_task():
    """One label attack on a 10-class task and on a binary one: label accuracy (vs its majority chance)
    judges the first, leak AUC the second, each with its own paired difference from undefended. (Judged
    by label accuracy against a 0.9 majority, an attack ranking the rare class with AUC 0.98 but
    thresholding it poorly was wrongly flagged under budget.)"""
    import dataclasses

    def on(dataset, cells):
        return [dataclasses.replace(c, dataset=dataset, key=f"{dataset}-{c.key}") for c in cells]

    ten = on("digits", _cells("cosine-label", {"label_acc": [0.9, 0.92, 0.91], "leak_auc": [0.97] * 3,
                                               "label_chance": [0.11] * 3}))
    two = on("digits-binary", _cells("cosine-label", {"label_acc": [0.62, 0.6, 0.64], "leak_auc": [0.98, 0.97, 0.99],
                                                      "label_chance": [0.9] * 3}))
    two_def = on("digits-binary", _cells("cosine-label", {"label_acc": [0.9] * 3, "leak_auc": [0.6, 0.55, 0.62],
                                                          "label_chance": [0.9] * 3}, defense="max-norm"))
    summary = summarize(ten + two + two_def)
    lf = leakage_frame(summary).set_index(["dataset", "defense"])
    assert lf.loc[("digits", "none"), "metric"] == "label_acc"
    assert lf.loc[("digits-binary", "none"), "metric"] == "leak_auc"
    assert lf.loc[("digits-binary", "none"), "vs_baseline"] == "above baseline"  # AUC 0.98 vs 0.5
    d = lf.loc[("digits-binary", "max-norm")]
    assert d["d_headline"] == pytest.approx(0.59 - 0.98, abs=1e-9)  # the AUC's paired drop, not accuracy's rise
