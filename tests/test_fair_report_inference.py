"""The report's inference layer against answers worked out on paper: the bootstrap over pairs and over seeds, the
paired difference to the baseline, the rule that marks an interval excluding 0, and the Pareto rule that counts
differences within noise as ties.

The inputs are chosen so that the 95% percentile interval is known without simulating the bootstrap: a draw picks
n pairs with replacement (and 3 run positions of 3 with replacement), so an outcome with probability well above
2.5% (e.g. all three drawn runs being the first one: 1/27, about 37 of 1,000 draws; at least 26 are needed for the
2.5% quantile of 1,000 draws to sit on it) puts an end of the interval exactly on that outcome's value.
"""

from __future__ import annotations

import pytest
import torch

from openrlhf_fair.report.analysis import MethodResult, _dominates, analyse
from openrlhf_fair.report.data import PairSet, ScoredRun
from openrlhf_fair.errors import ReportError
from openrlhf_fair.report.intervals import Estimate, difference, estimate
from openrlhf_fair.report.rendering import differences_table, fmt_estimate

F64 = torch.float64


def _run(label: str, chosen, rejected=None, path: str | None = None) -> ScoredRun:
    c = torch.tensor(chosen, dtype=F64)
    r = torch.zeros_like(c) if rejected is None else torch.tensor(rejected, dtype=F64)
    return ScoredRun(label, path or label, c, r, torch.zeros(c.numel(), dtype=torch.bool))


def _pairs(n: int, groups=None) -> PairSet:
    return PairSet(groups or ["g"] * n, [10] * n, [10] * n, "hand")


def _interval(e: Estimate) -> tuple[float, float, float]:
    return (e.value, e.lo, e.hi)


# --- the bootstrap over seeds and pairs ---------------------------------------------------------------------------

def test_three_seeds_that_disagree_give_an_interval_from_the_lowest_to_the_highest_seed():
    """Seed k gives every pair the chosen reward 0, 0.25, 0.5: the pairs drawn do not matter, only the seeds do.
    Mean over seeds 0.25. The draws where all three drawn runs are the first (1/27) give 0, all the last give 0.5:
    the interval is [0, 0.5], 0.5 wide. A bootstrap that keeps the three seeds fixed would give [0.25, 0.25]."""
    pairs = _pairs(2)
    runs = [_run("m", [v, v], path=f"m/seed{k}") for k, v in enumerate((0.0, 0.25, 0.5))]
    (m,) = analyse(pairs, runs, resamples=1000, seed=0)
    assert _interval(m.metrics["fairness/mean_chosen_reward"]) == (pytest.approx(0.25), 0.0, 0.5)
    assert [p["fairness/mean_chosen_reward"] for p in m.per_run] == [0.0, 0.25, 0.5]
    assert len(m.runs) == 3


def test_one_seed_two_pairs_one_right_one_wrong_gives_the_interval_0_to_1():
    """Accuracy 1/2 on all pairs; a draw of 2 pairs with replacement has both wrong (acc 0) or both right (acc 1)
    with probability 1/4 each: the interval is [0, 1]. A bootstrap that kept the pairs would give [0.5, 0.5]."""
    (m,) = analyse(_pairs(2), [_run("m", [1.0, -1.0])], resamples=1000, seed=0)
    assert _interval(m.metrics["fairness/acc"]) == (0.5, 0.0, 1.0)


def test_seeds_and_pairs_together():
    """Three seeds with accuracies 0, 1/2, 1 on two pairs (seed 1 gets both wrong, seed 2 one, seed 3 both right).
    Mean over seeds 1/2. Drawing seed 1 three times (1/27 of the draws) gives 0 whatever pairs are drawn, seed 3
    three times gives 1: [0, 1]."""
    runs = [_run("m", [-1.0, -1.0]), _run("m", [1.0, -1.0]), _run("m", [1.0, 1.0])]
    (m,) = analyse(_pairs(2), runs, resamples=1000, seed=0)
    assert _interval(m.metrics["fairness/acc"]) == (0.5, 0.0, 1.0)


