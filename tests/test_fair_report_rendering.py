"""report.md / report.json from typed results written by hand (`report.rendering`): every table's rows, the number
formats, the marks and the sections, against literal expected text."""

from __future__ import annotations

import json
import math

import pytest
import torch

from openrlhf_fair.report.analysis import MethodResult
from openrlhf_fair.report.data import PairSet, ScoredRun
from openrlhf_fair.report.intervals import Estimate
from openrlhf_fair.report.rendering import differences_table, fmt, fmt_estimate, group_table, pareto_table, report_json, report_markdown, runs_table, summary_table, write_json

E = Estimate
PAIRS = PairSet(["a", "b", "b"], [1, 2, 3], [4, 5, 6], "three pairs")

BASE_METRICS = {
    "fairness/acc": E(0.75, 0.5, 1.0), "fairness/worst_group_acc": E(0.5, 0.0, 1.0),
    "fairness/reward_gap": E(1.25, 0.5, 2.0), "fairness/reward_gap_over_std": E(0.5, 0.25, 0.75),
    "fairness/reward_std": E(0.875, 0.5, 1.25), "fairness/margin_gap": E(0.25, 0.0, 0.5), "fairness/jain": E(0.9, 0.8, 1.0), "fairness/gini": E(0.05, 0.0, 0.1),
    "fairness/length_corr": E(0.3, -0.1, 0.6),
    # per group: a is the most accurate and gets the lowest reward; b the least accurate, the highest reward
    "fairness/acc/a": E(1.0, 1.0, 1.0), "fairness/acc/b": E(0.5, 0.0, 1.0),
    "fairness/reward/a": E(0.25, 0.0, 0.5), "fairness/reward/b": E(1.5, 1.0, 2.0),
    "fairness/margin/a": E(2.0, 2.0, 2.0), "fairness/margin/b": E(0.125, -1.0, 1.0),
    "fairness/chosen_reward/a": E(1.25, 1.0, 1.5), "fairness/chosen_reward/b": E(1.5, 1.0, 2.0),
    "fairness/rejected_reward/a": E(-0.75, -1.0, -0.5), "fairness/rejected_reward/b": E(1.5, 1.0, 2.0),
    "fairness/length_corr/a": E(float("nan"), float("nan"), float("nan")),
    "fairness/length_corr/b": E(-0.5, -1.0, 0.0),
}
# fr: group a now the least accurate and the highest reward
FR_METRICS = {**BASE_METRICS, "fairness/acc": E(1.0, 1.0, 1.0), "fairness/acc/a": E(0.0, 0.0, 1.0),
              "fairness/acc/b": E(1.0, 1.0, 1.0), "fairness/worst_group_acc": E(0.0, 0.0, 1.0),
              "fairness/reward/a": E(3.0, 2.0, 4.0), "fairness/reward/b": E(float("nan"), float("nan"), float("nan"))}
FR_VS_BASE = {
    "fairness/acc": E(0.25, 0.0, 0.5), "fairness/worst_group_acc": E(-0.5, -1.0, -0.25),
    "fairness/reward_gap": E(0.5, 0.25, 0.75), "fairness/reward_gap_over_std": E(-0.25, -0.5, 0.0),
    "fairness/reward_std": E(-0.125, -0.25, 0.0), "fairness/margin_gap": E(0.0, -0.125, 0.125), "fairness/jain": E(0.05, 0.01, 0.1),
    "fairness/gini": E(-0.01, -0.02, -0.005), "fairness/length_corr": E(-0.2, -0.4, -0.1),
}
SUMMARY_KEYS = ["fairness/acc", "fairness/worst_group_acc", "fairness/reward_gap", "fairness/reward_gap_over_std",
                "fairness/reward_std", "fairness/margin_gap", "fairness/jain", "fairness/gini", "fairness/length_corr"]


def _scored(label, path, identical):
    return ScoredRun(label, path, torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64),
                     torch.tensor(identical))


def _results():
    base = MethodResult("base", [_scored("base", "/runs/base/", [True, False, False])], BASE_METRICS,
                        [{k: BASE_METRICS[k].value for k in SUMMARY_KEYS}], dominated_by=["fr"])
    fr_runs = [_scored("fr", "/runs/fr/seed1", [True, True, False]), _scored("fr", "fr_seed2", [False] * 3)]
    per_run = [{k: FR_METRICS[k].value for k in SUMMARY_KEYS}, {**{k: FR_METRICS[k].value for k in SUMMARY_KEYS},
                                                                 "fairness/acc": 0.5, "fairness/length_corr": -0.25}]
    fr = MethodResult("fr", fr_runs, FR_METRICS, per_run, vs_baseline=FR_VS_BASE)
    return [base, fr]


