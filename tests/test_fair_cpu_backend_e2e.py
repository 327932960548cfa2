"""Real OpenRLHF trainers on the CPU backend, through the `openrlhf` command and the two launchers.

Each run is a tiny random Llama on 64 synthetic pairs; `run_cli` records wall time and peak memory.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
CPU_ENV = {"OPENRLHF_FAIR_CPU": "1"}
BF16_LOSS_TOLERANCE = 0.01  # bf16 keeps 8 significant bits: ~0.004 between neighbouring values near 0.7


def scalars(tensorboard_dir: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run,) = [path for path in tensorboard_dir.iterdir() if path.is_dir()]
    events = EventAccumulator(str(run))
    events.Reload()
    return {tag: [event.value for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


PAIR_KEYS = ["--data.prompt_key", "prompt", "--data.chosen_key", "chosen", "--data.rejected_key", "rejected"]
SFT_KEYS = ["--data.input_key", "prompt", "--data.output_key", "chosen"]


def trainer_args(model: Path, data: Path, out: Path, *extra: str, keys: list[str] = PAIR_KEYS) -> list[str]:
    return [
        "--model.model_name_or_path", str(model),
        "--data.dataset", str(data), "--eval.dataset", str(data), "--eval.split", "train",
        *keys, "--data.max_len", "64",
        "--train.micro_batch_size", "4", "--train.batch_size", "8", "--train.max_epochs", "1",
        "--adam.lr", "2e-3",
        "--ckpt.output_dir", str(out / "model"), "--ckpt.path", str(out / "ckpt"),
        "--logger.tensorboard_dir", str(out / "tb"), "--logger.wandb.run_name", "run",
        *extra,
    ]


def assert_ok(result) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n--- stderr tail ---\n{result.stderr[-4000:]}"


@pytest.fixture(scope="module")
def rm_single(run_cli, tiny_llama, preference_jsonl, tmp_path_factory):
    out = tmp_path_factory.mktemp("rm_single")
    result = run_cli(BIN / "openrlhf", "--cpu", "train_rm", *trainer_args(tiny_llama, preference_jsonl, out),
                     label="openrlhf train_rm, 1 process", timeout=240)
    assert_ok(result)
    return out, result


@pytest.mark.timeout(300)
def test_train_rm_saves_a_loadable_reward_model(rm_single, preference_jsonl):
    out, result = rm_single
    assert result.stderr.count("CPU backend active for train_rm") == 1
    assert "flash_attention_2 -> sdpa" in result.stderr

    import json

    import torch

    from openrlhf_fair import cpu_backend

    undo = cpu_backend.activate("train_rm")
    try:
        from openrlhf.models import get_llm_for_sequence_regression
        from transformers import AutoTokenizer

        model = get_llm_for_sequence_regression(str(out / "model"), "reward", attn_implementation="sdpa")
        tokenizer = AutoTokenizer.from_pretrained(out / "model")
        rows = [json.loads(line) for line in preference_jsonl.read_text().splitlines()][:8]
        texts = [row["prompt"] + row[key] + tokenizer.eos_token for row in rows for key in ("chosen", "rejected")]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            rewards = model(batch["input_ids"], attention_mask=batch["attention_mask"]).float()
    finally:
        undo()
    assert model.config.value_head_prefix == "score"
    assert isinstance(model.config.mean, float) and model.config.std > 0  # written by the host's evaluate()
    assert rewards.shape == (16,) and torch.isfinite(rewards).all()
    chosen, rejected = rewards[0::2], rewards[1::2]
    # It learned the synthetic preference (seen: every margin about 2; an untrained head gives about 0).
    assert (chosen - rejected).min() > 0.5, (chosen, rejected)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed"])
def test_two_ranks_match_one_rank(launcher, rm_single, run_cli, tiny_llama, preference_jsonl, tmp_path, free_port):
    """Same global batch (8 = 1 rank x 4 x 2 accumulation = 2 ranks x 4): same losses up to bf16 rounding."""
    single_out, _ = rm_single
    port = str(free_port)
    module = "openrlhf_fair.cli.train_rm"
    launch = {
        "torchrun": [BIN / "torchrun", "--nproc_per_node", "2", "--master_port", port, "-m", module],
        "deepspeed": [BIN / "deepspeed", "--num_gpus", "2", "--master_port", port, "--module", module],
    }[launcher]
    result = run_cli(*launch, *trainer_args(tiny_llama, preference_jsonl, tmp_path),
                     label=f"{launcher} train_rm, 2 ranks", env=CPU_ENV, timeout=240)
    assert_ok(result)
    one, two = scalars(single_out / "tb"), scalars(tmp_path / "tb")
    # One rank logs the mean over its 2 accumulated micro-batches; two ranks log the all-reduced micro-batch loss.
    assert len(one["train/loss_mean"]) == len(two["train/loss"]) == 8
    assert one["train/loss_mean"] == pytest.approx(two["train/loss"], abs=BF16_LOSS_TOLERANCE)
    assert one["eval/eval_loss"][-1] == pytest.approx(two["eval/eval_loss"][-1], abs=BF16_LOSS_TOLERANCE)
    # Rank 0's own loss differs from the global one: the comparison above can tell the two apart.
    assert two["train/loss_mean"] != pytest.approx(two["train/loss"], abs=1e-4)


def changed_weights(before: Path, after: Path) -> list[str]:
    from safetensors.torch import load_file

    old, new = load_file(before / "model.safetensors"), load_file(after / "model.safetensors")
    return [name for name in old if name in new and not old[name].float().allclose(new[name].float())]


# train_dpo on the CPU backend: test_fair_dpo_e2e.py (its flags-off run must train: finite step losses, weights
# moved, and equal plain OpenRLHF's byte for byte).


@pytest.mark.timeout(240)
def test_train_sft_completes(run_cli, tiny_llama, preference_jsonl, tmp_path):
    args = trainer_args(tiny_llama, preference_jsonl, tmp_path, "--data.max_samples", "32", keys=SFT_KEYS)
    result = run_cli(BIN / "openrlhf", "--cpu", "train_sft", *args, label="openrlhf train_sft, 1 process", timeout=200)
    assert_ok(result)
    assert changed_weights(tiny_llama, tmp_path / "model"), "SFT saved the initial weights"


@pytest.mark.quick
@pytest.mark.timeout(120)
@pytest.mark.parametrize("flag", [["--ds.packing_samples"], ["--ds.tensor_parallel_size", "2"]], ids=lambda f: f[0])
def test_unsupported_flag_fails_before_training(run_cli, tiny_llama, preference_jsonl, tmp_path, flag):
    args = trainer_args(tiny_llama, preference_jsonl, tmp_path, *flag)
    result = run_cli(BIN / "openrlhf", "--cpu", "train_rm", *args, label=f"openrlhf train_rm {' '.join(flag)}")
    assert result.returncode == 2
    assert "CPU backend: cannot run with" in result.stderr and " ".join(flag) in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "model").exists()  # failed before train() created its output folder


@pytest.mark.quick
@pytest.mark.timeout(120)
def test_port_in_use_is_reported(run_cli, tiny_llama, preference_jsonl, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli(BIN / "openrlhf", "--cpu", "train_rm", *trainer_args(tiny_llama, preference_jsonl, tmp_path),
                         label="openrlhf train_rm, port in use", env={"MASTER_PORT": str(port)})
    assert result.returncode == 2
    assert f"MASTER_PORT {port} on 127.0.0.1 is already in use" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.quick  # trains nothing: part of the quick run
@pytest.mark.timeout(300)
def test_smollm2_fixture_is_the_pretrained_model(request):
    """The GGUF conversion keeps the pretrained weights and a working chat tokenizer (greedy answer is right).
    Runs on a fresh clone too (the conversion takes about 50 s once, then it is cached)."""
    path = request.getfixturevalue("smollm2")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        output = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(output[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer
