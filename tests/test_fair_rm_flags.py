"""The reward-fairness flags (`openrlhf_fair.cli.flags`): split off an OpenRLHF command line."""

import pytest

from openrlhf_fair.cli.flags import fairness_help, parse_fairness_args
from openrlhf_fair.settings import RewardFairnessConfig

HOST = ["--model.model_name_or_path", "m", "--train.micro_batch_size", "8", "--adam.betas", "0.9", "0.95"]


def test_no_fairness_flag_gives_no_config_and_the_argv_untouched():
    assert parse_fairness_args("train_rm", HOST) == (None, HOST)
    assert parse_fairness_args("train_rm", []) == (None, [])


@pytest.mark.parametrize("command", ["train_rm", "train_dpo"])
def test_fairness_and_host_flags_keep_their_order(command):
    argv = ["--local_rank=1", *HOST[:2], "--fairness_reg", "0.1", *HOST[2:], "--fairness_tau=-2", "--fairness_group_key",
            "category"]
    config, rest = parse_fairness_args(command, argv)
    assert config == RewardFairnessConfig(reg=0.1, tau=-2.0, group_key="category")
    assert rest == ["--local_rank=1", *HOST]


def test_every_flag_reaches_the_config():
    config, rest = parse_fairness_args("train_rm", [
        "--fairness_coef", "0.5", "--fairness_coef_form", "inverse", "--fairness_tau", "0.5",
        "--fairness_temperature", "2", "--fairness_scope", "global",
    ])
    assert rest == []
    assert config == RewardFairnessConfig(coef=0.5, coef_form="inverse", tau=0.5, temperature=2.0, scope="global")
    assert config.method == "fc"


def test_other_flags_alone_measure_without_changing_the_loss():
    config, _ = parse_fairness_args("train_rm", ["--fairness_group_key", "category"])
    assert config.method == "none" and config.group_key == "category"


def test_commands_without_fairness_flags_pass_everything_through():
    argv = ["--fair_reg", "0.1", *HOST]
    assert parse_fairness_args("train_sft", argv) == (None, argv)
    assert fairness_help("train_sft") == ""


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--fairness_reg", "0.1", "--fairness_tau", "1"], "degenerate"),
        (["--fairness_reg", "-1"], "must be >= 0"),
        (["--fairness_coef_form", "inverse"], "only applies together with --fairness_coef"),
        (["--fairness_scope", "world"], "invalid choice"),
        (["--fairness_reg", "abc"], "invalid float"),
    ],
)
def test_bad_values_exit_2_with_a_message(capsys, argv, message):
    with pytest.raises(SystemExit) as stop:
        parse_fairness_args("train_rm", [*HOST, *argv])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "openrlhf train_rm: error:" in err and message in err


def test_help_names_every_flag_and_no_other_spelling():
    text = fairness_help("train_rm")
    for name in ("reg", "coef", "coef_form", "tau", "temperature", "scope", "group_key"):
        assert f"--fairness_{name}" in text and f"--fair_{name}" not in text
    assert not text.startswith("usage:")


def test_flag_tables_of_the_docs():
    """`markdown_table`: one row per setting, flag with its metavar (choices in braces), default ("off" for None, a
    pair as two numbers), help with "|" escaped; written out from the settings in settings.py."""
    from openrlhf_fair.cli.flags import markdown_table

    def first_cells(command):
        lines = markdown_table(command).splitlines()
        assert lines[:2] == ["| flag | default | what it does |", "|---|---|---|"]
        assert all(line.startswith("| `--") and line.endswith(" |") for line in lines[2:])
        return [tuple(line.split(" | ")[:2]) for line in lines[2:]]

    dpo = [("| `--fairness_reg ALPHA`", "off"), ("| `--fairness_coef GAMMA`", "off"),
           ("| `--fairness_coef_form {paper,inverse}`", "paper"), ("| `--fairness_tau TAU`", "-1.0"),
           ("| `--fairness_temperature T`", "1.0"), ("| `--fairness_scope {micro,global}`", "micro"),
           ("| `--fairness_group_key KEY`", "off")]
    assert first_cells("train_dpo") == dpo
    assert first_cells("train_rm") == dpo + [
        ("| `--fairness_level_reg LAMBDA`", "off"), ("| `--fairness_level_temperature T_L`", "1.0"),
        ("| `--reward_centering COEF`", "off"), ("| `--batch_sum_reg LAMBDA`", "off")]
    assert first_cells("train_ppo_ray") == [
        ("| `--fair_coef GAMMA`", "0.0"), ("| `--fair_reg ALPHA`", "0.0"), ("| `--fair_tau TAU`", "-1.0"),
        ("| `--fair_temperature T`", "1.0"), ("| `--fair_unit UNIT`", "sample"),
        ("| `--fair_weight_clip LOW HIGH`", "0.0 5.0"), ("| `--fair_history DECAY`", "0.0")]
    row = markdown_table("train_ppo_ray").splitlines()[-2]
    assert row == ("| `--fair_weight_clip LOW HIGH` | 0.0 5.0 | Clip the weights to [LOW, HIGH] before renormalising to "
                   "mean 1 (0 5: never flip an advantage's sign; at most 5x for one agent). |")


def test_help_states_each_default():
    text = " ".join(fairness_help("train_ppo_ray").split())
    assert "Default: 0.0 5.0." in text and "Default: sample." in text and "Default: -1.0." in text
    rm = " ".join(fairness_help("train_rm").split())
    assert "Default: paper." in rm and "Default: micro." in rm
    assert "Default: None" not in rm  # an unset setting states no default
