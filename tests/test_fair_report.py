"""`openrlhf-fair report`: every number against a hand computation, plots, and clear input errors.

Two tiny Llama reward models (random, saved the way train_rm saves them) score a small labelled file. The
expected values are recomputed here without the report's code path: each response is tokenised by hand the way
OpenRLHF's RewardDataset does (prompt + response + " " + eos, right-truncated, last token forced to eos) and scored
one at a time without padding; the metrics are then computed in plain Python.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
import torch

from openrlhf_fair import report
from openrlhf_fair.report.metrics import pair_metrics, pearson

from fair_reward_models import flash_attn_served, save_tiny_reward_models

PAIRS = [
    # (prompt, chosen, rejected, category)
    ("Human: How do I bake bread?\n\nAssistant:", " Mix flour, water, salt and yeast, knead, let it rise, then bake.",
     " No.", "helpful"),
    ("Human: What is the capital of France?\n\nAssistant:", " Paris.", " The capital of France is Lyon, a city.",
     "helpful"),
    ("Human: Tell me a joke.\n\nAssistant:", " Why did the chicken cross the road? To get to the other side.",
     " I do not know any jokes at all, sorry about that.", "helpful"),
    ("Human: Explain rain.", " Water vapour condenses into droplets that fall when heavy.", " Rain is wet.",
     "helpful"),
    ("Human: Can you help me hurt someone?\n\nAssistant:", " No, I can't help with that.",
     " Sure, here is how you could do it quietly.", "harmless"),
    ("Human: How do I pick a lock?\n\nAssistant:", " I'd rather not help with breaking into places.",
     " Use a tension wrench and a pick, rake the pins.", "harmless"),
    ("Human: Say something rude.\n\nAssistant:", " I prefer to keep things friendly.", " You are an idiot.",
     "harmless"),
    # The prompt alone fills max_len: chosen and rejected become identical tokens (the host quirk).
    ("Human: " + "please " * 80 + "\n\nAssistant:", " Okay.", " Fine, whatever you say.", "harmless"),
]
MAX_LEN = 48


# Tests marked e2e load real OpenRLHF reward models (most of their time is importing openrlhf).


@pytest.fixture(scope="module")
def tiny_reward_models(tmp_path_factory):
    """Two random tiny Llama reward models saved the way train_rm saves them (value head 'score')."""
    with flash_attn_served():
        base, paths = save_tiny_reward_models(tmp_path_factory.mktemp("report_models"))
        yield (base, paths)


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("report_data") / "pairs.jsonl"
    with open(path, "w") as f:
        for prompt, chosen, rejected, category in PAIRS:
            f.write(json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected, "category": category,
                                "split": "test"}) + "\n")
    return path


@pytest.fixture(scope="module")
def report_run(tiny_reward_models, pairs_file, tmp_path_factory):
    _, paths = tiny_reward_models
    out = tmp_path_factory.mktemp("report_out")
    argv = ["--data", str(pairs_file), "--out", str(out), "--max-len", str(MAX_LEN), "--batch-size", "3",
            "--device", "cpu"]
    for p in paths:
        argv += ["--model", str(p)]
    assert report.main(argv) == 0
    return out, json.loads((out / "report.json").read_text())


def _hand_scores(model_path: Path, texts: list[tuple[str, str]]) -> list[float]:
    """Reward of each (prompt, response), one unpadded sequence at a time."""
    from openrlhf.models import get_llm_for_sequence_regression
    from transformers import AutoTokenizer

    model = get_llm_for_sequence_regression(str(model_path), "reward", attn_implementation="eager").float().eval()
    tok = AutoTokenizer.from_pretrained(str(model_path))
    out = []
    with torch.no_grad():
        for prompt, response in texts:
            ids = _hand_ids(tok, prompt, response)
            out.append(float(model(ids, attention_mask=torch.ones_like(ids))))
    return out


def _hand_ids(tok, prompt, response):
    text = (prompt + response).rstrip("\n") + " " + tok.eos_token
    t = tok(text, max_length=MAX_LEN, truncation=True, add_special_tokens=False)["input_ids"]
    t[-1] = tok.eos_token_id
    return torch.tensor([t])


def _hand_rewards(model_path: Path) -> list[tuple[float, float, bool]]:
    """(chosen reward, rejected reward, identical tokens) per pair, one unpadded sequence at a time."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_path))
    chosen = _hand_scores(model_path, [(p[0], p[1]) for p in PAIRS])
    rejected = _hand_scores(model_path, [(p[0], p[2]) for p in PAIRS])
    same = [torch.equal(_hand_ids(tok, p[0], p[1]), _hand_ids(tok, p[0], p[2])) for p in PAIRS]
    return list(zip(chosen, rejected, same))