def test_formats():
    assert fmt(None, "{:.3f}") == "n/a" and fmt(float("nan"), "{:.3f}") == "n/a" and fmt(0.5, "{:.3f}") == "0.500"
    assert fmt(2, "{:+.1f}") == "+2.0"
    assert fmt_estimate(E(float("nan"), 0.25, float("nan")), "{:.2f}") == "n/a [0.25, n/a]"


def test_summary_table():
    lines = summary_table(_results(), PAIRS).splitlines()
    assert lines[0] == ("| model | seeds | accuracy | worst-group acc | reward gap (raw) | gap / reward std | reward std "
                        "| margin gap | Jain σ(m) | Gini σ(m) | corr(reward, length) |")
    assert lines[1] == "|" + " --- |" * 11
    assert lines[2] == ("| base | 1 | 0.750 [0.500, 1.000] | 0.500 [0.000, 1.000] (b) | 1.250 [0.500, 2.000] (b > a) | "
                        "0.500 [0.250, 0.750] | 0.875 [0.500, 1.250] | 0.250 [0.000, 0.500] | 0.9000 [0.8000, 1.0000] | "
                        "0.0500 [0.0000, 0.1000] | +0.300 [-0.100, +0.600] |")
    # fr: group a is now the worst and the highest; b's reward is NaN (left out of the extremes)
    assert lines[3].startswith("| fr | 2 | 1.000 [1.000, 1.000] | 0.000 [0.000, 1.000] (a) | 1.250 [0.500, 2.000] "
                               "(a > a) | ")
    assert len(lines) == 4


def test_differences_table():
    lines = differences_table(_results(), "base").splitlines()
    assert lines[0] == ("| model | Δ accuracy | Δ worst-group acc | Δ reward gap (raw) | Δ gap / reward std | "
                        "Δ reward std | Δ margin gap | Δ Jain σ(m) | Δ corr(reward, length) |")
    assert lines[1] == "|" + " --- |" * 9
    assert lines[2] == ("| fr | +0.250 [+0.000, +0.500] | **-0.500 [-1.000, -0.250]** | **+0.500 [+0.250, +0.750]** | "
                        "-0.250 [-0.500, +0.000] | -0.125 [-0.250, +0.000] | +0.000 [-0.125, +0.125] | **+0.0500 [+0.0100, +0.1000]** | "
                        "**-0.200 [-0.400, -0.100]** |")
    assert len(lines) == 3  # the baseline has no row


def test_runs_table():
    lines = runs_table(_results()).splitlines()
    assert lines[0].startswith("| model | run | accuracy | worst-group acc |") and len(lines) == 5
    assert lines[2] == ("| base | base | 0.750 | 0.500 | 1.250 | 0.500 | 0.875 | 0.250 | 0.9000 | 0.0500 | +0.300 |")
    assert lines[3] == ("| fr | seed1 | 1.000 | 0.000 | 1.250 | 0.500 | 0.875 | 0.250 | 0.9000 | 0.0500 | +0.300 |")
    assert lines[4] == ("| fr | fr_seed2 | 0.500 | 0.000 | 1.250 | 0.500 | 0.875 | 0.250 | 0.9000 | 0.0500 | -0.250 |")


def test_group_table():
    lines = group_table(_results(), PAIRS).splitlines()
    assert lines[0] == "| model | group | pairs | acc | reward | margin | chosen_reward | rejected_reward | length_corr |"
    assert lines[1] == "|" + " --- |" * 9
    assert lines[2] == ("| base | a | 1 | 1.000 [1.000, 1.000] | 0.250 [0.000, 0.500] | 2.000 [2.000, 2.000] | "
                        "1.250 [1.000, 1.500] | -0.750 [-1.000, -0.500] | n/a [n/a, n/a] |")
    assert lines[3] == ("| base | b | 2 | 0.500 [0.000, 1.000] | 1.500 [1.000, 2.000] | 0.125 [-1.000, 1.000] | "
                        "1.500 [1.000, 2.000] | 1.500 [1.000, 2.000] | -0.500 [-1.000, +0.000] |")
    assert lines[4].startswith("| fr | a | 1 | 0.000 [0.000, 1.000] | 3.000 [2.000, 4.000] |")
    assert len(lines) == 6