# --- the paired difference to the baseline ------------------------------------------------------------------------

def test_difference_is_paired_over_seeds():
    """B's seed k is A's seed k plus 0.25: in every draw both methods get the same run positions, so the difference
    is 0.25 in every draw: [0.25, 0.25], which excludes 0. Unpaired seeds would give about [-0.25, 0.75]."""
    pairs = _pairs(2)
    runs = [_run("A", [v, v]) for v in (0.0, 0.25, 0.5)] + [_run("B", [v, v]) for v in (0.25, 0.5, 0.75)]
    a, b = analyse(pairs, runs, resamples=1000, seed=0)
    assert a.vs_baseline == {}  # the baseline is the first model
    d = b.vs_baseline["fairness/mean_chosen_reward"]
    assert _interval(d) == (0.25, pytest.approx(0.25), pytest.approx(0.25)) and d.excludes_zero
    # B minus A, not A minus B
    assert b.vs_baseline["fairness/mean_rejected_reward"].value == 0.0


def test_difference_is_paired_over_pairs():
    """One seed each; B gives every pair A's reward plus 0.25, A's rewards differ between the pairs (0 and 1): each
    method's own interval is wide ([0, 1] and [0.25, 1.25]), their paired difference is exactly 0.25."""
    a, b = analyse(_pairs(2), [_run("A", [0.0, 1.0]), _run("B", [0.25, 1.25])], resamples=1000, seed=0)
    assert _interval(a.metrics["fairness/mean_chosen_reward"]) == (0.5, 0.0, 1.0)
    assert _interval(b.metrics["fairness/mean_chosen_reward"]) == (0.75, 0.25, 1.25)
    assert _interval(b.vs_baseline["fairness/mean_chosen_reward"]) == (0.25, 0.25, 0.25)


def test_baseline_named_by_label_is_the_reference():
    """--baseline B (not the first model): differences are taken against B, and B has none of its own."""
    runs = [_run("A", [0.0, 0.0]), _run("B", [0.5, 0.5]), _run("C", [1.0, 1.0])]
    a, b, c = analyse(_pairs(2), runs, baseline="B", resamples=200, seed=0)
    assert b.vs_baseline == {}
    assert _interval(a.vs_baseline["fairness/mean_chosen_reward"]) == (-0.5, -0.5, -0.5)
    assert _interval(c.vs_baseline["fairness/mean_chosen_reward"]) == (0.5, 0.5, 0.5)
    with pytest.raises(ReportError, match="'D' is not one of the models"):
        analyse(_pairs(2), runs, baseline="D", resamples=10)


def test_difference_function_is_a_minus_b_with_the_quantiles_of_the_draw_differences():
    # draws of a - b: 20 times -1 and 20 times +3 -> the 2.5% and 97.5% quantiles are -1 and 3
    a = torch.tensor([0.0] * 20 + [4.0] * 20, dtype=F64)
    b = torch.ones(40, dtype=F64)
    assert _interval(difference(2.0, 0.5, a, b)) == (1.5, -1.0, 3.0)
    # estimate: NaN draws are left out
    assert _interval(estimate(7.0, torch.tensor([float("nan")] * 5 + [2.0] * 40, dtype=F64))) == (7.0, 2.0, 2.0)


# --- which intervals are marked -------------------------------------------------------------------------------------

