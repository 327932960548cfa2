"""`report`'s scale check (issue 21): a model whose reward std is below a fifth of the baseline's is warned about
(its raw gap is not comparable, its rewards need normalising before PPO), in report.md / report.json, on stderr
and in the demo's reading; the tables give raw gap, gap / reward std and reward std side by side."""

from __future__ import annotations

import json

import pytest
import torch

from openrlhf_fair import report
from openrlhf_fair.report import analysis, rendering
from openrlhf_fair.report.data import PairSet, ScoredRun, write_pair_rewards


def scored(label: str, scale: float, n: int = 40) -> ScoredRun:
    """Rewards with a group gap and margins, all multiplied by ``scale``."""
    g = torch.Generator().manual_seed(0)
    group = torch.arange(n) % 2
    chosen = (torch.randn(n, generator=g, dtype=torch.float64) + 1.0 + group) * scale
    rejected = (torch.randn(n, generator=g, dtype=torch.float64) + group) * scale
    return ScoredRun(label, label, chosen, rejected, torch.zeros(n, dtype=torch.bool))


def pairs(n: int = 40) -> PairSet:
    return PairSet(["a", "b"] * (n // 2), [5] * n, [4] * n, "t")


@pytest.mark.parametrize("scale, warned", [(0.19, True), (0.21, False), (1.0, False), (3.0, False)])
def test_a_model_below_a_fifth_of_the_baselines_reward_std_is_warned_about(scale, warned):
    results = analysis.analyse(pairs(), [scored("bt", 1.0), scored("small", scale)], baseline="bt", resamples=100)
    warnings = analysis.scale_warnings(results, "bt")
    assert bool(warnings) == warned
    if warned:
        assert warnings[0].startswith("small: reward std") and "below a fifth of bt's" in warnings[0]
        assert "--reward.normalize_enable" in warnings[0] and "gap / reward std" in warnings[0]
    # the same rewards scaled: gap / std equal, raw gap and std scaled
    small, bt = results[1], results[0]
    assert small.value("fairness/reward_gap_over_std") == pytest.approx(bt.value("fairness/reward_gap_over_std"))
    assert small.value("fairness/reward_std") == pytest.approx(scale * bt.value("fairness/reward_std"))


def test_the_baseline_itself_and_a_zero_std_baseline_are_never_warned_about():
    results = analysis.analyse(pairs(), [scored("tiny", 0.01), scored("bt", 1.0)], baseline="tiny", resamples=100)
    assert analysis.scale_warnings(results, "tiny") == []  # bt is larger, tiny is the baseline
    flat = ScoredRun("flat", "flat", torch.zeros(40, dtype=torch.float64), torch.zeros(40, dtype=torch.float64),
                     torch.zeros(40, dtype=torch.bool))
    results = analysis.analyse(pairs(), [flat, scored("bt", 1.0)], baseline="flat", resamples=100)
    assert analysis.scale_warnings(results, "flat") == []


def test_tables_put_raw_gap_gap_over_std_and_reward_std_side_by_side():
    results = analysis.analyse(pairs(), [scored("bt", 1.0), scored("small", 0.1)], baseline="bt", resamples=100)
    header = rendering.summary_table(results, pairs()).splitlines()[0]
    assert "reward gap (raw) | gap / reward std | reward std |" in header
    diff_header = rendering.differences_table(results, "bt").splitlines()[0]
    assert "Δ reward gap (raw) | Δ gap / reward std | Δ reward std |" in diff_header


def test_the_report_and_the_demos_reading_carry_the_warning(tmp_path, capsys):
    runs = [scored("bt", 1.0), scored("level", 0.1)]
    rewards = tmp_path / "pair_rewards.jsonl"
    write_pair_rewards(rewards, pairs(), runs, "category")
    assert report.main(["--rewards", str(rewards), "--out", str(tmp_path / "o"), "--resamples", "100"]) == 0
    assert "warning: level: reward std" in capsys.readouterr().err
    doc = json.loads((tmp_path / "o" / "report.json").read_text())
    assert [w for w in doc["warnings"] if w.startswith("level: reward std")]
    assert "**Warning**: level: reward std" in (tmp_path / "o" / "report.md").read_text()

    from openrlhf_fair.demo.cli import reading

    result = report.run_report(report.build_parser().parse_args(
        ["--rewards", str(rewards), "--out", str(tmp_path / "o2"), "--resamples", "100"]))
    text = reading(result)
    assert "level: reward std" in text and "normalis" in text
    same = [scored("bt", 1.0), scored("level", 0.9)]
    write_pair_rewards(rewards, pairs(), same, "category")
    result = report.run_report(report.build_parser().parse_args(
        ["--rewards", str(rewards), "--out", str(tmp_path / "o3"), "--resamples", "100"]))
    assert "reward std" not in reading(result)