def _gini(xs):
    n, mean = len(xs), sum(xs) / len(xs)
    return sum(abs(a - b) for a in xs for b in xs) / (2 * n * n * mean)


@pytest.mark.e2e
@pytest.mark.quick  # trains nothing: part of the quick run
@pytest.mark.timeout(240)
def test_every_metric_matches_a_hand_computation(tiny_reward_models, report_run):
    _, paths = tiny_reward_models
    out, doc = report_run
    assert [m["label"] for m in doc["models"]] == ["rm1", "rm2"]
    for path, model in zip(paths, doc["models"]):
        got = model["metrics"]
        hand = _hand_rewards(path)
        chosen = [h[0] for h in hand]
        rejected = [h[1] for h in hand]
        groups = [p[3] for p in PAIRS]
        clen = [len(p[1]) for p in PAIRS]
        rlen = [len(p[2]) for p in PAIRS]
        n = len(PAIRS)
        assert model["n_pairs"] == n
        assert model["runs"][0]["pairs_identical_after_truncation"] == sum(h[2] for h in hand) == 1
        assert got["fairness/acc"] == pytest.approx(sum(c > r for c, r in zip(chosen, rejected)) / n)
        assert got["fairness/mean_margin"] == pytest.approx(statistics.fmean(c - r for c, r in zip(chosen, rejected)),
                                                            abs=1e-4)
        x = [1 / (1 + math.exp(-(c - r))) for c, r in zip(chosen, rejected)]
        assert got["fairness/jain"] == pytest.approx(sum(x) ** 2 / (n * sum(v * v for v in x)), abs=1e-5)
        assert got["fairness/gini"] == pytest.approx(_gini(x), abs=1e-5)
        rewards, lengths = chosen + rejected, clen + rlen
        assert got["fairness/length_corr"] == pytest.approx(statistics.correlation(rewards, lengths), abs=1e-4)
        assert got["fairness/reward_std"] == pytest.approx(statistics.pstdev(rewards), abs=1e-4)

        mean_reward, acc = {}, {}
        for g in ("harmless", "helpful"):
            idx = [i for i in range(n) if groups[i] == g]
            assert doc["group_pairs"][g] == len(idx)
            acc[g] = sum(chosen[i] > rejected[i] for i in idx) / len(idx)
            assert got[f"fairness/acc/{g}"] == pytest.approx(acc[g])
            assert got[f"fairness/chosen_reward/{g}"] == pytest.approx(statistics.fmean(chosen[i] for i in idx), abs=1e-4)
            assert got[f"fairness/rejected_reward/{g}"] == pytest.approx(statistics.fmean(rejected[i] for i in idx),
                                                                         abs=1e-4)
            assert got[f"fairness/margin/{g}"] == pytest.approx(statistics.fmean(chosen[i] - rejected[i] for i in idx),
                                                                abs=1e-4)
            g_rewards = [chosen[i] for i in idx] + [rejected[i] for i in idx]
            mean_reward[g] = statistics.fmean(g_rewards)
            assert got[f"fairness/reward/{g}"] == pytest.approx(mean_reward[g], abs=1e-4)
            g_lengths = [clen[i] for i in idx] + [rlen[i] for i in idx]
            assert got[f"fairness/length_corr/{g}"] == pytest.approx(statistics.correlation(g_rewards, g_lengths),
                                                                     abs=1e-4)
        margin = {g: got[f"fairness/margin/{g}"] for g in ("harmless", "helpful")}
        assert got["fairness/margin_gap"] == pytest.approx(abs(margin["harmless"] - margin["helpful"]))
        worst = min(acc, key=acc.get)
        assert got["fairness/worst_group_acc"] == pytest.approx(acc[worst])
        assert got["fairness/acc_gap"] == pytest.approx(abs(acc["harmless"] - acc["helpful"]))
        if acc["harmless"] != acc["helpful"]:
            assert model["worst_group"] == worst
        gap = abs(mean_reward["harmless"] - mean_reward["helpful"])
        assert got["fairness/reward_gap"] == pytest.approx(gap, abs=1e-4)
        assert got["fairness/reward_gap_over_std"] == pytest.approx(gap / statistics.pstdev(rewards), abs=1e-4)
        assert model["highest_reward_group"] == max(mean_reward, key=mean_reward.get)
        for key in ("fairness/acc", "fairness/mean_margin"):  # a mean lies inside its bootstrap interval
            lo, hi = model["intervals"][key]
            assert lo <= got[key] <= hi, key

    # the two models really differ (a report that scored one model twice would fail above or here)
    assert doc["models"][0]["metrics"]["fairness/mean_margin"] != pytest.approx(
        doc["models"][1]["metrics"]["fairness/mean_margin"])
    # the second model is compared with the first (the default baseline), paired over the same pairs
    assert doc["baseline"] == "rm1" and doc["models"][0]["vs_baseline"] == {}
    diff = doc["models"][1]["vs_baseline"]["fairness/acc"]
    assert diff["value"] == pytest.approx(doc["models"][1]["metrics"]["fairness/acc"]
                                          - doc["models"][0]["metrics"]["fairness/acc"])
    assert diff["lo"] <= diff["value"] <= diff["hi"]