def test_an_interval_excluding_0_is_marked_and_one_touching_0_is_not():
    assert Estimate(0.1, 0.05, 0.2).excludes_zero and Estimate(-0.1, -0.2, -0.05).excludes_zero
    for touching in (Estimate(0.1, 0.0, 0.2), Estimate(-0.1, -0.2, 0.0), Estimate(0.0, -0.1, 0.1),
                     Estimate(0.0, 0.0, 0.0)):
        assert not touching.excludes_zero, touching
    assert fmt_estimate(Estimate(0.1, 0.05, 0.2), "{:+.3f}", mark=True) == "**+0.100 [+0.050, +0.200]**"
    assert fmt_estimate(Estimate(-0.1, -0.2, -0.05), "{:+.3f}", mark=True) == "**-0.100 [-0.200, -0.050]**"
    assert fmt_estimate(Estimate(0.1, 0.0, 0.2), "{:+.3f}", mark=True) == "+0.100 [+0.000, +0.200]"
    assert fmt_estimate(Estimate(-0.1, -0.2, 0.0), "{:+.3f}", mark=True) == "-0.100 [-0.200, +0.000]"
    # without mark=True (the per-model tables) nothing is bold
    assert fmt_estimate(Estimate(0.1, 0.05, 0.2), "{:.3f}") == "0.100 [0.050, 0.200]"


def test_differences_table_marks_the_difference_whose_interval_excludes_0():
    """Accuracy per seed (every pair of a seed right or every pair wrong, so the pairs drawn do not matter):
    base 0, 0, 0; 'touch' 0, 0, 1 (difference 0 in the 8/27 of the draws that miss seed 3, 1 in the 1/27 that draw
    it three times: [0, 1], touches 0); 'clear' 1, 1, 1 (difference 1 in every draw)."""
    runs = ([_run("base", [-1.0] * 3)] * 3 + [_run("touch", [-1.0] * 3)] * 2 + [_run("touch", [1.0] * 3)]
            + [_run("clear", [1.0] * 3)] * 3)
    results = analyse(_pairs(3), runs, resamples=1000, seed=0)
    touch, clear = results[1].vs_baseline["fairness/acc"], results[2].vs_baseline["fairness/acc"]
    assert _interval(touch) == (pytest.approx(1 / 3), 0.0, 1.0) and not touch.excludes_zero
    assert _interval(clear) == (1.0, 1.0, 1.0) and clear.excludes_zero
    rows = differences_table(results, "base").splitlines()
    assert len(rows) == 4  # head, rule, one row per model other than the baseline
    assert rows[2].startswith("| touch | +0.333 [+0.000, +1.000] | ")
    assert rows[3].startswith("| clear | **+1.000 [+1.000, +1.000]** | ")


# --- the Pareto rule: differences within noise are ties --------------------------------------------------------------

def test_pareto_through_analyse_within_noise_is_a_tie():
    """Four pairs of one group, equal lengths: the reward gap is 0 for everyone and the length correlation undefined
    (ties). Accuracy: A right on pairs 1-2 (1/2), B on pair 1 (1/4), C on all (1).
    C - B = share of drawn pairs among 2-4: 0 only if all four draws are pair 1 (1/256 < 2.5%): beyond noise, C
    dominates B. A - B: 0 whenever pair 2 is not drawn ((3/4)**4 = 32%): within noise. C - A: 0 whenever pairs 3-4
    are not drawn ((1/2)**4 = 6%): within noise. So only B is dominated, and only by C."""
    runs = [_run("A", [1.0, 1.0, -1.0, -1.0]), _run("B", [1.0, -1.0, -1.0, -1.0]), _run("C", [1.0] * 4)]
    a, b, c = analyse(_pairs(4), runs, resamples=1000, seed=0)
    assert (a.value("fairness/acc"), b.value("fairness/acc"), c.value("fairness/acc")) == (0.5, 0.25, 1.0)
    assert b.vs_baseline["fairness/acc"].lo == -0.75 and b.vs_baseline["fairness/acc"].hi == 0.0  # B - A
    assert a.dominated_by == [] and c.dominated_by == []
    assert b.dominated_by == ["C"]


def _result(label: str, values: dict[str, float]) -> MethodResult:
    return MethodResult(label, [], {k: Estimate(v, v, v) for k, v in values.items()}, [])


def _two_valued(x: float, y: float) -> torch.Tensor:
    """40 draws, 20 at x and 20 at y: their 2.5% / 97.5% quantiles are min(x, y) and max(x, y)."""
    return torch.tensor([x] * 20 + [y] * 20, dtype=F64)


