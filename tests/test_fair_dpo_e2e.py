"""`openrlhf train_dpo --fairness_reg` end to end with real OpenRLHF on CPU (tiny Llama), and flags off identical
to plain OpenRLHF (same seed, compare the saved weights byte for byte)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from conftest import make_preference_rows, reserved_port
from fair_processes import concurrently
from openrlhf_fair.host.compat import installed_openrlhf_version

PLAIN_HOST = (
    "import runpy, sys\n"
    "from openrlhf_fair import cpu_backend\n"
    "cpu_backend.activate('train_dpo')\n"
    "sys.argv = ['train_dpo', *sys.argv[1:]]\n"
    "runpy.run_module('openrlhf.cli.train_dpo', run_name='__main__', alter_sys=True)\n"
)


@pytest.fixture(scope="module")
def dpo_data(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("dpo_data")
    rows = make_preference_rows(40)
    train, evaluation = folder / "train.jsonl", folder / "eval.jsonl"
    train.write_text("".join(json.dumps(row) + "\n" for row in rows[:32]))
    evaluation.write_text("".join(json.dumps(row) + "\n" for row in rows[32:]))
    return train, evaluation


def dpo_args(model: Path, data: tuple[Path, Path], out: Path, *extra: str) -> list[str]:
    """The host flags of every run here, spelled as the installed OpenRLHF release spells them."""
    from openrlhf_fair.host.compat import host_argv

    train, evaluation = data
    return host_argv([
        "--model.model_name_or_path", str(model), "--data.dataset", str(train), "--eval.dataset", str(evaluation),
        "--eval.split", "train", "--data.prompt_key", "prompt", "--data.max_len", "48",
        "--train.micro_batch_size", "4", "--train.batch_size", "8", "--train.max_epochs", "1", "--train.seed", "7",
        "--ds.zero_stage", "0", "--ds.param_dtype", "bf16", "--adam.lr", "1e-3", "--model.beta", "0.5",
        "--ckpt.output_dir", str(out), "--logger.logging_steps", "1", *extra,
    ])  # fmt: skip


def weights(out: Path) -> bytes:
    return (out / "model.safetensors").read_bytes()


# One intra-op thread per run: the runs go two at a time, and the native-hooks run must reduce in the same order
# as the run it is compared with byte for byte.
DPO_ENV = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def dpo_runs(tiny_llama, dpo_data, tmp_path_factory, run_cli) -> dict[str, tuple[Path, Path, str]]:
    """{name: (output folder, TensorBoard folder, log)} of three runs, two at a time: "plain" (plain OpenRLHF
    train_dpo, only the CPU backend, no add-on CLI: the reference), "flags_off" (`openrlhf train_dpo`, no
    fairness flag) and "fr" (`openrlhf train_dpo --fairness_reg 0.1`, runtime patches)."""
    folder = tmp_path_factory.mktemp("dpo_runs")
    commands = {
        "plain": ([sys.executable, "-c", PLAIN_HOST], [], "train_dpo plain OpenRLHF (CPU backend only)", {}),
        "flags_off": (["openrlhf", "train_dpo"], [], "train_dpo flags off", {}),
        "fr": (["openrlhf", "train_dpo"], ["--fairness_reg", "0.1"], "train_dpo --fairness_reg 0.1 (runtime patches)",
               {"OPENRLHF_FAIR_PATCH_MODE": "runtime"}),
    }

    def train(name):
        front, extra, label, env = commands[name]
        out, board = folder / name / "out", folder / name / "tb"
        argv = dpo_args(tiny_llama, dpo_data, out, "--logger.tensorboard_dir", str(board))
        with reserved_port() as port:  # a port of its own: the runs go at the same time
            result = run_cli(*front, *argv, *extra, label=label, timeout=180,
                             env={**DPO_ENV, **env, "MASTER_PORT": str(port)})
        log = result.stdout + result.stderr
        assert result.returncode == 0, f"{name}:\n{log[-4000:]}"
        return out, board, log

    return dict(zip(commands, concurrently(*(lambda n=name: train(n) for name in commands))))


def step_losses(board: Path) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run,) = [path for path in board.iterdir() if path.is_dir()]
    events = EventAccumulator(str(run))
    events.Reload()
    return [event.value for event in events.Scalars("train/loss")]


@pytest.mark.host_matrix
@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_flags_off_is_bit_identical_to_plain_openrlhf(tiny_llama, dpo_runs):
    (out, board, log), (plain, _, _) = dpo_runs["flags_off"], dpo_runs["plain"]
    assert "openrlhf-fair" not in log.replace("openrlhf-fair] CPU backend", "")
    assert weights(out) == weights(plain)
    assert "openrlhf_fair" not in json.loads((out / "config.json").read_text())
    # it trained: 32 pairs / batch 8 = 4 logged steps with finite losses, and the saved weights moved
    losses = step_losses(board)
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses), losses
    from safetensors.torch import load_file

    start, trained = load_file(str(tiny_llama / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert any(not trained[k].equal(start[k]) for k in start if k in trained), "DPO saved the initial weights"


@pytest.mark.host_matrix
@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_fairness_reg_trains_logs_and_records_settings(dpo_runs):
    (out, board, log), (plain, _, _) = dpo_runs["fr"], dpo_runs["plain"]
    assert "openrlhf-fair: beta=0.5, FR: loss = base - 0.1 * F" in log
    # Step metrics in OpenRLHF's progress bar and in its TensorBoard events (train/ and, from evaluate, eval/).
    for name in ("fairness/base_loss", "fairness/term", "fairness/F", "fairness/jain", "fairness/gini"):
        assert f"{name}=" in log, name
    events = b"".join(path.read_bytes() for path in board.rglob("events.out.tfevents.*"))
    assert b"train/fairness/F" in events and b"train/fairness/jain" in events and b"eval/fairness/jain" in events
    assert "openrlhf-fair eval: fairness/jain=" in log
    saved = json.loads((out / "config.json").read_text())["openrlhf_fair"]
    assert saved["method"] == "fr" and saved["reg"] == 0.1 and saved["tau"] == -1.0
    assert weights(out) != weights(plain)  # the fairness term changed training


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_native_hooks_train_exactly_like_the_runtime_patches(tiny_llama, dpo_data, dpo_runs, run_cli, tmp_path):
    """On an OpenRLHF copy carrying patches/ (native mode: runtime patching off) the same run gives the same
    weights, its metrics reach the step logs through the hook, and the choice is said in one log line."""
    from test_fair_patches import apply_diff, copy_openrlhf, diffs_for, native_env

    site = copy_openrlhf(tmp_path / "site")
    for diff in diffs_for(installed_openrlhf_version()):
        apply_diff(diff, site)
    out = tmp_path / "out"
    result = run_cli(
        "openrlhf", "train_dpo", *dpo_args(tiny_llama, dpo_data, out), "--fairness_reg", "0.1",
        label="train_dpo --fairness_reg 0.1 (native hooks, patched OpenRLHF copy)", timeout=180,
        env={**DPO_ENV, **native_env(site)},
    )  # fmt: skip
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert log.count("using OpenRLHF's native dpo_loss hook") == 1
    assert "fairness/F=" in log and "fairness/jain=" in log
    assert "openrlhf-fair eval: fairness/jain=" in log  # eval metrics through the native eval hook (issue 10: parity)
    assert weights(out) == weights(dpo_runs["fr"][0])
