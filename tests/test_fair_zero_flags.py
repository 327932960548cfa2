"""A flag given as 0 reaches the config as 0 on every command (`cli.flags.parse_fairness_args`): 0 is a value, not
"not given". tau = 0 is the Shannon limit (default -1, Jain), a weight of 0 is a run that logs fairness with the
loss unchanged, and a clip's lower end 0 lets a weight reach 0."""

from __future__ import annotations

import pytest

from openrlhf_fair.cli.flags import parse_fairness_args

HOST = ["--model.model_name_or_path", "m", "--train.micro_batch_size", "8"]


@pytest.mark.parametrize("command", ["train_rm", "train_dpo"])
@pytest.mark.parametrize("spelling", ["--fairness_"])
def test_reward_and_dpo_zero_values(command, spelling):
    config, rest = parse_fairness_args(command, [*HOST, f"{spelling}tau", "0", f"{spelling}reg", "0"])
    assert rest == HOST
    assert config.tau == 0.0 and config.tau is not None  # not the default -1
    assert config.reg == 0.0 and config.method == "fr"  # given as 0: FR with ALPHA 0, not "no method"
    config, _ = parse_fairness_args(command, [f"{spelling}coef=0"])
    assert config is not None and config.coef == 0.0 and config.method == "fc" and config.tau == -1.0


@pytest.mark.parametrize("command", ["train_rm", "train_dpo"])
def test_a_zero_alone_still_gives_a_config(command):
    for flag in ("--fairness_reg", "--fairness_tau", "--fairness_coef"):
        config, rest = parse_fairness_args(command, [flag, "0"])
        assert config is not None and getattr(config, flag[len("--fairness_"):]) == 0.0, flag
        assert rest == []


@pytest.mark.parametrize("flag, field", [("--fairness_level_reg", "level_reg"), ("--reward_centering",
                                                                                   "reward_centering"),
                                         ("--batch_sum_reg", "batch_sum_reg")])
def test_train_rm_penalty_weights_given_as_zero(flag, field):
    config, rest = parse_fairness_args("train_rm", [*HOST, flag, "0"])
    assert rest == HOST and config is not None
    assert getattr(config, field) == 0.0 and getattr(config, field) is not None
    assert config.method == "none"


@pytest.mark.parametrize("spelling", ["--fair_"])
def test_ppo_zero_values(spelling):
    config, rest = parse_fairness_args("train_ppo_ray", [*HOST, f"{spelling}tau", "0", f"{spelling}reg", "0.5"])
    assert rest == HOST and config.tau == 0.0 and config.reg == 0.5
    # only zeros: still a config (the measure-only baseline), nothing dropped
    config, _ = parse_fairness_args("train_ppo_ray", [f"{spelling}coef", "0"])
    assert config is not None and config.coef == 0.0 and not config.enabled
    config, _ = parse_fairness_args("train_ppo_ray", [f"{spelling}reg", "0", f"{spelling}weight_clip", "0", "5"])
    assert config is not None and config.reg == 0.0 and config.weight_clip == (0.0, 5.0)
    config, _ = parse_fairness_args("train_ppo_ray", [f"{spelling}temperature", "0.5", f"{spelling}coef", "0"])
    assert (config.coef, config.temperature) == (0.0, 0.5)


def test_zero_where_zero_is_invalid_is_refused_not_dropped(capsys):
    """A 0 that the config refuses must reach it and be refused, not silently fall back on the default."""
    for command, argv, message in (("train_rm", ["--fairness_temperature", "0"], "must be > 0"),
                                   ("train_ppo_ray", ["--fair_temperature", "0"], "must be > 0")):
        with pytest.raises(SystemExit) as stop:
            parse_fairness_args(command, argv)
        assert stop.value.code == 2 and message in capsys.readouterr().err