CRITERIA = ("fairness/acc", "fairness/reward_gap_over_std", "fairness/length_corr")  # up, down, down


def _dominance(acc, gap, corr) -> tuple[bool, bool]:
    """(A dominates B, B dominates A) when A - B has, per criterion, draws at the two given values (B's draws 0)."""
    diffs = dict(zip(CRITERIA, (acc, gap, corr)))
    points = {k: sum(v) / 2 for k, v in diffs.items()}
    a, b = _result("A", points), _result("B", {k: 0.0 for k in CRITERIA})
    draws = {"A": {k: _two_valued(*v) for k, v in diffs.items()}, "B": {k: torch.zeros(40, dtype=F64)
                                                                      for k in CRITERIA}}
    return _dominates(a, b, draws), _dominates(b, a, draws)


def test_pareto_rule_by_hand():
    tie = (-0.1, 0.1)
    # better beyond noise on accuracy, ties elsewhere: A dominates B
    assert _dominance((0.1, 0.3), tie, tie) == (True, False)
    # better beyond noise on accuracy, but a larger gap beyond noise: neither dominates
    assert _dominance((0.1, 0.3), (0.1, 0.2), tie) == (False, False)
    # lower gap (better) beyond noise, and lower length correlation (better) beyond noise: A dominates
    assert _dominance(tie, (-0.2, -0.1), (-0.3, -0.1)) == (True, False)
    # a higher length correlation beyond noise makes A worse: B dominates when A is better only within noise
    assert _dominance((-0.05, 0.3), tie, (0.1, 0.2)) == (False, True)
    # better only within noise (point +0.125 on accuracy, interval [-0.05, 0.3]) on everything: no domination
    assert _dominance((-0.05, 0.3), (-0.3, 0.05), (-0.3, 0.05)) == (False, False)
    # an interval that touches 0 is within noise: [0, 0.3] on accuracy does not make A better
    assert _dominance((0.0, 0.3), tie, tie) == (False, False)
    # and a difference of exactly [0, 0] everywhere is a tie both ways
    assert _dominance((0.0, 0.0), (0.0, 0.0), (0.0, 0.0)) == (False, False)


def test_two_seeds_are_resampled_too():
    """Two seeds (chosen reward 0 and 1 on every pair): a quarter of the draws take seed 1 twice (0), a quarter
    seed 2 twice (1): [0, 1] around the mean 1/2."""
    runs = [_run("m", [0.0, 0.0]), _run("m", [1.0, 1.0])]
    (m,) = analyse(_pairs(2), runs, resamples=1000, seed=0)
    assert _interval(m.metrics["fairness/mean_chosen_reward"]) == (0.5, 0.0, 1.0)


def test_draw_plan_shapes():
    from openrlhf_fair.report.intervals import draw_indices

    plan = draw_indices(4, [1, 2, 1], resamples=30, seed=1)
    assert plan.pairs.shape == (30, 4) and plan.pairs.dtype == torch.int64
    assert set(plan.runs) == {1, 2}
    assert plan.runs[1].shape == (30, 1) and plan.runs[1].dtype == torch.int64 and not plan.runs[1].any()
    assert plan.runs[2].shape == (30, 2) and set(plan.runs[2].unique().tolist()) == {0, 1}
    assert set(plan.pairs.unique().tolist()) == {0, 1, 2, 3}
    assert not torch.equal(draw_indices(4, [2], 30, seed=2).pairs, plan.pairs)  # the seed is used


def test_point_values_are_the_shared_eval_metrics_at_temperature_1():
    """Margins ln 3 and 0: allocations sigmoid(m) = 3/4 and 1/2. Jain = (5/4)**2 / (2 * (9/16 + 1/4)) = 25/26;
    Gini = |3/4 - 1/2| * 2 / (2 * 2**2 * 5/8) = 1/10. Accuracy 1/2 (a zero margin counts as wrong)."""
    import math

    (m,) = analyse(_pairs(2), [_run("m", [math.log(3.0), 0.0])], resamples=20, seed=0)
    assert m.value("fairness/jain") == pytest.approx(25 / 26, rel=1e-12)
    assert m.value("fairness/gini") == pytest.approx(0.1, rel=1e-12)
    assert m.value("fairness/acc") == 0.5
    assert m.per_run[0]["fairness/jain"] == pytest.approx(25 / 26, rel=1e-12)


