"""Real `openrlhf train_rm` runs on CPU (tiny Llama) with issue 12's reward-level options: each flag's term
enters the trained loss and its metric reaches the step logs; the saved config records the setting.

Two training runs, at once: reward-level fairness with a group key; reward centering together with batch-sum
regularisation (the two baselines). Uses the data and helpers of fair_rm_runs.
"""

import pytest

from fair_processes import concurrently
from fair_rm_runs import BIN, RUN_ENV, host_args, run, saved_config, scalars, train_rm

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def term_runs(rm_workdir, run_cli):
    """rm_workdir once the runs "level" and "baselines" saved their models there."""
    concurrently(
        lambda: run(run_cli, train_rm(rm_workdir, "level", "--fairness_level_reg", "1.0", "--fairness_group_key",
                                      "category", "--fairness_level_temperature", "0.5"), rm_workdir, "level"),
        lambda: run(run_cli, train_rm(rm_workdir, "baselines", "--reward_centering", "0.5", "--batch_sum_reg", "0.5"),
                    rm_workdir, "baselines"))
    return rm_workdir


@pytest.mark.timeout(600)
def test_level_fairness_trains_and_logs_its_metrics(term_runs):
    logs = scalars(term_runs, "level")
    assert len(logs["train/fairness/level_F"]) == 4  # 64 pairs / batch 16, logged every step
    assert all(0.5 <= v <= 1.0 for v in logs["train/fairness/level_F"])  # Jain over 2 groups: in [1/2, 1]
    assert logs["train/fairness/level_term"] == pytest.approx([-v for v in logs["train/fairness/level_F"]], rel=1e-6)
    # BT plus the level term: the step's loss is base_loss - 1.0 * F_L (no margin term: method none). Both
    # fairness metrics are means over the step's two micro-batches, so the host's mean (loss_mean) is the match.
    assert logs["train/loss_mean"][0] == pytest.approx(
        logs["train/fairness/base_loss"][0] + logs["train/fairness/level_term"][0], abs=1e-2)
    recorded = saved_config(term_runs, "level")["openrlhf_fair"]
    assert recorded["level_reg"] == 1.0 and recorded["group_key"] == "category" and recorded["method"] == "none"
    assert recorded["level_temperature"] == 0.5


@pytest.mark.timeout(600)
def test_reward_centering_and_batch_sum_reg_train_and_log_their_terms(term_runs):
    logs = scalars(term_runs, "baselines")
    for tag in ("train/fairness/reward_centering", "train/fairness/batch_sum_reg"):
        assert len(logs[tag]) == 4 and all(v >= 0 for v in logs[tag]), tag
    assert "train/fairness/level_F" not in logs
    expected = (logs["train/fairness/base_loss"][0] + logs["train/fairness/reward_centering"][0]
                + logs["train/fairness/batch_sum_reg"][0])
    assert logs["train/loss"][0] == pytest.approx(expected, abs=1e-2)
    recorded = saved_config(term_runs, "baselines")["openrlhf_fair"]
    assert (recorded["reward_centering"], recorded["batch_sum_reg"], recorded["level_reg"]) == (0.5, 0.5, None)


@pytest.mark.quick  # trains nothing: part of the quick run
@pytest.mark.timeout(300)
@pytest.mark.parametrize("flags, message", [
    (["--fairness_reg", "0.1", "--train.micro_batch_size", "1"], "at least 2 preference pairs"),
    (["--fairness_reg", "0.1", "--fairness_group_key", "no_such_column"], "no_such_column"),
])
def test_known_errors_of_a_real_run_are_one_message_with_exit_2(rm_workdir, flags, message):
    """The micro-batch-of-1 check and an unknown group key, raised inside the real host run (issue 14)."""
    import os
    import subprocess

    args = host_args(rm_workdir, "refused")
    del args[args.index("--train.micro_batch_size"):args.index("--train.micro_batch_size") + 2]
    result = subprocess.run([str(BIN / "openrlhf"), "train_rm", *args, *flags], cwd=rm_workdir,
                            env={**os.environ, **RUN_ENV},
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and message in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("openrlhf train_rm: error:")]
    assert len(error_lines) == 1 and message in error_lines[0]
