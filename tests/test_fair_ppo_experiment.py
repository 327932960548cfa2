"""The PPO fairness experiment script (examples/ppo_fairness/): its data preparation, command lines and summary
math, without training anything (the runs themselves are in examples/results/ppo_fairness/).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ppo_fairness"
sys.path.insert(0, str(EXAMPLE))

import experiment  # noqa: E402
import summarise  # noqa: E402
from reward_func import response_text  # noqa: E402


def test_prompts_of_both_groups_from_the_bundled_data_and_held_out_split():
    train, test = experiment.prompt_rows("train"), experiment.prompt_rows("test")
    assert sorted(train) == sorted(test) == ["harmless", "helpful"]
    for rows in (*train.values(), *test.values()):
        assert len(rows) > 100 and len({r["question"] for r in rows}) == len(rows)
    harmless = train["harmless"][0]
    assert harmless["rm_prompt"].startswith("Human:") and harmless["rm_prompt"].rstrip().endswith("Assistant:")
    assert "Human:" not in harmless["question"] and "Assistant:" not in harmless["question"]
    train_questions = {r["question"] for rows in train.values() for r in rows}
    assert not train_questions & {r["question"] for rows in test.values() for r in rows}  # held out by prompt


def test_single_turn_extraction():
    assert experiment._single_turn("Human: How do I bake bread?\n\nAssistant:") == "How do I bake bread?"
    assert experiment._single_turn("Human: hi\n\nAssistant: hello\n\nHuman: and?\n\nAssistant:") is None


@pytest.mark.parametrize("method, flags", [("plain", []), ("coef", ["--fair_coef", "0.5"]), ("reg", ["--fair_reg", "0.5"])])
def test_ppo_command_per_method_and_estimator(method, flags, tmp_path):
    paths = {"policy": "POLICY", "reward_func": "REWARD.py"}
    for estimator in experiment.ESTIMATORS:
        cmd = experiment.ppo_command(experiment.CONFIGS["cpu"], paths, tmp_path, estimator, method, 3)
        joined = " ".join(cmd)
        assert cmd[1:3] == ["--cpu", "train_ppo_ray"]
        assert "--fair_unit label:category" in joined and f"--algo.advantage.estimator {estimator}" in joined
        assert ("--fair_coef" in cmd) == (method == "coef") and ("--fair_reg" in cmd) == (method == "reg")
        if flags:
            assert " ".join(flags) in joined
        assert ("--critic.model_name_or_path" in cmd) == (estimator == "gae")
        assert "--train.seed 3" in joined
        gpu = experiment.ppo_command(experiment.CONFIGS["gpu"], paths, tmp_path, estimator, method, 3)
        assert gpu[1] == "--no-cpu" and "--vllm.sync_backend" not in gpu


def test_response_text_survives_a_cut_prompt():
    prompt = "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"
    assert response_text(prompt + "Answer.<|im_end|>", prompt) == "Answer."
    assert response_text(prompt[6:] + "Answer.<|im_end|>", prompt) == "Answer."


def fake_eval(path: Path, harmless: float, helpful: float) -> None:
    groups = {g: {"reward": r, "judge": r / 2, "kl": 0.1, "length": 10.0, "n": 4}
              for g, r in (("harmless", harmless), ("helpful", helpful))}
    path.write_text(json.dumps({"groups": groups}))


def test_summary_intervals_and_paired_differences(tmp_path):
    (tmp_path / "eval").mkdir()
    for seed, (base, plain, coef) in {1: (-1.0, -0.5, -0.2), 2: (-1.2, -0.7, -0.3), 3: (-0.8, -0.3, -0.1)}.items():
        fake_eval(tmp_path / "eval" / f"base-s{seed}.json", base, 0.5)
        fake_eval(tmp_path / "eval" / f"group_norm-plain-s{seed}.json", plain, 0.6)
        fake_eval(tmp_path / "eval" / f"group_norm-coef-s{seed}.json", coef, 0.6)
    doc = summarise.summarise(tmp_path)
    assert doc["under_rewarded"] == "harmless" and doc["favoured"] == "helpful"
    gap = doc["runs"]["group_norm/plain"]["gap"]
    assert gap["mean"] == pytest.approx(1.1) and gap["n"] == 3
    half = 4.303 * 0.2 / math.sqrt(3)  # t(0.975, 2) * stdev(1.1, 1.3, 0.9) / sqrt(3)
    assert (gap["lo"], gap["hi"]) == pytest.approx((1.1 - half, 1.1 + half))
    diff = doc["vs_plain"]["group_norm/coef"]
    assert diff["gap"]["mean"] == pytest.approx(-(0.3 + 0.4 + 0.2) / 3) and diff["seeds"] == [1, 2, 3]
    assert diff["reward_all"]["mean"] == pytest.approx((0.3 + 0.4 + 0.2) / 6)
    assert "| coef (3 seeds) |" in (tmp_path / "summary.md").read_text()


def test_batched_sequence_logprobs_equal_one_sequence_at_a_time():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from evaluate import sequence_logprobs

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2)).eval()
    samples = [([3, 4, 5], [6, 7]), ([8, 9], [10, 11, 12, 13]), ([14], [15])]
    with torch.no_grad():
        expected = []
        for prompt, response in samples:  # float64 reference, one unpadded sequence at a time
            logits = model.double()(torch.tensor([prompt + response])).logits[0].double()
            logp = torch.log_softmax(logits, -1)
            expected.append(sum(logp[len(prompt) - 1 + t, tok].item() for t, tok in enumerate(response)))
        model.float()
    got = sequence_logprobs(model, samples, batch_size=2)  # a padded batch of 2, then 1
    assert got == pytest.approx(expected, abs=1e-4)


# Runs the experiment's GPU command through `openrlhf` up to the first line of OpenRLHF's train(args), which is
# `if not ray.is_initialized(): ray.init(...)`: by then the host's parser has read every flag and its own checks on
# the parsed args have passed, and so have the add-on's flag parsing and pre-run data checks. flash_attn and vllm
# are the CPU backend's import-only stand-ins (this machine has neither), and nothing else of the backend is on.
GPU_COMMAND_CHECK = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import experiment, ray
from openrlhf_fair.cpu_backend import stand_ins
out, estimator, method = Path(sys.argv[2]), sys.argv[3], sys.argv[4]
rows = [{"question": f"q{i}", "rm_prompt": f"Human: q{i}\\n\\nAssistant:", "category": group}
        for i, group in enumerate(["helpful", "harmless"] * 8)]
experiment.write_jsonl(rows, out / "data" / "ppo_prompts.jsonl")
(out / "reward_func.py").write_text("def reward_func(queries, prompts, labels):\\n    raise AssertionError\\n")
cmd = experiment.ppo_command(experiment.CONFIGS["gpu"], {"policy": sys.argv[5], "reward_func": out / "reward_func.py"},
                             out, estimator, method, 1)
assert cmd[1] == "--no-cpu", cmd[:3]

class ReachedTrain(Exception):
    pass

def reached_train():
    raise ReachedTrain

ray.is_initialized = reached_train
for package in ("flash_attn", "vllm"):
    stand_ins.install(package)
from openrlhf_fair.cli.main import main
try:
    main(cmd[1:])
except ReachedTrain:
    print("REACHED train(args)")
"""


@pytest.mark.parametrize("estimator, method", [("gae", "reg"), ("group_norm", "coef")])
def test_gpu_configuration_passes_openrlhfs_own_argument_checks(estimator, method, smollm2, tmp_path):
    import subprocess

    done = subprocess.run([sys.executable, "-c", GPU_COMMAND_CHECK, str(EXAMPLE), str(tmp_path), estimator, method,
                           str(smollm2)], capture_output=True, text=True, timeout=300)
    assert "REACHED train(args)" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    shaping = f"fair_coef={0.5 if method == 'coef' else 0}, fair_reg={0.5 if method == 'reg' else 0}"
    assert shaping in done.stdout + done.stderr  # the add-on parsed its flags and will carry them to the actors
