"""Paired statistics over seeds and the under-budget check: the paired CI against a hand computation,
a strength-zero defense pairs to exactly 0 end to end, an attack that does not beat its baseline is
flagged everywhere and no defense is credited, one well above it is not flagged."""
from __future__ import annotations

import math

import pytest

from arena.records import Cell
from arena.report.conclusions import conclude, overview
from arena.report.paired import ABOVE, IS_BASELINE, NO_BASELINE, UNDER, paired_text, resolve_text
from arena.report.statistics import Paired, paired_difference, seeds_to_resolve
from arena.report.tables import format_table, leakage_frame, summarize


def _cells(attack: str, per_seed: dict[str, list[float]], defense: str = "none", depth: int = 1,
           acc: list[float] | None = None, dparams: dict | None = None) -> list[Cell]:
    n = len(next(iter(per_seed.values())))
    return [Cell(key=f"{attack}-{defense}-{depth}-{s}", dataset="digits", model="lenet", depth=depth,
                 setup="vanilla", attack=attack, attack_params={}, defense=defense,
                 defense_params=dparams or {}, seed=s, status="ok",
                 metrics={k: v[s] for k, v in per_seed.items()},
                 utility={"test_acc": (acc or [0.9] * n)[s]}, wall_s=1.0) for s in range(n)]


# the statistics -----------------------------------------------------------------------------
def test_paired_ci_is_the_student_t_interval_of_the_per_seed_differences():
    # defense − none per seed: 0.1, 0.15, 0.05 -> mean 0.1, sd 0.05, t(0.975, 2) = 4.302652729911275
    p = paired_difference({0: 0.5, 1: 0.6, 2: 0.7}, {0: 0.4, 1: 0.45, 2: 0.65})
    assert p.n == 3 and p.mean == pytest.approx(0.1) and p.sd == pytest.approx(0.05)
    assert p.ci == pytest.approx(4.302652729911275 * 0.05 / math.sqrt(3))  # 0.1242
    assert not p.distinguishable and not p.above_zero  # the CI reaches below 0
    # with t(0.975, 3) = 3.1824: 3.1824 * 0.05 / 2 = 0.0796 < 0.1, while 3 seeds give 0.124 > 0.1
    assert seeds_to_resolve(p.mean, p.sd) == 4
    assert "an estimated ~4 seeds would resolve" in resolve_text(p)
    # only seeds both sides have, with finite values, are paired; the independent CIs would overlap here
    q = paired_difference({0: 0.9, 1: 0.5, 2: 0.1, 3: 0.7, 4: math.nan}, {0: 0.8, 1: 0.4, 2: 0.0, 5: 0.3, 4: 0.1})
    assert q.n == 3 and q.mean == pytest.approx(0.1) and q.sd == pytest.approx(0.0, abs=1e-12)
    assert q.distinguishable and q.above_zero
    one = paired_difference({0: 0.3}, {0: 0.1})
    assert one.n == 1 and one.above_zero and not one.distinguishable  # one pair has no interval
    assert "one pair" in resolve_text(one)
    assert resolve_text(Paired(0.0, 0.0, 3, 0.0)) == "identical on all 3 seeds"
    assert resolve_text(Paired(1e-6, 0.02, 3, 0.008)).startswith("any difference is below 0.02")
    assert paired_text(Paired(-0.2, 0.05, 3, 0.02), "Δ") == "Δ -0.200 ± 0.050 over 3 paired seeds, distinguishable"


def test_paired_ci_agrees_with_scipy_paired_t_test():
    stats = pytest.importorskip("scipy.stats")
    a = [0.81, 0.77, 0.85, 0.79, 0.83]
    b = [0.80, 0.70, 0.86, 0.71, 0.78]
    p = paired_difference(dict(enumerate(a)), dict(enumerate(b)))
    res = stats.ttest_rel(a, b)
    lo, hi = res.confidence_interval(0.95)
    assert p.mean - p.ci == pytest.approx(lo) and p.mean + p.ci == pytest.approx(hi)
    assert p.distinguishable == (res.pvalue < 0.05)