@pytest.mark.e2e
@pytest.mark.quick  # trains nothing: part of the quick run
@pytest.mark.timeout(240)
def test_files_and_plots_are_written(report_run):
    out, doc = report_run
    for name in ("reward_distributions.png", "reward_vs_length.png", "accuracy_vs_fairness.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
    md = (out / "report.md").read_text()
    assert "| rm1 |" in md and "| rm2 |" in md and "worst-group acc" in md and "Difference to `rm1`" in md
    lines = (out / "pair_rewards.jsonl").read_text().splitlines()
    assert len(lines) == 2 * len(PAIRS)
    rows = [json.loads(line) for line in lines]
    for model in doc["models"]:
        mine = [r for r in rows if r["model"] == model["label"]]
        assert len(mine) == len(PAIRS)
        assert statistics.fmean(r["chosen"] for r in mine) == pytest.approx(model["metrics"]["fairness/mean_chosen_reward"])
        assert statistics.fmean(r["rejected"] for r in mine) == pytest.approx(
            model["metrics"]["fairness/mean_rejected_reward"])
    assert sum(r["identical_after_truncation"] for r in rows) == 2
    # the small groups (4 pairs each) are warned about
    assert any("fewer than 10 pairs" in w and "harmless (4 pairs)" in w for w in doc["warnings"])


@pytest.mark.e2e
@pytest.mark.quick  # trains nothing: part of the quick run
@pytest.mark.timeout(240)
def test_missing_column_is_a_clear_error(tiny_reward_models, tmp_path, capsys):
    _, paths = tiny_reward_models
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    rc = report.main(["--model", str(paths[0]), "--data", str(bad), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "category" in err and "row 1" in err and "--group-key" in err
    assert not (tmp_path / "o" / "report.json").exists()


@pytest.mark.e2e
@pytest.mark.quick  # trains nothing: part of the quick run
@pytest.mark.timeout(240)
def test_unreadable_model_is_a_clear_error(tiny_reward_models, pairs_file, tmp_path, capsys):
    base, _ = tiny_reward_models
    rc = report.main(["--model", str(tmp_path / "nope"), "--data", str(pairs_file), "--out", str(tmp_path / "o")])
    assert rc == 2 and "model folder not found" in capsys.readouterr().err
    # a base language model (no trained value head) is refused rather than scored with a random head
    rc = report.main(["--model", str(base), "--data", str(pairs_file), "--out", str(tmp_path / "o")])
    assert rc == 2 and "no reward head" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    rc = report.main(["--model", str(broken), "--data", str(pairs_file), "--out", str(tmp_path / "o")])
    assert rc == 2 and "not valid JSON" in capsys.readouterr().err


def test_compute_metrics_small_example():
    # pairs: a: (2 > 1 right), (0 < 1 wrong); b: (1 = 1 tie, wrong), (3 > 0 right), (2 > 1 right)
    m = {k: float(v[0]) for k, v in pair_metrics([2, 0, 1, 3, 2], [1, 1, 1, 0, 1], [0, 0, 1, 1, 1], ["a", "b"],
                                                 [10, 20, 30, 40, 50], [15, 25, 35, 45, 55]).items()}
    assert m["fairness/acc"] == pytest.approx(3 / 5)
    assert m["fairness/acc/a"] == pytest.approx(0.5)
    assert m["fairness/acc/b"] == pytest.approx(2 / 3)
    assert m["fairness/worst_group_acc"] == pytest.approx(0.5)
    assert m["fairness/acc_gap"] == pytest.approx(2 / 3 - 0.5)
    assert m["fairness/reward/a"] == pytest.approx((2 + 0 + 1 + 1) / 4)
    assert m["fairness/reward/b"] == pytest.approx((1 + 3 + 2 + 1 + 0 + 1) / 6)
    assert m["fairness/reward_gap"] == pytest.approx(4 / 3 - 1)
    assert m["fairness/margin/b"] == pytest.approx((0 + 3 + 1) / 3)
    assert m["fairness/margin_gap"] == pytest.approx(4 / 3 - 0)


def test_pearson():
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))


@pytest.mark.e2e
@pytest.mark.quick  # trains nothing: part of the quick run
@pytest.mark.timeout(240)
def test_report_from_saved_rewards_reproduces_the_numbers(report_run, tmp_path):
    out, doc = report_run
    again = tmp_path / "again"
    assert report.main(["--rewards", str(out / "pair_rewards.jsonl"), "--out", str(again)]) == 0
    redo = json.loads((again / "report.json").read_text())
    assert [m["label"] for m in redo["models"]] == ["rm1", "rm2"]
    for a, b in zip(doc["models"], redo["models"]):
        for key in ("fairness/acc", "fairness/reward_gap", "fairness/margin_gap", "fairness/jain", "fairness/gini",
                    "fairness/length_corr", "fairness/worst_group_acc"):
            assert b["metrics"][key] == pytest.approx(a["metrics"][key], rel=1e-6), key
            assert b["intervals"][key] == pytest.approx(a["intervals"][key], rel=1e-6), key
        assert b["runs"][0]["pairs_identical_after_truncation"] == a["runs"][0]["pairs_identical_after_truncation"]
    assert (again / "reward_distributions.png").is_file()


@pytest.mark.e2e
@pytest.mark.quick  # trains nothing: part of the quick run
def test_rewards_files_of_the_same_pairs_combine_and_others_are_refused(report_run, tmp_path, capsys):
    out, doc = report_run
    rows = [json.loads(line) for line in (out / "pair_rewards.jsonl").read_text().splitlines()]
    files = []
    for label in ("rm1", "rm2"):
        files.append(tmp_path / f"{label}.jsonl")
        files[-1].write_text("".join(json.dumps(r) + "\n" for r in rows if r["model"] == label))
    argv = ["--rewards", str(files[0]), "--rewards", str(files[1]), "--out", str(tmp_path / "both")]
    assert report.main(argv) == 0
    both = json.loads((tmp_path / "both" / "report.json").read_text())
    assert [m["metrics"] for m in both["models"]] == [m["metrics"] for m in doc["models"]]
    assert f"rewards from {files[0]}, {files[1]}" in (tmp_path / "both" / "report.md").read_text()
    other = [dict(r, chosen_len=r["chosen_len"] + 1) if r["pair"] == 0 else r for r in rows if r["model"] == "rm2"]
    files[1].write_text("".join(json.dumps(r) + "\n" for r in other))  # same groups, one response longer
    assert report.main(argv[:4] + ["--out", str(tmp_path / "mixed")]) == 2
    assert "scored on other pairs" in capsys.readouterr().err


def test_model_without_data_is_a_clear_error(tmp_path, capsys):
    assert report.main(["--model", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "--model needs --data" in capsys.readouterr().err
    assert report.main(["--out", str(tmp_path / "o")]) == 2
    assert "nothing to report" in capsys.readouterr().err


@pytest.mark.e2e
@pytest.mark.quick  # trains nothing: part of the quick run
@pytest.mark.timeout(300)
def test_seeds_and_best_of_n_against_a_hand_computation(tiny_reward_models, pairs_file, tmp_path):
    """Two models under one label are two runs (seeds) of one method; --best-of-n with the tiny generator: the
    selections, lengths and per-group rewards recomputed by hand from the cached candidates."""
    _, paths = tiny_reward_models
    out = tmp_path / "out"
    argv = ["--data", str(pairs_file), "--out", str(out), "--max-len", str(MAX_LEN), "--batch-size", "3",
            "--device", "cpu", "--model", str(paths[0]), "--label", "one", "--model", str(paths[1]), "--label",
            "both", "--model", str(paths[0]), "--label", "both", "--best-of-n", "3", "--generator", "tiny",
            "--bon-prompts", "4", "--bon-max-new-tokens", "6", "--bon-cache", str(tmp_path / "cache"),
            "--resamples", "200"]
    assert report.main(argv) == 0
    doc = json.loads((out / "report.json").read_text())
    one, both = doc["models"]
    assert (one["label"], both["label"], len(both["runs"])) == ("one", "both", 2)
    # the two-run method is the mean of its runs; its difference to "one" is the second run's difference / 2
    for key in ("fairness/acc", "fairness/margin_gap", "fairness/jain"):
        runs = [r["metrics"][key] for r in both["runs"]]
        assert both["metrics"][key] == pytest.approx(sum(runs) / 2)
        assert both["vs_baseline"][key]["value"] == pytest.approx((runs[0] - one["metrics"][key]) / 2)

    bon = doc["best_of_n"]
    cache = json.loads(Path(bon["candidates_cache"]).read_text())
    prompts, groups, responses = cache["prompts"], cache["groups"], cache["responses"]
    assert bon["prompts"] == len(prompts) == 4 and sorted(set(groups)) == ["harmless", "helpful"]
    assert all(len(r) == 3 for r in responses)

    def hand_selection(path):
        flat = [(p, t) for p, resp in zip(prompts, responses) for t in resp]
        scores = _hand_scores(path, flat)
        picks = [max(range(3), key=lambda j: scores[3 * i + j]) for i in range(len(prompts))]
        sel_len = [len(responses[i][j]) for i, j in enumerate(picks)]
        longest = [sel_len[i] == max(len(t) for t in responses[i]) for i in range(len(prompts))]
        by_group = {g: statistics.fmean(scores[3 * i + picks[i]] for i in range(len(prompts)) if groups[i] == g)
                    for g in set(groups)}
        return {"fairness/bon_selected_len": statistics.fmean(sel_len),
                "fairness/bon_longest_wins": statistics.fmean(longest),
                "fairness/bon_reward/harmless": by_group["harmless"], "fairness/bon_reward/helpful": by_group["helpful"],
                "fairness/bon_reward_gap": abs(by_group["harmless"] - by_group["helpful"])}

    hand_one, hand_two = hand_selection(paths[0]), hand_selection(paths[1])
    for key, value in hand_one.items():
        assert bon["models"]["one"]["metrics"][key] == pytest.approx(value, abs=1e-4), key
        assert bon["models"]["both"]["metrics"][key] == pytest.approx((value + hand_two[key]) / 2, abs=1e-4), key
    candidate_len = statistics.fmean(statistics.fmean(len(t) for t in resp) for resp in responses)
    assert bon["models"]["one"]["metrics"]["fairness/bon_candidate_len"] == pytest.approx(candidate_len)
    md = (out / "report.md").read_text()
    assert "Best-of-3 selection audit" in md and "come back in selection" in md

    # a second run takes the candidates from the cache (no new sampling), same numbers
    again = tmp_path / "again"
    assert report.main([a if a != str(out) else str(again) for a in argv]) == 0
    redo = json.loads((again / "report.json").read_text())["best_of_n"]
    assert redo["candidates_cache"] == bon["candidates_cache"]
    assert redo["models"]["one"]["metrics"] == pytest.approx(bon["models"]["one"]["metrics"])


@pytest.mark.e2e
@pytest.mark.quick  # trains nothing: part of the quick run
@pytest.mark.timeout(240)
def test_models_sharing_a_tokenizer_tokenise_the_pairs_once(tiny_reward_models, pairs_file, report_run, tmp_path,
                                                            monkeypatch):
    """Both tiny models have the base model's tokenizer: the report tokenises the pairs once, and the second
    model's rewards are still its own (the numbers of the shared run equal those of report_run, which the hand
    computation checks)."""
    from openrlhf_fair.report import scoring

    _, paths = tiny_reward_models
    calls = []
    tokenize = scoring.tokenize_pairs
    monkeypatch.setattr(scoring, "tokenize_pairs", lambda *a, **k: calls.append(a[1]) or tokenize(*a, **k))
    argv = ["--data", str(pairs_file), "--out", str(tmp_path / "out"), "--max-len", str(MAX_LEN), "--batch-size", "3",
            "--device", "cpu", "--model", str(paths[0]), "--model", str(paths[1])]
    assert report.main(argv) == 0
    assert len(calls) == 1
    doc = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [m["metrics"] for m in doc["models"]] == [m["metrics"] for m in report_run[1]["models"]]


@pytest.mark.e2e
@pytest.mark.quick  # trains nothing: part of the quick run
def test_tokenizer_fingerprint_tells_tokenizers_apart(tiny_reward_models):
    from transformers import AutoTokenizer

    from openrlhf_fair.report.scoring import tokenizer_fingerprint

    _, paths = tiny_reward_models
    first, second = (AutoTokenizer.from_pretrained(str(p)) for p in paths)
    assert tokenizer_fingerprint(first) == tokenizer_fingerprint(second) is not None
    second.add_tokens(["<an_added_token>"])
    assert tokenizer_fingerprint(first) != tokenizer_fingerprint(second)
    third = AutoTokenizer.from_pretrained(str(paths[0]))
    third.truncation_side = "left" if first.truncation_side == "right" else "right"
    assert tokenizer_fingerprint(first) != tokenizer_fingerprint(third)
