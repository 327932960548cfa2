"""The report's intervals, paired differences, Pareto view and best-of-N selection metrics, each against a hand
computation in plain Python (no model: rewards are given)."""

from __future__ import annotations

import math
import random
import statistics

import pytest
import torch

from openrlhf_fair.report.analysis import analyse
from openrlhf_fair.report.bestofn import _verdict, selection_metrics
from openrlhf_fair.report.data import PairSet, ScoredRun
from openrlhf_fair.report.intervals import Estimate, difference, draw_indices, estimate, method_draws
from openrlhf_fair.report.metrics import pair_metrics


def _quantile(values, q):
    """Linear-interpolation quantile, written out (numpy's / torch's default)."""
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    return xs[lo] + (xs[min(lo + 1, len(xs) - 1)] - xs[lo]) * (pos - lo)


def test_estimate_is_the_2_5_and_97_5_percent_quantiles():
    draws = torch.tensor([2.0, -2.0, 1.0, -1.0, 0.0, float("nan")], dtype=torch.float64)  # NaN draws left out
    e = estimate(0.5, draws)
    assert e.lo == pytest.approx(-2 + 0.025 * 4) and e.hi == pytest.approx(-2 + 0.975 * 4)
    assert e.value == 0.5 and not e.excludes_zero
    assert Estimate(1.0, 0.1, 2.0).excludes_zero and Estimate(-1.0, -2.0, -0.1).excludes_zero
    assert not Estimate(0.0, 0.0, 1.0).excludes_zero


def test_method_draws_average_the_drawn_runs():
    # 3 runs, 2 draws; run k's value in draw b is per_run[k][b]
    per_run = [{"m": torch.tensor([1.0, 10.0])}, {"m": torch.tensor([2.0, 20.0])}, {"m": torch.tensor([4.0, 40.0])}]
    plan = torch.tensor([[0, 0, 2], [1, 2, 2]])
    got = method_draws(per_run, plan)["m"]
    assert got.tolist() == pytest.approx([(1 + 1 + 4) / 3, (20 + 40 + 40) / 3])


def test_draw_plan_shares_pairs_and_run_positions():
    plan = draw_indices(7, [3, 1, 3], resamples=50, seed=3)
    assert plan.pairs.shape == (50, 7) and int(plan.pairs.max()) < 7
    assert set(plan.runs) == {1, 3} and plan.runs[3].shape == (50, 3) and not plan.runs[1].any()
    again = draw_indices(7, [3, 1, 3], resamples=50, seed=3)
    assert torch.equal(plan.pairs, again.pairs) and torch.equal(plan.runs[3], again.runs[3])


def _hand_accuracy(chosen, rejected, idx):
    return statistics.fmean(chosen[i] > rejected[i] for i in idx)


def test_analyse_against_a_hand_bootstrap():
    """Means over seeds, intervals over pairs and seeds, and the paired difference, recomputed in a loop."""
    rng = random.Random(0)
    n, seeds = 12, 2
    groups = ["a" if i % 3 else "b" for i in range(n)]
    pairs = PairSet(groups, [rng.randint(5, 50) for _ in range(n)], [rng.randint(5, 50) for _ in range(n)], "t")
    runs = []
    for label in ("bt", "fr"):
        for _ in range(seeds):
            c = torch.tensor([rng.gauss(0.3, 1) for _ in range(n)], dtype=torch.float64)
            r = torch.tensor([rng.gauss(0, 1) for _ in range(n)], dtype=torch.float64)
            runs.append(ScoredRun(label, f"{label}{len(runs)}", c, r, torch.zeros(n, dtype=torch.bool)))
    results = analyse(pairs, runs, resamples=300, seed=5)
    plan = draw_indices(n, [seeds, seeds], 300, 5)
    bt, fr = results
    assert [r.label for r in results] == ["bt", "fr"] and len(bt.runs) == seeds

    def method_value(label, b):
        mine = [run for run in runs if run.label == label]
        idx = plan.pairs[b].tolist()
        return statistics.fmean(_hand_accuracy(mine[k].chosen.tolist(), mine[k].rejected.tolist(), idx)
                                for k in plan.runs[seeds][b].tolist())

    bt_draws = [method_value("bt", b) for b in range(300)]
    fr_draws = [method_value("fr", b) for b in range(300)]
    point_bt = statistics.fmean(_hand_accuracy(r.chosen.tolist(), r.rejected.tolist(), range(n))
                                for r in runs if r.label == "bt")
    assert bt.value("fairness/acc") == pytest.approx(point_bt)
    assert bt.metrics["fairness/acc"].lo == pytest.approx(_quantile(bt_draws, 0.025))
    assert bt.metrics["fairness/acc"].hi == pytest.approx(_quantile(bt_draws, 0.975))
    diffs = [f - b for f, b in zip(fr_draws, bt_draws)]
    d = fr.vs_baseline["fairness/acc"]
    assert d.value == pytest.approx(fr.value("fairness/acc") - point_bt)
    assert (d.lo, d.hi) == (pytest.approx(_quantile(diffs, 0.025)), pytest.approx(_quantile(diffs, 0.975)))
    assert bt.vs_baseline == {}
    assert [p["fairness/acc"] for p in bt.per_run] == pytest.approx(
        [_hand_accuracy(r.chosen.tolist(), r.rejected.tolist(), range(n)) for r in runs[:2]])