# end to end: strength zero pairs to exactly 0 --------------------------------------------------
def test_a_strength_zero_defense_pairs_to_exactly_zero(run_matrix):
    cells = run_matrix("""
[experiment]
datasets = ["digits"]
depths = [1]
seeds = [0, 1]
n_train = 200
n_test = 100
n_aux = 100
[train]
epochs = 1
max_steps = 3
[[attacks]]
name = "mean-image"
[[attacks]]
name = "random-front"
[[attacks]]
name = "norm-label"
[[defenses]]
name = "none"
[[defenses]]
name = "noise"
params = { scale = 0.0 }
""", "--no-report")
    assert len(cells) == 12 and all(c["status"] == "ok" for c in cells), [c["error"] for c in cells]
    s = summarize([Cell.from_json(c) for c in cells])
    noise = s[s["defense"] == "noise"]
    assert set(noise["headline"]) == {"ssim", "clone_acc", "leak_auc"}
    for _, r in noise.iterrows():  # the same data order and initialisation: bit for bit the same model
        assert r["d_test_acc"] == 0.0 and r["d_test_acc_ci95"] == 0.0 and r["d_test_acc_n"] == 2, r
        # random-front included: the attack's draws are keyed by the cell without its defense
        assert r["d_headline"] == 0.0 and r["d_headline_ci95"] == 0.0 and r["d_headline_n"] == 2, r
        assert not r["d_headline_sig"]
    lf = leakage_frame(s)
    table = [line for line in conclude(lf, "random-front", "digits")]
    assert any("baseline" in t for t in table)
    from arena.report.paired import paired_of

    assert resolve_text(paired_of(noise.iloc[0], "d_headline")) == "identical on all 2 seeds"


# the under-budget check ---------------------------------------------------------------------
BASE = {"ssim": [0.030, 0.045, 0.020]}


def _matrix(attack_ssim: list[float], with_baseline: bool = True) -> list[Cell]:
    """toy-inversion (unregistered: judged by ssim) and, optionally, mean-image, under none and noise
    (noise lowers toy-inversion's ssim by 0.02 on every seed, at no accuracy cost)."""
    cells = _cells("toy-inversion", {"ssim": attack_ssim})
    cells += _cells("toy-inversion", {"ssim": [v - 0.02 for v in attack_ssim]}, "noise", dparams={"sigma": 1.0})
    if with_baseline:
        cells += _cells("mean-image", BASE) + _cells("mean-image", BASE, "noise", dparams={"sigma": 1.0})
    return cells


def _text(lf, attack="toy-inversion") -> str:
    return " ".join(conclude(lf, attack, "digits"))


def test_an_attack_at_its_baseline_is_under_budget_and_no_defense_is_credited():
    cells = _matrix([0.031, 0.046, 0.019])  # = mean-image seed by seed, to ±0.001
    s = summarize(cells)
    lf = leakage_frame(s)
    toy = lf[lf["attack"] == "toy-inversion"].set_index("defense")
    assert (toy["vs_baseline"] == UNDER).all() and (toy["baseline"] == "mean-image").all()
    assert toy.loc["noise", "d_headline_sig"]  # noise really changes its ssim, paired ...
    text = _text(lf)
    assert "**Under budget**" in text and "no defense is credited" in text  # ... but it is not credited
    assert "Lowest leakage" not in text and "lowers" not in text and "Best within" not in text
    row = next(r for r in overview(lf)[1] if r[0] == "toy-inversion")
    assert "UNDER BUDGET" in row[4] and row[5] == "not credited: under budget" and row[6] == "-"
    assert "under budget (does not beat its baseline undefended" in format_table(s)
    from arena.report.plots import _row_label

    r = next(toy.reset_index().itertuples())
    assert _row_label(r, False).endswith("(UNDER BUDGET)")
    base = lf[lf["attack"] == "mean-image"]
    assert (base["vs_baseline"] == IS_BASELINE).all() and "This is a baseline" in _text(lf, "mean-image")


def test_an_attack_well_above_its_baseline_is_not_flagged_and_defenses_are_judged_paired():
    lf = leakage_frame(summarize(_matrix([0.71, 0.66, 0.80])))
    toy = lf[lf["attack"] == "toy-inversion"].set_index("defense")
    assert (toy["vs_baseline"] == ABOVE).all()
    assert toy.loc["none", "d_baseline"] == pytest.approx((0.68 + 0.615 + 0.78) / 3)
    text = _text(lf)
    assert "It beats the mean-image baseline, paired by seed: Δ ssim +0.692" in text
    # the seeds spread 0.66–0.80, so the independent CIs overlap; paired, the 0.02 drop is exact
    assert ("Lowest leakage: noise(sigma=1.0), ssim 0.703 ± 0.176 (Δ vs undefended -0.020 ± 0.000 over 3 "
            "paired seeds, distinguishable)") in text
    assert "UNDER BUDGET" not in " ".join(map(str, overview(lf)[1][1]))


