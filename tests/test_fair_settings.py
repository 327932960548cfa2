"""One definition per setting: the flags are generated from the config dataclasses' fields (`settings.setting`)."""

import dataclasses

import pytest

from openrlhf_fair.cli import flags
from openrlhf_fair.cli.flags import FLAG_SETS, fairness_help, fields_of, flag_name, parse_fairness_args
from openrlhf_fair.settings import RewardFairnessConfig, PPOFairnessConfig

# One value per setting that differs from its default and is valid together with the others.
RM_VALUES = {"reg": ("0.3", 0.3), "tau": ("-2", -2.0), "temperature": ("2", 2.0), "scope": ("global", "global"),
             "group_key": ("category", "category")}
PPO_VALUES = {"coef": ("0.5", 0.5), "reg": ("0.1", 0.1), "tau": ("-2", -2.0), "temperature": ("3", 3.0),
              "unit": ("prompt", "prompt"), "weight_clip": (["0.1", "4"], (0.1, 4.0))}


def _argv(config_class, values):
    argv = []
    for name, (text, _) in values.items():
        field = next(f for f in dataclasses.fields(config_class) if f.name == name)
        argv += [flag_name(config_class, field), *([text] if isinstance(text, str) else text)]
    return argv


@pytest.mark.parametrize("command", list(FLAG_SETS))
def test_every_field_is_one_flag_with_its_help_and_default(command):
    config_class = FLAG_SETS[command][0]
    text = "".join(fairness_help(command).split())  # argparse wraps lines (also after hyphens)
    for field in fields_of(command):
        assert flag_name(config_class, field) in text
        assert "".join(field.metadata["help"].split()) in text
        if isinstance(field.default, float):
            assert f"Default:{field.default}." in text


@pytest.mark.parametrize("command, values", [("train_rm", RM_VALUES), ("train_ppo_ray", PPO_VALUES)])
def test_each_flag_sets_its_field_and_only_that(command, values):
    config_class = FLAG_SETS[command][0]
    config, rest = parse_fairness_args(command, ["--host.flag", "1", *_argv(config_class, values)])
    assert rest == ["--host.flag", "1"]
    assert config == config_class(**{name: value for name, (_, value) in values.items()})
    for name, (_, value) in values.items():  # one flag alone: that field set, every other one at its default
        alone, _ = parse_fairness_args(command, _argv(config_class, {name: values[name]}))
        assert alone == config_class(**{name: value})


@pytest.mark.parametrize(
    "command, other, ours",
    [("train_rm", "--fair_reg", "--fairness_reg"), ("train_dpo", "--fair_tau", "--fairness_tau"),
     ("train_ppo_ray", "--fairness_reg", "--fair_reg"), ("train_ppo_ray", "--fairness_tau", "--fair_tau")],
)
def test_the_other_sides_spelling_is_refused_naming_ours(capsys, command, other, ours):
    with pytest.raises(SystemExit) as stop:
        parse_fairness_args(command, [other, "0.5"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"{other} is a flag of" in err and f"not of {command}; on {command} use {ours}" in err


def test_fair_coef_on_train_rm_is_refused_naming_the_direction_of_both_spellings(capsys):
    with pytest.raises(SystemExit):
        parse_fairness_args("train_rm", ["--fair_coef", "0.5"])
    err = capsys.readouterr().err
    assert "--fair_coef is a flag of train_ppo_ray, not of train_rm; on train_rm use --fairness_coef GAMMA" in err
    assert "LOWERS fairness" in err and "--fairness_coef_form inverse" in err
    with pytest.raises(SystemExit):
        parse_fairness_args("train_ppo_ray", ["--fairness_coef", "0.5"])
    err = capsys.readouterr().err
    assert "--fairness_coef is a flag of train_rm/train_dpo, not of train_ppo_ray; on train_ppo_ray use --fair_coef" in err
    assert "RAISES fairness" in err


def test_train_rm_only_settings_are_not_flags_of_train_dpo(capsys):
    rm_only = {f.name for f in fields_of("train_rm")} - {f.name for f in fields_of("train_dpo")}
    assert rm_only == {"level_reg", "level_temperature", "reward_centering", "batch_sum_reg"}
    with pytest.raises(SystemExit):
        parse_fairness_args("train_dpo", ["--reward_centering", "0.01"])
    assert "--reward_centering is a flag of train_rm, not of train_dpo" in capsys.readouterr().err
    config, _ = parse_fairness_args("train_rm", ["--reward_centering", "0.01", "--batch_sum_reg", "0.02",
                                                 "--fairness_level_reg", "1", "--fairness_level_temperature", "0.5"])
    assert config == RewardFairnessConfig(reward_centering=0.01, batch_sum_reg=0.02, level_reg=1.0,
                                          level_temperature=0.5)
    assert capsys.readouterr().err == ""


def test_saved_settings_use_the_shared_vocabulary():
    saved = RewardFairnessConfig(coef=0.5, coef_form="inverse").to_dict()
    assert (saved["method"], saved["coef"], saved["reg"], saved["coef_form"]) == ("fc", 0.5, None, "inverse")
    assert not {"alpha", "gamma"} & set(saved)
    shared = {"reg", "coef", "tau", "temperature"}
    assert shared <= {f.name for f in dataclasses.fields(RewardFairnessConfig)}
    assert shared <= set(PPOFairnessConfig().to_payload())
