"""Real `openrlhf train_rm` runs on CPU with a tiny Llama: flags off is bit-identical to plain OpenRLHF, FR / FC
runs train and log their metrics, the saved config records the settings, global scope over 2 ranks, group key.

Four training runs in all (each a module-scoped fixture shared by several assertions), 64 pairs, max_len 64.
"""

import gzip
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
DATA = Path(__file__).resolve().parents[1] / "examples" / "data" / "helpful_harmless_pairs.jsonl.gz"
RUN_TIMEOUT = 300

# `python -m openrlhf.cli.train_rm` with only the CPU backend active (the host cannot run on CPU without it).
PLAIN_HOST = (
    "import runpy, sys; from openrlhf_fair import cpu_backend; cpu_backend.activate('train_rm'); "
    "sys.argv = ['train_rm.py', *sys.argv[1:]]; "
    "runpy.run_module('openrlhf.cli.train_rm', run_name='__main__', alter_sys=True)"
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A tiny Llama and 64 train / 32 eval short preference pairs (both categories) from the bundled data."""
    from openrlhf_fair.fixtures import build_tiny_llama

    root = tmp_path_factory.mktemp("rm_e2e")
    build_tiny_llama(root / "tiny")
    with gzip.open(DATA, "rt") as f:
        rows = [json.loads(line) for line in f]
    for split, n in (("train", 64), ("test", 32)):
        picked = [r for r in rows if r["split"] == split][:n]
        with open(root / f"{split}.jsonl", "w") as out:
            for r in picked:
                short = {"prompt": r["prompt"][-120:], "chosen": r["chosen"][:100], "rejected": r["rejected"][:100]}
                out.write(json.dumps({**short, "category": r["category"]}) + "\n")
    return root


def host_args(root: Path, name: str, micro: int = 8) -> list[str]:
    from openrlhf_fair.host.compat import host_argv

    return host_argv([
        "--model.model_name_or_path", str(root / "tiny"),
        "--data.dataset", f"json@{root}", "--data.dataset_split", "train",
        "--eval.dataset", f"json@{root}", "--eval.split", "test",
        "--data.prompt_key", "prompt", "--data.max_len", "64",
        "--train.micro_batch_size", str(micro), "--train.batch_size", "16", "--train.max_epochs", "1",
        "--train.seed", "7", "--ds.zero_stage", "2",
        "--ckpt.output_dir", str(root / name), "--logger.tensorboard_dir", str(root / f"tb_{name}"),
        "--logger.wandb.run_name", name,
    ])


def run(cmd, root: Path, name: str):
    # One intra-op thread per process: on a busy 2-core machine more threads spin-wait (a 10x slowdown seen).
    env = {**os.environ, "OPENRLHF_FAIR_CPU": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    (root / f"{name}.log").write_text(result.stdout + result.stderr)
    assert result.returncode == 0, f"{name} failed:\n{(result.stdout + result.stderr)[-4000:]}"
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


@pytest.fixture(scope="module")
def plain(workdir):
    run([sys.executable, "-c", PLAIN_HOST, *host_args(workdir, "plain")], workdir, "plain")
    return "plain"


@pytest.fixture(scope="module")
def ours_flags_off(workdir):
    run([str(BIN / "openrlhf"), "train_rm", *host_args(workdir, "flags_off")], workdir, "flags_off")
    return "flags_off"


@pytest.fixture(scope="module")
def fr_groups(workdir):
    cmd = [str(BIN / "openrlhf"), "train_rm", *host_args(workdir, "fr_groups"),
           "--fairness_reg", "0.5", "--fair_group_key", "category"]
    return run(cmd, workdir, "fr_groups") and "fr_groups"


@pytest.fixture(scope="module")
def fc_global(workdir):
    """FC (inverse form), one pair per rank, 2 ranks: only the global scope gives F its 2 pairs."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "openrlhf_fair.cli.train_rm", *host_args(workdir, "fc_global", micro=1),
           "--fairness_coef", "0.5", "--fairness_coef_form", "inverse", "--fairness_scope", "global"]
    return run(cmd, workdir, "fc_global") and "fc_global"


