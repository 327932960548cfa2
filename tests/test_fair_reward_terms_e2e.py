"""Real `openrlhf train_rm` runs on CPU (tiny Llama) with issue 12's reward-level options: each flag's term
enters the trained loss and its metric reaches the step logs; the saved config records the setting.

Two training runs: reward-level fairness with a group key; reward centering together with batch-sum
regularisation (the two baselines). Uses the data and helpers of test_fair_rm_e2e.
"""

import pytest

from test_fair_rm_e2e import BIN, host_args, run, saved_config, scalars, workdir  # noqa: F401 (workdir: fixture)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def level_run(workdir):  # noqa: F811
    cmd = [str(BIN / "openrlhf"), "train_rm", *host_args(workdir, "level"),
           "--fairness_level_reg", "1.0", "--fairness_group_key", "category"]
    return run(cmd, workdir, "level") and "level"


@pytest.fixture(scope="module")
def baselines_run(workdir):  # noqa: F811
    cmd = [str(BIN / "openrlhf"), "train_rm", *host_args(workdir, "baselines"),
           "--reward_centering", "0.5", "--batch_sum_reg", "0.5"]
    return run(cmd, workdir, "baselines") and "baselines"


@pytest.mark.timeout(600)
def test_level_fairness_trains_and_logs_its_metrics(workdir, level_run):  # noqa: F811
    logs = scalars(workdir, level_run)
    assert len(logs["train/fairness/level_F"]) == 4  # 64 pairs / batch 16, logged every step
    assert all(0.5 <= v <= 1.0 for v in logs["train/fairness/level_F"])  # Jain over 2 groups: in [1/2, 1]
    assert logs["train/fairness/level_term"] == pytest.approx([-v for v in logs["train/fairness/level_F"]], rel=1e-6)
    # BT plus the level term: the logged loss is base_loss - 1.0 * F_L (no margin term: method none)
    assert logs["train/loss"][0] == pytest.approx(
        logs["train/fairness/base_loss"][0] + logs["train/fairness/level_term"][0], abs=1e-2)
    recorded = saved_config(workdir, level_run)["openrlhf_fair"]
    assert recorded["level_reg"] == 1.0 and recorded["group_key"] == "category" and recorded["method"] == "none"


@pytest.mark.timeout(600)
def test_reward_centering_and_batch_sum_reg_train_and_log_their_terms(workdir, baselines_run):  # noqa: F811
    logs = scalars(workdir, baselines_run)
    for tag in ("train/fairness/reward_centering", "train/fairness/batch_sum_reg"):
        assert len(logs[tag]) == 4 and all(v >= 0 for v in logs[tag]), tag
    assert "train/fairness/level_F" not in logs
    expected = (logs["train/fairness/base_loss"][0] + logs["train/fairness/reward_centering"][0]
                + logs["train/fairness/batch_sum_reg"][0])
    assert logs["train/loss"][0] == pytest.approx(expected, abs=1e-2)
    recorded = saved_config(workdir, baselines_run)["openrlhf_fair"]
    assert (recorded["reward_centering"], recorded["batch_sum_reg"], recorded["level_reg"]) == (0.5, 0.5, None)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("flags, message", [
    (["--fairness_reg", "0.1", "--train.micro_batch_size", "1"], "at least 2 preference pairs"),
    (["--fairness_reg", "0.1", "--fairness_group_key", "no_such_column"], "no_such_column"),
])
def test_known_errors_of_a_real_run_are_one_message_with_exit_2(workdir, flags, message):  # noqa: F811
    """The micro-batch-of-1 check and an unknown group key, raised inside the real host run (issue 14)."""
    import os
    import subprocess

    args = host_args(workdir, "refused")
    del args[args.index("--train.micro_batch_size"):args.index("--train.micro_batch_size") + 2]
    env = {**os.environ, "OPENRLHF_FAIR_CPU": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([str(BIN / "openrlhf"), "train_rm", *args, *flags], cwd=workdir, env=env,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and message in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("openrlhf train_rm: error:")]
    assert len(error_lines) == 1 and message in error_lines[0]