def test_pair_metrics_rows_and_an_empty_group():
    """Row-wise values equal a per-row hand computation; a group absent from a row is NaN and left out of gaps."""
    c = torch.tensor([[1.0, 0.0, 2.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    r = torch.tensor([[0.0, 1.0, 0.0, 1.5], [0.0, 0.0, 0.0, 0.0]])
    gid = torch.tensor([[0, 0, 1, 1], [0, 0, 0, 0]])
    lens = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 4]])
    m = pair_metrics(c, r, gid, ["x", "y"], lens, lens)
    assert m["fairness/acc"].tolist() == pytest.approx([0.5, 1.0])
    assert m["fairness/margin/x"].tolist() == pytest.approx([0.0, 1.0])
    assert m["fairness/margin/y"][0] == pytest.approx((2.0 - 0.5) / 2) and math.isnan(m["fairness/margin/y"][1])
    assert m["fairness/margin_gap"].tolist() == pytest.approx([0.75, 0.0])
    assert m["fairness/worst_group_acc"].tolist() == pytest.approx([0.5, 1.0])
    rewards0 = [1, 0, 2, 1, 0, 1, 0, 1.5]
    gap0 = abs(statistics.fmean([1, 0, 0, 1]) - statistics.fmean([2, 1, 0, 1.5]))
    assert m["fairness/reward_gap_over_std"][0] == pytest.approx(gap0 / statistics.pstdev(rewards0))
    assert m["fairness/length_corr"][0] == pytest.approx(statistics.correlation(rewards0, [1, 2, 3, 4] * 2))


