"""`openrlhf train_dpo --fairness_reg` end to end with real OpenRLHF on CPU (tiny Llama), and flags off identical
to plain OpenRLHF (same seed, compare the saved weights byte for byte)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import make_preference_rows
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


@pytest.fixture(scope="module")
def plain_run(tiny_llama, dpo_data, tmp_path_factory, run_cli):
    """Plain OpenRLHF train_dpo (only the CPU backend, no add-on CLI): the reference output folder."""
    out = tmp_path_factory.mktemp("dpo_plain") / "out"
    result = run_cli(
        sys.executable, "-c", PLAIN_HOST, *dpo_args(tiny_llama, dpo_data, out),
        label="train_dpo plain OpenRLHF (CPU backend only)", timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


@pytest.mark.host_matrix
@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_flags_off_is_bit_identical_to_plain_openrlhf(tiny_llama, dpo_data, plain_run, run_cli, tmp_path):
    out = tmp_path / "out"
    argv = dpo_args(tiny_llama, dpo_data, out)
    result = run_cli("openrlhf", "train_dpo", *argv, label="train_dpo flags off", timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "openrlhf-fair" not in result.stdout.replace("openrlhf-fair] CPU backend", "")
    assert weights(out) == weights(plain_run)
    assert "openrlhf_fair" not in json.loads((out / "config.json").read_text())


@pytest.fixture(scope="module")
def fr_run(tiny_llama, dpo_data, tmp_path_factory, run_cli):
    """``openrlhf train_dpo --fairness_reg 0.1`` (runtime patches): output folder, TensorBoard folder, log."""
    folder = tmp_path_factory.mktemp("dpo_fr")
    out, board = folder / "out", folder / "tb"
    result = run_cli(
        "openrlhf", "train_dpo", *dpo_args(tiny_llama, dpo_data, out, "--logger.tensorboard_dir", str(board)),
        "--fairness_reg", "0.1", label="train_dpo --fairness_reg 0.1 (runtime patches)", timeout=180,
        env={"OPENRLHF_FAIR_PATCH_MODE": "runtime"},
    )  # fmt: skip
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    return out, board, log


@pytest.mark.host_matrix
@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_fairness_reg_trains_logs_and_records_settings(fr_run, plain_run):
    out, board, log = fr_run
    assert "openrlhf-fair: beta=0.5, FR: loss = base - 0.1 * F" in log
    # Step metrics in OpenRLHF's progress bar and in its TensorBoard events (train/ and, from evaluate, eval/).
    for name in ("fairness/base_loss", "fairness/term", "fairness/F", "fairness/jain", "fairness/gini"):
        assert f"{name}=" in log, name
    events = b"".join(path.read_bytes() for path in board.rglob("events.out.tfevents.*"))
    assert b"train/fairness/F" in events and b"train/fairness/jain" in events and b"eval/fairness/jain" in events
    assert "openrlhf-fair eval: fairness/jain=" in log
    saved = json.loads((out / "config.json").read_text())["openrlhf_fair"]
    assert saved["method"] == "fr" and saved["reg"] == 0.1 and saved["tau"] == -1.0
    assert weights(out) != weights(plain_run)  # the fairness term changed training


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_native_hooks_train_exactly_like_the_runtime_patches(tiny_llama, dpo_data, fr_run, run_cli, tmp_path):
    """On an OpenRLHF copy carrying patches/ (native mode: runtime patching off) the same run gives the same
    weights, its metrics reach the step logs through the hook, and the choice is said in one log line."""
    from test_fair_patches import apply_diff, copy_openrlhf, diffs_for, native_env

    site = copy_openrlhf(tmp_path / "site")
    for diff in diffs_for(installed_openrlhf_version()):
        apply_diff(diff, site)
    out = tmp_path / "out"
    result = run_cli(
        "openrlhf", "train_dpo", *dpo_args(tiny_llama, dpo_data, out), "--fairness_reg", "0.1",
        label="train_dpo --fairness_reg 0.1 (native hooks, patched OpenRLHF copy)", timeout=180, env=native_env(site),
    )  # fmt: skip
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert log.count("using OpenRLHF's native dpo_loss hook") == 1
    assert "fairness/F=" in log and "fairness/jain=" in log
    assert "openrlhf-fair eval: fairness/jain=" in log  # eval metrics through the native eval hook (issue 10: parity)
    assert weights(out) == weights(fr_run[0])