def test_runs_are_grouped_by_label_in_order_of_first_appearance_and_checked_against_the_pairs():
    runs = [_run("b", [1.0, 1.0]), _run("a", [0.0, 0.0]), _run("b", [2.0, 2.0])]
    results = analyse(_pairs(2), runs, resamples=20, seed=0)
    assert [r.label for r in results] == ["b", "a"] and [len(r.runs) for r in results] == [2, 1]
    assert results[0].value("fairness/mean_chosen_reward") == 1.5
    assert results[1].vs_baseline["fairness/mean_chosen_reward"].value == -1.5  # against b, the first
    with pytest.raises(ReportError, match="has 3 rewards for 2 pairs"):
        analyse(_pairs(2), [_run("x", [1.0, 1.0, 1.0])], resamples=5)
    with pytest.raises(ReportError, match="no model"):
        analyse(_pairs(2), [], resamples=5)


def test_scale_warning_at_exactly_a_fifth_and_below():
    """Reward std (all chosen and rejected rewards): bt +-1 -> 1; 'fifth' +-0.2 -> 0.2, exactly a fifth: not
    below, no warning; 'below' +-0.125 -> 0.125 < 0.2: warned."""
    from openrlhf_fair.report.analysis import scale_warnings

    runs = [_run("bt", [1.0, 1.0], [-1.0, -1.0]), _run("fifth", [0.2, 0.2], [-0.2, -0.2]),
            _run("below", [0.125, 0.125], [-0.125, -0.125])]
    results = analyse(_pairs(2), runs, resamples=20, seed=0)
    assert [r.value("fairness/reward_std") for r in results] == [1.0, 0.2, 0.125]
    warnings = scale_warnings(results, "bt")
    assert len(warnings) == 1 and warnings[0].startswith("below: reward std 0.125 is below a fifth of bt's (1)")


def test_defaults_are_1000_resamples_from_seed_0():
    """The report's numbers are reproducible: without resamples/seed, analyse draws the plan of 1,000 resamples
    from seed 0 (the CLI passes --resamples, not a seed)."""
    values = [float(v * v) for v in range(12)]
    runs = [_run("A", values), _run("B", values[::-1])]

    def intervals(**kw):
        a, b = analyse(_pairs(12), runs, **kw)
        key = "fairness/mean_chosen_reward"
        return _interval(a.metrics[key]), _interval(b.vs_baseline[key])

    assert intervals() == intervals(resamples=1000, seed=0)
    assert intervals(resamples=1001, seed=0) != intervals(resamples=1000, seed=0)
    assert intervals(resamples=1000, seed=1) != intervals(resamples=1000, seed=0)


def test_a_single_run_model_does_not_change_the_other_models_draws():
    """A model with one run draws no run positions (it takes its run in every draw), so adding one to a report
    leaves the pair and run draws of the others, and their intervals, as they were."""
    from openrlhf_fair.report.intervals import draw_indices

    alone, with_single = draw_indices(5, [3], 200, seed=4), draw_indices(5, [1, 3], 200, seed=4)
    assert torch.equal(alone.pairs, with_single.pairs) and torch.equal(alone.runs[3], with_single.runs[3])
    # defaults: 1,000 draws from seed 0
    default = draw_indices(3, [2])
    assert default.pairs.shape == (1000, 3) and torch.equal(default.pairs, draw_indices(3, [2], 1000, 0).pairs)
    assert torch.equal(default.runs[2], draw_indices(3, [2], 1000, 0).runs[2])
    assert not torch.equal(default.pairs, draw_indices(3, [2], 1000, 1).pairs)