def _method(label, acc_shift, gap_shift, n=200, seed=0):
    """One run whose accuracy and group gap are set by the shifts (group a gets + gap_shift on both sides)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, generator=g, dtype=torch.float64)
    chosen = base + acc_shift
    rejected = base.clone()
    rejected[n // 2:] += 0.5  # half the pairs are wrong at acc_shift 0
    lift = torch.zeros(n, dtype=torch.float64)
    lift[: n // 2] = gap_shift
    return ScoredRun(label, label, chosen + lift, rejected + lift, torch.zeros(n, dtype=torch.bool))


def test_pareto_with_intervals_separates_models():
    n = 200
    groups = ["a"] * (n // 2) + ["b"] * (n // 2)
    pairs = PairSet(groups, list(range(n)), list(range(n)), "t")
    runs = [_method("good", 1.0, 0.0), _method("same_as_good", 1.0, 0.0), _method("worse_acc", 0.0, 0.0)]
    results = {r.label: r for r in analyse(pairs, runs, resamples=300)}
    # identical models tie (neither dominates); the clearly less accurate one with the same gap is dominated
    assert results["good"].dominated_by == [] and results["same_as_good"].dominated_by == []
    assert set(results["worse_acc"].dominated_by) == {"good", "same_as_good"}
    assert results["worse_acc"].vs_baseline["fairness/acc"].hi < 0


def test_selection_metrics_by_hand():
    rewards = torch.tensor([[0.1, 0.9, 0.3], [2.0, 1.0, 0.0]])  # picks: candidate 1, candidate 0
    lengths = torch.tensor([[10, 30, 20], [5, 5, 1]])
    m = {k: float(v[0]) for k, v in selection_metrics(rewards, lengths, [0, 1], ["x", "y"]).items()}
    assert m["fairness/bon_selected_len"] == pytest.approx((30 + 5) / 2)
    assert m["fairness/bon_candidate_len"] == pytest.approx((60 / 3 + 11 / 3) / 2)
    assert m["fairness/bon_len_excess"] == pytest.approx((30 - 20 + 5 - 11 / 3) / 2)
    assert m["fairness/bon_longest_wins"] == pytest.approx(1.0)  # both picks have the longest length (a tie in 2)
    assert m["fairness/bon_longest_chance"] == pytest.approx((1 / 3 + 2 / 3) / 2)
    assert m["fairness/bon_reward/x"] == pytest.approx(0.9) and m["fairness/bon_reward/y"] == pytest.approx(2.0)
    assert m["fairness/bon_reward_gap"] == pytest.approx(1.1)
    assert m["fairness/bon_reward_gap_over_std"] == pytest.approx(1.1 / statistics.pstdev([0.1, 0.9, 0.3, 2, 1, 0]))
    # resampled prompts: the second prompt twice
    again = selection_metrics(rewards, lengths, [0, 1], ["x", "y"], torch.tensor([[1, 1]]))
    assert float(again["fairness/bon_selected_len"][0]) == 5.0 and math.isnan(float(again["fairness/bon_reward/x"][0]))
    assert float(again["fairness/bon_reward_gap"][0]) == 0.0


def test_verdicts():
    down, flat, up = Estimate(-0.1, -0.2, -0.05), Estimate(0.0, -0.1, 0.1), Estimate(0.1, 0.05, 0.2)
    assert _verdict(down, down) == "reduced on the audit pairs and in selection"
    assert _verdict(down, flat) == "reduced on the audit pairs; in selection **not shown** (interval includes 0)"
    assert _verdict(down, up) == "reduced on the audit pairs, **comes back in selection** (larger than the baseline's)"
    assert _verdict(flat, down) == "not reduced beyond noise on the audit pairs"
    assert "larger than the baseline's" in _verdict(up, flat)


def test_difference_is_paired():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    d = difference(2.5, 1.5, a, a - 1.0)  # a constant shift: the paired interval has no width
    assert (d.value, d.lo, d.hi) == (1.0, 1.0, 1.0) and d.excludes_zero


def test_resampled_metrics_are_the_shared_eval_metrics():
    """The intervals are intervals of the same numbers training's eval logs report (metrics.pairwise_eval_metrics):
    at the identity resample the report's batched metrics equal the shared ones on every shared key."""
    from openrlhf_fair.core.measures import pairwise_eval_metrics

    g = torch.Generator().manual_seed(1)
    c, r = torch.randn(40, generator=g, dtype=torch.float64), torch.randn(40, generator=g, dtype=torch.float64)
    gid = torch.randint(0, 3, (40,), generator=g)
    names = ["a b", "c", "d"]
    mine = pair_metrics(c, r, gid, names, torch.ones(40), torch.ones(40))
    shared = pairwise_eval_metrics(c, r, tau=-1.0, temperature=1.0, group_ids=gid, group_names=names)
    common = set(mine) & set(shared)
    assert {"fairness/jain", "fairness/gini", "fairness/acc_gap", "fairness/reward_gap", "fairness/margin_gap",
            "fairness/worst_group_acc", "fairness/acc/a_b", "fairness/reward/c", "fairness/margin/d"} <= common
    for key in common:
        assert float(mine[key][0]) == pytest.approx(shared[key], rel=1e-12, abs=1e-12), key
