"""Bad report / demo input gets a clear error (exit 2, message alone) before any model is loaded; warnings a
user needs (small groups, max_len) are given. No model is loaded here: loading is made to fail loudly."""

from __future__ import annotations

import gzip
import json

import pytest
import torch

from openrlhf_fair.demo import cli as demo
from openrlhf_fair import report
from openrlhf_fair.report import cli, scoring
from openrlhf_fair.report.data import PairSet, ScoredRun, write_pair_rewards


@pytest.fixture
def no_model_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded although the input was bad")

    monkeypatch.setattr(scoring, "load_reward_model", refuse)


@pytest.fixture
def pairs_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"p{i}", "chosen": "a" * (i + 1), "rejected": "b", "category": "x" if i % 2 else "y"}
            for i in range(6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def saved_model(tmp_path):
    """A folder that passes the checkpoint check (config + a weights file with a value head key)."""
    from safetensors.torch import save_file

    path = tmp_path / "rm"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"openrlhf_fair": {"max_len": 64}}))
    save_file({"score.weight": torch.zeros(1, 2)}, str(path / "model.safetensors"))
    return path


@pytest.mark.parametrize("value", ["0", "-3"])
def test_max_pairs_below_one_is_refused(value, pairs_file, saved_model, tmp_path, capsys, no_model_loading):
    rc = report.main(["--model", str(saved_model), "--data", str(pairs_file), "--out", str(tmp_path / "o"),
                      "--max-pairs", value])
    assert rc == 2 and f"--max-pairs must be >= 1, got {value}" in capsys.readouterr().err


def test_out_pointing_at_a_file_is_refused_before_scoring(pairs_file, saved_model, tmp_path, capsys,
                                                          no_model_loading):
    target = tmp_path / "taken"
    target.write_text("keep me")
    rc = report.main(["--model", str(saved_model), "--data", str(pairs_file), "--out", str(target)])
    assert rc == 2 and "is an existing file" in capsys.readouterr().err
    assert target.read_text() == "keep me"


