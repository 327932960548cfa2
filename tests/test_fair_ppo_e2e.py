"""End to end on CPU: real `openrlhf train_ppo_ray ... --fair_coef 0.5` through Ray, the CPU backend's rollout engine
and DeepSpeed. The experience maker runs in OpenRLHF's PPOTrainer Ray actor, so fairness metrics in the logged
step metrics (and the shaping log line printed by that actor) prove the patch reached it through the args.
"""

import ast
import json
import re

import pytest

pytestmark = pytest.mark.e2e

REWARD_FN = '''
def reward_func(queries, prompts, labels):
    """Prompts marked hard get about -1.5, the others about +1.5: an unfair allocation by category."""
    base = -2.0 if "hard" in prompts[0] else 1.0
    return {"rewards": base + (len(queries[0]) % 5) / 4.0, "scores": 0.0}
'''
FAIRNESS_KEYS = ("fairness/F", "fairness/jain", "fairness/gini", "fairness/weight_min", "fairness/weight",
                 "fairness/weight_max", "fairness/raw_reward", "fairness/utility", "fairness/num_agents")
STEP_LINE = re.compile(r"Global step (\d+): (\{.*\})\s*$")


@pytest.fixture(scope="module")
def ppo_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ppo_data")
    rows = [
        {"input": f"Question {i}: answer a {'hard' if i % 2 else 'simple'} question.", "category": "hard" if i % 2 else "easy"}
        for i in range(16)
    ]
    (folder / "prompts.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (folder / "reward.py").write_text(REWARD_FN)
    return folder


def ppo_command(model, data, out, estimator, *extra):
    from openrlhf_fair.host.compat import host_argv

    return ["openrlhf", "train_ppo_ray"] + host_argv([
        "--actor.model_name_or_path", model,
        "--reward.remote_url", data / "reward.py",
        "--data.prompt_dataset", data / "prompts.jsonl", "--data.input_key", "input",
        # The first 4 prompts (2 easy, 2 hard: the dataset is read in order) make every rollout batch, once per
        # episode, so each of the 3 steps holds both labels whatever order the prompt loader shuffles them in.
        "--data.max_samples", "4", "--train.num_episodes", "3",
        "--rollout.batch_size", "4", "--rollout.n_samples_per_prompt", "2", "--rollout.micro_batch_size", "4",
        "--train.batch_size", "8", "--train.micro_batch_size", "4",
        "--rollout.max_new_tokens", "8", "--data.max_len", "64",
        "--vllm.num_engines", "1", "--vllm.sync_backend", "gloo",
        "--algo.advantage.estimator", estimator, "--algo.kl.init_coef", "0",
        "--ckpt.output_dir", out / "model", "--ckpt.path", out / "ckpt",
        *extra,
    ])


def logged_steps(output: str) -> list[dict]:
    steps = []
    for line in output.splitlines():
        match = STEP_LINE.search(line)
        if match:
            steps.append(ast.literal_eval(match.group(2)))
    return steps


def check_fairness_logged(result, expect_steps=3):
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    steps = logged_steps(output)
    assert len(steps) == expect_steps, output[-4000:]
    shaping_lines = [line for line in output.splitlines() if "[Fairness shaping]" in line]
    assert len(shaping_lines) == expect_steps and all("PPOTrainer" in line for line in shaping_lines)
    for step in steps:
        missing = [key for key in FAIRNESS_KEYS if key not in step]
        assert not missing, (missing, step)
        assert 0 < step["fairness/jain"] <= 1 and 0 <= step["fairness/gini"] < 1
        assert step["fairness/weight_min"] <= 1 <= step["fairness/weight_max"]
        assert step["fairness/weight"] == pytest.approx(1.0, abs=1e-5)  # renormalised to mean 1
        host_reward = step["rollout/reward_mean"] if "rollout/reward_mean" in step else step["reward"]  # 0.9.3-0.10.1: "reward"
        assert step["fairness/raw_reward"] == pytest.approx(host_reward, abs=1e-5)
    return steps


@pytest.mark.host_matrix
@pytest.mark.timeout(240)
def test_group_norm_with_label_unit_runs_and_logs_fairness(run_cli, tiny_llama, ppo_data, tmp_path):
    result = run_cli(
        *ppo_command(tiny_llama, ppo_data, tmp_path, "group_norm", "--actor.num_gpus_per_node", "1",
                     "--fair_coef", "0.5", "--fair_unit", "label:category"),
        label="train_ppo_ray group_norm --fair_coef 0.5 --fair_unit label:category (1 rank)", timeout=230,
    )
    steps = check_fairness_logged(result)
    for step in steps:
        assert step["fairness/num_agents"] == 2.0
        # the labels reached the experience maker intact: the reward function favours "easy" prompts
        assert -2.0 <= step["fairness/label_reward/hard"] <= -1.0 < 1.0 <= step["fairness/label_reward/easy"] <= 2.0
        assert step["fairness/weight_max"] > 1.05  # the under-rewarded label is weighted up


@pytest.mark.timeout(240)
def test_gae_with_critic_and_two_actor_ranks(run_cli, tiny_llama, ppo_data, tmp_path):
    result = run_cli(
        *ppo_command(tiny_llama, ppo_data, tmp_path, "gae", "--actor.num_gpus_per_node", "2",
                     "--critic.num_gpus_per_node", "1", "--fair_coef", "0.5", "--fair_reg", "0.1"),
        label="train_ppo_ray gae + critic --fair_coef 0.5 --fair_reg 0.1 (2 actor ranks)", timeout=230,
    )
    steps = check_fairness_logged(result)
    actor_ranks = set(re.findall(r"\(PolicyModelActor pid=(\d+)", result.stdout + result.stderr))
    assert len(actor_ranks) == 2, actor_ranks
    for step in steps:
        assert step["fairness/num_agents"] == 8.0  # unit sample: every sample is an agent
        assert "critic_loss" in step  # the critic trained on the (unchanged) returns