def test_one_seed_counts_only_when_above_and_a_missing_baseline_is_said_not_guessed():
    lf = leakage_frame(summarize(_cells("toy-inversion", {"ssim": [0.05]}) + _cells("mean-image", {"ssim": [0.05]})))
    assert lf.set_index("attack").loc["toy-inversion", "vs_baseline"] == UNDER  # equal is not above
    lf = leakage_frame(summarize(_cells("toy-inversion", {"ssim": [0.06]}) + _cells("mean-image", {"ssim": [0.05]})))
    assert lf.set_index("attack").loc["toy-inversion", "vs_baseline"] == ABOVE
    lf = leakage_frame(summarize(_matrix([0.03, 0.04, 0.02], with_baseline=False)))
    assert (lf["vs_baseline"] == NO_BASELINE).all()
    text = _text(lf)
    assert "No baseline run: no undefended mean-image cell" in text and "Under budget" not in text
    # a baseline at another depth is not this depth's baseline
    other = _matrix([0.5, 0.6, 0.7], with_baseline=False) + _cells("mean-image", BASE, depth=2)
    assert (leakage_frame(summarize(other)).query("attack == 'toy-inversion'")["vs_baseline"] == NO_BASELINE).all()


def test_label_and_stealing_metrics_have_per_seed_baselines():
    # label accuracy at its own label_chance on every seed: under budget; leak AUC at 0.5: under budget
    at_chance = _cells("toy-label", {"label_acc": [0.31, 0.4, 0.52], "label_chance": [0.3, 0.41, 0.5]})
    lf = leakage_frame(summarize(at_chance)).iloc[0]
    assert lf["metric"] == "label_acc" and lf["vs_baseline"] == UNDER and lf["baseline"] == "label_chance"
    auc = leakage_frame(summarize(_cells("toy-auc", {"leak_auc": [0.48, 0.52, 0.5]}))).iloc[0]
    assert auc["metric"] == "leak_auc" and auc["vs_baseline"] == UNDER and auc["baseline"] == "leak_auc 0.5"
    good = leakage_frame(summarize(_cells("toy-auc", {"leak_auc": [0.9, 0.85, 0.95]}))).iloc[0]
    assert good["vs_baseline"] == ABOVE and good["d_baseline"] == pytest.approx(0.4)
    # a stealing attack (judged by clone accuracy) is paired with random-front, the strongest run
    steal = _cells("toy-steal", {"clone_acc": [0.30, 0.35, 0.25]})
    front = _cells("random-front", {"clone_acc": [0.28, 0.36, 0.22]})
    lf = leakage_frame(summarize(steal + front)).set_index("attack")
    assert lf.loc["toy-steal", "metric"] == "clone_acc" and lf.loc["toy-steal", "baseline"] == "random-front"
    assert lf.loc["toy-steal", "vs_baseline"] == UNDER and lf.loc["random-front", "vs_baseline"] == IS_BASELINE


def test_a_secondary_leakage_metric_is_paired_with_its_own_baseline_but_does_not_flag():
    # UnSplit is judged by SSIM (above mean-image); its clone is compared with random-front, unflagged
    unsplit = _cells("unsplit", {"ssim": [0.7, 0.6, 0.8], "clone_acc": [0.2, 0.25, 0.1]})
    cells = unsplit + _cells("mean-image", BASE) + _cells("random-front", {"clone_acc": [0.21, 0.2, 0.12]})
    lf = leakage_frame(summarize(cells)).set_index("attack")
    assert lf.loc["unsplit", "metric"] == "ssim" and lf.loc["unsplit", "vs_baseline"] == ABOVE
    assert lf.loc["unsplit", "base_clone_acc"] == "random-front"
    assert lf.loc["unsplit", "d_base_clone_acc"] == pytest.approx((-0.01 + 0.05 - 0.02) / 3)
    text = _text(leakage_frame(summarize(cells)), "unsplit")
    assert "Its clone_acc against the random-front baseline, paired by seed: not above it (Δ clone_acc +0.007" in text