def test_truncated_gz_is_a_clear_error(tmp_path, saved_model, capsys, no_model_loading):
    whole = gzip.compress(b"".join(json.dumps({"prompt": "p", "chosen": "a" * 200, "rejected": "b",
                                               "category": "x"}).encode() + b"\n" for _ in range(50)))
    bad = tmp_path / "cut.jsonl.gz"
    bad.write_bytes(whole[: len(whole) // 2])
    rc = report.main(["--model", str(saved_model), "--data", str(bad), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "truncated" in err and str(bad) in err and "Traceback" not in err


def test_empty_group_label_is_refused(tmp_path, saved_model, capsys, no_model_loading):
    bad = tmp_path / "empty.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b", "category": " "}) + "\n")
    rc = report.main(["--model", str(saved_model), "--data", str(bad), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "row 1" in err and "'category'" in err


def test_max_len_comes_from_the_saved_config_or_is_warned_about(saved_model, tmp_path):
    args = cli.build_parser().parse_args(["--model", str(saved_model), "--out", str(tmp_path)])
    warnings = []
    assert cli._max_len(args, warnings) == 64 and warnings == []
    args.max_len = 512
    assert cli._max_len(args, warnings) == 512
    assert len(warnings) == 1 and "trained with max_len 64" in warnings[0] and "512" in warnings[0]
    (saved_model / "config.json").write_text("{}")  # a plain OpenRLHF model records nothing
    args.max_len, warnings = None, []
    assert cli._max_len(args, warnings) == cli.DEFAULT_MAX_LEN and "do not record" in warnings[0]
    assert scoring.trained_max_len(tmp_path / "nowhere") is None


def test_small_groups_are_warned_about(tmp_path, capsys):
    pairs = PairSet(["big"] * 12 + ["tiny"] * 3, [5] * 15, [4] * 15, "t")
    runs = [ScoredRun("m", "m", torch.linspace(0, 1, 15, dtype=torch.float64), torch.zeros(15, dtype=torch.float64),
                      torch.zeros(15, dtype=torch.bool))]
    rewards = tmp_path / "pair_rewards.jsonl"
    write_pair_rewards(rewards, pairs, runs, "category")
    assert report.main(["--rewards", str(rewards), "--out", str(tmp_path / "o"), "--resamples", "200"]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "tiny (3 pairs)" in err and "big" not in err.split("warning")[1]
    doc = json.loads((tmp_path / "o" / "report.json").read_text())
    assert any("tiny (3 pairs)" in w for w in doc["warnings"])


@pytest.mark.parametrize("argv, message", [
    (["--best-of-n", "1"], "--best-of-n must be >= 2"),
    (["--best-of-n", "4", "--bon-prompts", "0"], "--bon-prompts"),
    (["--baseline", "nope"], "--baseline 'nope' is not one of the models"),
    (["--resamples", "10"], "--resamples must be >= 100"),
])
def test_report_option_errors(argv, message, pairs_file, saved_model, tmp_path, capsys, monkeypatch):
    # scoring is replaced by fixed rewards so that the --baseline check (after scoring) is reached
    def fake_score(args, rows, labels, max_len, device):
        return [ScoredRun(lab, "p", torch.arange(len(rows), dtype=torch.float64), torch.zeros(len(rows)),
                          torch.zeros(len(rows), dtype=torch.bool)) for lab in labels]

    monkeypatch.setattr(cli, "_score_models", fake_score)
    rc = report.main(["--model", str(saved_model), "--data", str(pairs_file), "--out", str(tmp_path / "o")] + argv)
    assert rc == 2 and message in capsys.readouterr().err


def test_score_responses_scores_each_response_once(monkeypatch):
    seen = []

    def fake_pairs(model, tokenizer, rows, **kwargs):
        seen.extend(rows)
        value = {"r1": 1.0, "r2": 2.0, "r3": 3.0, "s1": 4.0, "s2": 5.0}
        return (torch.tensor([value[r["chosen"]] for r in rows], dtype=torch.float64),
                torch.tensor([value[r["rejected"]] for r in rows], dtype=torch.float64), None)

    monkeypatch.setattr(scoring, "score_pairs", fake_pairs)
    got = scoring.score_responses(None, None, ["p", "p", "p", "q", "q"], ["r1", "r2", "r3", "s1", "s2"])
    assert got.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in seen] == [
        ("p", "r1", "r2"), ("p", "r3", "r3"), ("q", "s1", "s2")]


def test_demo_train_pairs_below_the_group_count_is_refused(tmp_path, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the backbone was loaded although --train-pairs was impossible")

    monkeypatch.setattr(demo, "_backbone", refuse)
    for flag in ("--train-pairs", "--test-pairs"):
        rc = demo.main([flag, "1", "--out", str(tmp_path / "d")])
        err = capsys.readouterr().err
        assert rc == 2 and f"{flag} 1 is below the number of category groups (2: harmless, helpful)" in err
    assert demo.main(["--seeds", "0", "--out", str(tmp_path / "d")]) == 2
    assert "--seeds must be >= 1" in capsys.readouterr().err


def test_pairs_are_tokenised_in_this_process(monkeypatch, tmp_path):
    """datasets >= 5 runs `map(num_proc=1)` in a forked pool; forked from a process with threads (pytest, tqdm,
    the demo) its manager can hang for ever (it did in a CI rehearsal). The report tokenises in this process."""
    import os

    import datasets

    from openrlhf_fair.cpu_backend.stand_ins import install, uninstall
    from openrlhf_fair.fixtures import build_tiny_tokenizer
    from openrlhf_fair.report import scoring

    record, real_map = tmp_path / "pids", datasets.Dataset.map

    def spy(self, function=None, *args, **kwargs):
        def recorded(*a, **k):  # a file, so that calls in a worker process are seen too
            with open(record, "a") as f:
                f.write(f"{os.getpid()}\n")
            return function(*a, **k)
        return real_map(self, recorded, *args, **kwargs)

    monkeypatch.setattr(datasets.Dataset, "map", spy)
    installed = install("flash_attn")
    try:
        tokenizer = build_tiny_tokenizer()
        rows = [{"prompt": f"question {i}", "chosen": "a good answer", "rejected": "a bad one"} for i in range(3)]
        pairs = scoring.tokenize_pairs(rows, tokenizer, 32)
    finally:
        if installed:
            uninstall("flash_attn")
    assert len(pairs.items) == 3
    assert set(record.read_text().split()) == {str(os.getpid())}
