"""End to end on CPU: real `openrlhf train_ppo_ray ... --fair_coef 0.5` through Ray, the CPU backend's rollout engine
and DeepSpeed. The experience maker runs in OpenRLHF's PPOTrainer Ray actor, so fairness metrics in the logged
step metrics (and the shaping log line printed by that actor) prove the patch reached it through the args.
"""

import ast
import json
import re

import pytest
from fair_reference import ppo_reference_weights

pytestmark = pytest.mark.e2e

REWARD_FN = '''
import json

LOG = None  # a file to append each reward to (set by the reward_log fixture)


def reward_func(queries, prompts, labels):
    """Prompts marked hard get about -1.5, the others about +1.5: an unfair allocation by category.
    Each reward is also appended to rewards.jsonl, so the test can recompute the logged fairness numbers."""
    base = -2.0 if "hard" in prompts[0] else 1.0
    reward = base + (len(queries[0]) % 5) / 4.0
    if LOG is not None:
        with open(LOG, "a") as log:
            log.write(json.dumps({"prompt": prompts[0], "reward": reward}) + "\\n")
    return {"rewards": reward, "scores": 0.0}
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
    return folder


@pytest.fixture
def reward_log(ppo_data, tmp_path):
    """A reward function (in this test's folder) that logs every reward it gives to the returned file."""
    log = tmp_path / "rewards.jsonl"
    (tmp_path / "reward.py").write_text(REWARD_FN + f"LOG = {str(log)!r}\n")
    return log


def logged_rewards(log, batches: int, per_batch: int = 8) -> list[list[dict]]:
    """The rewards of each rollout batch, in the order the steps ran (one batch is generated, then trained on)."""
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(rows) == batches * per_batch, len(rows)
    return [rows[i * per_batch:(i + 1) * per_batch] for i in range(batches)]


def check_values(step, batch, agents, coef, reg):
    """The logged fairness numbers of one step equal a recomputation from the rewards the reward function gave."""
    rewards = [row["reward"] for row in batch]
    weights, F, U = ppo_reference_weights(rewards, agents, coef, reg)
    assert step["fairness/F"] == pytest.approx(F, rel=1e-5)
    assert step["fairness/jain"] == pytest.approx(F, rel=1e-5)  # tau = -1: F is Jain's index of the agents
    assert step["fairness/utility"] == pytest.approx(U, rel=1e-5)
    assert step["fairness/weight_min"] == pytest.approx(float(weights.min()), rel=1e-4)
    assert step["fairness/weight_max"] == pytest.approx(float(weights.max()), rel=1e-4)
    assert step["fairness/raw_reward"] == pytest.approx(sum(rewards) / len(rewards), abs=1e-5)


def ppo_command(model, data, out, estimator, *extra):
    """`openrlhf train_ppo_ray` with the host flags spelled as the installed OpenRLHF release spells them."""
    from openrlhf_fair.host.compat import host_argv

    return ["openrlhf", "train_ppo_ray", *host_argv([str(token) for token in [
        "--actor.model_name_or_path", model,
        "--reward.remote_url", out / "reward.py",
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
    ]])]


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
    leftovers = getattr(result, "leftovers", {})  # run_cli sets it
    assert not leftovers, f"the run left processes behind: {leftovers}"
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
def test_group_norm_with_label_unit_runs_and_logs_fairness(run_cli, tiny_llama, ppo_data, tmp_path, reward_log):
    result = run_cli(
        *ppo_command(tiny_llama, ppo_data, tmp_path, "group_norm", "--actor.num_gpus_per_node", "1",
                     "--fair_coef", "0.5", "--fair_unit", "label:category"),
        label="train_ppo_ray group_norm --fair_coef 0.5 --fair_unit label:category (1 rank)", timeout=230,
    )
    steps = check_fairness_logged(result)
    for step, batch in zip(steps, logged_rewards(reward_log, len(steps))):
        check_values(step, batch, ["hard" if "hard" in row["prompt"] else "easy" for row in batch], 0.5, 0.0)
        assert step["fairness/num_agents"] == 2.0
        # the labels reached the experience maker intact: the reward function favours "easy" prompts
        assert -2.0 <= step["fairness/label_reward/hard"] <= -1.0 < 1.0 <= step["fairness/label_reward/easy"] <= 2.0
        assert step["fairness/weight_max"] > 1.05  # the under-rewarded label is weighted up


@pytest.mark.timeout(240)
def test_gae_with_critic_and_two_actor_ranks(run_cli, tiny_llama, ppo_data, tmp_path, reward_log):
    result = run_cli(
        *ppo_command(tiny_llama, ppo_data, tmp_path, "gae", "--actor.num_gpus_per_node", "2",
                     "--critic.num_gpus_per_node", "1", "--fair_coef", "0.5", "--fair_reg", "0.1"),
        label="train_ppo_ray gae + critic --fair_coef 0.5 --fair_reg 0.1 (2 actor ranks)", timeout=230,
    )
    steps = check_fairness_logged(result)
    actor_ranks = set(re.findall(r"\(PolicyModelActor pid=(\d+)", result.stdout + result.stderr))
    assert len(actor_ranks) == 2, actor_ranks
    for step, batch in zip(steps, logged_rewards(reward_log, len(steps))):
        check_values(step, batch, list(range(len(batch))), 0.5, 0.1)
        assert step["fairness/weight_min"] < 0.95 and step["fairness/weight_max"] > 1.05  # advantages reweighted
        assert step["fairness/num_agents"] == 8.0  # unit sample: every sample is an agent
        assert "critic_loss" in step  # the critic trained on the (unchanged) returns


@pytest.mark.timeout(240)
def test_history_remembers_label_allocations_across_batches(run_cli, tiny_llama, ppo_data, tmp_path, reward_log):
    """--fair_history 0.5 over label:category: the logged fairness/history_* numbers are those of the moving
    average of each label's mean sigmoid(reward) over the rollout batches so far, recomputed from the rewards the
    reward function gave; fairness/F stays the batch's own."""
    import math

    decay = 0.5
    result = run_cli(
        *ppo_command(tiny_llama, ppo_data, tmp_path, "group_norm", "--actor.num_gpus_per_node", "1",
                     "--fair_reg", "0.5", "--fair_unit", "label:category", "--fair_history", str(decay)),
        label="train_ppo_ray group_norm --fair_reg 0.5 --fair_unit label:category --fair_history 0.5", timeout=230,
    )
    steps = check_fairness_logged(result)
    memory = {}
    for step, batch in zip(steps, logged_rewards(reward_log, len(steps))):
        own = {}
        for label in ("easy", "hard"):
            values = [1 / (1 + math.exp(-row["reward"])) for row in batch if (label == "hard") == ("hard" in row["prompt"])]
            own[label] = sum(values) / len(values)
            memory[label] = decay * memory[label] + (1 - decay) * own[label] if label in memory else own[label]
        jain = lambda x: sum(x) ** 2 / (len(x) * sum(v * v for v in x))  # noqa: E731
        assert step["fairness/jain"] == pytest.approx(jain(list(own.values())), rel=1e-5)
        assert step["fairness/history_jain"] == pytest.approx(jain(list(memory.values())), rel=1e-5)
        assert step["fairness/history_utility"] == pytest.approx(sum(memory.values()) / 2, rel=1e-5)
        assert step["fairness/history_agents"] == 2.0
