"""Mistakes on the command line and the add-on's known errors: one clear message, exit status 2, no traceback.

Misspelled add-on flags get "did you mean"; a flag of another subcommand points to its counterpart; an
`AddonError` raised while the host runs (in the driver, a torchrun rank, or a Ray actor) is printed alone unless
OPENRLHF_FAIR_DEBUG=1 asks for the traceback; `openrlhf-fair --help` names itself.
"""

import subprocess
import sys
from pathlib import Path

import pytest

from openrlhf_fair.cli import runner
from openrlhf_fair.cli.flags import parse_fairness_args
from openrlhf_fair.errors import AddonError, FairnessConfigError

BIN = Path(sys.executable).parent
HOST = ["--model.model_name_or_path", "m", "--train.micro_batch_size", "8", "--local_rank", "0"]


@pytest.mark.parametrize(
    "command, typo, message",
    [
        ("train_rm", "--fairness_regg", "did you mean --fairness_reg?"),
        ("train_dpo", "--fairnes_coef", "did you mean --fairness_coef?"),
        ("train_rm", "--fair_temprature", "did you mean --fairness_temperature?"),  # a typo of the old spelling
        ("train_ppo_ray", "--fair_coeff", "did you mean --fair_coef?"),
        ("train_rm", "--fairness_re", "did you mean --fairness_reg?"),  # an abbreviation is not accepted either
        ("train_rm", "--fairness_lambda", "the add-on's flags of train_rm: --fairness_reg, --fairness_coef"),
    ],
)
def test_near_miss_of_an_addon_flag_says_did_you_mean(capsys, command, typo, message):
    with pytest.raises(SystemExit) as stop:
        parse_fairness_args(command, [*HOST, f"{typo}=0.1"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err == f"openrlhf {command}: error: unrecognized argument {typo}; {message}" + err.split(message, 1)[1]
    assert err.count("\n") == 1 and "usage" not in err


@pytest.mark.parametrize(
    "command, flag, pointer",
    [
        ("train_ppo_ray", "--fairness_group_key", "on train_ppo_ray use --fair_unit label:KEY"),
        ("train_ppo_ray", "--fairness_scope", "--fairness_scope is a flag of train_rm/train_dpo, not of train_ppo_ray"),
        ("train_rm", "--fair_unit", "on train_rm use --fairness_group_key KEY"),
        ("train_dpo", "--fair_weight_clip", "--fair_weight_clip is a flag of train_ppo_ray, not of train_dpo"),
    ],
)
def test_flag_of_another_subcommand_points_to_its_counterpart(capsys, command, flag, pointer):
    with pytest.raises(SystemExit) as stop:
        parse_fairness_args(command, [*HOST, flag, "category"])
    assert stop.value.code == 2
    assert pointer in capsys.readouterr().err


def test_host_flags_are_never_taken_for_typos():
    """OpenRLHF's own flags (dotted, and the few undotted ones) pass through untouched."""
    host = [*HOST, "--lr_scheduler", "cosine", "--max_norm", "1.0", "--optim", "adam", "--use_ms",
            "--data.dataset", "json@x", "--model.fairness_like_dotted_flag", "1"]
    assert parse_fairness_args("train_rm", host) == (None, host)
    assert parse_fairness_args("train_ppo_ray", host) == (None, host)


def cli(*argv, env=None):
    return subprocess.run([str(BIN / "openrlhf"), *argv], capture_output=True, text=True, timeout=120,
                          env=env)


def test_real_command_misspelled_flag_fails_in_one_line_without_the_host_usage():
    result = cli("train_rm", "--train.micro_batch_size", "8", "--fairness_regg", "0.1")
    assert result.returncode == 2
    assert result.stderr == ("openrlhf train_rm: error: unrecognized argument --fairness_regg; "
                             "did you mean --fairness_reg?\n")
    result = cli("train_ppo_ray", "--fairness_group_key", "category")
    assert result.returncode == 2 and "use --fair_unit label:KEY" in result.stderr and "Traceback" not in result.stderr


def test_openrlhf_fair_help_names_openrlhf_fair():
    result = subprocess.run([str(BIN / "openrlhf-fair"), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("usage: openrlhf-fair ")
    assert "--debug" in result.stdout


# ------------------------------------------------------------------ known errors raised while the host runs
@pytest.fixture
def fake_host(tmp_path, monkeypatch):
    """A stand-in `openrlhf.cli` package whose train_rm raises what the test writes into it."""
    package = tmp_path / "fakehost_cli"
    package.mkdir()
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(runner, "HOST_CLI_PACKAGE", "fakehost_cli")
    monkeypatch.setenv("OPENRLHF_FAIR_CPU", "0")
    monkeypatch.delenv(runner.DEBUG_ENV, raising=False)

    def write(body: str) -> None:
        (package / "train_rm.py").write_text(body)
        for name in ("fakehost_cli", "fakehost_cli.train_rm"):  # each test has its own folder
            monkeypatch.delitem(sys.modules, name, raising=False)

    return write


RAISE = (
    "from openrlhf_fair.settings import FairnessConfigError\n"
    "if __name__ == '__main__':\n"
    "    raise FairnessConfigError('fairness needs at least 2 preference pairs per micro-batch; pass "
    "--train.micro_batch_size 2 or more')\n"
)


def test_known_error_in_the_host_run_is_one_message_and_exit_2(fake_host, capsys):
    fake_host(RAISE)
    assert runner.run_host_cli("train_rm", [], cpu=False) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "openrlhf train_rm: error: fairness needs at least 2 preference pairs per micro-batch; pass "
        "--train.micro_batch_size 2 or more",
        f"(traceback: {runner.DEBUG_ENV}=1)",
    ]


def test_debug_switch_gives_the_traceback(fake_host, monkeypatch):
    fake_host(RAISE)
    monkeypatch.setenv(runner.DEBUG_ENV, "1")
    with pytest.raises(FairnessConfigError, match="at least 2 preference pairs"):
        runner.run_host_cli("train_rm", [], cpu=False)


def test_every_addon_error_class_is_a_known_error():
    from openrlhf_fair.errors import DataError
    from openrlhf_fair.errors import HostMismatchError
    from openrlhf_fair.errors import GroupKeyError, LabelColumnError
    from openrlhf_fair.errors import PreflightError

    for error in (FairnessConfigError, HostMismatchError, GroupKeyError, LabelColumnError, PreflightError, DataError):
        assert issubclass(error, AddonError)


def test_host_mismatch_message_loses_its_prefix_but_nothing_else(fake_host, capsys):
    fake_host("from openrlhf_fair.host.patching import require_attribute\n"
              "if __name__ == '__main__':\n    require_attribute(object, 'fit', 'the trainer loop')\n")
    assert runner.run_host_cli("train_rm", [], cpu=False) == 2
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith("openrlhf train_rm: error: object.fit not found (the trainer loop).")


def test_other_errors_keep_their_traceback(fake_host):
    fake_host("if __name__ == '__main__':\n    raise KeyError('a bug, not a user mistake')\n")
    with pytest.raises(KeyError):
        runner.run_host_cli("train_rm", [], cpu=False)


def test_known_error_from_a_ray_actor_prints_the_actor_message(fake_host, capsys):
    """Ray re-raises an actor's exception in the driver as a RayTaskError that is also an instance of its class,
    whose str() is the actor's whole traceback: the driver prints the original message alone."""
    ray_exceptions = pytest.importorskip("ray.exceptions")
    cause = FairnessConfigError("--fair_unit label:category: the prompt dataset has no column 'category'")
    wrapped = ray_exceptions.RayTaskError("PPOTrainer.fit", "Traceback (most recent call last): ...", cause)
    wrapped = wrapped.as_instanceof_cause()
    assert isinstance(wrapped, AddonError)
    fake_host("import builtins\nif __name__ == '__main__':\n    raise builtins.ray_error\n")
    import builtins

    builtins.ray_error = wrapped
    try:
        assert runner.run_host_cli("train_rm", [], cpu=False) == 2
    finally:
        del builtins.ray_error
    err = capsys.readouterr().err
    assert err.splitlines()[0] == f"openrlhf train_rm: error: {cause}" and "Traceback" not in err
