"""The best-of-N audit beyond its per-model numbers, against values worked out by hand: a tie for the longest
candidate counts as the longest winning, and the differences are taken against the model `--baseline` names even
when it is not the first. The generator and the reward models are replaced by fixed candidates and fixed rewards
(no model is loaded)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from openrlhf_fair.report import bestofn, sampling, scoring
from openrlhf_fair.report.bestofn import markdown_section, run_audit, selection_metrics
from openrlhf_fair.report.intervals import Estimate


def _floats(metrics: dict) -> dict:
    return {k: float(v[0]) for k, v in metrics.items()}


def test_a_tie_for_the_longest_candidate_is_a_win_for_the_longest():
    """Prompt 1: lengths 30, 30, 5 and the model picks candidate 2 (length 30, tied with candidate 1): the longest
    wins; chance 2/3 (two of three candidates are longest). Prompt 2: lengths 30, 30, 5, pick candidate 1: a win too.
    Prompt 3: lengths 7, 9, 9, pick candidate 1 (length 7): no win; chance 2/3."""
    rewards = torch.tensor([[0.1, 0.9, 0.3], [0.9, 0.1, 0.3], [0.5, 0.0, 0.25]])
    lengths = torch.tensor([[30, 30, 5], [30, 30, 5], [7, 9, 9]])
    m = _floats(selection_metrics(rewards, lengths, [0, 0, 1], ["a", "b"]))
    assert m["fairness/bon_longest_wins"] == pytest.approx(2 / 3)
    assert m["fairness/bon_longest_chance"] == pytest.approx(2 / 3)
    assert m["fairness/bon_selected_len"] == pytest.approx((30 + 30 + 7) / 3)
    # only the tied prompts, resampled: every selection is a longest one
    again = selection_metrics(rewards, lengths, [0, 0, 1], ["a", "b"], torch.tensor([[0, 1, 1], [2, 2, 2]]))
    assert again["fairness/bon_longest_wins"].tolist() == [1.0, 0.0]
    assert again["fairness/bon_reward/a"][0] == pytest.approx(0.9) and math.isnan(again["fairness/bon_reward/a"][1])
    assert again["fairness/bon_reward/b"][1] == 0.5 and again["fairness/bon_reward_gap"].tolist() == [0.0, 0.0]


def test_all_candidates_equally_long_is_a_win_and_chance_1():
    m = _floats(selection_metrics(torch.tensor([[0.0, 1.0]]), torch.tensor([[4, 4]]), [0], ["a"]))
    assert (m["fairness/bon_longest_wins"], m["fairness/bon_longest_chance"], m["fairness/bon_len_excess"]) == (
        1.0, 1.0, 0.0)


# Two prompts (groups a, b), three candidates each. Lengths: prompt 1: 4, 2, 4 (a tie for the longest);
# prompt 2: 1, 3, 2.
RESPONSES = [["xxxx", "xx", "yyyy"], ["x", "xxx", "xx"]]
# rewards per model: which candidate each picks (prompt 1, prompt 2) and its selected lengths
REWARDS = {
    "first": [[0.0, 0.25, 1.0], [0.5, 0.25, -0.5]],  # picks 3 (len 4, tied longest), 1 (len 1): mean 2.5
    "base": [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],  # picks 2 (len 2), 3 (len 2): mean 2
    "third": [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]],  # picks 1 (len 4), 2 (len 3, longest): mean 3.5
}


@pytest.fixture
def audit_args(tmp_path, monkeypatch):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "chosen": "c", "rejected": "r", "category": g}) + "\n"
                            for p, g in (("p1", "a"), ("p2", "b"))))
    monkeypatch.setattr(sampling, "generator_path", lambda name, scratch: Path("generator"))
    monkeypatch.setattr(sampling, "sample_candidates", lambda generator, prompts, groups, n, **kw: sampling.Candidates(
        list(prompts), list(groups), RESPONSES, "cache.json"))
    monkeypatch.setattr(scoring, "load_reward_model", lambda path, **kw: (path, None))
    monkeypatch.setattr(scoring, "score_responses", lambda model, tok, prompts, responses, **kw: torch.tensor(
        REWARDS[model], dtype=torch.float64).reshape(-1))
    return SimpleNamespace(
        data=str(data), bon_data=None, group_key="category", prompt_key=None, chosen_key="chosen",
        rejected_key="rejected", split=None, bon_prompts=2, generator="tiny", out=str(tmp_path / "out"), best_of_n=3,
        bon_max_new_tokens=4, bon_temperature=1.0, bon_top_p=1.0, bon_seed=0, bon_cache=str(tmp_path / "cache"),
        resamples=400, dtype="float32", attn_implementation="eager", batch_size=2, input_template=None,
        apply_chat_template=False, baseline="base")


def _methods():
    return [SimpleNamespace(label=label, runs=[SimpleNamespace(path=label)]) for label in REWARDS]


def test_differences_are_taken_against_the_named_baseline_not_the_first_model(audit_args):
    result = run_audit(audit_args, _methods(), "cpu", 32)
    sel = "fairness/bon_selected_len"
    assert {label: m[sel].value for label, m in result.metrics.items()} == {"first": 2.5, "base": 2.0, "third": 3.5}
    assert {label: m["fairness/bon_longest_wins"].value for label, m in result.metrics.items()} == {
        "first": 0.5, "base": 0.0, "third": 1.0}
    assert result.metrics["first"]["fairness/bon_candidate_len"].value == pytest.approx((10 / 3 + 2) / 2)
    assert set(result.vs_baseline) == {"first", "third"}  # against base; base has no difference of its own
    assert result.vs_baseline["first"][sel].value == 0.5  # 2.5 - 2, not 0 (first - first)
    assert result.vs_baseline["third"][sel].value == 1.5  # 3.5 - 2, not 1 (third - first)
    # third - base per prompt: 4 - 2 = 2, 3 - 2 = 1; two prompts drawn: 1 (both prompt 2, p = 1/4) .. 2 (1/4)
    d = result.vs_baseline["third"][sel]
    assert (d.lo, d.hi) == (1.0, 2.0)
    # selection reward per group: first picks 1.0 (a) and 0.5 (b): gap 0.5; third 2 and 1: gap 1; base 1 and 1: 0
    assert result.metrics["first"]["fairness/bon_reward/a"].value == 1.0
    assert {label: m["fairness/bon_reward_gap"].value for label, m in result.metrics.items()} == {
        "first": 0.5, "base": 0.0, "third": 1.0}
    assert result.vs_baseline["third"]["fairness/bon_reward_gap"].value == 1.0
    # gap / std of all six candidate rewards: first's rewards have mean 1/4 and variance 1.25 / 6
    assert result.metrics["first"]["fairness/bon_reward_gap_over_std"].value == pytest.approx(0.5 / math.sqrt(1.25 / 6))
    doc = result.as_json()
    assert doc["n"] == 3 and doc["prompts"] == 2 and doc["candidates_cache"] == "cache.json"
    assert doc["models"]["base"]["vs_baseline"] == {} and doc["models"]["third"]["vs_baseline"][sel]["value"] == 1.5
    assert doc["models"]["third"]["intervals"]["fairness/bon_longest_wins"] == [1.0, 1.0]


def test_without_baseline_the_first_model_is_the_reference(audit_args):
    audit_args.baseline = None
    result = run_audit(audit_args, _methods(), "cpu", 32)
    assert set(result.vs_baseline) == {"base", "third"}
    assert result.vs_baseline["third"]["fairness/bon_selected_len"].value == 1.0  # 3.5 - 2.5


def _est(v, lo, hi):
    return Estimate(v, lo, hi)


def test_audit_table_compares_each_model_with_the_named_baseline():
    flat = _est(0.0, -0.1, 0.1)
    metrics = {k: flat for k in ("fairness/bon_selected_len", "fairness/bon_candidate_len", "fairness/bon_longest_wins",
                                 "fairness/bon_longest_chance", "fairness/bon_reward_gap",
                                 "fairness/bon_reward_gap_over_std")}
    result = bestofn.BestOfNResult(3, sampling.Candidates(["p1", "p2"], ["a", "b"], RESPONSES, "c.json"), "gen",
                                   {"first": metrics, "base": metrics},
                                   {"first": {"fairness/bon_len_excess": _est(12.0, 4.0, 20.0),
                                              "fairness/bon_reward_gap_over_std": _est(-0.2, -0.3, -0.1)}})
    methods = [SimpleNamespace(label="first", vs_baseline={"fairness/length_corr": _est(-0.5, -0.7, -0.2),
                                                           "fairness/reward_gap_over_std": _est(-0.4, -0.6, -0.1)}),
               SimpleNamespace(label="base", vs_baseline={})]
    lines = markdown_section(result, methods, "base")
    assert lines[0] == "## Best-of-3 selection audit"
    assert "| first | 0 [-0, 0] | 0 [-0, 0] | 0.00 [-0.10, 0.10] |" in "\n".join(lines)
    assert any("differences to `base`" in line for line in lines)
    assert lines[-2] == ("| first | **-0.500 [-0.700, -0.200]** | **+12 [+4, +20]** | reduced on the audit pairs, "
                         "**comes back in selection** (larger than the baseline's) | **-0.400 [-0.600, -0.100]** | "
                         "**-0.200 [-0.300, -0.100]** | reduced on the audit pairs and in selection |")
    assert lines[-1] == ""


def _parsed(argv):
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--model", action="append")
    p.add_argument("--rewards")
    p.add_argument("--data")
    bestofn.add_arguments(p)
    return p.parse_args(argv)


def test_options_and_their_defaults():
    args = _parsed([])
    assert (args.best_of_n, args.generator, args.bon_data, args.bon_prompts, args.bon_max_new_tokens) == (
        0, "smollm2", None, 16, 48)
    assert (args.bon_temperature, args.bon_top_p, args.bon_seed, args.bon_cache) == (1.0, 0.95, 0, None)
    args = _parsed(["--best-of-n", "4", "--generator", "tiny", "--bon-data", "f", "--bon-prompts", "8",
                    "--bon-max-new-tokens", "5", "--bon-temperature", "0.5", "--bon-top-p", "1", "--bon-seed", "3",
                    "--bon-cache", "c"])
    assert (args.best_of_n, args.generator, args.bon_data, args.bon_prompts, args.bon_max_new_tokens) == (
        4, "tiny", "f", 8, 5)
    assert (args.bon_temperature, args.bon_top_p, args.bon_seed, args.bon_cache) == (0.5, 1.0, 3, "c")


@pytest.mark.parametrize("argv, message", [
    (["--best-of-n", "1"], "--best-of-n must be >= 2"),
    (["--best-of-n", "2", "--rewards", "r.jsonl"], "give the models with --model"),
    (["--best-of-n", "2", "--model", "m", "--rewards", "r.jsonl"], "give the models with --model"),
    (["--best-of-n", "2", "--model", "m", "--data", "d", "--bon-prompts", "0"], "--bon-prompts and"),
    (["--best-of-n", "2", "--model", "m", "--data", "d", "--bon-max-new-tokens", "0"], "--bon-prompts and"),
    (["--best-of-n", "2", "--model", "m", "--data", "d", "--bon-temperature", "0"], "--bon-temperature must"),
    (["--best-of-n", "2", "--model", "m", "--data", "d", "--bon-top-p", "0"], "--bon-temperature must"),
    (["--best-of-n", "2", "--model", "m", "--data", "d", "--bon-top-p", "1.01"], "--bon-temperature must"),
    (["--best-of-n", "2", "--model", "m"], "needs labelled prompts"),
])
def test_refused_options(argv, message):
    from openrlhf_fair.errors import ReportError

    with pytest.raises(ReportError, match=message):
        bestofn.check_arguments(_parsed(argv))


@pytest.mark.parametrize("argv", [
    [], ["--best-of-n", "0", "--bon-prompts", "0"],  # off: nothing else is checked
    ["--best-of-n", "2", "--model", "m", "--data", "d"],
    ["--best-of-n", "2", "--model", "m", "--bon-data", "d", "--bon-prompts", "1", "--bon-max-new-tokens", "1",
     "--bon-top-p", "1", "--bon-temperature", "0.01"],  # the edges that are allowed
])
def test_accepted_options(argv):
    assert bestofn.check_arguments(_parsed(argv)) is None