@pytest.mark.host_matrix
@pytest.mark.timeout(600)
def test_flags_off_is_bit_identical_to_plain_openrlhf(workdir, plain, ours_flags_off):
    ours, theirs = weights(workdir, ours_flags_off), weights(workdir, plain)
    assert ours.keys() == theirs.keys() and len(ours) > 5
    for key in theirs:
        assert ours[key].dtype == theirs[key].dtype and bool((ours[key] == theirs[key]).all()), key
    assert "openrlhf_fair" not in saved_config(workdir, ours_flags_off)
    assert not any(tag.startswith("train/fairness/") for tag in scalars(workdir, ours_flags_off))


@pytest.mark.host_matrix
@pytest.mark.timeout(600)
def test_fr_with_group_key_trains_logs_and_records(workdir, plain, fr_groups):
    fr, bt = scalars(workdir, fr_groups), scalars(workdir, plain)
    for tag in ("train/fairness/base_loss", "train/fairness/term", "train/fairness/F", "train/fairness/jain", "train/fairness/gini"):
        assert len(fr[tag]) == 4, tag  # 64 pairs / batch 16 = 4 optimizer steps, logged every step
    assert all(v == pytest.approx(2.0) for v in fr["train/fairness/items"])  # F over the 2 categories
    # The logged loss is base - 0.5 * F, not the Bradley-Terry loss of the plain run.
    assert fr["train/loss"][0] == pytest.approx(fr["train/fairness/base_loss"][0] - fr["train/fairness/term"][0], abs=1e-2)
    assert abs(fr["train/loss"][0] - bt["train/loss"][0]) > 0.2
    for tag in ("eval/fairness/jain", "eval/fairness/gini", "eval/fairness/acc/helpful", "eval/fairness/acc/harmless",
                "eval/fairness/reward/helpful", "eval/fairness/acc_gap", "eval/fairness/F_groups", "eval/fairness/reward_gap", "eval/eval_loss"):
        assert tag in fr, tag
    assert 0 <= fr["eval/fairness/acc_gap"][0] <= 1
    # The fairness gradient changed the weights.
    ours, theirs = weights(workdir, fr_groups), weights(workdir, plain)
    assert any(not bool((ours[k] == theirs[k]).all()) for k in theirs)
    recorded = saved_config(workdir, fr_groups)["openrlhf_fair"]
    assert recorded["method"] == "fr" and recorded["reg"] == 0.5 and recorded["group_key"] == "category"
    assert "openrlhf-fair: FR: loss = base - 0.5 * F" in (workdir / "fr_groups.log").read_text()


@pytest.mark.timeout(600)
def test_fc_global_scope_on_two_ranks(workdir, fc_global):
    fc = scalars(workdir, fc_global)
    assert all(v == 2.0 for v in fc["train/fairness/items"])  # one pair per rank, gathered from both ranks
    base, term, loss = fc["train/fairness/base_loss"], fc["train/fairness/term"], fc["train/loss"]
    assert all(t >= 1.0 for t in term)  # inverse form: F**-0.5 with F <= 1
    assert len(loss) == 4
    recorded = saved_config(workdir, fc_global)["openrlhf_fair"]
    assert (recorded["method"], recorded["coef"], recorded["coef_form"], recorded["scope"]) == ("fc", 0.5, "inverse", "global")
    assert "eval/fairness/jain" in fc


@pytest.mark.timeout(300)
def test_help_shows_our_flags_then_openrlhfs(workdir):
    result = subprocess.run([str(BIN / "openrlhf"), "train_rm", "--help"], capture_output=True, text=True,
                            timeout=RUN_TIMEOUT, env={**os.environ, "OPENRLHF_FAIR_CPU": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "--fairness_reg ALPHA, --fair_reg ALPHA" in out and "--train.micro_batch_size" in out
    assert out.index("--fairness_reg") < out.index("--train.micro_batch_size")


@pytest.mark.timeout(120)
def test_bad_fairness_flag_fails_before_anything_runs(workdir):
    result = subprocess.run([str(BIN / "openrlhf"), "train_rm", *host_args(workdir, "bad"), "--fairness_reg", "0.1",
                             "--fairness_tau", "1"], capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert result.returncode == 2
    assert "--fairness_tau 1 is degenerate" in result.stderr
    assert not (workdir / "bad").exists()
