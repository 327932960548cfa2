"""Real `openrlhf train_rm` runs on CPU shared by the RM end-to-end tests (test_fair_rm_e2e, test_fair_seam_e2e,
test_fair_reward_terms_e2e): one tiny Llama, 64 train / 32 eval short pairs of the bundled data (both categories),
max_len 64, batch 16 (4 optimizer steps), seed 7.

Session fixtures (registered in conftest.py): `rm_workdir` (that folder) and `rm_runs`, the three runs several
test modules compare against, trained once per session two at a time (`fair_processes.concurrently`):
"plain" (python -m openrlhf.cli.train_rm, the CPU backend only), "flags_off" (`openrlhf train_rm`, no fairness
flag) and "fr_groups" (`openrlhf train_rm` + FR_GROUPS).
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pytest

from fair_processes import concurrently

BIN = Path(sys.executable).parent
DATA = Path(__file__).resolve().parents[1] / "examples" / "data" / "helpful_harmless_pairs.jsonl.gz"
RUN_TIMEOUT = 300
# OpenRLHF's default 9e-6 leaves the tiny model's margins at ~1e-3, within bf16 rounding of the recomputed rewards:
# 1e-3 trains it enough in the 4 steps that the logged eval metrics can be told from wrong quantities.
LR = "1e-3"
FR_TEMPERATURE = 0.25  # not the default 1, so that eval F shows whether the temperature reached it
FR_GROUPS = ["--fairness_reg", "0.5", "--fairness_group_key", "category", "--fairness_temperature", str(FR_TEMPERATURE)]
# One intra-op thread per process: on a busy 2-core machine more threads spin-wait (a 10x slowdown seen).
RUN_ENV = {"OPENRLHF_FAIR_CPU": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}

# `python -m openrlhf.cli.train_rm` with only the CPU backend active (the host cannot run on CPU without it).
PLAIN_HOST = (
    "import runpy, sys; from openrlhf_fair import cpu_backend; cpu_backend.activate('train_rm'); "
    "sys.argv = ['train_rm.py', *sys.argv[1:]]; "
    "runpy.run_module('openrlhf.cli.train_rm', run_name='__main__', alter_sys=True)"
)


def build_workdir(root: Path) -> Path:
    """A tiny Llama and 64 train / 32 eval short preference pairs (16 of each category in eval) from the bundled
    data. The tiny tokenizer makes about one token per character and the host keeps the first 64 tokens, so the
    eval pairs have short prompts (40 characters) and a chosen and rejected response that differ in their first
    24 characters: every eval pair is two different token sequences (with the train split's 120-character
    prompts about half of them were one sequence twice, and accuracy with chosen and rejected swapped passed)."""
    from openrlhf_fair.fixtures import build_tiny_llama

    build_tiny_llama(root / "tiny")
    with gzip.open(DATA, "rt") as f:
        rows = [json.loads(line) for line in f]
    train = [r for r in rows if r["split"] == "train"][:64]
    test = [r for r in rows if r["split"] == "test" and r["chosen"][:24] != r["rejected"][:24]][:32]
    for split, picked, prompt_chars in (("train", train, 120), ("test", test, 40)):
        with open(root / f"{split}.jsonl", "w") as out:
            for r in picked:
                short = {"prompt": r["prompt"][-prompt_chars:], "chosen": r["chosen"][:100], "rejected": r["rejected"][:100]}
                out.write(json.dumps({**short, "category": r["category"]}) + "\n")
    return root


def host_args(root: Path, name: str, micro: int = 8, batch: int = 16) -> list[str]:
    """The shared host flags, spelled as the installed OpenRLHF release spells them."""
    from openrlhf_fair.host.compat import host_argv

    return host_argv([
        "--model.model_name_or_path", str(root / "tiny"),
        "--data.dataset", f"json@{root}", "--data.dataset_split", "train",
        "--eval.dataset", f"json@{root}", "--eval.split", "test",
        "--data.prompt_key", "prompt", "--data.max_len", "64",
        "--train.micro_batch_size", str(micro), "--train.batch_size", str(batch), "--train.max_epochs", "1",
        "--train.seed", "7", "--ds.zero_stage", "2", "--adam.lr", LR,
        "--ckpt.output_dir", str(root / name), "--logger.tensorboard_dir", str(root / f"tb_{name}"),
        "--logger.wandb.run_name", name,
    ])  # fmt: skip


def run(run_cli, cmd, root: Path, name: str):
    """Run ``cmd`` (a train_rm command line writing to ``root/name``) through `run_cli`, a one-process run on a
    MASTER_PORT of its own (runs may go at the same time; launchers set their own); it must succeed and leave no
    process behind. Output kept in root/name.log."""
    from conftest import reserved_port

    with reserved_port() as port:
        result = run_cli(*cmd, label=f"train_rm {name}", cwd=root, env={**RUN_ENV, "MASTER_PORT": str(port)},
                         timeout=RUN_TIMEOUT)
    (root / f"{name}.log").write_text(result.stdout + result.stderr)
    assert result.returncode == 0, f"{name} failed:\n{(result.stdout + result.stderr)[-4000:]}"
    assert not result.leftovers, f"{name} left processes behind: {result.leftovers}"
    return result


def train_rm(root: Path, name: str, *flags: str) -> list[str]:
    """`openrlhf train_rm` with the shared settings and ``flags``, writing to ``root/name``."""
    return [str(BIN / "openrlhf"), "train_rm", *host_args(root, name), *flags]


def weights(root: Path, name: str) -> dict:
    from safetensors.torch import load_file

    return load_file(str(root / name / "model.safetensors"))


def scalars(root: Path, name: str) -> dict:
    """{tag: [values by step]} from the run's tensorboard folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run_dir,) = [p for p in (root / f"tb_{name}").iterdir() if p.is_dir()]
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def saved_config(root: Path, name: str) -> dict:
    return json.loads((root / name / "config.json").read_text())


@pytest.fixture(scope="session")
def rm_workdir(tmp_path_factory) -> Path:
    return build_workdir(tmp_path_factory.mktemp("rm_e2e"))


@pytest.fixture(scope="session")
def rm_runs(rm_workdir, run_cli) -> Path:
    """rm_workdir once the runs "plain", "flags_off" and "fr_groups" saved their models there."""
    commands = {
        "plain": [sys.executable, "-c", PLAIN_HOST, *host_args(rm_workdir, "plain")],
        "flags_off": train_rm(rm_workdir, "flags_off"),
        "fr_groups": train_rm(rm_workdir, "fr_groups", *FR_GROUPS),
    }
    concurrently(*(lambda n=name, c=cmd: run(run_cli, c, rm_workdir, n) for name, cmd in commands.items()))
    return rm_workdir