def test_pareto_table():
    lines = pareto_table(_results()).splitlines()
    assert lines[0] == ("| model | accuracy (up) | gap / reward std (down) | corr(reward, length) (down) | "
                        "dominated by (beyond noise) | Pareto-optimal |")
    assert lines[2] == "| base | 0.750 [0.500, 1.000] | 0.500 [0.250, 0.750] | +0.300 [-0.100, +0.600] | fr | no |"
    assert lines[3] == "| fr | 1.000 [1.000, 1.000] | 0.500 [0.250, 0.750] | +0.300 [-0.100, +0.600] | - | yes |"


def test_report_json(tmp_path):
    doc = report_json(_results(), PAIRS, baseline="base", settings={"max_len": 8}, extra={"note": 1})
    assert doc["data"] == "three pairs" and doc["settings"] == {"max_len": 8} and doc["baseline"] == "base"
    assert doc["group_pairs"] == {"a": 1, "b": 2} and doc["note"] == 1
    base, fr = doc["models"]
    assert base["label"] == "base" and base["n_pairs"] == 3 and base["vs_baseline"] == {}
    assert base["runs"] == [{"path": "/runs/base/", "pairs_identical_after_truncation": 1,
                             "metrics": {k: BASE_METRICS[k].value for k in SUMMARY_KEYS}}]
    assert base["metrics"]["fairness/acc"] == 0.75 and base["intervals"]["fairness/acc"] == [0.5, 1.0]
    assert base["pareto_dominated_by"] == ["fr"] and fr["pareto_dominated_by"] == []
    assert (base["worst_group"], base["highest_reward_group"], base["lowest_reward_group"]) == ("b", "b", "a")
    assert (fr["worst_group"], fr["highest_reward_group"], fr["lowest_reward_group"]) == ("a", "a", "a")
    assert [r["pairs_identical_after_truncation"] for r in fr["runs"]] == [2, 0]
    assert fr["vs_baseline"]["fairness/acc"] == {"value": 0.25, "lo": 0.0, "hi": 0.5}
    assert "percentile bootstrap" in doc["intervals"] and "normalize_reward off" in doc["rewards"]
    write_json(tmp_path / "r.json", doc)
    again = json.loads((tmp_path / "r.json").read_text())
    assert again["models"][1]["metrics"]["fairness/reward/b"] != again["models"][1]["metrics"]["fairness/reward/b"]
    assert (tmp_path / "r.json").read_text().startswith('{\n  "data"')  # indented


def test_report_markdown_sections():
    results = _results()
    md = report_markdown(results, PAIRS, baseline="base", settings={"max_len": 8, "resamples": 10},
                         group_key="category", warnings=["group a has 1 pair"], plots=["p1.png", "p2.png"],
                         extra_sections=["## Extra", ""])
    lines = md.splitlines()
    assert lines[0] == "# Reward fairness report"
    assert "Data: three pairs. Group key: `category`." in lines
    assert "Rewards: raw value-head outputs (OpenRLHF's normalize_reward off). Settings: max_len=8, resamples=10." in lines
    assert ("Pairs whose chosen and rejected tokens are identical after max_len truncation (scored, margin 0): "
            "base: 1, fr: 2.") in lines
    assert "**Warning**: group a has 1 pair" in lines
    heads = [line for line in lines if line.startswith("## ")]
    assert heads == ["## Summary (one row per model)",
                     "## Difference to `base` (paired over pairs and seeds; **bold**: the interval excludes 0)",
                     "## Each run on all pairs (seed-to-seed spread)", "## Per group", "## Pareto view with intervals",
                     "## Extra", "## What the columns mean", "## Plots"]
    assert summary_table(results, PAIRS) in md and differences_table(results, "base") in md
    assert runs_table(results) in md and group_table(results, PAIRS) in md and pareto_table(results) in md
    assert "- **fairness/acc**: share of pairs" in md and "- **fairness/acc/GROUP**: accuracy within the group." in md
    assert lines[-2:] == ["![p1.png](p1.png)", "![p2.png](p2.png)"] and md.endswith("\n")
    # one model with one run: no difference, runs or Pareto sections, no warning line
    md = report_markdown(results[:1], PAIRS, baseline="base", settings={}, group_key="g", warnings=[], plots=[],
                         extra_sections=[])
    assert [line for line in md.splitlines() if line.startswith("## ")] == [
        "## Summary (one row per model)", "## Per group", "## What the columns mean", "## Plots"]
    assert "**Warning**" not in md and md.endswith("## Plots\n\n")
